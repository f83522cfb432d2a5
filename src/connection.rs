//! One client connection, from the upgraded socket to the close.
//!
//! Published messages do not pass through this task: the fan-out writes
//! them to the connection's [`Wire`] directly. The task (one per
//! connection, lighter than split reader/writer tasks) `select!`s over: the
//! wire's queue when the socket was full (flushed in batches), the client's
//! frames, and one heartbeat timer; and it closes the connection when the
//! wire says so (slow consumer 4008, shutdown 1001).

use crate::auth::{AuthError, Identity};
use crate::broker::Broker;
use crate::hub::{Hub, Refused};
use crate::protocol::{self, close, ClientMessage};
use crate::resume::{self, Dedupe, Horizon, Point, Replay, DEDUPE_WINDOW};
use crate::wire::{CloseReason, Wire, WireStream};
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<WireStream>;

/// How long a closing handshake may take before the socket is dropped. Long
/// enough for a stalled client that wakes up to still read its close code.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long a new connection waits for its channels to be subscribed before
/// it is told CONNECTED anyway (the broker may be reconnecting).
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
    pub send_queue: usize,
    pub max_message_bytes: usize,
    /// Client messages per second (burst twice that); 0 = unlimited.
    pub client_messages_per_sec: u32,
}

impl Sessions {
    /// tungstenite's buffers, sized for many mostly idle connections: its
    /// defaults (128 KiB read buffer allocated up front, unbounded write
    /// buffer) would cost gigabytes at 10k clients. It only writes control
    /// frames and replies, straight into the wire (no buffering of its own).
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// Refused client messages in a row (rate-limited or invalid) after which
/// the connection is closed with 1008.
const MAX_STRIKES: u32 = 10;

/// A token bucket for the client's own messages: `rate` per second, bursts
/// of twice that. Two numbers per connection; no shared state.
struct ClientBudget {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl ClientBudget {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            tokens: 2.0 * rate,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one message from the budget; false when it is spent.
    fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a session ended, for the close log line.
#[derive(Debug, Clone, Copy)]
enum End {
    ClientClosed,
    ClientGone,
    SlowConsumer,
    Shutdown,
    IdleTimeout,
    MessageTooBig,
    BinaryFrame,
    ProtocolError,
    Abuse,
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
    let wire = Wire::new(socket, sessions.send_queue, sessions.hub.stats().clone());
    let stream = WireStream::new(wire.clone());
    let config = Some(sessions.websocket_config());
    let mut ws = if early.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Server, config).await
    } else {
        WebSocketStream::from_partially_read(stream, early, Role::Server, config).await
    };
    let who = match auth {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(reason = e.code(), detail = e.message(), %ip, "handshake refused");
            refuse(ws, e.code(), e.message(), close::INVALID_TOKEN).await;
            return;
        }
    };
    let hub = &sessions.hub;
    let mut registration = match hub.register(&who, wire.clone()) {
        Ok(r) => r,
        Err(Refused::TooManyConnections) => {
            tracing::info!(reason = "too_many_connections", user = %who.user_id, %ip, "handshake refused");
            let message = "this user has too many open connections";
            refuse(
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
    if tokio::time::timeout(SUBSCRIBE_WAIT, &mut registration.ready)
        .await
        .is_err()
    {
        tracing::warn!(user = %who.user_id, "subscription not confirmed in time; connecting anyway");
    }
    // The client's resume point until its first message (SPEC §4).
    let resume_point = ulid::Ulid::new().to_string();
    let replay = match &since {
        Some(since) => Some(sessions.replay(&who.user_id, since).await),
        None => None,
    };
    let connection_id = registration.id.to_string();
    let started = Instant::now();
    tracing::info!(
        user = %who.user_id,
        connection = %connection_id,
        %ip,
        recovered = replay.as_ref().map(|r| r.recovered),
        "connection opened"
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
    let end = match ws.feed(Message::Text(hello)).await {
        Ok(()) => {
            let mut dedupe = None;
            if let Some(replay) = replay {
                for message in &replay.messages {
                    wire.send_replayed(message);
                }
                let replayed = replay.messages.len() as u64;
                hub.stats().replayed_messages.fetch_add(replayed, Relaxed);
                metrics::counter!("ws_gateway_replayed_messages_total").increment(replayed);
                dedupe = Dedupe::after_replay(&replay.messages, DEDUPE_WINDOW);
            }
            wire.release(dedupe);
            serve(&mut ws, &wire, &sessions).await
        }
        Err(_) => End::ClientGone,
    };
    drop(registration);
    tracing::info!(
        user = %who.user_id,
        connection = %connection_id,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = ?end,
        "connection closed"
    );
}

impl Sessions {
    /// What to replay to `user_id` after `since`. A failed history read is
    /// reported as not recovered: the client re-fetches its state.
    async fn replay(&self, user_id: &str, since: &str) -> Replay {
        let key = self.hub.names().history_key(user_id);
        let horizon = Horizon {
            now_ms: crate::publish::unix_millis(),
            ttl_ms: u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        match self.broker.history(&key).await {
            Ok(entries) => resume::replay(&resume::parse(entries), &Point::since(since), horizon),
            Err(e) => {
                tracing::warn!(error = %e, user = %user_id, "history read failed; not recovered");
                Replay {
                    recovered: false,
                    messages: Vec::new(),
                }
            }
        }
    }
}

/// The session loop: flushes what the fan-out could not write at once,
/// answers the client, keeps the heartbeat. Returns why it ended, after the
/// close handshake.
async fn serve(ws: &mut Ws, wire: &Wire, cfg: &Sessions) -> End {
    let mut heartbeat = Heartbeat::new(cfg.ping_interval, cfg.idle_timeout);
    // One timer for both the ping and the idle deadline: fewer timers to
    // poll on every wake-up, and none to reset on every client frame.
    let timer = tokio::time::sleep_until(heartbeat.next_deadline());
    tokio::pin!(timer);
    let mut budget = ClientBudget::new(cfg.client_messages_per_sec);
    let mut strikes = 0;

    loop {
        match wire.closed() {
            Some(CloseReason::SlowConsumer) => {
                return close_with(ws, close::SLOW_CONSUMER, "slow consumer", End::SlowConsumer)
                    .await;
            }
            // The close frame goes after everything queued.
            Some(CloseReason::Shutdown) => {
                return close_with(ws, close::GOING_AWAY, "server shutting down", End::Shutdown)
                    .await;
            }
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
                heartbeat.heard_from_client();
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let (reply, accepted) = if budget.take() {
                            answer(&text)
                        } else {
                            (protocol::error("rate_limited", "too many messages; slow down"), false)
                        };
                        strikes = if accepted { 0 } else { strikes + 1 };
                        if strikes >= MAX_STRIKES {
                            return close_with(ws, close::POLICY_VIOLATION, "too many refused messages", End::Abuse).await;
                        }
                        // Queued in the wire; the loop flushes it.
                        if ws.feed(Message::Text(reply)).await.is_err() {
                            return End::ClientGone;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return close_with(ws, close::UNSUPPORTED_DATA, "binary frames are not supported", End::BinaryFrame).await;
                    }
                    // Pings are answered by tungstenite on the next read.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the reply; flush it and finish.
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                        return End::ClientClosed;
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return close_with(ws, close::MESSAGE_TOO_BIG, "message too big", End::MessageTooBig).await;
                    }
                    Some(Err(WsError::Protocol(_))) => {
                        return close_with(ws, 1002, "protocol error", End::ProtocolError).await;
                    }
                    Some(Err(_)) | None => return End::ClientGone,
                }
            }
            () = &mut timer => {
                match heartbeat.due(tokio::time::Instant::now()) {
                    Some(Beat::Idle) => {
                        return close_with(ws, close::GOING_AWAY, "idle timeout", End::IdleTimeout).await;
                    }
                    Some(Beat::Ping) if ws.feed(Message::Ping(Default::default())).await.is_err() => {
                        return End::ClientGone;
                    }
                    Some(Beat::Ping) | None => {}
                }
                timer.as_mut().reset(heartbeat.next_deadline());
            }
        }
    }
}

/// The server's side of the heartbeat: a Ping every `interval`, and a close
/// when nothing arrived from the client for `idle`.
struct Heartbeat {
    interval: Duration,
    idle: Duration,
    next_ping: tokio::time::Instant,
    last_heard: tokio::time::Instant,
}

/// What the heartbeat timer found due.
#[derive(Debug, PartialEq)]
enum Beat {
    Ping,
    Idle,
}

impl Heartbeat {
    fn new(interval: Duration, idle: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            interval,
            idle,
            next_ping: now + interval,
            last_heard: now,
        }
    }

    fn heard_from_client(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    fn next_deadline(&self) -> tokio::time::Instant {
        self.next_ping.min(self.last_heard + self.idle)
    }

    /// What is due at `now`; a ping due moves the next one an interval on.
    fn due(&mut self, now: tokio::time::Instant) -> Option<Beat> {
        if now >= self.last_heard + self.idle {
            return Some(Beat::Idle);
        }
        if now >= self.next_ping {
            // After a long write, one ping, not a burst of missed ones.
            self.next_ping = now + self.interval;
            return Some(Beat::Ping);
        }
        None
    }
}

/// The answer to a client's text message (SPEC §5), and whether the
/// message was valid.
fn answer(text: &str) -> (Utf8Bytes, bool) {
    match protocol::parse_client(text) {
        Ok(ClientMessage::Ping { ts }) => (protocol::pong(ts), true),
        Ok(ClientMessage::Unknown(kind)) => {
            let shown: String = kind.chars().take(64).collect();
            let message = format!("unknown message type {shown:?}");
            (protocol::error("unknown_type", &message), false)
        }
        Err(e) => (protocol::error(e.code, &e.message), false),
    }
}

/// Sends an ERROR frame and closes: a refusal after the upgrade (SPEC §4).
async fn refuse(mut ws: Ws, code: &str, message: &str, close_code: u16) {
    let sent = tokio::time::timeout(
        CLOSE_GRACE,
        ws.send(Message::Text(protocol::error(code, message))),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        close_with(&mut ws, close_code, code, End::ClientGone).await;
    }
}

/// Starts the closing handshake with `code` and waits (bounded) for the
/// client's reply, so the client reads the code before the socket goes.
async fn close_with(ws: &mut Ws, code: u16, reason: &str, end: End) -> End {
    let frame = CloseFrame {
        code: protocol::close_code(code),
        reason: reason.into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await?;
        while ws.next().await.is_some() {}
        Ok::<(), WsError>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn heartbeat_pings_and_times_out() {
        let mut hb = Heartbeat::new(Duration::from_secs(2), Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        assert_eq!(hb.next_deadline(), start + Duration::from_secs(2));
        assert_eq!(hb.due(start + Duration::from_secs(1)), None);
        assert_eq!(hb.due(start + Duration::from_secs(2)), Some(Beat::Ping));
        assert_eq!(hb.next_deadline(), start + Duration::from_secs(4));
        tokio::time::advance(Duration::from_secs(3)).await;
        hb.heard_from_client();
        assert_eq!(hb.due(start + Duration::from_secs(6)), Some(Beat::Ping));
        assert_eq!(hb.due(start + Duration::from_secs(7)), None);
        assert_eq!(hb.due(start + Duration::from_secs(8)), Some(Beat::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn client_budget_allows_bursts_then_the_rate() {
        let mut budget = ClientBudget::new(5);
        assert_eq!(
            (0..10).filter(|_| budget.take()).count(),
            10,
            "burst = 2x rate"
        );
        assert!(!budget.take());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!((0..10).filter(|_| budget.take()).count(), 2);
        let mut unlimited = ClientBudget::new(0);
        assert!((0..1000).all(|_| unlimited.take()));
    }
}
