//! `/metrics` (SPEC §8): the [`Stats`] and the gauges in the Prometheus text
//! format, rendered by `metrics-exporter-prometheus`.
//!
//! The recorder belongs to the instance, not to the process (no global
//! recorder): several gateways can run in one test process, and nothing
//! counts through a global registry lookup. The atomics of [`Stats`] stay
//! the one set of counters: each scrape copies them into the recorder
//! (`absolute`), then renders. The histograms live in the recorder itself,
//! since `/ws/stats` has none.

use super::{Family, Stats, Transport};
use metrics::{Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub(super) const DELIVERY_LATENCY: &str = "ws_gateway_delivery_latency_seconds";
pub(super) const CANARY_ROUND_TRIP: &str = "ws_gateway_canary_round_trip_seconds";

/// 100 µs to 10 s: a local fan-out takes well under a millisecond, a
/// backlog behind a slow Redis seconds.
const DELIVERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// 1 ms to 30 s: a round trip through Redis, up to a canary that is late.
const CANARY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const CONNECTIONS: &str = "ws_gateway_connections";
const USERS: &str = "ws_gateway_users";
const SUBSCRIPTIONS: &str = "ws_gateway_subscriptions";
const BROKER_UP: &str = "ws_gateway_broker_up";
const READY: &str = "ws_gateway_ready";

/// Every series with its help text.
const HELP: &[(&str, &str)] = &[
    (CONNECTIONS, "Open client connections"),
    (USERS, "Users with at least one open connection"),
    (
        SUBSCRIPTIONS,
        "Broker channels subscribed for this instance's connections",
    ),
    (
        BROKER_UP,
        "1 while the broker connection is established, else 0",
    ),
    (
        READY,
        "1 while /readyz says ready (broker up, delivery canary fresh, not draining), else 0",
    ),
    (
        "ws_gateway_connections_opened_total",
        "Client connections opened (after the handshake)",
    ),
    (
        "ws_gateway_connections_closed_total",
        "Client connections closed, by reason",
    ),
    (
        "ws_gateway_handshake_rejections_total",
        "Connection attempts refused, by reason",
    ),
    (
        "ws_gateway_broker_messages_total",
        "Messages received from the broker, by channel kind",
    ),
    (
        "ws_gateway_messages_delivered_total",
        "Published messages written to client sockets",
    ),
    (
        "ws_gateway_messages_dropped_total",
        "Published messages not delivered, by reason",
    ),
    (
        "ws_gateway_replayed_messages_total",
        "Messages replayed from history (resume and catch-up)",
    ),
    (
        "ws_gateway_slow_consumer_disconnects_total",
        "Connections closed with 4008: their send queue overflowed",
    ),
    (
        "ws_gateway_client_messages_total",
        "Messages received from clients, by type",
    ),
    (
        "ws_gateway_broker_reconnects_total",
        "Times the broker connection was re-established",
    ),
    (
        "ws_gateway_broker_lagged_messages_total",
        "Messages lost because the broker reader fell behind",
    ),
    (
        CANARY_ROUND_TRIP,
        "Delivery canary round trip through the broker",
    ),
    (
        DELIVERY_LATENCY,
        "From a message's ts to its write to the sockets, once per message per fan-out",
    ),
];

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The gauges, read where they live at each scrape.
pub struct Gauges {
    /// Open connections per transport, in [`Transport::ALL`]'s order.
    pub connections: [usize; 3],
    pub users: usize,
    pub subscriptions: usize,
    pub broker_up: bool,
    /// What `/readyz` says.
    pub ready: bool,
}

pub(super) struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Exporter {
    pub(super) fn new() -> Self {
        let buckets = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), DELIVERY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CANARY_ROUND_TRIP.into()), CANARY_BUCKETS)
            });
        // Invariant: only an empty bucket list is refused, and neither is.
        #[allow(clippy::expect_used)]
        let recorder = buckets
            .expect("bucket lists are not empty")
            .build_recorder();
        for (name, help) in HELP {
            // One call describes any kind: the exporter keeps a help text
            // per name.
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        }
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    pub(super) fn histogram(&self, name: &'static str) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_static_name(name), &META)
    }

    pub(super) fn render(&self, stats: &Stats, gauges: &Gauges) -> String {
        let counter = |name: &'static str, value: u64| {
            self.recorder
                .register_counter(&Key::from_static_name(name), &META)
                .absolute(value);
        };
        let family = |name: &'static str, family: &Family| {
            for (value, n) in family.series() {
                let key = Key::from_parts(name, vec![Label::new(family.label, value)]);
                self.recorder.register_counter(&key, &META).absolute(n);
            }
        };
        let gauge = |key: Key, value: f64| self.recorder.register_gauge(&key, &META).set(value);

        family(
            "ws_gateway_connections_opened_total",
            &stats.connections_opened,
        );
        family(
            "ws_gateway_connections_closed_total",
            &stats.connections_closed,
        );
        family(
            "ws_gateway_handshake_rejections_total",
            &stats.handshake_rejections,
        );
        family("ws_gateway_broker_messages_total", &stats.broker_messages);
        family("ws_gateway_messages_dropped_total", &stats.messages_dropped);
        family("ws_gateway_client_messages_total", &stats.client_messages);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            "ws_gateway_messages_delivered_total",
            load(&stats.messages_delivered),
        );
        counter(
            "ws_gateway_replayed_messages_total",
            load(&stats.replayed_messages),
        );
        counter(
            "ws_gateway_slow_consumer_disconnects_total",
            load(&stats.slow_consumer_disconnects),
        );
        counter(
            "ws_gateway_broker_reconnects_total",
            load(&stats.broker_reconnects),
        );
        counter(
            "ws_gateway_broker_lagged_messages_total",
            load(&stats.broker_lagged),
        );

        for (transport, n) in Transport::ALL.iter().zip(gauges.connections) {
            let key = Key::from_parts(
                CONNECTIONS,
                vec![Label::new("transport", transport.label())],
            );
            gauge(key, n as f64);
        }
        gauge(Key::from_static_name(USERS), gauges.users as f64);
        gauge(
            Key::from_static_name(SUBSCRIPTIONS),
            gauges.subscriptions as f64,
        );
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        gauge(Key::from_static_name(BROKER_UP), flag(gauges.broker_up));
        gauge(Key::from_static_name(READY), flag(gauges.ready));
        self.handle.render()
    }

    pub(super) fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            connections: [2, 0, 1],
            users: 2,
            subscriptions: 3,
            broker_up: true,
            ready: false,
        }
    }

    #[test]
    fn every_series_is_rendered_with_help_from_the_start() {
        let stats = Stats::default();
        let text = stats.render(&gauges());
        for (name, _) in HELP {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name}:\n{text}"
            );
        }
        assert!(
            text.contains("ws_gateway_connections{transport=\"ws\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_connections{transport=\"sse\"} 1"),
            "{text}"
        );
        assert!(text.contains("ws_gateway_broker_up 1"), "{text}");
        assert!(text.contains("ws_gateway_ready 0"), "{text}");
        assert!(
            text.contains("ws_gateway_connections_closed_total{reason=\"slow_consumer\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ws_gateway_delivery_latency_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn counters_and_histograms_move() {
        let stats = Stats::default();
        stats.connections_closed.add("idle_timeout", 2);
        stats
            .messages_delivered
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        stats.delivery_latency.record(0.0002);
        stats.delivery_latency.record(20.0);
        stats.canary_round_trip.record(0.004);
        let text = stats.render(&gauges());
        assert!(
            text.contains("ws_gateway_connections_closed_total{reason=\"idle_timeout\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_messages_delivered_total 7"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_delivery_latency_seconds_bucket{le=\"0.0001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_delivery_latency_seconds_bucket{le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_delivery_latency_seconds_bucket{le=\"10\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_delivery_latency_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_canary_round_trip_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ws_gateway_canary_round_trip_seconds_bucket{le=\"30\"} 1"),
            "{text}"
        );
    }
}
