//! One client's session, from the upgraded socket to the close: the
//! handshake's verdict, registration with the hub, resume, CONNECTED, then
//! the transport's loop. The session stands apart from its transport:
//! [`websocket`] is today's (Socket.IO and SSE come next, SPEC §11, §12);
//! client commands live in [`commands`], deadlines in [`deadlines`].

mod commands;
mod deadlines;
mod websocket;

use crate::auth::{AuthError, Identity};
use crate::broker::Broker;
use crate::hub::{Hub, Refused};
use crate::protocol::{self, close};
use crate::resume::{self, Horizon, Point, Replay};
use crate::wire::Wire;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

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

/// Why a session ended, for the close log line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
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
    let mut ws = websocket::open(wire.clone(), early, sessions.max_message_bytes).await;
    let who = match auth {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(reason = e.code(), detail = e.message(), %ip, "handshake refused");
            websocket::refuse(ws, e.code(), e.message(), close::INVALID_TOKEN).await;
            return;
        }
    };
    let hub = &sessions.hub;
    let mut registration = match hub.register(&who, wire.clone()) {
        Ok(r) => r,
        Err(Refused::TooManyConnections) => {
            tracing::info!(reason = "too_many_connections", user = %who.user_id, %ip, "handshake refused");
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
    if let Some(ready) = registration.ready.take() {
        if tokio::time::timeout(SUBSCRIBE_WAIT, ready).await.is_err() {
            tracing::warn!(user = %who.user_id, "subscription not confirmed in time; connecting anyway");
        }
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
    let end = if websocket::send(&mut ws, hello).await {
        // The replay, then the live messages the wire held meanwhile.
        let replayed = replay.map(|r| r.messages).unwrap_or_default();
        for message in &replayed {
            wire.send_replayed(message);
        }
        let count = replayed.len() as u64;
        hub.stats().replayed_messages.fetch_add(count, Relaxed);
        metrics::counter!("ws_gateway_replayed_messages_total").increment(count);
        wire.release(&replayed);
        websocket::serve(&mut ws, &wire, &sessions).await
    } else {
        End::ClientGone
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
