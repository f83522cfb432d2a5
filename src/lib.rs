//! ws-gateway: a stateless WebSocket gateway that relays events a backend
//! publishes to Redis to the connected clients of the addressed users.
//!
//! # Layout
//!
//! - [`config`]: `gateway.toml` + `GATEWAY_*` environment + flags, validated.
//! - [`auth`]: JWT verification, admin checks, token minting;
//!   [`dev_secret`]: dev mode's secret, kept in a file `token` shares.
//! - [`server`]: start-up and shutdown: builds everything below and runs it.
//! - [`http`]: the listener, routing, the WebSocket handshake, admin API.
//! - [`connection`]: one client's session: resume, reads, heartbeat, close.
//! - [`wire`]: a connection's sending side: direct writes, a bounded queue
//!   (slow consumers → 4008), and the stream tungstenite reads through.
//! - [`hub`]: who is connected; channel membership and fan-out.
//! - [`channel`]: one channel's members, position, and catch-up after a
//!   Redis reconnect; [`resume`]: where a stream was left in a user's
//!   history, and merging a replay with the live stream (both the client's
//!   `since` and the catch-up use it).
//! - [`subscriptions`]: keeps the broker's subscriptions equal to the hub's.
//! - [`canary`]: the delivery round trip behind readiness.
//! - [`metrics`]: the instance's one set of counters; [`names`]: every
//!   Redis channel and key name.
//! - [`broker`]: Redis (fred) or the embedded in-memory broker.
//! - [`protocol`]: wire messages and close codes; [`publish`]: the message
//!   preparation of the canonical publish path.
//!
//! A published message flows broker → `Hub::dispatch` (validated and framed
//! once, with every other message waiting for the same channel) → each
//! recipient's `Wire` (the same bytes, shared), which writes them all to the
//! socket in one `writev`, or queues what the socket did not take for the
//! connection task to flush once the socket is writable.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod canary;
pub mod channel;
pub mod config;
pub mod connection;
pub mod dev_secret;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod publish;
pub mod resume;
pub mod server;
pub mod shutdown;
pub mod subscriptions;
pub mod wire;

/// Locks a mutex, recovering from poisoning: every critical section in this
/// crate leaves its state consistent, so a panic elsewhere cannot corrupt it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
