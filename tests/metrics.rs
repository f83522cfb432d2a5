//! `/metrics` (SPEC §8) against the real binary and Redis: every series is
//! there, moves with real traffic, agrees with `/ws/stats`, and can be
//! served on its own listener. And the logs a pipeline reads (SPEC §10).

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Every series name of SPEC §8 (with the `ws_gateway_` prefix).
const SPEC_SERIES: &[&str] = &[
    "connections",
    "users",
    "subscriptions",
    "connections_opened_total",
    "connections_closed_total",
    "handshake_rejections_total",
    "broker_messages_total",
    "messages_delivered_total",
    "messages_dropped_total",
    "replayed_messages_total",
    "slow_consumer_disconnects_total",
    "client_messages_total",
    "broker_up",
    "ready",
    "broker_reconnects_total",
    "canary_round_trip_seconds",
    "delivery_latency_seconds",
];

/// One scrape: `name{labels}` → value, exactly as the exposition prints
/// them (labels in the exporter's order).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of `series` (`name` or `name{label="value"}`), without the
    /// prefix; 0 when absent is not assumed: absent is a failure.
    fn get(&self, series: &str) -> f64 {
        let full = format!("ws_gateway_{series}");
        *self
            .samples
            .get(&full)
            .unwrap_or_else(|| panic!("no series {full} in /metrics:\n{}", self.text))
    }

    fn has_help(&self, name: &str) -> bool {
        self.text.contains(&format!("# HELP ws_gateway_{name} "))
    }
}

async fn scrape(gw: &Gateway) -> Scrape {
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content-type {content_type:?}"
    );
    Scrape::parse(r.text())
}

/// Waits until `cond` holds for a fresh scrape; the last scrape either way.
async fn scrape_until(gw: &Gateway, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT;
    loop {
        let s = scrape(gw).await;
        if cond(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics never showed {what} within {WAIT_TIMEOUT:?}:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_is_there_and_moves_with_real_traffic() {
    let redis = Redis::start();
    let port = redis.port;
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "4")
        .start()
        .await;

    let s = scrape(&gw).await;
    for name in SPEC_SERIES {
        assert!(
            s.has_help(name),
            "no # HELP for ws_gateway_{name}:\n{}",
            s.text
        );
    }
    assert_eq!(s.get(r#"connections{transport="ws"}"#), 0.0);
    assert_eq!(s.get("broker_up"), 1.0);
    assert_eq!(s.get("ready"), 1.0, "started ready");
    assert!(s
        .text
        .contains("# TYPE ws_gateway_delivery_latency_seconds histogram"));
    assert!(s
        .text
        .contains("ws_gateway_delivery_latency_seconds_bucket{le=\"0.0001\"}"));
    assert!(s
        .text
        .contains("ws_gateway_canary_round_trip_seconds_bucket{le=\"30\"}"));

    // Connect: a user with a role, and one with a refused token.
    let mut c = gw.user("42", &["ops"]).await;
    let refused = gw.connect_token("not-a-jwt").await;
    drop(refused);
    let r = gw.get("/ws").await;
    assert_eq!(r.status, 400);
    let s = scrape_until(&gw, "the refusals", |s| {
        s.get(r#"handshake_rejections_total{reason="invalid_token"}"#) == 1.0
    })
    .await;
    assert_eq!(
        s.get(r#"handshake_rejections_total{reason="bad_request"}"#),
        1.0
    );
    assert_eq!(s.get(r#"connections{transport="ws"}"#), 1.0);
    assert_eq!(s.get(r#"connections_opened_total{transport="ws"}"#), 1.0);
    assert_eq!(s.get("users"), 1.0);
    assert_eq!(s.get("subscriptions"), 2.0, "ws:user:42 and ws:role:ops");

    // Client messages.
    c.ping_pong(1).await;
    c.send_text("not json").await;
    c.expect_error("bad_request").await;

    // Publish: user (admin API, canonical, with ts), broadcast, role, and a
    // payload that is dropped.
    let admin = admin_token();
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, br#"{"type":"A"}"#)
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let first_id = r.json()["id"].as_str().expect("the message id").to_string();
    assert_eq!(c.next_json().await["type"], "A");
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, br#"{"type":"A2"}"#)
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(c.next_json().await["type"], "A2");
    let r = gw
        .post_bearer("/ws/broadcast", &admin, br#"{"type":"B"}"#)
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(c.next_json().await["type"], "B");
    redis.publish("ws:role:ops", r#"{"type":"C"}"#).await;
    assert_eq!(c.next_json().await["type"], "C");
    redis.publish("ws:user:42", "nope").await;
    c.ping_pong(2).await;

    let s = scrape_until(&gw, "the dropped payload", |s| {
        s.get(r#"messages_dropped_total{reason="invalid_payload"}"#) == 1.0
    })
    .await;
    assert_eq!(s.get(r#"broker_messages_total{kind="user"}"#), 3.0);
    assert_eq!(s.get(r#"broker_messages_total{kind="broadcast"}"#), 1.0);
    assert_eq!(s.get(r#"broker_messages_total{kind="role"}"#), 1.0);
    assert_eq!(s.get("messages_delivered_total"), 4.0);
    assert_eq!(s.get(r#"client_messages_total{type="PING"}"#), 2.0);
    assert_eq!(s.get(r#"client_messages_total{type="invalid"}"#), 1.0);
    assert!(
        s.get("delivery_latency_seconds_count") >= 3.0,
        "the admin API's messages carry ts"
    );
    assert!(s.get("canary_round_trip_seconds_count") >= 1.0);

    // A replay: resume after the first test message.
    let mut resumed = gw
        .connect_raw(&ConnectOpts::token(&token("42", &[])).query("since", &first_id))
        .await
        .expect("resume");
    let hello = resumed.expect_connected("42").await;
    assert_eq!(hello["replayed"], 1, "{hello}");
    assert_eq!(resumed.next_json().await["type"], "A2");
    scrape_until(&gw, "the replay", |s| {
        s.get("replayed_messages_total") == 1.0
    })
    .await;

    // A slow consumer: a client that reads nothing while 1 MiB messages
    // pile up behind its socket.
    let stalled = gw.user("7", &[]).await;
    redis.wait_numsub("ws:user:7", 1).await;
    let big = format!(r#"{{"type":"BIG","pad":"{}"}}"#, "x".repeat(1000 * 1000));
    let mut conn = redis.conn().await;
    // Bounded: 200 MB is far more than any socket buffers.
    let mut overflowed = false;
    for _ in 0..200 {
        conn.publish("ws:user:7", big.as_bytes()).await;
        if scrape(&gw).await.get("slow_consumer_disconnects_total") == 1.0 {
            overflowed = true;
            break;
        }
    }
    assert!(
        overflowed,
        "the stalled client never became a slow consumer"
    );
    // It never answers the close: gone, it ends its closing handshake.
    drop(stalled);
    let s = scrape_until(&gw, "the slow consumer's close", |s| {
        s.get(r#"connections_closed_total{reason="slow_consumer"}"#) == 1.0
    })
    .await;
    assert!(s.get(r#"messages_dropped_total{reason="slow_consumer"}"#) >= 1.0);

    // A client that closes.
    resumed.close().await;
    scrape_until(&gw, "the client's close", |s| {
        s.get(r#"connections_closed_total{reason="client_closed"}"#) == 1.0
    })
    .await;

    // A Redis restart.
    redis.kill();
    scrape_until(&gw, "broker_up 0, not ready", |s| {
        s.get("broker_up") == 0.0 && s.get("ready") == 0.0
    })
    .await;
    let _redis = Redis::start_on(port);
    let s = scrape_until(&gw, "the reconnect, ready again", |s| {
        s.get("broker_up") == 1.0
            && s.get("broker_reconnects_total") == 1.0
            && s.get("ready") == 1.0
    })
    .await;
    assert_eq!(s.get(r#"connections{transport="ws"}"#), 1.0);
    c.ping_pong(3).await;
}

/// `/ws/stats` and `/metrics` read the same counters: after the same
/// traffic they show the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_agree_after_traffic() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut a = gw.user("1", &[]).await;
    let mut b = gw.user("2", &["ops"]).await;
    let admin = admin_token();
    for n in 0..20 {
        let body = format!(r#"{{"type":"N","data":{{"n":{n}}}}}"#);
        let r = gw
            .post_bearer("/ws/test-message/1", &admin, body.as_bytes())
            .await;
        assert_eq!(r.status, 202);
    }
    for _ in 0..5 {
        let r = gw
            .post_bearer("/ws/broadcast", &admin, br#"{"type":"B"}"#)
            .await;
        assert_eq!(r.status, 202);
    }
    redis.publish("ws:role:ops", r#"{"type":"R"}"#).await;
    redis.publish("ws:user:2", "[1]").await;
    for _ in 0..25 {
        a.next_text().await;
    }
    for _ in 0..6 {
        b.next_text().await;
    }
    b.ping_pong(1).await;

    let stats = gw.stats().await;
    let s = scrape(&gw).await;
    let sum = |prefix: &str| -> f64 {
        s.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("ws_gateway_{prefix}{{")))
            .map(|(_, v)| v)
            .sum()
    };
    let number = |key: &str| {
        stats[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {stats}"))
    };
    assert_eq!(number("messages_received"), 27.0, "{stats}");
    assert_eq!(number("messages_received"), sum("broker_messages_total"));
    assert_eq!(number("messages_delivered"), 31.0, "{stats}");
    assert_eq!(
        number("messages_delivered"),
        s.get("messages_delivered_total")
    );
    assert_eq!(number("messages_dropped"), 1.0, "{stats}");
    assert_eq!(number("messages_dropped"), sum("messages_dropped_total"));
    assert_eq!(
        number("slow_consumer_disconnects"),
        s.get("slow_consumer_disconnects_total")
    );
    assert_eq!(
        number("broker_reconnects"),
        s.get("broker_reconnects_total")
    );
    assert_eq!(number("connections"), sum("connections"));
    assert_eq!(number("users"), s.get("users"));
    assert_eq!(number("subscriptions"), s.get("subscriptions"));
    assert_eq!(stats["broker_up"], s.get("broker_up") == 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_and_listen_no_longer_does() {
    let gw = gateway()
        .env("GATEWAY_SERVER_METRICS_LISTEN", "127.0.0.1:0")
        .start()
        .await;
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 404, "/metrics on listen: {r:?}");
    let metrics = gw
        .logged_addr("serving /metrics")
        .expect("the metrics listener's address in the logs");
    let r = http_request(metrics, "GET", "/metrics", &[], None)
        .await
        .expect("GET /metrics on metrics_listen");
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains("ws_gateway_connections{transport=\"ws\"} 0"),
        "{}",
        r.text()
    );
    let r = http_request(metrics, "GET", "/ws/health", &[], None)
        .await
        .expect("GET /ws/health on metrics_listen");
    assert_eq!(r.status, 404, "only /metrics on metrics_listen");
}

/// `--log-format json`: one flat JSON object per line, the event's fields
/// at the top level; a close names its reason and code; no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_flat_object_per_line() {
    let gw = gateway()
        .arg("--log-format")
        .arg("json")
        .env("GATEWAY_CONNECTION_IDLE_TIMEOUT_SECS", "1")
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "10")
        .start()
        .await;
    let jwt = token("42", &[]);
    let mut c = gw.connect_token(&jwt).await;
    c.expect_connected("42").await;
    // Say nothing: the idle timeout closes it.
    c.expect_close(1001).await;
    let closed = wait_until(WAIT_TIMEOUT, || async {
        gw.logs().iter().any(|l| l.contains("connection closed"))
    })
    .await;
    assert!(closed, "no close line:\n{}", gw.logs_text());

    let mut close_line = None;
    for line in gw.logs().iter().filter(|l| !l.starts_with("[stderr] ")) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(
            v.get("fields").is_none(),
            "fields nested under \"fields\": {line}"
        );
        assert!(v["message"].is_string() && v["level"].is_string(), "{line}");
        assert!(!line.contains(&jwt), "a token in the logs: {line}");
        if v["message"] == "connection closed" {
            close_line = Some(v);
        }
    }
    let v = close_line.expect("the close line");
    assert_eq!(v["reason"], "idle_timeout", "{v}");
    assert_eq!(v["code"], 1001, "{v}");
    assert_eq!(v["user"], "42", "{v}");
}

/// Text logs: a close says `reason=slow_consumer code=4008`, in the SPEC's
/// words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_logs_its_reason_and_code() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_IDLE_TIMEOUT_SECS", "1")
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "10")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    c.expect_close(1001).await;
    let logged = wait_until(WAIT_TIMEOUT, || async {
        gw.logs()
            .iter()
            .any(|l| l.contains("connection closed") && l.contains("reason=idle_timeout code=1001"))
    })
    .await;
    assert!(
        logged,
        "no `reason=idle_timeout code=1001`:\n{}",
        gw.logs_text()
    );
}
