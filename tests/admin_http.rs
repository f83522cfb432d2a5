//! HTTP endpoints (SPEC §7).
//!
//! In-process where the embedded broker will do; with the binary and a real
//! Redis where the probes follow Redis.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;

    assert_eq!(gw.get("/healthz").await.status, 200, "/healthz");
    assert_eq!(gw.get("/readyz").await.status, 200, "/readyz");

    let _a = gw.user("42", &[]).await;
    let _b = gw.user("43", &[]).await;
    gw.wait_connections(2).await;

    let r = gw.get("/ws/health").await;
    assert_eq!(r.status, 200, "/ws/health: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type of /ws/health: {:?}",
        r.header("content-type")
    );
    let h = r.json();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["broker"], "redis", "{h}");
    assert_eq!(h["broker_up"], true, "{h}");
    assert_eq!(h["connections"], 2, "{h}");
    assert!(
        h["version"]
            .as_str()
            .is_some_and(|v| v.contains(env!("CARGO_PKG_VERSION"))),
        "version should name {}: {h}",
        env!("CARGO_PKG_VERSION")
    );
}

/// One answer of `/ws/health` and one of `/readyz`: status and JSON body.
struct Probes {
    health: (u16, Value),
    ready: (u16, Value),
}

async fn probes(gw: &Gateway) -> Probes {
    let health = gw.get("/ws/health").await;
    let ready = gw.get("/readyz").await;
    Probes {
        health: (health.status, health.json()),
        ready: (ready.status, ready.json()),
    }
}

/// Polls both endpoints until both answer `status` (bounded by
/// [`WAIT_TIMEOUT`]); whether they did, and their last answers.
async fn wait_probes(gw: &Gateway, status: u16) -> (bool, Probes) {
    let last = std::cell::RefCell::new(None);
    let ok = wait_until(WAIT_TIMEOUT, || async {
        let p = probes(gw).await;
        let both = p.health.0 == status && p.ready.0 == status;
        *last.borrow_mut() = Some(p);
        both
    })
    .await;
    (ok, last.into_inner().expect("probed at least once"))
}

/// Asserts both endpoints report a Redis broker that is up and delivering.
fn assert_delivering(p: &Probes) {
    let (status, h) = &p.health;
    assert_eq!(*status, 200, "/ws/health: {h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["broker"], "redis", "{h}");
    assert_eq!(h["broker_up"], true, "{h}");
    assert_eq!(h["draining"], false, "{h}");
    // Canary interval 1 s: fresh means a round trip within 3 s.
    let age = h["canary_age_ms"].as_u64();
    assert!(age.is_some_and(|a| a <= 3000), "fresh canary_age_ms: {h}");
    assert_eq!(p.ready, (200, json!({ "status": "ready" })), "/readyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_delivery_canary() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .start()
        .await;
    assert_delivering(&probes(&gw).await);

    // Redis holds every PUBLISH, so no canary can come back, while the
    // connections stay up. (WRITE rather than ALL: under ALL, Redis 7.0
    // holds the CLIENT UNPAUSE below too.)
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "60000", "WRITE"]), "OK");
    let (stale, p) = wait_probes(&gw, 503).await;
    let ((_, h), (_, r)) = (&p.health, &p.ready);
    assert!(
        stale,
        "both should turn 503 within {WAIT_TIMEOUT:?} of CLIENT PAUSE WRITE \
         (canary interval 1 s): /ws/health {h}, /readyz {r}"
    );
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["broker_up"], true, "{h}");
    assert_eq!(h["draining"], false, "{h}");
    let age = h["canary_age_ms"].as_u64();
    assert!(age.is_some_and(|a| a > 3000), "stale canary_age_ms: {h}");
    assert_eq!(
        *r,
        json!({ "status": "not_ready", "reason": "canary_stale" }),
        "/readyz"
    );

    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    let (recovered, p) = wait_probes(&gw, 200).await;
    assert!(
        recovered,
        "both should return to 200 after CLIENT UNPAUSE: /ws/health {}, /readyz {}",
        p.health.1, p.ready.1
    );
    assert_delivering(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_requires_admin() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_AUTH_ADMIN_API_KEY", "k-admin-123")
        .start()
        .await;
    let _a = gw.user("42", &[]).await;
    let _b = gw.user("42", &[]).await;
    let _c = gw.user("43", &["ops"]).await;
    gw.wait_connections(3).await;

    gw.get("/ws/stats").await.assert_status(401);
    gw.get_bearer("/ws/stats", "wrong-key")
        .await
        .assert_status(401);
    gw.get_bearer(
        "/ws/stats",
        &mint_with_secret("other", "admin-user", &["admin"], "1h"),
    )
    .await
    .assert_status(401);
    gw.get_bearer("/ws/stats", &token("42", &["ops"]))
        .await
        .assert_status(403);

    for (how, bearer) in [
        ("admin JWT", admin_token()),
        ("API key", "k-admin-123".into()),
    ] {
        let r = gw.get_bearer("/ws/stats", &bearer).await;
        assert_eq!(r.status, 200, "/ws/stats with {how}: {}", r.text());
        let s = r.json();
        assert!(
            s["instance"].as_str().is_some_and(|i| !i.is_empty()),
            "instance: {s}"
        );
        for k in [
            "uptime_secs",
            "messages_received",
            "messages_delivered",
            "messages_dropped",
            "slow_consumer_disconnects",
            "broker_reconnects",
        ] {
            assert!(s[k].is_u64(), "{k} should be a non-negative integer: {s}");
        }
        assert_eq!(s["connections"], 3, "connections: {s}");
        assert_eq!(s["users"], 2, "users: {s}");
        assert!(
            s["subscriptions"].as_u64() >= Some(2),
            "subscriptions should count at least the 2 user channels: {s}"
        );
        assert_eq!(s["broker_up"], true, "broker_up: {s}");
    }

    // The alias answers the same.
    let r = gw.get_bearer("/api/socket/status", &admin_token()).await;
    assert_eq!(r.status, 200, "/api/socket/status: {}", r.text());
    assert_eq!(r.json()["connections"], 3, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_message_default_and_custom() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut c = gw.user("42", &[]).await;
    let admin = admin_token();

    // Empty body: a default NOTIFICATION.
    let r = gw.post_bearer("/ws/test-message/42", &admin, b"").await;
    assert_eq!(r.status, 202, "empty test-message: {}", r.text());
    let body = r.json();
    assert_eq!(body["channel"], "ws:user:42", "{body}");
    let id = body["id"].as_str().expect("id in 202 body").to_string();
    assert!(!id.is_empty());
    let v = c.next_json().await;
    assert_eq!(v["type"], "NOTIFICATION", "{v}");
    assert_eq!(v["id"], id.as_str(), "delivered id equals the 202 id: {v}");

    // A custom message: delivered as is, with an id filled in.
    let data =
        json!({"category": "dining", "spent": 460.0, "limit": 400.0, "severity": "exceeded"});
    let msg = json!({"type": "BUDGET_ALERT", "data": data});
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, msg.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "custom test-message: {}", r.text());
    let id2 = r.json()["id"].as_str().expect("id").to_string();
    assert_ne!(id2, id, "ids are unique");
    let v = c.next_json().await;
    assert_eq!(v["type"], "BUDGET_ALERT", "{v}");
    assert_eq!(v["data"], data, "{v}");
    assert_eq!(v["id"], id2.as_str(), "{v}");

    // The canonical path keeps history.
    let hist = redis.cli(&["LRANGE", "notifications:42", "0", "-1"]);
    assert!(
        hist.contains(&id) && hist.contains(&id2),
        "notifications:42 should hold both messages: {hist}"
    );

    // Invalid bodies are refused and nothing is published.
    for bad in [&b"[1]"[..], br#"{"x":1}"#, br#"{"type":3}"#, b"not json"] {
        gw.post_bearer("/ws/test-message/42", &admin, bad)
            .await
            .assert_error(400, "bad_request");
    }
    // Non-admins may not publish.
    gw.post_bearer("/ws/test-message/42", &token("42", &[]), b"")
        .await
        .assert_status(403);
    gw.http("POST", "/ws/test-message/42", &[], Some(b""))
        .await
        .assert_status(401);

    let marker = r#"{"type":"MARKER","id":"mk-1"}"#;
    redis.publish("ws:user:42", marker).await;
    assert_eq!(
        c.next_text().await,
        marker,
        "refused requests must not have delivered anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_endpoint_and_aliases() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut a = gw.user("42", &[]).await;
    let mut b = gw.user("43", &["ops"]).await;
    redis.wait_deliverable("ws:broadcast").await;
    let admin = admin_token();

    let msg = json!({"type": "SYSTEM_ALERT", "data": {"text": "hello all"}});
    let r = gw
        .post_bearer("/ws/broadcast", &admin, msg.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "/ws/broadcast: {}", r.text());
    for c in [&mut a, &mut b] {
        let v = c.next_json().await;
        assert_eq!(v["type"], "SYSTEM_ALERT", "{v}");
        assert_eq!(v["data"], msg["data"], "{v}");
    }
    gw.post_bearer("/ws/broadcast", &admin, b"[1]")
        .await
        .assert_error(400, "bad_request");

    // Alias of /ws/broadcast.
    let msg2 = json!({"type": "SYSTEM_ALERT", "data": {"text": "via alias"}});
    let r = gw
        .post_bearer(
            "/api/socket/notify/system",
            &admin,
            msg2.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "/api/socket/notify/system: {}", r.text());
    for c in [&mut a, &mut b] {
        assert_eq!(c.next_json().await["data"], msg2["data"]);
    }

    // Alias of /ws/test-message/{user}.
    let r = gw
        .post_bearer("/api/socket/notify/user/43", &admin, b"")
        .await;
    assert_eq!(r.status, 202, "/api/socket/notify/user/43: {}", r.text());
    assert_eq!(r.json()["channel"], "ws:user:43");
    let v = b.next_json().await;
    assert_eq!(v["type"], "NOTIFICATION", "{v}");
    assert_eq!(v["id"], r.json()["id"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_refuses_an_empty_body() {
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;
    let admin = admin_token();
    for path in ["/ws/broadcast", "/api/socket/notify/system"] {
        for body in [&b""[..], b" \r\n\t "] {
            let r = gw.post_bearer(path, &admin, body).await;
            assert_eq!(
                r.status,
                400,
                "POST {path} with body {body:?} must not publish a default message to everyone: {}",
                r.text()
            );
            r.assert_error(400, "bad_request");
        }
    }
    c.expect_silence(Duration::from_millis(300)).await;

    // The client does receive broadcasts: the silence above means something.
    let r = gw
        .post_bearer("/ws/broadcast", &admin, br#"{"type":"SYSTEM_ALERT"}"#)
        .await;
    assert_eq!(r.status, 202, "/ws/broadcast: {}", r.text());
    let v = c.next_json().await;
    assert_eq!(v["type"], "SYSTEM_ALERT", "{v}");
    assert_eq!(v["id"], r.json()["id"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_wrong_method_and_console() {
    let gw = gateway().in_process().start().await;

    gw.get("/nope").await.assert_error(404, "not_found");
    gw.get("/ws/nope").await.assert_error(404, "not_found");
    let r = gw
        .http(
            "DELETE",
            "/ws/stats",
            &[("Authorization", &format!("Bearer {}", admin_token()))],
            None,
        )
        .await;
    assert_eq!(r.status, 405, "DELETE /ws/stats: {}", r.text());
    let r = gw.get("/ws/broadcast").await;
    assert_eq!(r.status, 405, "GET /ws/broadcast: {}", r.text());

    let r = gw.get("/socket-test.html").await;
    assert_eq!(r.status, 200, "/socket-test.html");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "content-type: {:?}",
        r.header("content-type")
    );
    let html = r.text();
    assert!(html.contains("<script"), "the console has a script");
    let ext = external_refs(&html);
    assert!(
        ext.is_empty(),
        "/socket-test.html loads external resources: {ext:?}"
    );
}

/// `src=`/`href=` values of <script> and <link> tags that point off-site.
fn external_refs(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    for tag in ["<script", "<link"] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(tag) {
            let start = from + pos;
            let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
            let t = &lower[start..end];
            for attr in ["src=", "href="] {
                if let Some(a) = t.find(attr) {
                    let v = t[a + attr.len()..].trim_start_matches(['"', '\'']);
                    if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("//")
                    {
                        out.push(t.to_string());
                    }
                }
            }
            from = end;
        }
    }
    out
}
