//! `protocol::parse_client` over arbitrary text frames: never panics, and
//! agrees with a plain `serde_json::Value` reading of the same text; the
//! PONG built from a PING's `ts` is valid JSON that carries it back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ws_gateway::protocol::{self, ClientMessage};

fuzz_target!(|data: &[u8]| {
    // Text frames reach the parser as UTF-8 (tungstenite checks it).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = protocol::parse_client(text);
    let value: Option<Value> = serde_json::from_str(text).ok();
    let kind = value
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    match (&parsed, kind) {
        (Ok(ClientMessage::Ping { ts }), Some("PING")) => {
            assert_eq!(ts.as_ref(), value.as_ref().unwrap().get("ts"));
            let pong = protocol::pong(ts.clone());
            let pong: Value = serde_json::from_str(pong.as_str()).expect("PONG is JSON");
            assert_eq!(pong["type"], "PONG");
            assert_eq!(pong["data"].get("ts"), ts.as_ref());
        }
        (Ok(ClientMessage::Unknown(k)), Some(kind)) => {
            assert_ne!(kind, "PING");
            assert_eq!(k, kind);
        }
        (Err(e), None) => {
            assert_eq!(e.code, "bad_request");
            let frame = protocol::error(e.code, &e.message);
            let _: Value = serde_json::from_str(frame.as_str()).expect("ERROR is JSON");
        }
        (parsed, kind) => panic!("parse_client {parsed:?} but the JSON's type is {kind:?}"),
    }
});
