//! ws-gateway: a stateless WebSocket gateway that relays events a backend
//! publishes to Redis to the connected clients of the addressed users.
//!
//! # Layout
//!
//! The layers follow the message, bottom to top; each imports only the
//! layers below it (`scripts/test.sh` checks the broker and the wire).
//!
//! - [`broker`]: Redis (fred) or the embedded in-memory broker. It reports
//!   upward through [`broker::Events`] (messages, lag, reconnect, confirmed
//!   subscriptions) and owns its subscriptions ([`broker::reconcile`]:
//!   desired against confirmed, retries, resubscribing after a reconnect).
//! - [`hub`]: who is connected (channel membership, what the broker should
//!   subscribe to) and the fan-out; [`hub::dispatch`] is the one task that
//!   delivers, so it owns the order of live messages, catch-ups and canary
//!   echoes.
//! - [`wire`]: a connection's sending side: direct writes, a bounded queue
//!   (slow consumers → 4008), and the stream tungstenite reads through.
//! - [`session`]: one client's session (registration, resume, CONNECTED),
//!   with its transport (the WebSocket), its client commands, its
//!   deadlines (heartbeat, token expiry) and its access (identity, roles,
//!   rooms) each in a module of their own.
//! - [`http`]: the listeners, routing, the WebSocket handshake (with the
//!   client IP behind trusted proxies and the connection slots that keep
//!   the probes answering at the open-files limit), admin API, `/metrics`.
//! - [`server`]: start-up and shutdown: builds everything and runs each
//!   long-lived task as a named [`shutdown::Services`] member.
//! - [`canary`]: the delivery round trip behind readiness.
//! - Leaves: [`protocol`] (wire messages and close codes), [`engineio`]
//!   (Engine.IO / Socket.IO packets, and a message's event), [`names`] (every
//!   Redis channel and key name), [`resume`] (where a stream was left in a
//!   user's history, and merging a replay with the live stream: the
//!   client's `since` and the catch-up both use it), [`metrics`] (the one
//!   set of counters, read by `/ws/stats` and rendered by `/metrics`), [`publish`] (the message preparation of the
//!   canonical publish path), [`log_limit`] (log lines rate-limited per
//!   key, with the count suppressed), [`logsafe`] (client-controlled text
//!   escaped in log lines), [`config`], [`auth`] and [`dev_secret`].
//!
//! Only what the binary, the load tool (`bench/`) and the Criterion
//! benches use is `pub`; the rest is `pub(crate)`.
//!
//! A published message flows broker → dispatcher → `Hub::dispatch`
//! (validated and framed once, with every other message waiting for the
//! same channel) → each recipient's `Wire` (the same bytes, shared), which
//! writes them all to the socket in one `writev`, or queues what the socket
//! did not take for the connection task to flush once the socket is
//! writable.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub(crate) mod canary;
pub mod config;
pub mod dev_secret;
pub(crate) mod engineio;
pub(crate) mod http;
pub mod hub;
pub(crate) mod log_limit;
pub(crate) mod logsafe;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod publish;
pub(crate) mod resume;
pub mod server;
pub(crate) mod session;
pub(crate) mod shutdown;
pub mod wire;

/// Internals the fuzz targets (`fuzz/`, not a workspace member) drive: not
/// an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::engineio::{parse as engineio_parse, Events as SocketIoEvents, Packet};
    pub use crate::http::upgrade::fuzzing as handshake;
    pub use crate::resume::{parse, replay, Admit, Gate, Horizon, Point, Replay, CLOCK_SKEW_MS};
}

/// Locks a mutex, recovering from poisoning: every critical section in this
/// crate leaves its state consistent, so a panic elsewhere cannot corrupt it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
