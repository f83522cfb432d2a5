//! The wire: published messages (SPEC §3), client → server messages (§5),
//! the frames the gateway itself writes, and close codes (§6).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Largest published payload the gateway relays (SPEC §3).
pub const MAX_PUBLISHED_BYTES: usize = 1024 * 1024;

/// Close codes of SPEC §6.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_UTF8: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// RFC 6455's "try again later": a resume that cannot read the history
    /// now (Redis unreachable) is refused rather than reported as lost.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const INVALID_TOKEN: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

pub fn close_code(code: u16) -> CloseCode {
    CloseCode::from(code)
}

/// The fields of a published message the gateway reads. Everything else is
/// forwarded as published, byte for byte.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub ts: Option<Value>,
    #[serde(default, borrow)]
    pub data: Option<&'a serde_json::value::RawValue>,
}

/// Why a published payload was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    TooLarge,
    NotJsonObjectWithType,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::TooLarge => "too_large",
            Invalid::NotJsonObjectWithType => "invalid_payload",
        }
    }
}

/// A published message that passed validation: its original bytes (valid
/// UTF-8 JSON), framed once for all recipients, and the fields the gateway
/// uses. Fan-out shares one `Arc<Published>` among all recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The payload as an unmasked server text frame (RFC 6455 §5.2): what
    /// every recipient's socket gets, one slice per message in a `writev`.
    pub frame: Bytes,
    /// The message id, for resume and de-duplication.
    pub id: Option<Arc<str>>,
    /// Publish time (ms since the epoch), for the latency metric.
    pub ts: Option<u64>,
    /// The message's `type`: Socket.IO's event name and SSE's `event:`.
    kind: Box<str>,
    /// Where the `data` field's JSON is in the payload, if it has one.
    data: Option<(u32, u32)>,
    /// The Socket.IO event frame, built by the first Socket.IO recipient
    /// and shared by the others.
    socketio_frame: std::sync::OnceLock<Bytes>,
    /// The SSE event, likewise.
    sse_frame: std::sync::OnceLock<Bytes>,
}

impl Published {
    /// The payload as published: the frame after its header.
    pub fn payload(&self) -> &[u8] {
        let header = match self.frame[1] {
            0..=125 => 2,
            126 => 4,
            _ => 10,
        };
        &self.frame[header..]
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The Socket.IO frame of this message, `build` making it once (for a
    /// message without an id, the packet up to its offset: the offset is
    /// each connection's own).
    pub fn socketio_frame(&self, build: impl FnOnce(&Published) -> Bytes) -> &Bytes {
        self.socketio_frame.get_or_init(|| build(self))
    }

    /// The SSE event of this message (SPEC §12), built once.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse_frame
            .get_or_init(|| sse_event(self.id.as_deref(), &self.kind, self.payload()))
    }

    /// The JSON of the message's `data` field, as published.
    pub fn data(&self) -> Option<&[u8]> {
        let (start, end) = self.data?;
        self.payload().get(start as usize..end as usize)
    }
}

/// Validates a published payload: at most 1 MiB, a JSON object with a string
/// `type`. This is the one parse a message gets on this instance.
pub fn validate_published(payload: Bytes) -> Result<Published, Invalid> {
    if payload.len() > MAX_PUBLISHED_BYTES {
        return Err(Invalid::TooLarge);
    }
    // A struct with a required `type` only deserializes from a JSON object
    // (serde_json also accepts arrays for structs, hence the first byte check).
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Invalid::NotJsonObjectWithType);
    }
    // A text frame must be UTF-8, and serde_json does not check the strings
    // it skips (e.g. inside `data`).
    if std::str::from_utf8(&payload).is_err() {
        return Err(Invalid::NotJsonObjectWithType);
    }
    let envelope: Envelope =
        serde_json::from_slice(&payload).map_err(|_| Invalid::NotJsonObjectWithType)?;
    let id = envelope.id.map(|id| Arc::from(&*id));
    let ts = envelope.ts.as_ref().and_then(Value::as_u64);
    // The raw value borrows from `payload`: its place there is its offset.
    let data = envelope.data.map(|raw| {
        let start = raw.get().as_ptr() as usize - payload.as_ptr() as usize;
        // At most 1 MiB (checked above), so it fits.
        (start as u32, (start + raw.get().len()) as u32)
    });
    Ok(Published {
        frame: text_frame(&payload),
        id,
        ts,
        kind: envelope.kind.into(),
        data,
        socketio_frame: std::sync::OnceLock::new(),
        sse_frame: std::sync::OnceLock::new(),
    })
}

/// An SSE event (SPEC §12): `id:` when there is one, `event:`, one
/// `data:` line per line of `data`, and the blank line that ends it; as one
/// chunk of the stream's chunked body (see [`http_chunk`]).
pub fn sse_event(id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.len() + 64);
    // A field's value ends at a line break: none may be inside one.
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    if let Some(id) = id {
        out.put_slice(format!("id: {}\n", one_line(id)).as_bytes());
    }
    out.put_slice(format!("event: {}\n", one_line(event)).as_bytes());
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    http_chunk(&out)
}

/// `body` as one chunk of an HTTP/1.1 chunked body: the SSE stream is
/// chunked (SPEC §12), so every write to it is a chunk. An empty `body`
/// would end the body: see [`LAST_CHUNK`].
pub fn http_chunk(body: &[u8]) -> Bytes {
    let size = format!("{:x}\r\n", body.len());
    let mut out = BytesMut::with_capacity(size.len() + body.len() + 2);
    out.put_slice(size.as_bytes());
    out.put_slice(body);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `payload` as an unmasked server text frame (RFC 6455 §5.2).
pub fn text_frame(payload: &[u8]) -> Bytes {
    text_frame_of(&[payload])
}

/// The text frame whose payload is `parts`, one after the other.
pub fn text_frame_of(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = BytesMut::with_capacity(10 + len);
    frame.put_u8(0x81); // FIN + text
    match len {
        0..=125 => frame.put_u8(len as u8),
        126..=0xffff => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        _ => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    for part in parts {
        frame.put_slice(part);
    }
    frame.freeze()
}

/// A message from the client (SPEC §5).
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Ping { ts: Option<Value> },
    AuthRefresh { token: String },
    Subscribe { room: String },
    Unsubscribe { room: String },
    Unknown(String),
}

/// The longest string `ts` a PONG echoes: an echo must not let a client
/// make the server queue replies as big as its own messages.
pub const MAX_TS_BYTES: usize = 64;

/// The longest room name (SPEC §5).
pub const MAX_ROOM_BYTES: usize = 128;

/// Why a client message was refused, as an ERROR code.
#[derive(Debug, PartialEq)]
pub struct ClientError {
    pub code: &'static str,
    pub message: String,
}

pub fn parse_client(text: &str) -> Result<ClientMessage, ClientError> {
    let bad = |message: &str| ClientError {
        code: "bad_request",
        message: message.into(),
    };
    let value: Value = serde_json::from_str(text).map_err(|_| bad("message is not valid JSON"))?;
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err(bad("message must be a JSON object with a string \"type\""));
    };
    let string = |field: &str| -> Result<String, ClientError> {
        match value.get(field).and_then(Value::as_str) {
            Some(s) => Ok(s.to_string()),
            None => Err(bad(&format!("{kind} needs a string \"{field}\""))),
        }
    };
    let room = || -> Result<String, ClientError> {
        let room = string("room")?;
        if valid_room(&room) {
            Ok(room)
        } else {
            Err(bad(&format!(
                "a room name is 1 to {MAX_ROOM_BYTES} bytes of A-Z a-z 0-9 . _ : -"
            )))
        }
    };
    match kind {
        "PING" => {
            let ts = value.get("ts").cloned();
            match &ts {
                None | Some(Value::Number(_)) => {}
                Some(Value::String(s)) if s.len() <= MAX_TS_BYTES => {}
                Some(_) => {
                    return Err(bad(&format!(
                        "ts must be a number or a string of at most {MAX_TS_BYTES} bytes"
                    )))
                }
            }
            Ok(ClientMessage::Ping { ts })
        }
        "AUTH_REFRESH" => Ok(ClientMessage::AuthRefresh {
            token: string("token")?,
        }),
        "SUBSCRIBE" => Ok(ClientMessage::Subscribe { room: room()? }),
        "UNSUBSCRIBE" => Ok(ClientMessage::Unsubscribe { room: room()? }),
        other => Ok(ClientMessage::Unknown(other.to_string())),
    }
}

/// A room name of SPEC §5: 1 to 128 bytes of `[A-Za-z0-9._:-]`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_BYTES
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Frames the gateway itself sends.
/// The first frame (SPEC §4): `id` is the connection's resume point (a ULID
/// of when its subscriptions were confirmed); `recovered` is None without
/// `since`.
pub fn connected(
    id: &str,
    connection_id: &str,
    user_id: &str,
    instance: &str,
    heartbeat_secs: u64,
    recovered: Option<bool>,
    replayed: usize,
) -> Utf8Bytes {
    frame(json!({
        "type": "CONNECTED",
        "id": id,
        "data": {
            "connection_id": connection_id,
            "user_id": user_id,
            "instance": instance,
            "heartbeat_secs": heartbeat_secs,
            "recovered": recovered,
            "replayed": replayed,
        }
    }))
}

pub fn pong(ts: Option<Value>) -> Utf8Bytes {
    let data = match ts {
        Some(ts) => json!({ "ts": ts }),
        None => json!({}),
    };
    frame(json!({ "type": "PONG", "data": data }))
}

/// 60 s before the token's `exp` (SPEC §5).
pub fn token_expiring(exp: u64) -> Utf8Bytes {
    frame(json!({ "type": "TOKEN_EXPIRING", "data": { "exp": exp } }))
}

pub fn auth_refreshed(exp: Option<u64>) -> Utf8Bytes {
    frame(json!({ "type": "AUTH_REFRESHED", "data": { "exp": exp } }))
}

pub fn subscribed(room: &str) -> Utf8Bytes {
    frame(json!({ "type": "SUBSCRIBED", "data": { "room": room } }))
}

pub fn unsubscribed(room: &str) -> Utf8Bytes {
    frame(json!({ "type": "UNSUBSCRIBED", "data": { "room": room } }))
}

pub fn error(code: &str, message: &str) -> Utf8Bytes {
    frame(json!({ "type": "ERROR", "data": { "code": code, "message": message } }))
}

fn frame(value: Value) -> Utf8Bytes {
    value.to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_validation() {
        let ok = |s: &str| validate_published(Bytes::from(s.to_string())).is_ok();
        assert!(ok(r#"{"type":"BUDGET_ALERT","data":{"x":1}}"#));
        assert!(ok(r#"  {"id":"1","type":"X","ts":5}"#));
        assert!(!ok(r#"{"type":5}"#));
        assert!(!ok(r#"{}"#));
        assert!(!ok(r#"["type"]"#));
        assert!(!ok("not json"));
        assert!(!ok(r#"{"type":"X"} trailing"#));
        let not_utf8 = Bytes::from_static(b"{\"type\":\"X\",\"data\":\"\xff\"}");
        assert!(
            validate_published(not_utf8).is_err(),
            "a text frame must be UTF-8"
        );
        let big = format!(
            r#"{{"type":"X","pad":"{}"}}"#,
            "a".repeat(MAX_PUBLISHED_BYTES)
        );
        assert_eq!(
            validate_published(Bytes::from(big)).unwrap_err(),
            Invalid::TooLarge
        );
    }

    #[test]
    fn published_bytes_are_kept() {
        let raw = r#"{"type":"X",  "data":{"b":2,"a":1}}"#;
        let p = validate_published(Bytes::from(raw)).unwrap();
        assert_eq!(p.payload(), raw.as_bytes());
        for pad in [300, 70_000] {
            let raw = format!(r#"{{"type":"X","pad":"{}"}}"#, "a".repeat(pad));
            let p = validate_published(Bytes::from(raw.clone())).unwrap();
            assert_eq!(p.payload(), raw.as_bytes(), "{pad}-byte pad");
        }
        assert_eq!(&p.frame[..2], &[0x81, raw.len() as u8]);
        assert_eq!(&p.frame[2..], raw.as_bytes());
        assert_eq!(p.id, None);
        let p = validate_published(Bytes::from(r#"{"type":"X","id":"01J","ts":5}"#)).unwrap();
        assert_eq!((p.id.as_deref(), p.ts), (Some("01J"), Some(5)));
    }

    #[test]
    fn frame_headers() {
        let header = |len: usize| text_frame(&vec![b' '; len])[..10.min(len)].to_vec();
        assert_eq!(header(5)[..2], [0x81, 5]);
        assert_eq!(header(300)[..4], [0x81, 126, 1, 44]);
        assert_eq!(
            header(70_000)[..10],
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(text_frame(&[b' '; 70_000]).len(), 70_010);
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_client(r#"{"type":"PING","ts":7}"#),
            Ok(ClientMessage::Ping { ts: Some(json!(7)) })
        );
        assert_eq!(
            parse_client(r#"{"type":"NOPE"}"#),
            Ok(ClientMessage::Unknown("NOPE".into()))
        );
        let long_ts = format!(
            r#"{{"type":"PING","ts":"{}"}}"#,
            "x".repeat(MAX_TS_BYTES + 1)
        );
        assert_eq!(parse_client(&long_ts).unwrap_err().code, "bad_request");
        let object_ts = r#"{"type":"PING","ts":{"a":[1,2,3]}}"#;
        assert_eq!(parse_client(object_ts).unwrap_err().code, "bad_request");
        assert_eq!(
            parse_client(r#"{"type":"PING","ts":"abc"}"#),
            Ok(ClientMessage::Ping {
                ts: Some(json!("abc"))
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"SUBSCRIBE","room":"team-7:a.b_c"}"#),
            Ok(ClientMessage::Subscribe {
                room: "team-7:a.b_c".into()
            })
        );
        for bad_room in [r#""""#, r#""a b""#, r#""x/y""#, "5"] {
            let text = format!(r#"{{"type":"UNSUBSCRIBE","room":{bad_room}}}"#);
            assert_eq!(
                parse_client(&text).unwrap_err().code,
                "bad_request",
                "{text}"
            );
        }
        let long_room = format!(r#"{{"type":"SUBSCRIBE","room":"{}"}}"#, "r".repeat(129));
        assert_eq!(parse_client(&long_room).unwrap_err().code, "bad_request");
        assert_eq!(
            parse_client(r#"{"type":"AUTH_REFRESH","token":"t"}"#),
            Ok(ClientMessage::AuthRefresh { token: "t".into() })
        );
        assert_eq!(
            parse_client(r#"{"type":"AUTH_REFRESH"}"#).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(parse_client("nope").unwrap_err().code, "bad_request");
        assert_eq!(
            parse_client(r#"{"type":1}"#).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(
            pong(Some(json!(7))).as_str(),
            r#"{"type":"PONG","data":{"ts":7}}"#
        );
    }
}
