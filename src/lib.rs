//! ws-gateway: a stateless WebSocket gateway that relays events a backend
//! publishes to Redis to the connected clients of the addressed users.
//!
//! # Layout
//!
//! - [`config`]: `gateway.toml` + `GATEWAY_*` environment + flags, validated.
//! - [`auth`]: JWT verification, admin checks, token minting.
//! - [`server`]: start-up and shutdown: builds everything below and runs it.
//! - [`http`]: the listener, routing, the WebSocket handshake, admin API.
//! - [`connection`]: one client's session: writes, reads, heartbeat, close.
//! - [`outbox`]: a connection's bounded send queue (slow consumers → 4008).
//! - [`hub`]: who is connected; channel membership and fan-out.
//! - [`subscriptions`]: keeps the broker's subscriptions equal to the hub's.
//! - [`broker`]: Redis (fred) or the embedded in-memory broker.
//! - [`protocol`]: wire messages and close codes; [`publish`]: the message
//!   preparation of the canonical publish path.
//!
//! A published message flows broker → `Hub::dispatch` (validated once) →
//! each recipient's `Outbox` (the same bytes, shared) → its connection task,
//! which writes everything queued with one flush.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod canary;
pub mod channel;
pub mod config;
pub mod connection;
pub mod history;
pub mod http;
pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod shutdown;
pub mod subscriptions;
