//! Socket.IO clients (SPEC §11), with the real `socket.io-client` (4.8.x,
//! driven from Node by tests/common/socketio.rs): events under the mapped
//! names with the right payload, refusals, recovery through a dropped
//! transport and through a gateway restart, and the client events.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// The `args` of a server event seen by the client.
fn args(event: &Value) -> Vec<Value> {
    event["args"].as_array().cloned().unwrap_or_default()
}

/// Waits for `messages`, in order, as `event` events with the data and the
/// id, then checks that nothing more comes (no duplicate) within 500 ms.
async fn expect_exactly(sio: &mut SioClient, event: &str, messages: &[Value]) {
    for m in messages {
        let e = sio.wait_event(WAIT, event).await;
        assert_eq!(
            args(&e),
            vec![m["data"].clone(), m["id"].clone()],
            "in order, once"
        );
    }
    if let Some(v) = sio.next_event(Duration::from_millis(500)).await {
        panic!("a duplicate or more after {} events: {v}", messages.len());
    }
}

/// A socket.io-client of `user`, connected, its subscription confirmed.
async fn connected(gw: &Gateway, redis: &Redis, user: &str) -> SioClient {
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&token(user, &[])));
    sio.expect_connect(WAIT).await;
    redis.wait_numsub(&format!("ws:user:{user}"), 1).await;
    sio
}

async fn publish(redis: &Redis, channel: &str, message: Value) {
    redis.publish(channel, message.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_under_their_mapped_names_with_the_data_and_the_id() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&token("42", &["admin"])));
    let connected = sio.expect_connect(WAIT).await;
    assert_eq!(connected["recovered"], false, "{connected}");
    redis.wait_numsub("ws:user:42", 1).await;
    redis.wait_numsub("ws:role:admin", 1).await;

    let alert = json!({"type": "BUDGET_ALERT", "id": "m1", "data": {"budget": "food", "pct": 90}});
    publish(&redis, "ws:user:42", alert).await;
    let e = sio.wait_event(WAIT, "budget:threshold_exceeded").await;
    assert_eq!(
        args(&e),
        vec![json!({"budget": "food", "pct": 90}), json!("m1")]
    );

    let news = json!({"type": "NEW_TRANSACTION", "id": "b1", "data": {"amount": -12.5}});
    publish(&redis, "ws:broadcast", news).await;
    let e = sio.wait_event(WAIT, "transaction:created").await;
    assert_eq!(args(&e), vec![json!({"amount": -12.5}), json!("b1")]);

    // A type the table does not know keeps its name; no data: the whole
    // message; no id: the last offset again.
    let custom = json!({"type": "AUDIT", "note": "x"});
    publish(&redis, "ws:role:admin", custom.clone()).await;
    let e = sio.wait_event(WAIT, "AUDIT").await;
    assert_eq!(args(&e), vec![custom, json!("b1")]);

    let stats = gw.get("/metrics").await.text();
    assert!(
        stats.contains(r#"ws_gateway_connections{transport="socketio"} 1"#),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_a_final_connect_error() {
    let gw = gateway().start().await;
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token("not-a-jwt"));
    let e = sio.wait_ev(WAIT, "connect_error").await;
    assert_eq!(e["message"], "invalid_token", "{e}");
    // 44 is final: socket.io-client does not try again by itself.
    if let Some(v) = sio.next_event(Duration::from_millis(1500)).await {
        panic!("after a 44: {v}");
    }
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).auth(json!({})));
    let e = sio.wait_ev(WAIT, "connect_error").await;
    assert_eq!(e["message"], "missing_token", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_is_refused_with_transport_unsupported() {
    let gw = gateway().in_process().start().await;
    let r = gw.get("/socket.io/?EIO=4&transport=polling").await;
    r.assert_error(400, "transport_unsupported");
    let r = gw.get("/socket.io/?EIO=3&transport=websocket").await;
    r.assert_error(400, "bad_request");
}

/// The way Socket.IO's own recovery works, across a dropped transport:
/// the client reconnects with its pid and the offset of its last event,
/// and gets exactly what it missed, in order, with `recovered: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transport_recovers_exactly_the_missed_events() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut sio = connected(&gw, &redis, "42").await;
    let mut conn = redis.conn().await;
    let first = conn.publish_numbered("42", "BALANCE_UPDATE", 0..=0).await;
    expect_exactly(&mut sio, "balance:updated", &first).await;

    sio.close_transport();
    sio.wait_ev(WAIT, "disconnect").await;
    let missed = conn.publish_numbered("42", "BALANCE_UPDATE", 1..=3).await;
    let back = sio.expect_connect(WAIT).await;
    assert_eq!(back["recovered"], true, "{back}");
    expect_exactly(&mut sio, "balance:updated", &missed).await;
}

/// What Socket.IO's own recovery cannot do: the instance the client was
/// on dies, and the one it reconnects to still has everything, from the
/// user's Redis history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_recovers_exactly_the_missed_events() {
    let redis = Redis::start();
    let port = free_port();
    let start = || gateway().redis(&redis).listen_port(port).start();
    let gw = start().await;
    let mut sio = connected(&gw, &redis, "42").await;
    let mut conn = redis.conn().await;
    let first = conn
        .publish_numbered("42", "GOAL_PROGRESS_UPDATE", 0..=0)
        .await;
    expect_exactly(&mut sio, "goal:progress_updated", &first).await;

    drop(gw); // killed: no drain, no close frame
    sio.wait_ev(WAIT, "disconnect").await;
    let missed = conn
        .publish_numbered("42", "GOAL_PROGRESS_UPDATE", 1..=3)
        .await;
    let _gw = start().await;
    // The client's reconnect attempts fail until the new instance is up.
    let back = sio.wait_ev(Duration::from_secs(20), "connect").await;
    assert_eq!(back["recovered"], true, "{back}");
    expect_exactly(&mut sio, "goal:progress_updated", &missed).await;
}

/// Socket.IO's own recovery cannot work when its adapter's Redis is
/// away. Here the client comes back while Redis does not answer: the
/// gateway cannot read the history, so it closes the transport (no `44`,
/// no fresh pid that would say "lost"), the client retries by itself, and
/// once Redis answers it recovers exactly the missed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_while_redis_is_unreachable_recovers_once_it_answers() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut sio = connected(&gw, &redis, "42").await;
    let mut conn = redis.conn().await;
    let first = conn.publish_numbered("42", "BALANCE_UPDATE", 0..=0).await;
    expect_exactly(&mut sio, "balance:updated", &first).await;

    sio.disconnect();
    sio.wait_ev(WAIT, "disconnect").await;
    let missed = conn.publish_numbered("42", "BALANCE_UPDATE", 1..=3).await;
    redis.pause();
    sio.connect_again();
    // Bounded by the subscription wait and the command timeout (5 s each).
    let refused = sio
        .wait_for(Duration::from_secs(30), |v| {
            ["connect", "connect_error", "disconnect"].contains(&v["ev"].as_str().unwrap_or(""))
        })
        .await;
    assert_ne!(
        refused["ev"], "connect",
        "connected while history was unreadable: {refused}"
    );
    sio.wait_ev(WAIT, "reconnect_attempt").await;

    redis.resume();
    let back = sio.wait_ev(Duration::from_secs(40), "connect").await;
    assert_eq!(back["recovered"], true, "{back}");
    expect_exactly(&mut sio, "balance:updated", &missed).await;
}

/// Socket.IO's Redis adapter loses what is published while its
/// subscriber is away. Here Redis is killed and restarted empty while a
/// socket.io-client stays connected; what the backend publishes as soon as
/// Redis is back, before the gateway has resubscribed, still arrives: the
/// gateway reads it from the new history. Exactly once, in order, and the
/// client never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_gets_everything_through_a_redis_restart() {
    let redis = Redis::start();
    let port = redis.port;
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .start()
        .await;
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&token("7", &[])));
    sio.expect_connect(WAIT).await;
    redis.wait_numsub("ws:user:7", 1).await;
    let mut conn = redis.conn().await;
    let before = conn.publish_numbered("7", "BALANCE_UPDATE", 0..=0).await;
    expect_exactly(&mut sio, "balance:updated", &before).await;

    drop(conn);
    redis.kill();
    let down = wait_until(WAIT, || async {
        gw.try_get("/readyz").await.map(|r| r.status) == Some(503)
    })
    .await;
    assert!(down, "/readyz should report the outage");
    let redis = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .expect("restart redis");
    // At once, as a backend retrying its publishes would.
    let mut conn = redis.conn().await;
    let after = conn.publish_numbered("7", "BALANCE_UPDATE", 1..=10).await;
    // The first may wait for the gateway's reconnect; nothing else comes first.
    let e = sio.wait_for(Duration::from_secs(30), |_| true).await;
    assert_eq!(e["ev"], "event", "the client stays connected: {e}");
    assert_eq!(
        args(&e),
        vec![after[0]["data"].clone(), after[0]["id"].clone()]
    );
    expect_exactly(&mut sio, "balance:updated", &after[1..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_answer_through_acks() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let claims = json!({"sub": "42", "channels": ["household-*"], "exp": now_secs() + 3600});
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&mint_claims(&claims)));
    sio.expect_connect(WAIT).await;
    assert_eq!(sio.subscribe("household-7").await, json!({"ok": true}));
    assert_eq!(sio.subscribe("team-1").await, json!({"error": "forbidden"}));
    redis.wait_numsub("ws:room:household-7", 1).await;
    publish(
        &redis,
        "ws:room:household-7",
        json!({"type": "BUDGET_UPDATED", "id": "r1", "data": {}}),
    )
    .await;
    let e = sio.wait_event(WAIT, "budget:updated").await;
    assert_eq!(args(&e), vec![json!({}), json!("r1")]);
    let left = sio
        .emit("unsubscribe", vec![json!({"room": "household-7"})], true)
        .await
        .expect("an ack");
    assert_eq!(left, vec![json!({"ok": true})]);
    redis.wait_numsub("ws:room:household-7", 0).await;
}

/// `44` would be final; the per-user cap closes the transport instead, so
/// the client keeps trying with its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_cap_closes_the_transport_with_4029() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "1")
        .start()
        .await;
    let mut first = SioClient::start().await;
    first.connect(&SioConnect::to(gw.addr).token(&token("42", &[])));
    first.expect_connect(WAIT).await;
    let mut second = SioClient::start().await;
    second.connect(&SioConnect::to(gw.addr).token(&token("42", &[])));
    let e = second
        .wait_for(WAIT, |v| {
            v["ev"] == "disconnect" || v["ev"] == "connect_error"
        })
        .await;
    let closed = e.to_string();
    assert!(closed.contains("4029"), "{closed}");
    second.wait_ev(WAIT, "reconnect_attempt").await;
}

/// SPEC §5 through Socket.IO: `token_expiring` before `exp`, and at `exp`
/// + leeway a DISCONNECT, which socket.io-client takes as final ("io
/// server disconnect": it does not reconnect with the expired token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_connection_for_good() {
    let gw = gateway().env("GATEWAY_AUTH_LEEWAY_SECS", "0").start().await;
    let exp = now_secs() + 3;
    let claims = json!({"sub": "42", "exp": exp});
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&mint_claims(&claims)));
    let connected = sio.expect_connect(WAIT).await;
    let e = sio.wait_event(WAIT, "token_expiring").await;
    assert_eq!(args(&e)[0], json!({"exp": exp}), "{e}");
    assert_eq!(args(&e)[1], connected["pid"], "the offset so far: the pid");
    let gone = sio.wait_ev(WAIT, "disconnect").await;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
    if let Some(v) = sio.next_event(Duration::from_millis(1500)).await {
        panic!("after the final disconnect: {v}");
    }
}

/// `auth_refresh` with a valid token moves the deadline and is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refresh_is_acked() {
    let gw = gateway().start().await;
    let mut sio = SioClient::start().await;
    sio.connect(&SioConnect::to(gw.addr).token(&token("42", &[])));
    sio.expect_connect(WAIT).await;
    let fresh = json!({"sub": "42", "exp": now_secs() + 7200});
    let ack = sio
        .emit(
            "auth_refresh",
            vec![json!({"token": mint_claims(&fresh)})],
            true,
        )
        .await
        .expect("an ack");
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    assert_eq!(ack[0]["exp"], fresh["exp"], "{ack:?}");
    let other = json!({"sub": "7", "exp": now_secs() + 7200});
    let ack = sio
        .emit(
            "auth_refresh",
            vec![json!({"token": mint_claims(&other)})],
            true,
        )
        .await
        .expect("an ack");
    assert_eq!(ack[0]["error"], "invalid_token", "{ack:?}");
    let gone = sio.wait_ev(WAIT, "disconnect").await;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
}

/// SPEC §11: a ping the client does not answer within pingTimeout (20 s)
/// closes the connection, even while the client keeps sending events (a
/// stuck client whose event loop still emits, or a half-dead proxy path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_closes_the_connection_whatever_else_the_client_sends() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "1")
        .start()
        .await;
    let mut c = raw_socketio(gw.addr, &token("42", &[])).await;
    let started = Instant::now();
    let mut pings = 0;
    // Events every 500 ms, pings never answered; bounded to 40 s.
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "still open after 40 s ({pings} pings unanswered)"
        );
        assert!(
            c.try_send_text(r#"42["noise",{}]"#).await,
            "the send failed before a close"
        );
        match c.next_frame(Duration::from_millis(500)).await {
            Some(Frame::Text(t)) if t == "2" => pings += 1,
            Some(Frame::Text(t)) => panic!("unexpected frame {t:.200}"),
            Some(Frame::Close(code)) => break code,
            Some(Frame::End(e)) => panic!("the connection ended without a close: {e:?}"),
            Some(_) | None => {}
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1001), "closed as a timeout");
    assert!(
        elapsed >= Duration::from_secs(20),
        "closed after {elapsed:?}, before pingTimeout"
    );
    assert!(pings >= 1, "a ping came first");
}
