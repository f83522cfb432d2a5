//! Token refresh, graceful shutdown and Redis outages (SPEC §4, §5, §6).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refresh_same_user_then_other_user() {
    let gw = gateway().start().await;
    let mut c = gw.user("42", &[]).await;

    let fresh = mint("42", &[], "2h");
    c.send_text(&format!(r#"{{"type":"AUTH_REFRESH","token":"{fresh}"}}"#))
        .await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "AUTH_REFRESHED", "{v}");
    let exp = v["data"]["exp"].as_u64().expect("data.exp is a number");
    assert!(
        exp > now_secs() + 3600,
        "exp should be the new token's (about 2 h ahead): {exp}"
    );
    c.ping_pong(1).await;

    // A token for another user: ERROR, then close 4001.
    let other = mint("43", &[], "1h");
    c.send_text(&format!(r#"{{"type":"AUTH_REFRESH","token":"{other}"}}"#))
        .await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "ERROR", "{v}");
    c.expect_close(4001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refresh_with_invalid_token_closes_4001() {
    let gw = gateway().start().await;
    let mut c = gw.user("42", &[]).await;
    let foreign = mint_with_secret("not-our-secret", "42", &[], "1h");
    c.send_text(&format!(r#"{{"type":"AUTH_REFRESH","token":"{foreign}"}}"#))
        .await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "ERROR", "{v}");
    c.expect_close(4001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits() {
    let mut gw = gateway()
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")
        .start()
        .await;
    let mut a = gw.user("42", &[]).await;
    let mut b = gw.user("43", &[]).await;
    gw.sigterm();
    for c in [&mut a, &mut b] {
        let (texts, code, got_close) = c.read_until_close(Duration::from_secs(10)).await;
        assert!(texts.is_empty(), "{texts:?}");
        assert!(got_close, "expected a Close frame on shutdown");
        assert_eq!(code, Some(1001), "shutdown close code");
    }
    let st = gw.wait_exit(Duration::from_secs(15)).await;
    let st = st.expect("the gateway should exit after draining");
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_redis_outage() {
    let redis = Redis::start();
    let port = redis.port;
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;

    redis.kill();
    let down = wait_until(Duration::from_secs(15), || async {
        gw.get("/readyz").await.status == 503
    })
    .await;
    assert!(down, "/readyz should report 503 while Redis is down");
    let r = gw.get("/ws/health").await;
    assert_eq!(
        r.status,
        503,
        "/ws/health while Redis is down: {}",
        r.text()
    );
    assert_eq!(r.json()["broker_up"], false, "{}", r.text());
    // The client is still connected and served.
    c.ping_pong(5).await;

    let redis = Redis::start_on(port);
    let up = wait_until(Duration::from_secs(30), || async {
        gw.get("/readyz").await.status == 200
    })
    .await;
    assert!(up, "/readyz should return to 200 after Redis comes back");
    redis.wait_numsub("ws:user:42", 1).await;
    let msg = r#"{"type":"NOTIFICATION","id":"after-outage"}"#;
    redis.publish("ws:user:42", msg).await;
    assert_eq!(c.next_text().await, msg, "delivery after the outage");
    let stats = gw.stats().await;
    assert!(
        stats["broker_reconnects"].as_u64() >= Some(1),
        "broker_reconnects: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_instance_refuses_new_connections_and_is_not_ready() {
    let gw = gateway()
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")
        .start()
        .await;
    // A client that does not read keeps its closing handshake (and so the
    // drain) open for a while: long enough to look at the draining instance.
    let _silent = gw.user("42", &[]).await;
    gw.sigterm();
    let drained = wait_until(WAIT_TIMEOUT, || async {
        matches!(gw.try_get("/readyz").await, Some(r) if r.status == 503)
    })
    .await;
    assert!(drained, "/readyz should turn 503 once SIGTERM arrives");
    let refusal = expect_refusal(gw.connect_raw(&ConnectOpts::token(&token("43", &[]))).await);
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(refusal.json()["error"], "draining", "{refusal:?}");
    assert!(
        refusal.header("retry-after").is_some(),
        "503 draining needs Retry-After"
    );
}

/// SPEC §7: a publish whose Redis command timed out may still happen, so it
/// answers 504 outcome_unknown (not "retry later" as if nothing happened),
/// and a retry with the same id is harmless: replay sends it once. A publish
/// while Redis is down is certainly not published: 503 broker_unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_publish_is_outcome_unknown_and_a_retry_is_harmless() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let admin = admin_token();
    let post = |body: &'static str| {
        let (gw, admin) = (&gw, &admin);
        async move {
            gw.post_bearer("/ws/test-message/9", admin, body.as_bytes())
                .await
        }
    };
    post(r#"{"type":"BEFORE","id":"b0"}"#)
        .await
        .assert_status(202);
    let mut c = gw.user("9", &[]).await;

    // Redis hangs past the command timeout: the MULTI/EXEC sits in its
    // input buffer and runs when it resumes.
    redis.pause();
    let r = post(r#"{"type":"RETRIED","id":"retry-1"}"#).await;
    redis.resume();
    r.assert_error(504, "outcome_unknown");
    assert_eq!(
        r.json()["id"],
        "retry-1",
        "the id to retry with: {}",
        r.text()
    );
    let v = c.next_json().await;
    assert_eq!(v["id"], "retry-1", "delivered after all: {v}");

    // The caller retries as told, with the same id: the history now holds
    // it twice, and a resume replays it once.
    post(r#"{"type":"RETRIED","id":"retry-1"}"#)
        .await
        .assert_status(202);
    let opts = ConnectOpts::token(&token("9", &[])).query("since", "b0");
    let mut resumed = gw.connect_raw(&opts).await.expect("resume");
    let d = resumed.expect_connected("9").await;
    assert_eq!(
        (d["recovered"].clone(), d["replayed"].clone()),
        (true.into(), 1.into()),
        "{d}"
    );
    assert_eq!(resumed.next_json().await["id"], "retry-1");

    // Redis gone: once the gateway has seen it go, certainly not published
    // (a publish racing the disconnect may still be outcome_unknown).
    redis.kill();
    let answers = std::sync::Mutex::new(Vec::new());
    let refused = wait_until(WAIT_TIMEOUT, || async {
        let r = post(r#"{"type":"LOST","id":"x"}"#).await;
        let code = r.json()["error"].as_str().map(str::to_string);
        let refused = r.status == 503 && code.as_deref() == Some("broker_unavailable");
        answers.lock().unwrap().push((r.status, code));
        refused
    })
    .await;
    let answers = answers.into_inner().unwrap();
    assert!(refused, "expected 503 broker_unavailable, got {answers:?}");
    assert!(
        answers.iter().all(|(s, _)| [503, 504].contains(s)),
        "a publish with Redis gone was accepted: {answers:?}"
    );
}

/// `ws-gateway publish` against an unreachable Redis says so in a sentence,
/// not in a Rust debug dump.
#[test]
fn publish_errors_are_sentences() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let out = run_cli(
        &["publish", "--user", "1", "--type", "X"],
        &[("GATEWAY_REDIS_URL", &url), ("GATEWAY_AUTH_SECRET", "s")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains("onnection refused"),
        "stderr: {stderr}"
    );
    for debug in ["Os {", "kind:", "code:"] {
        assert!(!stderr.contains(debug), "a debug dump in: {stderr}");
    }
}

/// The drain spreads its 1001 closes over `shutdown_drain_secs` so that the
/// clients' reconnects do not hit the other instances at once. What a
/// browser acts on is the close *completing* (`onclose`: the server's
/// socket closed after the closing handshake), so that must be spread too,
/// not held until the end of the window for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_each_connection_when_its_close_completes() {
    let gw = gateway()
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "2")
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "100")
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(gw.user("42", &[]).await);
    }
    let start = tokio::time::Instant::now();
    gw.sigterm();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut close = None;
                for _ in 0..100 {
                    match c.next_frame(Duration::from_secs(10)).await {
                        Some(Frame::Close(code)) => close = Some(code),
                        Some(Frame::End(_)) => return Ok((close, start.elapsed())),
                        None => return Err("no end of stream within 10 s".to_string()),
                        Some(_) => {}
                    }
                }
                Err("too many frames".to_string())
            })
        })
        .collect();
    let mut ends = Vec::new();
    for r in readers {
        let (close, at) = r.await.unwrap().unwrap();
        assert_eq!(close, Some(Some(1001)), "each client reads 1001 first");
        ends.push(at);
    }
    ends.sort();
    let (first, last) = (ends[0], ends[ends.len() - 1]);
    assert!(
        last - first >= Duration::from_millis(500),
        "closes completed within {:?} of each other (first at {first:?}, last at {last:?}): \
         not spread over the 2 s window",
        last - first
    );
}

/// A load balancer that health-checks `/readyz` must see the instance not
/// ready before any of its clients is closed, or their reconnects come back
/// to it: `shutdown_delay_secs` holds the drain back, while new connections
/// are already refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_delay_turns_the_instance_not_ready_before_the_first_close() {
    let gw = gateway()
        .env("GATEWAY_SERVER_SHUTDOWN_DELAY_SECS", "2")
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    let signalled = Instant::now();
    gw.sigterm();
    let not_ready = wait_until(Duration::from_secs(5), || async {
        gw.try_get("/readyz")
            .await
            .is_some_and(|r| r.status == 503 && r.json()["reason"] == "draining")
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 draining");
    let not_ready_at = signalled.elapsed();
    let refused = expect_refusal(gw.connect_raw(&ConnectOpts::token(&token("7", &[]))).await);
    assert_eq!(refused.status, 503, "a new connection while draining");
    let code = loop {
        match c.next_frame(Duration::from_secs(10)).await {
            Some(Frame::Close(code)) => break code,
            Some(Frame::Ping) => {}
            other => panic!("expected the 1001, got {other:?}"),
        }
    };
    let closed_at = signalled.elapsed();
    assert_eq!(code, Some(1001));
    assert!(
        closed_at >= Duration::from_secs(2) && not_ready_at < closed_at,
        "not ready at {not_ready_at:?}, the client closed at {closed_at:?}: \
         the close must wait the 2 s delay"
    );
}

/// Redis is down when the gateway starts and a client connects meanwhile.
/// When Redis comes up, what the backend published before the gateway had
/// subscribed is only in the history: the first connect must catch the
/// user's channel up, as every reconnect does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connected_before_redis_was_up_misses_nothing() {
    let port = free_port();
    let gw = gateway()
        .env("GATEWAY_REDIS_URL", &format!("redis://127.0.0.1:{port}"))
        .no_wait_ready()
        .start()
        .await;
    let opts = ConnectOpts::token(&token("5", &[]));
    let mut c = gw.connect_raw(&opts).await.expect("upgrade without Redis");
    // CONNECTED comes once the subscription wait gives up.
    let hello = c.next_text_within(Duration::from_secs(10)).await;
    assert!(hello.contains("CONNECTED"), "{hello}");

    let redis = Redis::start_on(port);
    let msg = format!(r#"{{"type":"EARLY","id":"{}"}}"#, ulid::Ulid::new());
    let acked = redis
        .conn()
        .await
        .publish_canonical("5", msg.as_bytes(), 100, WAIT_TIMEOUT)
        .await
        .expect("publish");
    assert!(acked);
    let got = c.next_frame(Duration::from_secs(20)).await;
    assert!(
        matches!(&got, Some(Frame::Text(t)) if *t == msg),
        "expected {msg}, got {got:?}; gateway log:\n{}",
        gw.logs_text()
    );
}

/// Stopping an in-process gateway drains like a signal: the client reads
/// 1001, and `server::run_until` returns Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_in_process_closes_clients_with_1001_and_returns() {
    let mut gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    let stopped = gw.stop_in_process(Duration::from_secs(10));
    let (closed, ended) = tokio::join!(c.read_until_close(Duration::from_secs(10)), stopped);
    let (texts, code, got_close) = closed;
    assert!(texts.is_empty() && got_close, "{texts:?}");
    assert_eq!(code, Some(1001));
    assert!(
        matches!(ended, Some(Ok(()))),
        "run_until should return Ok after the drain: {ended:?}"
    );
}
