//! Preparing a message for the canonical publish path (SPEC §3), shared by
//! the `publish` command and the admin API: validate it, and fill in the
//! `id` (a ULID: unique and time-ordered) and `ts` when missing.

use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// A message ready to publish.
#[derive(Debug)]
pub struct Prepared {
    pub id: String,
    pub bytes: Bytes,
}

/// What a request body with nothing in it (or only whitespace) means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IfEmpty {
    /// A default test NOTIFICATION, for one user (`/ws/test-message/{id}`).
    TestNotification,
    /// A 400: a broadcast is never a default message to everyone (SPEC §7).
    Refuse,
}

/// Prepares a message from a request body; `if_empty` says what a blank
/// one means. Errors say what is wrong, for a 400.
pub fn from_body(body: &[u8], if_empty: IfEmpty) -> Result<Prepared, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return match if_empty {
            IfEmpty::TestNotification => prepare(json!({
                "type": "NOTIFICATION",
                "data": { "title": "Test message", "message": "Hello from ws-gateway" }
            })),
            IfEmpty::Refuse => Err("the body is empty: send a message (§3)".into()),
        };
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    prepare(value)
}

/// Builds a message from a type and optional data, as the CLI takes them.
pub fn from_parts(kind: &str, data: Option<Value>) -> Result<Prepared, String> {
    let mut message = Map::new();
    message.insert("type".into(), Value::from(kind));
    if let Some(data) = data {
        message.insert("data".into(), data);
    }
    prepare(Value::Object(message))
}

fn prepare(value: Value) -> Result<Prepared, String> {
    let Value::Object(mut message) = value else {
        return Err("the message must be a JSON object".into());
    };
    if !message.get("type").is_some_and(Value::is_string) {
        return Err("the message needs a string \"type\"".into());
    }
    let id = match message.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::String(_)) | None => {
            let id = ulid::Ulid::new().to_string();
            message.insert("id".into(), Value::from(id.clone()));
            id
        }
        Some(_) => return Err("\"id\" must be a string".into()),
    };
    if !message.contains_key("ts") {
        message.insert("ts".into(), Value::from(unix_millis()));
    }
    let bytes = Bytes::from(Value::Object(message).to_string());
    if bytes.len() > crate::protocol::MAX_PUBLISHED_BYTES {
        return Err("the message is larger than 1 MiB".into());
    }
    Ok(Prepared { id, bytes })
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_id_and_ts_and_keeps_given_ones() {
        let p = from_body(br#"{"type":"X","id":"abc","ts":5}"#, IfEmpty::Refuse).unwrap();
        assert_eq!(p.id, "abc");
        assert_eq!(&p.bytes[..], br#"{"type":"X","id":"abc","ts":5}"#);
        let p = from_body(b"", IfEmpty::TestNotification).unwrap();
        let v: Value = serde_json::from_slice(&p.bytes).unwrap();
        assert_eq!(v["type"], "NOTIFICATION");
        assert_eq!(v["id"], p.id.as_str());
        assert!(v["ts"].is_u64());
    }

    #[test]
    fn refuses_non_messages() {
        let user = IfEmpty::TestNotification;
        assert!(from_body(b"[1]", user).is_err());
        assert!(from_body(br#"{"x":1}"#, user).is_err());
        assert!(from_body(br#"{"type":1}"#, user).is_err());
        assert!(from_body(br#"{"type":"X","id":7}"#, user).is_err());
        assert!(from_body(b"nope", user).is_err());
        assert!(from_body(b"", IfEmpty::Refuse).is_err());
        assert!(from_body(b" \r\n\t", IfEmpty::Refuse).is_err());
    }
}
