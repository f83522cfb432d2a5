//! One client's session, from the upgraded socket to the close: the
//! handshake's verdict, registration with the hub, resume, CONNECTED, then
//! the transport's loop. The session stands apart from its transport:
//! [`websocket`] is today's (Socket.IO and SSE come next, SPEC §11, §12);
//! client commands live in [`commands`], deadlines (heartbeat, token
//! expiry) in [`deadlines`], and what the connection may receive and has
//! joined (identity, roles, rooms; refresh and subscribe) in [`access`].

mod access;
mod commands;
mod deadlines;
mod socketio;
pub mod sse;
mod websocket;

use crate::auth::{AuthError, Identity, Verifier};
use crate::broker::Broker;
use crate::engineio;
use crate::hub::{Hub, Refused};
use crate::logsafe::Escaped;
use crate::metrics::Transport;
use crate::protocol::{self, close};
use crate::resume::{self, Horizon, Point, Replay};
use crate::wire::{Encoding, Limits, Wire};
use access::Access;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use websocket::Dialect;

/// How long a new connection (or a room) waits for its channels to be
/// subscribed before it is told CONNECTED (SUBSCRIBED) anyway: the broker
/// may be reconnecting.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// What every session of the instance shares: the hub, the broker (for
/// history reads), and the per-connection settings.
pub struct Sessions {
    pub hub: Hub,
    pub broker: Arc<dyn Broker>,
    pub instance: Arc<str>,
    /// How long a history list lives (`redis.history_ttl_secs`).
    pub history_ttl: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// What a connection's queue holds before it is a slow consumer.
    pub send_queue: Limits,
    pub max_message_bytes: usize,
    /// Client messages per second (burst twice that); 0 = unlimited.
    pub client_messages_per_sec: u32,
    /// Checks the tokens of AUTH_REFRESH.
    pub verifier: Arc<Verifier>,
    /// How long after `exp` a connection without a refresh is closed.
    pub leeway: Duration,
    pub max_rooms: usize,
    /// How messages become Socket.IO events (`[socketio]`).
    pub socketio_events: Arc<crate::engineio::Events>,
    /// Refusals are logged at most once a second per reason, here as in
    /// the HTTP layer (the same limit).
    pub refusal_log: Arc<crate::log_limit::LogLimit<&'static str>>,
}

/// Why a session ended: the close log line's `reason` and `code`, and
/// `connections_closed_total{reason}` (SPEC §6, §8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum End {
    /// The client started the closing handshake, with this code.
    ClientClosed(Option<u16>),
    /// The socket failed or ended without a closing handshake.
    ClientGone,
    SlowConsumer,
    Shutdown,
    IdleTimeout,
    MessageTooBig,
    BinaryFrame,
    InvalidUtf8,
    ProtocolError,
    Abuse,
    /// The token expired (plus leeway) without a refresh.
    TokenExpired,
    /// AUTH_REFRESH with an invalid token or another user's.
    RefreshRefused,
}

impl End {
    /// In the words of [`metrics::CLOSE_REASONS`].
    pub fn reason(self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_closed",
            End::ClientGone => "client_gone",
            End::SlowConsumer => "slow_consumer",
            End::Shutdown => "shutdown",
            End::IdleTimeout => "idle_timeout",
            End::MessageTooBig => "message_too_big",
            End::BinaryFrame => "binary_frame",
            End::InvalidUtf8 => "invalid_utf8",
            End::ProtocolError => "protocol_error",
            End::Abuse => "abuse",
            End::TokenExpired => "token_expired",
            End::RefreshRefused => "refresh_refused",
        }
    }

    /// The close code of the closing handshake, if there was one.
    pub fn code(self) -> Option<u16> {
        match self {
            End::ClientClosed(code) => code,
            End::ClientGone => None,
            End::SlowConsumer => Some(close::SLOW_CONSUMER),
            End::Shutdown | End::IdleTimeout => Some(close::GOING_AWAY),
            End::MessageTooBig => Some(close::MESSAGE_TOO_BIG),
            End::BinaryFrame => Some(close::UNSUPPORTED_DATA),
            End::InvalidUtf8 => Some(close::INVALID_UTF8),
            End::ProtocolError => Some(close::PROTOCOL_ERROR),
            End::Abuse => Some(close::POLICY_VIOLATION),
            End::TokenExpired | End::RefreshRefused => Some(close::INVALID_TOKEN),
        }
    }
}

/// Runs one client connection to its end: `socket` is the upgraded TCP
/// connection, `early` whatever the client sent after its upgrade request,
/// `since` the last message id the client saw, for a resume.
pub async fn run(
    socket: TcpStream,
    early: Vec<u8>,
    auth: Result<Identity, AuthError>,
    since: Option<String>,
    sessions: Arc<Sessions>,
    ip: IpAddr,
) {
    let hub = &sessions.hub;
    let stats = hub.stats();
    let wire = Wire::new(socket, sessions.send_queue, Encoding::Plain, stats.clone());
    let mut ws = websocket::open(wire.clone(), early, sessions.max_message_bytes).await;
    let who = match auth {
        Ok(who) => who,
        Err(e) => {
            sessions.refused(e.code(), None, ip);
            websocket::refuse(ws, e.code(), e.message(), close::INVALID_TOKEN).await;
            return;
        }
    };
    let user = Escaped(&who.user_id).to_string();
    let mut registration = match hub.register(&who, wire.clone(), Transport::WebSocket) {
        Ok(r) => r,
        Err(Refused::TooManyConnections) => {
            sessions.refused("too_many_connections", Some(&user), ip);
            let message = "this user has too many open connections";
            websocket::refuse(
                ws,
                "too_many_connections",
                message,
                close::TOO_MANY_CONNECTIONS,
            )
            .await;
            return;
        }
    };
    // Subscribed before the history is read: see `resume`. Live messages
    // are held by the wire until CONNECTED and the replay are out.
    subscribed(&mut registration, &user).await;
    // The client's resume point until its first message (SPEC §4).
    let resume_point = ulid::Ulid::new().to_string();
    let Ok(replay) = sessions
        .replay_since(&who.user_id, since.as_deref(), &user, ip)
        .await
    else {
        drop(registration);
        let (code, message) = (HISTORY_UNAVAILABLE, HISTORY_UNAVAILABLE_MESSAGE);
        websocket::refuse(ws, code, message, close::TRY_AGAIN_LATER).await;
        return;
    };
    let connection_id = registration.id.to_string();
    let started = Instant::now();
    opened(
        &user,
        &connection_id,
        ip,
        Transport::WebSocket,
        replay.as_ref(),
    );

    let hello = protocol::connected(
        &resume_point,
        &connection_id,
        &who.user_id,
        &sessions.instance,
        sessions.ping_interval.as_secs(),
        replay.as_ref().map(|r| r.recovered),
        replay.as_ref().map_or(0, |r| r.messages.len()),
    );
    let end = if websocket::send(&mut ws, hello).await {
        replay_then_release(&wire, replay);
        let mut access = Access::new(who, registration);
        websocket::serve(&mut ws, &wire, &sessions, &mut access, Dialect::Plain).await
    } else {
        drop(registration);
        End::ClientGone
    };
    closed(&sessions, &user, &connection_id, started, end);
}

/// Runs one Socket.IO client (SPEC §11) to its end: Engine.IO's open
/// packet, then the CONNECT with the token (or `query_token`) and the
/// client's `pid`/`offset` to resume from, then the session.
pub async fn run_socketio(
    socket: TcpStream,
    early: Vec<u8>,
    query_token: Option<String>,
    sessions: Arc<Sessions>,
    ip: IpAddr,
) {
    let hub = &sessions.hub;
    let stats = hub.stats();
    // The resume point if nothing is recovered (SPEC §4, §11).
    let fresh_pid = ulid::Ulid::new().to_string();
    let encoding = Encoding::SocketIo {
        events: sessions.socketio_events.clone(),
        offset: fresh_pid.as_str().into(),
        tail: None,
    };
    let wire = Wire::new(socket, sessions.send_queue, encoding, stats.clone());
    let mut ws = websocket::open(wire.clone(), early, sessions.max_message_bytes).await;
    let sid = ulid::Ulid::new().to_string();
    let ping_ms = u64::try_from(sessions.ping_interval.as_millis()).unwrap_or(u64::MAX);
    let timeout_ms = socketio::PING_TIMEOUT.as_millis() as u64;
    let open = engineio::open(&sid, ping_ms, timeout_ms, sessions.max_message_bytes);
    if !websocket::send(&mut ws, open.into()).await {
        return;
    }
    let Some(auth) = socketio::connect_packet(&mut ws).await else {
        return;
    };
    // Only these stay: the packet (and its token) is not kept for the
    // connection's life.
    let field = |key: &str| {
        auth.get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (client_pid, offset) = (field("pid"), field("offset"));
    let verified = sessions
        .verifier
        .verify(&field("token").or(query_token).unwrap_or_default());
    drop(auth);
    let who = match verified {
        Ok(who) => who,
        Err(e) => {
            sessions.refused(e.code(), None, ip);
            socketio::refuse(ws, e.code(), close::INVALID_TOKEN).await;
            return;
        }
    };
    let user = Escaped(&who.user_id).to_string();
    let mut registration = match hub.register(&who, wire.clone(), Transport::SocketIo) {
        Ok(r) => r,
        Err(Refused::TooManyConnections) => {
            sessions.refused("too_many_connections", Some(&user), ip);
            // No 44: that is final for the client; a close lets it retry.
            let reason = "too_many_connections";
            websocket::refuse_silently(ws, reason, close::TOO_MANY_CONNECTIONS).await;
            return;
        }
    };
    subscribed(&mut registration, &user).await;
    // The client's offset is the last event's; without one, its resume
    // point (SPEC §11).
    let since = offset.as_deref().or(client_pid.as_deref());
    let Ok(replay) = sessions.replay_since(&who.user_id, since, &user, ip).await else {
        drop(registration);
        // No 44: the client reconnects by itself, with the same pid and offset.
        websocket::refuse_silently(ws, HISTORY_UNAVAILABLE, close::TRY_AGAIN_LATER).await;
        return;
    };
    let recovered = replay.as_ref().is_some_and(|r| r.recovered);
    // `socket.recovered` is true exactly when the reply echoes the pid the
    // client sent: only when nothing was lost.
    let pid = match client_pid {
        Some(pid) if recovered => pid,
        _ => fresh_pid,
    };
    drop(offset);
    wire.set_offset(&pid);
    let connection_id = registration.id.to_string();
    let started = Instant::now();
    opened(
        &user,
        &connection_id,
        ip,
        Transport::SocketIo,
        replay.as_ref(),
    );
    let end = if websocket::send(&mut ws, engineio::connected(&sid, &pid).into()).await {
        replay_then_release(&wire, replay);
        let mut access = Access::new(who, registration);
        websocket::serve(&mut ws, &wire, &sessions, &mut access, Dialect::SocketIo).await
    } else {
        drop(registration);
        End::ClientGone
    };
    closed(&sessions, &user, &connection_id, started, end);
}

/// Waits (bounded) for the broker to confirm a new connection's channels.
async fn subscribed(registration: &mut crate::hub::Registration, user: &str) {
    if let Some(ready) = registration.ready.take() {
        if tokio::time::timeout(SUBSCRIBE_WAIT, ready).await.is_err() {
            tracing::warn!(user = %user, "subscription not confirmed in time; connecting anyway");
        }
    }
}

/// The refusal of a resume whose history cannot be read now (SPEC §4's
/// recovery, with Redis unreachable): each transport tells its client to
/// come back, which then resumes from the same point.
pub(crate) const HISTORY_UNAVAILABLE: &str = "history_unavailable";
const HISTORY_UNAVAILABLE_MESSAGE: &str =
    "the message history cannot be read right now; reconnect with the same resume point";

/// The history could not be read (see [`Sessions::replay`]).
pub(crate) struct HistoryUnavailable;

/// Logs a session's start (its transport, and whether its resume was
/// recovered).
fn opened(
    user: &str,
    connection_id: &str,
    ip: IpAddr,
    transport: Transport,
    replay: Option<&Replay>,
) {
    tracing::info!(
        user = %user,
        connection = %connection_id,
        %ip,
        transport = transport.label(),
        recovered = replay.map(|r| r.recovered),
        "connection opened"
    );
}

/// Sends the replay, then lets the live messages the wire held meanwhile
/// follow (minus the replay's duplicates).
fn replay_then_release(wire: &Wire, replay: Option<Replay>) {
    let replayed = replay.map(|r| r.messages).unwrap_or_default();
    for message in &replayed {
        wire.send_replayed(message);
    }
    let stats = wire.stats();
    stats
        .replayed_messages
        .fetch_add(replayed.len() as u64, Relaxed);
    wire.release(&replayed);
}

/// Counts and logs a session's end.
fn closed(sessions: &Sessions, user: &str, connection_id: &str, started: Instant, end: End) {
    sessions.hub.stats().connections_closed.add(end.reason(), 1);
    tracing::info!(
        user = %user,
        connection = %connection_id,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = %end.reason(),
        code = end.code(),
        "connection closed"
    );
}

impl Sessions {
    /// Counts a refusal after the request was read, and logs it (reason,
    /// IP) at most once a second per reason, with the count suppressed.
    fn refused(&self, reason: &'static str, user: Option<&str>, ip: IpAddr) {
        self.hub.stats().handshake_rejections.add(reason, 1);
        if let Some(suppressed) = self.refusal_log.check(reason) {
            let user = user.map(tracing::field::display);
            tracing::info!(reason, user, %ip, suppressed, "handshake refused");
        }
    }

    /// What to replay to `user_id` after `since`. A failed history read is
    /// not "not recovered": the messages are safe in Redis, so the caller
    /// refuses the connection for a retry ([`HISTORY_UNAVAILABLE`]).
    async fn replay(&self, user_id: &str, since: &str) -> Result<Replay, HistoryUnavailable> {
        let key = self.hub.names().history_key(user_id);
        let horizon = Horizon {
            now_ms: crate::publish::unix_millis(),
            ttl_ms: u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        match self.broker.history(&key).await {
            Ok(entries) => Ok(resume::replay(
                &resume::parse(entries),
                &Point::since(since),
                horizon,
            )),
            Err(e) => {
                tracing::warn!(error = %e, user = %user_id, "history read failed; resume refused for a retry");
                Err(HistoryUnavailable)
            }
        }
    }

    /// [`Sessions::replay`] for an optional `since`; a failed read is
    /// counted and logged as the refusal [`HISTORY_UNAVAILABLE`].
    async fn replay_since(
        &self,
        user_id: &str,
        since: Option<&str>,
        user: &str,
        ip: IpAddr,
    ) -> Result<Option<Replay>, HistoryUnavailable> {
        let Some(since) = since else {
            return Ok(None);
        };
        let replay = self.replay(user_id, since).await;
        if replay.is_err() {
            self.refused(HISTORY_UNAVAILABLE, Some(user), ip);
        }
        replay.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;

    #[test]
    fn every_end_is_a_counted_close_reason() {
        let ends = [
            End::ClientClosed(Some(1000)),
            End::ClientGone,
            End::SlowConsumer,
            End::Shutdown,
            End::IdleTimeout,
            End::MessageTooBig,
            End::BinaryFrame,
            End::InvalidUtf8,
            End::ProtocolError,
            End::Abuse,
            End::TokenExpired,
            End::RefreshRefused,
        ];
        let reasons: Vec<&str> = ends.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons, metrics::CLOSE_REASONS);
    }
}
