//! `engineio::parse` over arbitrary text frames from a Socket.IO client:
//! never panics, and what it reads as an event is a well-formed packet (a
//! name, and an ack id only from digits the frame really has); a
//! published message's event frame is valid Socket.IO (a JSON array).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ws_gateway::fuzzing::{engineio_parse, Packet, SocketIoEvents};
use ws_gateway::protocol::validate_published;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Packet::Event { ack, name, .. }) = engineio_parse(text) {
        assert!(text.starts_with("42"));
        if let Some(id) = ack {
            assert!(text.contains(&id.to_string()));
        }
        let _ = name;
    }
    // The same bytes as a published message: its Socket.IO frame parses.
    if let Ok(published) = validate_published(bytes::Bytes::copy_from_slice(data)) {
        let names = std::collections::BTreeMap::new();
        let events = SocketIoEvents::new(&names, "data");
        let packet = events.packet(&published, "offset");
        let json = packet.strip_prefix("42").expect("an EVENT");
        let array: Value = serde_json::from_str(json).expect("a JSON array");
        assert!(array.is_array());
    }
});
