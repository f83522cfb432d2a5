//! The monitoring assets under deploy/ against the real binary and Redis:
//! every `ws_gateway_*` name the Grafana dashboard
//! (`deploy/grafana/ws-gateway.json`) and the Prometheus alerts
//! (`deploy/prometheus/alerts.yaml`) use is a series `/metrics` serves, so
//! a renamed or removed metric fails here instead of leaving an empty panel
//! or an alert that can never fire. Also the files' shape: the dashboard
//! parses and every panel queries something; every alert has a `for:` and a
//! runbook; the Helm chart's copy of the alerts, when there is one, is the
//! same file.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DASHBOARD: &str = "deploy/grafana/ws-gateway.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const HELM_ALERTS: &str = "helm/ws-gateway/files/alerts.yaml";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `ws_gateway_[a-z0-9_]+` token of `text`, as a regex would find
/// them (leftmost, longest).
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "ws_gateway_";
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 {
            names.insert(format!("{PREFIX}{}", &after[..len]));
        }
        rest = &after[len..];
    }
    names
}

/// The name of every sample line of a scrape (the part before `{` or the
/// space), so `ws_gateway_delivery_latency_seconds_bucket` is one but the
/// histogram's bare family name, which only `# TYPE` lines carry, is not.
fn series_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

async fn scrape(gw: &Gateway) -> String {
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    r.text()
}

/// A scrape after traffic that moves every series (the minimal traffic of
/// tests/metrics.rs): a user's connection, a broadcast delivered with a
/// `ts`, a refused handshake, a dropped publish, and canary round trips.
async fn scrape_after_traffic() -> String {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .start()
        .await;

    let mut c = gw.user("42", &[]).await;
    let r = gw.get("/ws").await;
    assert_eq!(r.status, 400, "a plain GET /ws is refused: {r:?}");

    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis();
    let broadcast = format!(r#"{{"type":"B","ts":{ts}}}"#);
    let mut conn = redis.conn().await;
    conn.publish("ws:broadcast", broadcast.as_bytes()).await;
    assert_eq!(c.next_json().await["type"], "B");
    conn.publish("ws:user:42", b"nope").await;

    let moved = wait_until(WAIT_TIMEOUT, || async {
        let text = scrape(&gw).await;
        let at_least = |series: &str, n: f64| sample(&text, series).is_some_and(|v| v >= n);
        at_least("ws_gateway_canary_round_trip_seconds_count", 1.0)
            && at_least("ws_gateway_delivery_latency_seconds_count", 1.0)
            && at_least(
                r#"ws_gateway_messages_dropped_total{reason="invalid_payload"}"#,
                1.0,
            )
            && at_least(
                r#"ws_gateway_handshake_rejections_total{reason="bad_request"}"#,
                1.0,
            )
            && at_least(r#"ws_gateway_connections{transport="ws"}"#, 1.0)
            && at_least("ws_gateway_users", 1.0)
    })
    .await;
    // Counters only grow and the connection stays open: a scrape now shows
    // at least what the last one did.
    let text = scrape(&gw).await;
    assert!(
        moved,
        "/metrics never showed the traffic (a canary round trip, a timed delivery, a drop, \
         a refusal, a connection) within {WAIT_TIMEOUT:?}:\n{text}"
    );
    drop(c);
    text
}

/// Fails with every name of `file` that `/metrics` does not serve.
fn assert_all_exported(file: &str, used: &BTreeSet<String>, exported: &BTreeSet<String>) {
    assert!(!used.is_empty(), "{file} names no ws_gateway_ series");
    let missing: Vec<&String> = used.difference(exported).collect();
    assert!(
        missing.is_empty(),
        "{file} names series that /metrics does not serve: {missing:?}\n\
         /metrics serves: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_series_the_gateway_exports() {
    let dashboard_text = read(DASHBOARD);
    let alerts_text = read(ALERTS);

    let exported = series_names(&scrape_after_traffic().await);
    assert_all_exported(DASHBOARD, &metric_names(&dashboard_text), &exported);
    assert_all_exported(ALERTS, &metric_names(&alerts_text), &exported);
}

#[test]
fn the_dashboard_is_import_ready_and_every_panel_queries() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    assert_eq!(dashboard["uid"], "ws-gateway", "{DASHBOARD}: uid");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD}: no templating.list"));
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{DASHBOARD}: no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    let panels = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD}: no panels"));
    assert!(!panels.is_empty(), "{DASHBOARD}: no panels");
    for panel in panels {
        let title = &panel["title"];
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(
            targets
                .iter()
                .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "{DASHBOARD}: panel {title} has no target with an expr"
        );
        // Import-ready without __inputs: everything queries the variable.
        for datasource in
            std::iter::once(&panel["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
        {
            assert_eq!(
                datasource["uid"], "${datasource}",
                "{DASHBOARD}: panel {title} does not use the $datasource variable"
            );
        }
    }
}

#[test]
fn every_alert_has_a_for_and_a_runbook() {
    let alerts = read(ALERTS);
    let entries: Vec<&str> = alerts.split("- alert:").skip(1).collect();
    assert!(!entries.is_empty(), "{ALERTS}: no `- alert:` entry");
    for entry in entries {
        // An entry ends where the next group begins, if one does.
        let lines: Vec<&str> = entry
            .lines()
            .take_while(|l| !l.trim_start().starts_with("- name:"))
            .collect();
        let name = lines[0].trim();
        let has = |key: &str| lines.iter().any(|l| l.trim_start().starts_with(key));
        for key in [
            "expr:",
            "for:",
            "severity:",
            "summary:",
            "description:",
            "runbook:",
        ] {
            assert!(has(key), "{ALERTS}: alert {name} has no `{key}`");
        }
    }
}

#[test]
fn the_helm_chart_ships_the_same_alerts() {
    let helm = repo_path(HELM_ALERTS);
    if !helm.exists() {
        return;
    }
    let copy = std::fs::read(&helm).unwrap_or_else(|e| panic!("read {}: {e}", helm.display()));
    let original = std::fs::read(repo_path(ALERTS)).expect("read the alerts");
    assert!(
        copy == original,
        "{HELM_ALERTS} differs from {ALERTS}: copy it again (cp {ALERTS} {HELM_ALERTS})"
    );
}

#[test]
fn metric_names_finds_tokens_like_the_regex() {
    let names = metric_names(
        "rate(ws_gateway_a_total{x=\"1\"}[1m]) / ws_gateway_b_2 ws_gateway_ ws_gateway_c-d",
    );
    let expected: BTreeSet<String> = ["ws_gateway_a_total", "ws_gateway_b_2", "ws_gateway_c"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    let series = series_names(
        "# TYPE ws_gateway_h histogram\nws_gateway_h_bucket{le=\"1\"} 0\nws_gateway_g 1\n",
    );
    assert!(series.contains("ws_gateway_h_bucket") && series.contains("ws_gateway_g"));
    assert!(!series.contains("ws_gateway_h"), "{series:?}");
}
