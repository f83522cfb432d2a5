//! The JS client (`clients/js`, `ws-gateway-client`) against the real
//! gateway and Redis, from Node with the `ws` package (issue 14): events
//! by type, resume across a gateway kill and restart with exactly the
//! missed messages, `gap` on `recovered:false`, a refresh before `exp`,
//! a refused new token that stops, and rooms re-subscribed after a
//! reconnect. The client's unit tests (backoff, close codes, dedupe, the
//! token flow, with a fake socket) are its own: `npm test` in clients/js.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn ws_url(gw: &Gateway) -> String {
    format!("ws://{}/ws", gw.addr)
}

/// A JS client of user 42 over `/ws`, listening for `ty`, connected, its
/// subscription confirmed.
async fn connected(gw: &Gateway, redis: &Redis, ty: &str) -> JsClient {
    let user = token("42", &[]);
    let mut js = JsClient::start(&ws_url(gw), "ws", &[&user], &[ty]).await;
    js.wait_state(WAIT, "connected").await;
    redis.wait_numsub("ws:user:42", 1).await;
    js
}

/// The messages the client reported, `n` of them, as (type, id, data).
async fn messages(js: &mut JsClient, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(js.next_message(WAIT).await);
    }
    got
}

/// Checks that the client reports no further message within 500 ms.
async fn expect_no_more_messages(js: &mut JsClient) {
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match js.next_event(left).await {
            None => return,
            Some(v) if v["ev"] == "message" => panic!("a duplicate or more: {v}"),
            Some(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_by_type_with_their_data() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut js = connected(&gw, &redis, "BUDGET_ALERT").await;
    let sent = redis
        .conn()
        .await
        .publish_numbered("42", "BUDGET_ALERT", 0..=1)
        .await;
    let got = messages(&mut js, 2).await;
    for (m, g) in sent.iter().zip(&got) {
        assert_eq!(g["type"], "BUDGET_ALERT", "{g}");
        assert_eq!(g["id"], m["id"], "in order: {g}");
        assert_eq!(g["data"], m["data"], "{g}");
    }
    let now = js.state_now().await;
    assert_eq!(now["lastId"], sent[1]["id"], "lastId follows: {now}");
}

/// The gateway is killed (no drain, no close frame) and started again on
/// the same port: the client reconnects with `since` and gets exactly what
/// was published meanwhile, from the user's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_resumes_with_exactly_the_missed_messages() {
    let redis = Redis::start();
    let port = free_port();
    let start = || gateway().redis(&redis).listen_port(port).start();
    let gw = start().await;
    let mut js = connected(&gw, &redis, "NEW_TRANSACTION").await;
    let mut conn = redis.conn().await;
    let first = conn.publish_numbered("42", "NEW_TRANSACTION", 0..=0).await;
    assert_eq!(js.next_message(WAIT).await["id"], first[0]["id"]);

    drop(gw);
    js.wait_state(WAIT, "disconnected").await;
    let missed = conn.publish_numbered("42", "NEW_TRANSACTION", 1..=3).await;
    let _gw = start().await;
    js.wait_state(Duration::from_secs(40), "connected").await;
    let got = messages(&mut js, 3).await;
    for (m, g) in missed.iter().zip(&got) {
        assert_eq!(
            g["id"], m["id"],
            "exactly the missed ones, in order: {got:?}"
        );
    }
    expect_no_more_messages(&mut js).await;
}

/// A resume from an id the history no longer holds: CONNECTED says
/// `recovered:false`, and the client emits `gap` so the app re-fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_resume_point_is_a_gap() {
    let redis = Redis::start();
    let port = free_port();
    let start = || gateway().redis(&redis).listen_port(port).start();
    let gw = start().await;
    let mut js = connected(&gw, &redis, "NEW_TRANSACTION").await;
    let mut conn = redis.conn().await;
    conn.publish_numbered("42", "NEW_TRANSACTION", 0..=0).await;
    js.next_message(WAIT).await;

    drop(gw);
    js.wait_state(WAIT, "disconnected").await;
    // Published with the history trimmed to 2: the client's last id, and
    // everything up to its time, is gone.
    for _ in 0..3 {
        let id = ulid::Ulid::new().to_string();
        let m = json!({"type": "NEW_TRANSACTION", "id": id, "data": {}});
        let ok = conn
            .publish_canonical("42", m.to_string().as_bytes(), 2, WAIT)
            .await;
        assert_eq!(ok, Ok(true));
    }
    let _gw = start().await;
    js.wait_ev(Duration::from_secs(40), "gap").await;
}

/// TOKEN_EXPIRING 60 s before `exp`: the client asks for a new token and
/// refreshes, and the connection outlives the first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_before_exp_keeps_the_connection_open() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_AUTH_LEEWAY_SECS", "0")
        .start()
        .await;
    let short = mint_claims(&json!({ "sub": "42", "exp": now_secs() + 62 }));
    let long = token("42", &[]);
    let mut js = JsClient::start(&ws_url(&gw), "ws", &[&short, &long], &["BALANCE_UPDATE"]).await;
    js.wait_state(WAIT, "connected").await;
    // The second call of token() is the refresh (the first was at start).
    js.wait_for(WAIT, |v| v["ev"] == "token" && v["n"] == 2)
        .await;
    // Past the first token's exp (+ leeway 0): still the same connection.
    let past_exp = std::time::Instant::now() + Duration::from_secs(5);
    redis.wait_numsub("ws:user:42", 1).await;
    let mut conn = redis.conn().await;
    loop {
        let now = std::time::Instant::now();
        if now >= past_exp {
            break;
        }
        if let Some(v) = js.next_event(past_exp - now).await {
            assert_ne!(v["ev"], "state", "the connection changed state: {v}");
        }
    }
    let m = conn.publish_numbered("42", "BALANCE_UPDATE", 0..=0).await;
    assert_eq!(js.next_message(WAIT).await["id"], m[0]["id"]);
    assert_eq!(js.state_now().await["state"], "connected");
}

/// 4001 (the token expired on the connection), a new token, refused too:
/// the client stops instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_new_token_stops_the_client() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let expired = mint_claims(&json!({ "sub": "42", "exp": now_secs() - 600 }));
    let mut js = JsClient::start(&ws_url(&gw), "ws", &[&expired], &[]).await;
    js.wait_state(Duration::from_secs(20), "stopped").await;
    let calls = js.state_now().await;
    assert_eq!(calls["state"], "stopped", "{calls}");
    // token() at start and once after the first 4001: no more.
    let tokens: Vec<Value> = js
        .seen()
        .into_iter()
        .filter(|v| v["ev"] == "token")
        .collect();
    assert_eq!(tokens.len(), 2, "token() calls: {tokens:?}");
}

/// `subscribe` resolves on SUBSCRIBED (rejects on ERROR), room messages
/// arrive, `unsubscribe` ends them, and after a reconnect the client
/// subscribes again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_subscribed_and_resubscribed_after_a_reconnect() {
    let redis = Redis::start();
    let port = free_port();
    let start = || gateway().redis(&redis).listen_port(port).start();
    let gw = start().await;
    let user = mint_claims(&json!({
        "sub": "42",
        "channels": ["household-*"],
        "exp": now_secs() + 3600,
    }));
    let mut js = JsClient::start(&ws_url(&gw), "ws", &[&user], &["BUDGET_UPDATED"]).await;
    js.wait_state(WAIT, "connected").await;
    assert_eq!(
        js.room("subscribe", "household-7").await["ev"],
        "subscribed"
    );
    let refused = js.room("subscribe", "other-1").await;
    assert_eq!(refused["ev"], "rejected", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    redis.wait_numsub("ws:room:household-7", 1).await;
    let room_message = |n: u32| json!({"type": "BUDGET_UPDATED", "id": ulid::Ulid::new().to_string(), "data": {"n": n}});
    let m = room_message(0);
    redis.publish("ws:room:household-7", m.to_string()).await;
    assert_eq!(js.next_message(WAIT).await["id"], m["id"]);

    drop(gw);
    js.wait_state(WAIT, "disconnected").await;
    let gw = start().await;
    js.wait_state(Duration::from_secs(40), "connected").await;
    redis.wait_numsub("ws:room:household-7", 1).await;
    let m = room_message(1);
    redis.publish("ws:room:household-7", m.to_string()).await;
    assert_eq!(
        js.next_message(WAIT).await["id"],
        m["id"],
        "the room is subscribed again"
    );

    assert_eq!(
        js.room("unsubscribe", "household-7").await["ev"],
        "unsubscribed"
    );
    redis.wait_numsub("ws:room:household-7", 0).await;
    drop(gw);
}

/// The SSE transport (`transport: "sse"`, Node's `eventsource` package in
/// the driver): messages by type, and a gateway restart resumed from the
/// last id with exactly the missed messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sse_messages_arrive_and_a_restart_resumes_exactly() {
    let redis = Redis::start();
    let port = free_port();
    let start = || gateway().redis(&redis).listen_port(port).start();
    let gw = start().await;
    let url = format!("http://{}/sse", gw.addr);
    let user = token("42", &[]);
    let mut js = JsClient::start(&url, "sse", &[&user], &["GOAL_ACHIEVED"]).await;
    js.wait_state(WAIT, "connected").await;
    redis.wait_numsub("ws:user:42", 1).await;
    let mut conn = redis.conn().await;
    let first = conn.publish_numbered("42", "GOAL_ACHIEVED", 0..=0).await;
    let got = js.next_message(WAIT).await;
    assert_eq!(got["id"], first[0]["id"], "{got}");
    assert_eq!(got["data"], first[0]["data"], "{got}");

    drop(gw);
    let missed = conn.publish_numbered("42", "GOAL_ACHIEVED", 1..=3).await;
    let _gw = start().await;
    let got = messages(&mut js, 3).await;
    for (m, g) in missed.iter().zip(&got) {
        assert_eq!(
            g["id"], m["id"],
            "exactly the missed ones, in order: {got:?}"
        );
    }
    expect_no_more_messages(&mut js).await;
}
