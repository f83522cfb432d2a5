//! The WebSocket transport of a session (SPEC §4, §6): tungstenite over
//! the connection's [`Wire`], reading the client's frames, answering them
//! through [`Commands`], keeping the [`Heartbeat`], and closing with the
//! right code. Published messages do not pass through here: the fan-out
//! writes them to the wire directly.

use super::access::Access;
use super::commands::{Action, Commands, Verdict};
use super::deadlines::{Beat, Heartbeat};
use super::socketio;
use super::{End, Sessions};
use crate::protocol::{self, close};
use crate::wire::{CloseReason, Wire, WireStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<WireStream>;

/// How long a closing handshake may take before the socket is dropped. Long
/// enough for a stalled client that wakes up to still read its close code.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long a close may take while the client is still reading what is
/// queued ahead of its close frame (a slow consumer in the middle of a big
/// message, or a drain that writes what is queued): every [`CLOSE_GRACE`]
/// in which the queue shrank earns another, up to this.
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);
/// How long a refusal after the upgrade may take to write and close.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// How long a closed connection reads what its client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// tungstenite's buffers, sized for many mostly idle connections: its
/// defaults (128 KiB read buffer allocated up front, unbounded write
/// buffer) would cost gigabytes at 10k clients. It only writes control
/// frames and replies, straight into the wire (no buffering of its own).
fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The WebSocket over `wire`; `early` is what the client sent after its
/// upgrade request.
pub async fn open(wire: Arc<Wire>, early: Vec<u8>, max_message_bytes: usize) -> Ws {
    let stream = WireStream::new(wire);
    let config = Some(config(max_message_bytes));
    if early.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Server, config).await
    } else {
        WebSocketStream::from_partially_read(stream, early, Role::Server, config).await
    }
}

/// Queues a text frame; false when the client is gone.
pub async fn send(ws: &mut Ws, text: Utf8Bytes) -> bool {
    ws.feed(Message::Text(text)).await.is_ok()
}

/// The session loop: flushes what the fan-out could not write at once,
/// answers the client, keeps the heartbeat. Returns why it ended, after the
/// close handshake.
pub async fn serve(
    ws: &mut Ws,
    wire: &Wire,
    cfg: &Sessions,
    access: &mut Access,
    dialect: Dialect,
) -> End {
    let end = session_loop(ws, wire, cfg, access, dialect).await;
    // A client that goes away after the server closed its wire (a slow
    // consumer, a drain) ends for the server's reason, not its own.
    match (end, wire.closed()) {
        (End::ClientGone, Some(CloseReason::SlowConsumer)) => End::SlowConsumer,
        (End::ClientGone, Some(CloseReason::Shutdown)) => End::Shutdown,
        (end, _) => end,
    }
}

/// What the client and the server say over the WebSocket: `/ws`'s JSON
/// messages (SPEC §5), or Socket.IO's packets (SPEC §11). The rest of a
/// session (the wire, the heartbeat, the deadlines, the close) is the same.
#[derive(Clone, Copy, PartialEq)]
pub enum Dialect {
    Plain,
    SocketIo,
}

async fn session_loop(
    ws: &mut Ws,
    wire: &Wire,
    cfg: &Sessions,
    access: &mut Access,
    dialect: Dialect,
) -> End {
    // Socket.IO's heartbeat is its own ping: no pong within pingTimeout of
    // it closes the connection.
    let idle = match dialect {
        Dialect::Plain => cfg.idle_timeout,
        Dialect::SocketIo => cfg.ping_interval + socketio::PING_TIMEOUT,
    };
    let mut heartbeat = Heartbeat::new(cfg.ping_interval, idle);
    heartbeat.expire_at(access.who.exp, cfg.leeway);
    // One timer for the ping, the idle and the token deadlines: fewer
    // timers to poll on every wake-up, and none to reset on every client
    // frame.
    let timer = tokio::time::sleep_until(heartbeat.next_deadline());
    tokio::pin!(timer);
    let mut commands = Commands::new(cfg.client_messages_per_sec);

    loop {
        match wire.closed() {
            Some(CloseReason::SlowConsumer) => return close_for(ws, End::SlowConsumer).await,
            // The close frame goes after everything queued.
            Some(CloseReason::Shutdown) => return close_for(ws, End::Shutdown).await,
            None => {}
        }
        let flushing = wire.has_pending();
        tokio::select! {
            flushed = wire.flush(), if flushing => {
                if flushed.is_err() {
                    return End::ClientGone;
                }
            }
            () = wire.changed() => {}
            incoming = ws.next() => {
                // Socket.IO's client is heard by its pongs only (SPEC §11:
                // an unanswered ping closes it, whatever else it sends).
                if matches!(dialect, Dialect::Plain) {
                    heartbeat.heard_from_client();
                }
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: their state would otherwise sit in every
                        // idle session's future.
                        let handled = match dialect {
                            Dialect::Plain => Box::pin(plain_text(ws, &text, access, cfg, &mut heartbeat, &mut commands)).await,
                            Dialect::SocketIo => Box::pin(socketio::text(ws, &text, access, cfg, &mut heartbeat, &mut commands)).await,
                        };
                        if let Some(end) = handled {
                            return end;
                        }
                        timer.as_mut().reset(heartbeat.next_deadline());
                    }
                    Some(Ok(Message::Binary(_))) => return close_for(ws, End::BinaryFrame).await,
                    // Pings are answered by tungstenite on the next read.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite queued the reply; flush it and finish.
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                        return End::ClientClosed(frame.map(|f| f.code.into()));
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return close_for(ws, End::MessageTooBig).await;
                    }
                    Some(Err(WsError::Utf8(_))) => return close_for(ws, End::InvalidUtf8).await,
                    Some(Err(WsError::Protocol(_))) => return close_for(ws, End::ProtocolError).await,
                    Some(Err(_)) | None => return End::ClientGone,
                }
            }
            () = &mut timer => {
                match heartbeat.due(tokio::time::Instant::now()) {
                    Some(Beat::Idle) => return close_for(ws, End::IdleTimeout).await,
                    Some(Beat::Expired) if dialect == Dialect::SocketIo => {
                        return socketio::close_final(ws, End::TokenExpired).await;
                    }
                    Some(Beat::Expired) => return close_for(ws, End::TokenExpired).await,
                    Some(Beat::Expiring(exp)) if !send(ws, token_expiring(dialect, wire, exp)).await => {
                        return End::ClientGone;
                    }
                    Some(Beat::Ping) if ws.feed(ping(dialect)).await.is_err() => {
                        return End::ClientGone;
                    }
                    Some(Beat::Ping | Beat::Expiring(_)) | None => {}
                }
                timer.as_mut().reset(heartbeat.next_deadline());
            }
        }
    }
}

/// The heartbeat's ping: a WebSocket Ping, or Engine.IO's.
fn ping(dialect: Dialect) -> Message {
    match dialect {
        Dialect::Plain => Message::Ping(Default::default()),
        Dialect::SocketIo => Message::Text(crate::engineio::PING.into()),
    }
}

/// TOKEN_EXPIRING, or Socket.IO's `token_expiring` event.
fn token_expiring(dialect: Dialect, wire: &Wire, exp: u64) -> Utf8Bytes {
    match dialect {
        Dialect::Plain => protocol::token_expiring(exp),
        Dialect::SocketIo => socketio::token_expiring(wire, exp),
    }
}

/// A `/ws` text message: answered, carried out, or the end for abuse.
async fn plain_text(
    ws: &mut Ws,
    text: &str,
    access: &mut Access,
    cfg: &Sessions,
    heartbeat: &mut Heartbeat,
    commands: &mut Commands,
) -> Option<End> {
    match commands.handle(text, cfg.hub.stats()) {
        Verdict::Abuse => Some(close_for(ws, End::Abuse).await),
        // Queued in the wire; the loop flushes it.
        Verdict::Reply(reply) => (!send(ws, reply).await).then_some(End::ClientGone),
        Verdict::Act(action) => act(ws, action, access, cfg, heartbeat, commands).await,
    }
}

/// Carries out a command that changes what the connection is or receives,
/// and sends its answer; `Some` when that ends the session.
async fn act(
    ws: &mut Ws,
    action: Action,
    access: &mut Access,
    cfg: &Sessions,
    heartbeat: &mut Heartbeat,
    commands: &mut Commands,
) -> Option<End> {
    let frames = match action {
        Action::Refresh { token } => match access.refresh(&token, cfg).await {
            Ok(refreshed) => {
                heartbeat.expire_at(access.who.exp, cfg.leeway);
                let left = refreshed
                    .left_rooms
                    .iter()
                    .map(|room| protocol::unsubscribed(room));
                left.chain([protocol::auth_refreshed(refreshed.exp)])
                    .collect()
            }
            Err(refusal) => {
                send(ws, protocol::error(refusal.code, &refusal.message)).await;
                return Some(close_for(ws, End::RefreshRefused).await);
            }
        },
        Action::Subscribe { room } => match access.subscribe(&room, cfg).await {
            Ok(()) => vec![protocol::subscribed(&room)],
            Err(refusal) => {
                let error = protocol::error(refusal.code, &refusal.message);
                if commands.refused() {
                    send(ws, error).await;
                    return Some(close_for(ws, End::Abuse).await);
                }
                vec![error]
            }
        },
        Action::Unsubscribe { room } => {
            access.unsubscribe(&room, cfg);
            vec![protocol::unsubscribed(&room)]
        }
    };
    for frame in frames {
        if !send(ws, frame).await {
            return Some(End::ClientGone);
        }
    }
    None
}

/// Sends an ERROR frame and closes: a refusal after the upgrade (SPEC §4).
/// Cheap: a client without credentials holds its capacity slot for at most
/// [`REFUSAL_GRACE`] (twice, with the linger), however it behaves.
pub async fn refuse(ws: Ws, code: &'static str, message: &str, close_code: u16) {
    refuse_with(ws, Some(protocol::error(code, message)), code, close_code).await
}

/// A refusal that is only the close (Socket.IO's per-user cap: its client
/// reconnects after a close, not after a CONNECT error).
pub async fn refuse_silently(ws: Ws, reason: &'static str, close_code: u16) {
    refuse_with(ws, None, reason, close_code).await
}

/// A refusal: `text` first, if any, then the close with `close_code`.
pub(super) async fn refuse_with(
    ws: Ws,
    text: Option<Utf8Bytes>,
    reason: &'static str,
    close_code: u16,
) {
    // Boxed, like `close_for`: rare, and big.
    Box::pin(refuse_now(ws, text, reason, close_code)).await
}

async fn refuse_now(mut ws: Ws, text: Option<Utf8Bytes>, reason: &str, close_code: u16) {
    let refusal = async {
        let sent = match text {
            Some(text) => ws.send(Message::Text(text)).await.is_ok(),
            None => true,
        };
        if sent {
            close_with(&mut ws, close_code, reason, REFUSAL_GRACE, REFUSAL_GRACE).await;
        }
    };
    let _ = tokio::time::timeout(REFUSAL_GRACE, refusal).await;
    ws.get_ref().wire().linger(REFUSAL_GRACE).await;
}

/// Closes with `end`'s code and reason: the session's end.
pub(super) async fn close_for(ws: &mut Ws, end: End) -> End {
    // Boxed: the close handshake and the linger are big futures, and the
    // session's future would otherwise carry room for them all its life.
    Box::pin(close_now(ws, end)).await
}

async fn close_now(ws: &mut Ws, end: End) -> End {
    // Every end the server closes for has a code.
    let code = end.code().unwrap_or(close::GOING_AWAY);
    close_with(ws, code, end.reason(), CLOSE_GRACE, CLOSE_PATIENCE).await;
    ws.get_ref().wire().linger(LINGER).await;
    end
}

/// Starts the closing handshake with `code` and waits for the client's
/// reply, so the client reads the code before the socket goes: for `grace`,
/// and again while the client reads what is queued ahead of the close
/// frame, up to `patience` in all.
async fn close_with(ws: &mut Ws, code: u16, reason: &str, grace: Duration, patience: Duration) {
    let frame = CloseFrame {
        code: protocol::close_code(code),
        reason: reason.into(),
    };
    let wire = ws.get_ref().wire().clone();
    let handshake = async {
        ws.close(Some(frame)).await?;
        while ws.next().await.is_some() {}
        Ok::<(), WsError>(())
    };
    tokio::pin!(handshake);
    let give_up = tokio::time::Instant::now() + patience;
    let mut pending = wire.pending_bytes();
    loop {
        let deadline = give_up.min(tokio::time::Instant::now() + grace);
        if tokio::time::timeout_at(deadline, &mut handshake)
            .await
            .is_ok()
        {
            return;
        }
        let now_pending = wire.pending_bytes();
        if now_pending == 0 || now_pending >= pending || deadline >= give_up {
            return;
        }
        pending = now_pending;
    }
}
