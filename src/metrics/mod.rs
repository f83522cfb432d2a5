//! The instance's counters: one set, shared by whoever counts (the hub's
//! fan-out, each connection's wire, the sessions, the handshake, the
//! dispatcher, the canary), read by `/ws/stats` and rendered by `/metrics`
//! ([`prometheus`]), so the two always agree (SPEC §8).
//!
//! Plain relaxed atomics behind an `Arc`: counting costs one uncontended
//! add, and the hot paths count once per write batch or per fan-out pass,
//! never per frame. Labelled counters are a [`Family`]: one atomic per
//! label value, from a fixed list in the SPEC's words, so every series
//! exists from the start (at zero) and none can grow without bound.

mod prometheus;

pub use prometheus::Gauges;

use metrics::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How a client is connected: the `transport` label (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    SocketIo,
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::SocketIo, Transport::Sse];

    pub const fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::SocketIo => "socketio",
            Transport::Sse => "sse",
        }
    }
}

/// Why a connection closed (`connections_closed_total{reason}`): the words
/// of the close log line.
pub const CLOSE_REASONS: &[&str] = &[
    "client_closed",
    "client_gone",
    "slow_consumer",
    "shutdown",
    "idle_timeout",
    "message_too_big",
    "binary_frame",
    "invalid_utf8",
    "protocol_error",
    "abuse",
    "token_expired",
    "refresh_refused",
];

/// Why a handshake was refused (`handshake_rejections_total{reason}`): the
/// error codes of SPEC §4.
pub const REFUSALS: &[&str] = &[
    "bad_request",
    "origin_not_allowed",
    "rate_limited",
    "over_capacity",
    "draining",
    "missing_token",
    "invalid_token",
    "token_expired",
    "too_many_connections",
    "too_many_connections_per_ip",
    "transport_unsupported",
    "history_unavailable",
];

/// Which channel a published message came on (`broker_messages_total{kind}`).
pub const CHANNEL_KINDS: &[&str] = &["user", "broadcast", "role", "room"];

/// Why a published message was not delivered (`messages_dropped_total`):
/// refused by validation, or discarded with a slow consumer's queue.
pub const DROP_REASONS: &[&str] = &["invalid_payload", "too_large", "slow_consumer"];

/// What a client sent (`client_messages_total{type}`): its `type`, or
/// `unknown`, `invalid` (not a message), `rate_limited` (not read).
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "PING",
    "AUTH_REFRESH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "unknown",
    "invalid",
    "rate_limited",
];

/// Counters of one label, one per value of a fixed list.
pub struct Family {
    label: &'static str,
    values: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl Family {
    fn new(label: &'static str, values: &'static [&'static str]) -> Self {
        Self {
            label,
            values,
            counts: values.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `n` to the series of `value`, which must be one of the list
    /// (each list's producers have a test that says so).
    pub fn add(&self, value: &str, n: u64) {
        match self.values.iter().position(|v| *v == value) {
            Some(i) => {
                self.counts[i].fetch_add(n, Relaxed);
            }
            None => debug_assert!(false, "{value:?} is not a {} of this family", self.label),
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        self.series()
            .find(|(v, _)| *v == value)
            .map_or(0, |(_, n)| n)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Every `(value, count)`, in the list's order.
    pub fn series(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.values
            .iter()
            .zip(self.counts.iter())
            .map(|(v, c)| (*v, c.load(Relaxed)))
    }
}

/// Every counter of SPEC §8 (gauges are read where they live, at render).
pub struct Stats {
    pub connections_opened: Family,
    pub connections_closed: Family,
    pub handshake_rejections: Family,
    pub broker_messages: Family,
    /// Published messages written whole to a client's socket, whichever
    /// path wrote them (the fan-out, the session's flush, tungstenite's).
    pub messages_delivered: AtomicU64,
    pub messages_dropped: Family,
    pub replayed_messages: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub client_messages: Family,
    pub broker_reconnects: AtomicU64,
    /// Messages lost because the Redis reader fell behind.
    pub broker_lagged: AtomicU64,
    /// From a message's `ts` to its write, once per message per fan-out.
    pub delivery_latency: Histogram,
    pub canary_round_trip: Histogram,
    exporter: prometheus::Exporter,
}

impl Default for Stats {
    fn default() -> Self {
        let exporter = prometheus::Exporter::new();
        Self {
            connections_opened: Family::new("transport", &TRANSPORT_LABELS),
            connections_closed: Family::new("reason", CLOSE_REASONS),
            handshake_rejections: Family::new("reason", REFUSALS),
            broker_messages: Family::new("kind", CHANNEL_KINDS),
            messages_delivered: AtomicU64::new(0),
            messages_dropped: Family::new("reason", DROP_REASONS),
            replayed_messages: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            client_messages: Family::new("type", CLIENT_MESSAGE_TYPES),
            broker_reconnects: AtomicU64::new(0),
            broker_lagged: AtomicU64::new(0),
            delivery_latency: exporter.histogram(prometheus::DELIVERY_LATENCY),
            canary_round_trip: exporter.histogram(prometheus::CANARY_ROUND_TRIP),
            exporter,
        }
    }
}

const TRANSPORT_LABELS: [&str; 3] = [
    Transport::ALL[0].label(),
    Transport::ALL[1].label(),
    Transport::ALL[2].label(),
];

impl Stats {
    /// `/metrics`: every counter of this set and `gauges`, in the
    /// Prometheus text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.exporter.render(self, gauges)
    }

    /// Folds the histograms' recent samples into their buckets, so that an
    /// instance nobody scrapes holds no more than a few seconds of them.
    pub fn upkeep(&self) {
        self.exporter.upkeep();
    }
}
