//! Engine.IO v4 and Socket.IO v5 packets, as `socket.io-client` 4.x speaks
//! them over its websocket transport (SPEC §11). One WebSocket text frame
//! is one Engine.IO packet: a type digit, then its data; a Socket.IO packet
//! rides in an Engine.IO "message" (`4`) as a type digit, an optional ack
//! id, and JSON. Only the main namespace `/` exists here.
//!
//! A leaf: packets in, packets out, and the event frame of a published
//! message, built once per message for every Socket.IO recipient.

use crate::protocol::Published;
use serde_json::Value;
use std::collections::HashMap;

/// Engine.IO ping, sent by the server; the client answers [`Packet::Pong`].
pub const PING: &str = "2";
/// Socket.IO DISCONNECT of the main namespace, sent before a close.
pub const DISCONNECT: &str = "41";

/// Engine.IO's open packet: the session id and the heartbeat the client
/// will hold the server to.
pub fn open(sid: &str, ping_interval_ms: u64, ping_timeout_ms: u64, max_payload: usize) -> String {
    let open = serde_json::json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    });
    format!("0{open}")
}

/// CONNECT accepted. `pid` is the resume point; a client sets
/// `socket.recovered` exactly when it is the `pid` it sent.
pub fn connected(sid: &str, pid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid, "pid": pid }))
}

/// CONNECT refused, with a SPEC §4 code: final for the client.
pub fn connect_error(code: &str) -> String {
    format!("44{}", serde_json::json!({ "message": code }))
}

/// The answer to an event the client sent with ack id `id`.
pub fn ack(id: u64, value: &Value) -> String {
    format!("43{id}[{value}]")
}

/// An event the server emits itself (`token_expiring`), with the
/// connection's current offset as its trailing argument.
pub fn event(name: &str, payload: &Value, offset: &str) -> String {
    format!(
        "42[{},{payload},{}]",
        json_string(name),
        json_string(offset)
    )
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// What a client sent, by Engine.IO and Socket.IO packet type.
#[derive(Debug, PartialEq)]
pub enum Packet {
    /// Engine.IO pong: the answer to the server's ping.
    Pong,
    /// Engine.IO ping from the client (v3 clients); answered with a pong.
    Ping,
    /// Engine.IO close: the client is leaving.
    Close,
    /// Socket.IO CONNECT to the main namespace, with its auth payload
    /// (`Value::Null` when it has none).
    Connect(Value),
    /// Socket.IO DISCONNECT of the main namespace.
    Disconnect,
    /// Socket.IO EVENT: `ack` is the id to answer with, if any.
    Event {
        ack: Option<u64>,
        name: String,
        args: Vec<Value>,
    },
    /// Well formed, but nothing this server does: upgrade and noop
    /// packets, acks, binary packets, other namespaces.
    Ignored,
}

/// Why a frame is not a packet this server can read.
#[derive(Debug, PartialEq)]
pub struct Malformed(pub &'static str);

/// Parses one text frame from the client.
pub fn parse(text: &str) -> Result<Packet, Malformed> {
    let mut chars = text.chars();
    match chars.next() {
        Some('1') => Ok(Packet::Close),
        Some('2') => Ok(Packet::Ping),
        Some('3') => Ok(Packet::Pong),
        Some('5' | '6') => Ok(Packet::Ignored),
        Some('4') => parse_socketio(chars.as_str()),
        Some(_) => Err(Malformed("unknown Engine.IO packet type")),
        None => Err(Malformed("empty frame")),
    }
}

/// A Socket.IO packet: type, `/namespace,` (only `/` is served), ack id,
/// then JSON.
fn parse_socketio(packet: &str) -> Result<Packet, Malformed> {
    let Some(kind) = packet.chars().next() else {
        return Err(Malformed("empty Socket.IO packet"));
    };
    let mut rest = &packet[kind.len_utf8()..];
    if rest.starts_with('/') {
        let (namespace, after) = rest.split_once(',').unwrap_or((rest, ""));
        if namespace != "/" {
            return Ok(Packet::Ignored);
        }
        rest = after;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = match digits {
        0 => None,
        // More digits than a u64 holds is not an id.
        _ => Some(
            rest[..digits]
                .parse::<u64>()
                .map_err(|_| Malformed("ack id out of range"))?,
        ),
    };
    let json = &rest[digits..];
    match kind {
        '0' => {
            let auth = if json.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(json).map_err(|_| Malformed("CONNECT auth is not JSON"))?
            };
            if !(auth.is_object() || auth.is_null()) {
                return Err(Malformed("CONNECT auth is not an object"));
            }
            Ok(Packet::Connect(auth))
        }
        '1' => Ok(Packet::Disconnect),
        '2' => {
            let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(json) else {
                return Err(Malformed("EVENT is not a JSON array"));
            };
            if args.is_empty() {
                return Err(Malformed("EVENT without a name"));
            }
            let Value::String(name) = args.remove(0) else {
                return Err(Malformed("EVENT name is not a string"));
            };
            Ok(Packet::Event { ack, name, args })
        }
        '3' | '5' | '6' => Ok(Packet::Ignored),
        _ => Err(Malformed("unknown Socket.IO packet type")),
    }
}

/// How published messages become Socket.IO events on this instance
/// (`[socketio]`): the event name of each message type, and whether an
/// event carries the message's `data` or the whole message.
#[derive(Debug, Clone)]
pub struct Events {
    names: HashMap<Box<str>, Box<str>>,
    whole_message: bool,
}

impl Events {
    /// `names`: type → event name; `payload`: "data" or "message".
    pub fn new<'a>(
        names: impl IntoIterator<Item = (&'a String, &'a String)>,
        payload: &str,
    ) -> Self {
        Self {
            names: names
                .into_iter()
                .map(|(kind, name)| (kind.as_str().into(), name.as_str().into()))
                .collect(),
            whole_message: payload == "message",
        }
    }

    /// The event name of a message type: the table's, else the type itself.
    pub fn name<'a>(&'a self, kind: &'a str) -> &'a str {
        self.names.get(kind).map_or(kind, |name| name)
    }

    /// `42["<event>",<payload>,"<offset>"]` for `published`: the offset is
    /// its id, or `fallback` (the connection's last offset) when it has none.
    pub fn packet(&self, published: &Published, fallback: &str) -> String {
        let offset = published.id.as_deref().unwrap_or(fallback);
        self.packet_head(published) + &offset_tail(offset)
    }

    /// The packet up to its offset, `42["<event>",<payload>,`: the part of
    /// a message without an id that its recipients share.
    pub fn packet_head(&self, published: &Published) -> String {
        let payload = match published.data() {
            Some(data) if !self.whole_message => data,
            _ => published.payload(),
        };
        // Valid UTF-8: validated when published.
        let payload = std::str::from_utf8(payload).unwrap_or("null");
        format!("42[{},{payload},", json_string(self.name(published.kind())))
    }
}

/// The end of an event packet: the offset as a JSON string, and `]`.
pub fn offset_tail(offset: &str) -> String {
    json_string(offset) + "]"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_published;
    use bytes::Bytes;
    use serde_json::json;

    fn published(text: &str) -> Published {
        validate_published(Bytes::from(text.to_string())).unwrap()
    }

    #[test]
    fn an_event_is_its_head_and_its_offset_tail() {
        let published = published(r#"{"type":"X","data":{"a":1}}"#);
        let events = Events::new(std::iter::empty(), "data");
        let whole = events.packet(&published, "o\"1");
        assert_eq!(whole, r#"42["X",{"a":1},"o\"1"]"#);
        assert_eq!(events.packet_head(&published) + &offset_tail("o\"1"), whole);
    }

    #[test]
    fn the_server_packets_are_what_socket_io_client_reads() {
        assert_eq!(
            open("s1", 25_000, 20_000, 65536),
            r#"0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":65536}"#
        );
        assert_eq!(connected("s1", "p1"), r#"40{"sid":"s1","pid":"p1"}"#);
        assert_eq!(
            connect_error("invalid_token"),
            r#"44{"message":"invalid_token"}"#
        );
        assert_eq!(ack(7, &json!({"ok": true})), r#"437[{"ok":true}]"#);
        assert_eq!(
            event("token_expiring", &json!({"exp": 5}), "o\"1"),
            r#"42["token_expiring",{"exp":5},"o\"1"]"#
        );
    }

    #[test]
    fn client_packets() {
        assert_eq!(parse("3"), Ok(Packet::Pong));
        assert_eq!(parse("2"), Ok(Packet::Ping));
        assert_eq!(parse("1"), Ok(Packet::Close));
        assert_eq!(parse("40"), Ok(Packet::Connect(Value::Null)));
        assert_eq!(
            parse(r#"40{"token":"t","pid":"p","offset":"o"}"#),
            Ok(Packet::Connect(json!({"token":"t","pid":"p","offset":"o"})))
        );
        assert_eq!(
            parse(r#"40/,{"token":"t"}"#),
            Ok(Packet::Connect(json!({"token":"t"})))
        );
        assert_eq!(parse("41"), Ok(Packet::Disconnect));
        assert_eq!(
            parse(r#"4212["subscribe",{"room":"r"}]"#),
            Ok(Packet::Event {
                ack: Some(12),
                name: "subscribe".into(),
                args: vec![json!({"room":"r"})]
            })
        );
        assert_eq!(
            parse(r#"42["hello"]"#),
            Ok(Packet::Event {
                ack: None,
                name: "hello".into(),
                args: vec![]
            })
        );
        assert_eq!(parse(r#"42/admin,["x"]"#), Ok(Packet::Ignored));
        assert_eq!(parse("6"), Ok(Packet::Ignored));
        assert_eq!(
            parse(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Ok(Packet::Ignored)
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for bad in [
            "",
            "9",
            "4",
            "49",
            "42",
            "42[]",
            "42[1]",
            "42{}",
            "40[1]",
            "40{",
            "4299999999999999999999[\"x\"]",
            "4é",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn events_carry_data_under_the_mapped_name_and_the_id_as_offset() {
        let names = [(
            "BUDGET_ALERT".to_string(),
            "budget:threshold_exceeded".to_string(),
        )];
        let events = Events::new(names.iter().map(|(a, b)| (a, b)), "data");
        let m = published(r#"{"type":"BUDGET_ALERT","id":"m1","data":{"pct":90}}"#);
        assert_eq!(
            events.packet(&m, "p0"),
            r#"42["budget:threshold_exceeded",{"pct":90},"m1"]"#
        );
        // No data: the whole message; no id: the fallback offset; an
        // unmapped type: its own name.
        let m = published(r#"{"type":"PAYDAY"}"#);
        assert_eq!(
            events.packet(&m, "p0"),
            r#"42["PAYDAY",{"type":"PAYDAY"},"p0"]"#
        );
        let whole = Events::new(names.iter().map(|(a, b)| (a, b)), "message");
        let m = published(r#"{"type":"BUDGET_ALERT","id":"m2","data":[1]}"#);
        assert_eq!(
            whole.packet(&m, "p0"),
            r#"42["budget:threshold_exceeded",{"type":"BUDGET_ALERT","id":"m2","data":[1]},"m2"]"#
        );
    }
}
