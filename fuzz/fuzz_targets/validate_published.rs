//! `protocol::validate_published` over arbitrary payloads.
//!
//! The first byte picks a padding: the payload is padded with spaces after
//! its first `{` up to a frame-length boundary (125/126, 65535/65536 and
//! the 1 MiB limit), so that every header form is reached with small
//! inputs. Padding inside an object keeps its meaning, so both the padded
//! and the unpadded payload are checked against the same oracle.
//!
//! Properties: never panics; accepted ⇔ valid UTF-8, at most 1 MiB, a JSON
//! object with a string `type`, an `id` that is absent, null or a string,
//! and no repeated `type`/`id`/`ts` key; an accepted payload's frame is one
//! final unmasked text frame (as tungstenite decodes it, with the shortest
//! length encoding) whose payload is the input, byte for byte, and whose
//! `id`/`ts` are the JSON's.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use ws_gateway::protocol::{validate_published, Invalid, MAX_PUBLISHED_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let target = match selector {
        200..=209 => Some(125),
        210..=219 => Some(126),
        220..=229 => Some(65_535),
        230..=239 => Some(65_536),
        240..=241 => Some(MAX_PUBLISHED_BYTES),
        242..=243 => Some(MAX_PUBLISHED_BYTES + 1),
        _ => None,
    };
    check(rest);
    if let Some(target) = target {
        if let Some(brace) = rest.iter().position(|&b| b == b'{') {
            if rest.len() < target {
                let mut padded = Vec::with_capacity(target);
                padded.extend_from_slice(&rest[..=brace]);
                padded.resize(target - (rest.len() - brace - 1), b' ');
                padded.extend_from_slice(&rest[brace + 1..]);
                assert_eq!(padded.len(), target);
                check(&padded);
            }
        }
    }
});

fn check(payload: &[u8]) {
    let result = validate_published(Bytes::copy_from_slice(payload));
    let expected = expected(payload);
    match (&result, &expected) {
        (Ok(p), Ok(value)) => {
            assert_eq!(p.payload(), payload);
            let mut cursor = Cursor::new(&p.frame[..]);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a valid frame header")
                .expect("a complete frame header");
            assert!(header.is_final && !header.rsv1 && !header.rsv2 && !header.rsv3);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(header.mask, None, "server frames are unmasked");
            assert_eq!(len, payload.len() as u64);
            let header_len = cursor.position() as usize;
            assert_eq!(header_len, header.len(len), "shortest length encoding");
            assert_eq!(&p.frame[header_len..], payload);
            assert_eq!(p.id.as_deref(), value.get("id").and_then(Value::as_str));
            assert_eq!(p.ts, value.get("ts").and_then(Value::as_u64));
        }
        (Err(got), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("validate_published: {got:?}, expected {want:?}"),
    }
}

/// The oracle: what `validate_published` should say, from a plain
/// `serde_json::Value` reading.
fn expected(payload: &[u8]) -> Result<Value, Invalid> {
    if payload.len() > MAX_PUBLISHED_BYTES {
        return Err(Invalid::TooLarge);
    }
    let bad = Err(Invalid::NotJsonObjectWithType);
    let Ok(text) = std::str::from_utf8(payload) else {
        return bad;
    };
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return bad;
    };
    let Some(object) = value.as_object() else {
        return bad;
    };
    if !object.get("type").is_some_and(Value::is_string) {
        return bad;
    }
    if !object
        .get("id")
        .is_none_or(|id| id.is_null() || id.is_string())
    {
        return bad;
    }
    // serde's derived structs refuse a repeated field; `Value` keeps the last.
    let keys = top_level_keys(text);
    for field in ["type", "id", "ts"] {
        if keys.iter().filter(|k| *k == field).count() > 1 {
            return bad;
        }
    }
    Ok(value)
}

/// The keys of a JSON object, in order, repeats included.
fn top_level_keys(text: &str) -> Vec<String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Keys).unwrap_or_default()
}
