//! The instance's counters: one set, shared by whoever counts (the hub's
//! fan-out, each connection's wire, the broker reader) and read by
//! `/ws/stats` (and by `/metrics` next, so the two always agree).
//!
//! Plain relaxed atomics behind an `Arc`: counting costs one uncontended
//! add per write batch, never a lock.

use std::sync::atomic::AtomicU64;

/// Counters for `/ws/stats` (SPEC §7).
#[derive(Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    /// Published messages written whole to a client's socket, whichever
    /// path wrote them (the fan-out, the session's flush, tungstenite's).
    pub messages_delivered: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub connections_opened: AtomicU64,
    pub broker_reconnects: AtomicU64,
    pub broker_lagged: AtomicU64,
    pub replayed_messages: AtomicU64,
}
