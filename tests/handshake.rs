//! Handshake: refusals before and after the upgrade, token transports (SPEC §4).
//!
//! In-process, except the test that reads the logs.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_without_upgrade_is_400() {
    let gw = gateway().in_process().start().await;
    let r = gw.get(&format!("/ws?token={}", token("42", &[]))).await;
    r.assert_error(400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_checks_with_default_config() {
    let gw = gateway().in_process().start().await;
    let tok = token("42", &[]);

    let r = expect_refusal(
        gw.connect_raw(&ConnectOpts::token(&tok).header("Origin", "http://evil.example"))
            .await,
    );
    assert_eq!(r.status, 403, "cross-origin handshake: {r:?}");
    assert_eq!(r.json()["error"], "origin_not_allowed", "{r:?}");
    assert!(r.json()["message"].is_string(), "{r:?}");

    // Same origin (Origin host == Host) is allowed.
    let same = format!("http://127.0.0.1:{}", gw.port());
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&tok).header("Origin", &same))
        .await
        .unwrap_or_else(|e| panic!("same-origin handshake refused: {}", describe_ws_error(&e)));
    c.expect_connected("42").await;

    // No Origin at all (non-browser client) is allowed.
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&tok))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "handshake without Origin refused: {}",
                describe_ws_error(&e)
            )
        });
    c.expect_connected("42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_allowed_origins() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_ALLOWED_ORIGINS", "http://app.example")
        .start()
        .await;
    let tok = token("42", &[]);
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&tok).header("Origin", "http://app.example"))
        .await
        .unwrap_or_else(|e| panic!("allowed origin refused: {}", describe_ws_error(&e)));
    c.expect_connected("42").await;

    let r = expect_refusal(
        gw.connect_raw(&ConnectOpts::token(&tok).header("Origin", "http://evil.example"))
            .await,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "origin_not_allowed", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connect_rate_limit() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_CONNECT_RATE_PER_IP", "1")
        .start()
        .await;
    let tok = token("42", &[]);
    // Burst is 2x the rate: two connections go through at once...
    let mut kept = Vec::new();
    for i in 0..2 {
        let mut c = gw
            .connect_raw(&ConnectOpts::token(&tok))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connection #{i} within the burst refused: {}",
                    describe_ws_error(&e)
                )
            });
        c.expect_connected("42").await;
        kept.push(c);
    }
    // ...the third, immediately after, is refused.
    let r = expect_refusal(gw.connect_raw(&ConnectOpts::token(&tok)).await);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json()["error"], "rate_limited", "{r:?}");
    let retry = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "Retry-After should be a number of seconds, got {retry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_instance() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_MAX_CONNECTIONS", "1")
        .start()
        .await;
    let first = gw.user("42", &[]).await;
    let r = expect_refusal(gw.connect_raw(&ConnectOpts::token(&token("43", &[]))).await);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "over_capacity", "{r:?}");
    assert!(
        r.header("retry-after").is_some(),
        "503 without Retry-After: {r:?}"
    );

    // Capacity frees up when the first connection goes away (its socket
    // is counted until its session has ended, just after the hub lets go).
    first.close().await;
    gw.wait_connections(0).await;
    let opts = ConnectOpts::token(&token("43", &[]));
    let freed = wait_until(WAIT_TIMEOUT, || async {
        gw.connect_raw(&opts).await.is_ok()
    })
    .await;
    assert!(freed, "no capacity after the first connection closed");
}

/// The probe: upgrades without a token held capacity slots for ~20 s (the
/// refusal waited 10 s to write its ERROR and 10 s for the close reply),
/// so clients with credentials got 503 meanwhile. A refusal must release
/// its slot quickly, even when the client never reads or answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_less_upgrades_release_their_slots_quickly() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_MAX_CONNECTIONS", "5")
        .start()
        .await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        // Upgraded, then never read from: it does not answer the close.
        silent.push(gw.connect_raw(&ConnectOpts::none()).await.expect("upgrade"));
    }
    let opts = ConnectOpts::token(&token("42", &[]));
    let started = std::time::Instant::now();
    let served = wait_until(Duration::from_secs(5), || async {
        gw.connect_raw(&opts).await.is_ok()
    })
    .await;
    assert!(
        served,
        "a client with a token still got 503 after {:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusals_after_upgrade() {
    let gw = gateway().in_process().start().await;

    let mut c = gw
        .connect_raw(&ConnectOpts::none())
        .await
        .expect("no-token handshake should upgrade");
    c.expect_error_then_close("missing_token", 4001).await;

    let mut c = gw
        .connect_raw(&ConnectOpts::token("garbage.not-a.jwt"))
        .await
        .expect("garbage-token handshake should upgrade");
    c.expect_error_then_close("invalid_token", 4001).await;

    let foreign = mint_with_secret("some-other-secret", "42", &[], "1h");
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&foreign))
        .await
        .expect("foreign-token handshake should upgrade");
    c.expect_error_then_close("invalid_token", 4001).await;

    let mut c = gw
        .connect_raw(&ConnectOpts::none().header("Authorization", "Bearer nonsense"))
        .await
        .expect("bad bearer handshake should upgrade");
    c.expect_error_then_close("invalid_token", 4001).await;

    gw.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_AUTH_LEEWAY_SECS", "0")
        .start()
        .await;
    let tok = mint("42", &[], "1s");
    let t_after = now_secs();
    // exp <= t_after + 1; wait until the clock is strictly past it.
    let expired = wait_until(Duration::from_secs(5), || async {
        now_secs() > t_after + 1
    })
    .await;
    assert!(expired, "clock did not advance");
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&tok))
        .await
        .expect("expired-token handshake should upgrade");
    c.expect_error_then_close("token_expired", 4001).await;
}

/// A token signed with the suite secret whose `nbf` is `nbf_in_secs` from now.
fn token_not_before(sub: &str, nbf_in_secs: u64) -> String {
    let now = now_secs();
    let claims = serde_json::json!({ "sub": sub, "exp": now + 3600, "nbf": now + nbf_in_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a test token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_token_is_refused() {
    // The default leeway (auth.leeway_secs = 30) applies to `nbf` as to `exp`.
    let gw = gateway().in_process().start().await;
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&token_not_before("42", 3600)))
        .await
        .expect("not-yet-valid-token handshake should upgrade");
    c.expect_error_then_close("invalid_token", 4001).await;

    gw.connect_user(&token_not_before("43", 10), "43").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_per_user() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "2")
        .start()
        .await;
    let _a = gw.user("42", &[]).await;
    let _b = gw.user("42", &[]).await;
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&token("42", &[])))
        .await
        .expect("third handshake should upgrade");
    c.expect_error_then_close("too_many_connections", 4029)
        .await;
    // Another user is not affected.
    gw.user("43", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_authorization_header() {
    let gw = gateway().in_process().start().await;
    let auth = format!("Bearer {}", token("42", &["ops"]));
    let mut c = gw
        .connect_raw(&ConnectOpts::none().header("Authorization", &auth))
        .await
        .unwrap_or_else(|e| panic!("Bearer handshake refused: {}", describe_ws_error(&e)));
    let d = c.expect_connected("42").await;
    assert_eq!(d["recovered"], serde_json::Value::Null, "{d}");
    assert_eq!(d["replayed"], 0, "{d}");
    assert_eq!(d["heartbeat_secs"], 25, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_subprotocol() {
    let gw = gateway().in_process().start().await;
    let offer = format!("ws-gateway, bearer.{}", token("42", &[]));
    let mut c = gw
        .connect_raw(&ConnectOpts::none().header("Sec-WebSocket-Protocol", &offer))
        .await
        .unwrap_or_else(|e| panic!("subprotocol handshake refused: {}", describe_ws_error(&e)));
    assert_eq!(
        c.response_header("sec-websocket-protocol"),
        Some("ws-gateway"),
        "the server must select the `ws-gateway` subprotocol"
    );
    c.expect_connected("42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs() {
    let gw = gateway().start().await;
    let good = token("42", &["ops"]);
    let foreign = mint_with_secret("another-secret", "43", &[], "1h");

    let lines_at_start = gw.logs().len();
    let (c, _) = gw.connect_user(&good, "42").await;
    c.close().await;
    let mut bad = gw
        .connect_raw(&ConnectOpts::token(&foreign))
        .await
        .expect("upgrade");
    bad.expect_error_then_close("invalid_token", 4001).await;
    // A refused-before-upgrade request with the token in the query string.
    let r = gw.get(&format!("/ws?token={good}")).await;
    assert_eq!(r.status, 400);
    gw.wait_connections(0).await;
    // One line each for the open, the close and the two refusals (SPEC §10):
    // make sure they were logged (and captured) before checking them.
    let logged = wait_until(WAIT_TIMEOUT, || async {
        gw.logs().len() >= lines_at_start + 4
    })
    .await;
    assert!(
        logged,
        "expected >= 4 log lines for open/close/refusals; output:\n{}",
        gw.logs_text()
    );

    let logs = gw.logs_text();
    for (what, secret) in [
        ("valid JWT", good.as_str()),
        ("foreign JWT", foreign.as_str()),
        ("HMAC secret", SECRET),
    ] {
        assert!(
            !logs.contains(secret),
            "the {what} must never be logged; output:\n{logs}"
        );
    }
    // The JWT signature alone must not leak either.
    let sig = good.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig), "JWT signature logged; output:\n{logs}");
}
