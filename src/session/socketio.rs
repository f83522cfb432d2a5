//! Socket.IO over the session's WebSocket (SPEC §11): what a
//! `socket.io-client` sends once connected, and the events the server
//! emits itself. The connect handshake is in [`super::run_socketio`]; the
//! loop, the heartbeat and the close are the WebSocket transport's
//! ([`super::websocket::serve`] with its Socket.IO dialect).

use super::access::Access;
use super::commands::{Action, Commands};
use super::deadlines::Heartbeat;
use super::websocket::{self, close_for, send, Ws};
use super::{End, Sessions};
use crate::engineio::{self, Malformed, Packet};
use crate::wire::Wire;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How long a client may take to answer a ping (the open packet's
/// `pingTimeout`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client has, after the open packet, to send its CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The auth payload of the client's CONNECT (`Value::Null` without one),
/// within [`CONNECT_WAIT`]; `None` when the client sent something else or
/// nothing, or left.
pub async fn connect_packet(ws: &mut Ws) -> Option<Value> {
    let wait = async {
        // Bounded: a client may send a few pongs or noops first.
        for _ in 0..16 {
            match ws.next().await? {
                Ok(Message::Text(text)) => match engineio::parse(&text) {
                    Ok(Packet::Connect(auth)) => return Some(auth),
                    Ok(Packet::Pong | Packet::Ignored) => {}
                    _ => return None,
                },
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                _ => return None,
            }
        }
        None
    };
    tokio::time::timeout(CONNECT_WAIT, wait)
        .await
        .ok()
        .flatten()
}

/// A refused CONNECT: `44` with the SPEC §4 code (final for the client),
/// then the close.
pub async fn refuse(ws: Ws, code: &'static str, close_code: u16) {
    let text = engineio::connect_error(code).into();
    websocket::refuse_with(ws, Some(text), code, close_code).await
}

/// `token_expiring`, with the connection's current offset.
pub fn token_expiring(wire: &Wire, exp: u64) -> Utf8Bytes {
    let offset = wire.offset().unwrap_or_default();
    engineio::event("token_expiring", &json!({ "exp": exp }), &offset).into()
}

/// One text frame from a connected client; `Some` when it ends the session.
pub async fn text(
    ws: &mut Ws,
    text: &str,
    access: &mut Access,
    cfg: &Sessions,
    heartbeat: &mut Heartbeat,
    commands: &mut Commands,
) -> Option<End> {
    match engineio::parse(text) {
        Ok(Packet::Pong) => {
            heartbeat.heard_from_client();
            None
        }
        Ok(Packet::Ignored | Packet::Connect(_)) => None,
        // An Engine.IO v3-style client ping: answered.
        Ok(Packet::Ping) => (!send(ws, "3".into()).await).then_some(End::ClientGone),
        Ok(Packet::Close | Packet::Disconnect) => {
            Some(close_for(ws, End::ClientClosed(Some(1000))).await)
        }
        Ok(Packet::Event { ack, name, args }) => {
            let answer = event(ws, &name, &args, access, cfg, heartbeat, commands).await;
            let (value, end) = match answer {
                Answer::Nothing => return None,
                Answer::End(end) => return Some(end),
                Answer::Ack(value) => (value, None),
                Answer::Final(value, end) => (value, Some(end)),
            };
            if let Some(id) = ack {
                if !send(ws, engineio::ack(id, &value).into()).await {
                    return Some(End::ClientGone);
                }
            }
            match end {
                Some(end) => Some(close_final(ws, end).await),
                None => None,
            }
        }
        Err(Malformed(why)) => {
            tracing::debug!(why, "malformed Socket.IO packet");
            cfg.hub.stats().client_messages.add("invalid", 1);
            if commands.refused() {
                return Some(close_for(ws, End::Abuse).await);
            }
            None
        }
    }
}

enum Answer {
    /// For the event's ack, if it asked for one.
    Ack(Value),
    /// The ack, then the end, final for the client ([`close_final`]).
    Final(Value, End),
    /// An event this server does not handle.
    Nothing,
    End(End),
}

/// `subscribe`, `unsubscribe` and `auth_refresh`, as SPEC §5's commands,
/// answered `{"ok":true}` or `{"error":"<code>"}`.
async fn event(
    ws: &mut Ws,
    name: &str,
    args: &[Value],
    access: &mut Access,
    cfg: &Sessions,
    heartbeat: &mut Heartbeat,
    commands: &mut Commands,
) -> Answer {
    let action = match commands.socketio_event(name, args, cfg.hub.stats()) {
        Ok(Some(action)) => action,
        Ok(None) => return Answer::Nothing,
        Err((_, true)) => return Answer::End(close_for(ws, End::Abuse).await),
        Err((code, false)) => return Answer::Ack(json!({ "error": code })),
    };
    match action {
        Action::Refresh { token } => match access.refresh(&token, cfg).await {
            Ok(refreshed) => {
                heartbeat.expire_at(access.who.exp, cfg.leeway);
                Answer::Ack(json!({
                    "ok": true,
                    "exp": refreshed.exp,
                    "unsubscribed": refreshed.left_rooms,
                }))
            }
            // Final: the client must not reconnect with this token.
            Err(refusal) => Answer::Final(json!({ "error": refusal.code }), End::RefreshRefused),
        },
        Action::Subscribe { room } => match access.subscribe(&room, cfg).await {
            Ok(()) => Answer::Ack(json!({ "ok": true })),
            Err(_) if commands.refused() => Answer::End(close_for(ws, End::Abuse).await),
            Err(refusal) => Answer::Ack(json!({ "error": refusal.code })),
        },
        Action::Unsubscribe { room } => {
            access.unsubscribe(&room, cfg);
            Answer::Ack(json!({ "ok": true }))
        }
    }
}

/// Ends the session for a reason the client must not retry with the same
/// token (an expired one): Socket.IO's DISCONNECT first, so that the
/// client does not reconnect by itself, then the close.
pub async fn close_final(ws: &mut Ws, end: End) -> End {
    send(ws, engineio::DISCONNECT.into()).await;
    close_for(ws, end).await
}
