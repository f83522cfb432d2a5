//! Offline recovery with `since=<id>` (SPEC §4), on Redis and on the
//! embedded broker.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Publishes `n` messages to `user` through the admin API; returns their ids.
async fn publish_n(gw: &Gateway, user: &str, n: usize, tag: &str) -> Vec<String> {
    let admin = admin_token();
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"type": "NEW_TRANSACTION", "data": {"tag": tag, "i": i}});
        let r = gw
            .post_bearer(
                &format!("/ws/test-message/{user}"),
                &admin,
                body.to_string().as_bytes(),
            )
            .await;
        assert_eq!(r.status, 202, "publish #{i}: {}", r.text());
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    ids
}

async fn connect_since(gw: &Gateway, user: &str, since: &str) -> (Client, Value) {
    let opts = ConnectOpts::token(&token(user, &[])).query("since", since);
    let mut c = gw
        .connect_raw(&opts)
        .await
        .unwrap_or_else(|e| panic!("handshake with since refused: {}", describe_ws_error(&e)));
    let d = c.expect_connected(user).await;
    (c, d)
}

async fn recovery_scenario(gw: &Gateway) {
    // Nobody is connected while these are published.
    let ids = publish_n(gw, "42", 4, "offline").await;

    let (mut c, d) = connect_since(gw, "42", &ids[1]).await;
    assert_eq!(d["recovered"], true, "since a known id: {d}");
    assert_eq!(d["replayed"], 2, "messages after ids[1]: {d}");
    for want in &ids[2..] {
        let v = c.next_json().await;
        assert_eq!(v["id"], want.as_str(), "replayed in order: {v}");
        assert_eq!(v["type"], "NEW_TRANSACTION", "{v}");
    }
    // Then live, without duplicates.
    let live = publish_n(gw, "42", 1, "live").await;
    let v = c.next_json().await;
    assert_eq!(
        v["id"],
        live[0].as_str(),
        "first live message after replay: {v}"
    );

    // Since the newest id: nothing to replay, but recovered.
    let (mut c2, d) = connect_since(gw, "42", &live[0]).await;
    assert_eq!(d["recovered"], true, "{d}");
    assert_eq!(d["replayed"], 0, "{d}");

    // An unknown id: recovered false, nothing replayed.
    let (mut c3, d) = connect_since(gw, "42", "01UNKNOWNID0000000000000000").await;
    assert_eq!(d["recovered"], false, "since an unknown id: {d}");
    assert_eq!(d["replayed"], 0, "{d}");

    let live2 = publish_n(gw, "42", 1, "live2").await;
    for c in [&mut c, &mut c2, &mut c3] {
        let v = c.next_json().await;
        assert_eq!(v["id"], live2[0].as_str(), "next live message: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_history_redis() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    recovery_scenario(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_history_embedded() {
    let gw = gateway().start().await;
    recovery_scenario(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_to_history_size() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_HISTORY_SIZE", "3")
        .start()
        .await;
    let ids = publish_n(&gw, "42", 5, "trim").await;
    assert_eq!(
        redis.cli(&["LLEN", "notifications:42"]),
        "3",
        "history keeps the newest 3"
    );
    let ttl: i64 = redis
        .cli(&["TTL", "notifications:42"])
        .parse()
        .expect("TTL");
    assert!(ttl > 0, "history has an expiry, TTL = {ttl}");

    // ids[0] was trimmed away.
    let (_c, d) = connect_since(&gw, "42", &ids[0]).await;
    assert_eq!(d["recovered"], false, "trimmed id: {d}");
    // ids[2] is still there: 3 and 4 follow.
    let (mut c, d) = connect_since(&gw, "42", &ids[2]).await;
    assert_eq!(d["recovered"], true, "{d}");
    assert_eq!(d["replayed"], 2, "{d}");
    assert_eq!(c.next_json().await["id"], ids[3].as_str());
    assert_eq!(c.next_json().await["id"], ids[4].as_str());
}

/// A backend that skips the LTRIM leaves a history longer than
/// `history_size`: a resume reads only the newest `history_size` entries,
/// so one reconnect cannot make the gateway read and replay all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reads_at_most_history_size_entries() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_HISTORY_SIZE", "100")
        .start()
        .await;
    let mut conn = redis.conn().await;
    let entries: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"type":"UNTRIMMED","id":"h{i}"}}"#))
        .collect();
    let mut args: Vec<&[u8]> = vec![b"RPUSH", b"notifications:42"];
    args.extend(entries.iter().map(|e| e.as_bytes()));
    assert_eq!(conn.command(&args).await.int(), 500);

    // h10 is only beyond the newest 100: not found, nothing replayed.
    let (_c, d) = connect_since(&gw, "42", "h10").await;
    assert_eq!(d["recovered"], false, "an id older than history_size: {d}");
    assert_eq!(d["replayed"], 0, "{d}");
    // h450 is among the newest 100: the 49 after it.
    let (mut c, d) = connect_since(&gw, "42", "h450").await;
    assert_eq!(d["recovered"], true, "{d}");
    assert_eq!(d["replayed"], 49, "{d}");
    assert_eq!(c.next_json().await["id"], "h451");
}

/// POSTs `body` to an admin publishing `path`; returns the message id.
async fn post_message(gw: &Gateway, path: &str, body: Value) -> String {
    let r = gw
        .post_bearer(path, &admin_token(), body.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "POST {path}: {}", r.text());
    r.json()["id"].as_str().expect("id").to_string()
}

/// The time of a ULID, in ms since the epoch.
fn ulid_ms(id: &str) -> u64 {
    ulid::Ulid::from_string(id)
        .unwrap_or_else(|e| panic!("{id:?} is not a ULID: {e}"))
        .timestamp_ms()
}

/// SPEC §4: a client keeps the id of the last message it saw, whatever its
/// channel. Reproduces the report: a user message, a broadcast, a gateway
/// restart, a user message published while it was down; the client resumes
/// with the broadcast's id (not in the user's history) and must get the
/// missed user message, with `recovered: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_broadcast_id_after_a_restart() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let opts = ConnectOpts::token(&token("42", &[]));
    let mut c = gw.connect_raw(&opts).await.expect("connect");
    let hello = c.next_json().await;
    assert_eq!(hello["type"], "CONNECTED", "{hello}");
    let connected_id = hello["id"]
        .as_str()
        .unwrap_or_else(|| panic!("CONNECTED carries a top-level ULID id (SPEC §4): {hello}"));
    let age = ulid_ms(connected_id).abs_diff(now_secs() * 1000);
    assert!(age < 60_000, "CONNECTED id is of the connect time: {hello}");

    let u1 = post_message(&gw, "/ws/test-message/42", json!({"type": "U1"})).await;
    assert_eq!(c.next_json().await["id"], u1.as_str());
    let b1 = post_message(&gw, "/ws/broadcast", json!({"type": "B1"})).await;
    assert_eq!(c.next_json().await["id"], b1.as_str());
    drop(c);
    drop(gw);

    // Published while no gateway runs, through the canonical path.
    let u2 = ulid::Ulid::new().to_string();
    let msg = format!(r#"{{"type":"U2","id":"{u2}"}}"#);
    let mut conn = redis.conn().await;
    let acked = conn
        .publish_canonical("42", msg.as_bytes(), 100, WAIT_TIMEOUT)
        .await
        .expect("publish");
    assert!(acked);

    let gw = gateway().redis(&redis).start().await;
    let (mut c, d) = connect_since(&gw, "42", &b1).await;
    assert_eq!(d["recovered"], true, "since a broadcast's ULID: {d}");
    // By time, with a 2 s look-back: U1 may come again (the client drops
    // it by id); U2 must come, and nothing after it.
    let mut got = Vec::new();
    for _ in 0..d["replayed"].as_u64().expect("replayed") {
        got.push(c.next_json().await["id"].as_str().unwrap().to_string());
    }
    assert_eq!(got.last(), Some(&u2), "replayed {got:?}");
    assert!(got.iter().all(|id| *id == u1 || *id == u2), "{got:?}");

    // CONNECTED's id is a resume point too: everything since the connect.
    // The history starts after it (U1), so by SPEC §4's rule it cannot tell
    // a trimmed history from a new one: recovered is false.
    let (_c, d) = connect_since(&gw, "42", connected_id).await;
    assert_eq!(d["replayed"], 2, "U1 and U2 since the first connect: {d}");
    assert_eq!(d["recovered"], false, "{d}");
}

/// The ULID rule's `recovered` (SPEC §4): true when the history reaches
/// back to the ULID's time (an empty one: when the ULID is younger than
/// history_ttl_secs), false when it was trimmed past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ulid_since_not_in_history_is_placed_by_time() {
    let gw = gateway()
        .env("GATEWAY_REDIS_HISTORY_SIZE", "2")
        .start()
        .await;
    let fresh = ulid::Ulid::new().to_string();
    let (_c, d) = connect_since(&gw, "7", &fresh).await;
    assert_eq!(d["recovered"], true, "empty history, fresh ULID: {d}");
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
    let old = ulid::Ulid::from_datetime(month_ago).to_string();
    let (_c, d) = connect_since(&gw, "7", &old).await;
    assert_eq!(
        d["recovered"], false,
        "empty history, ULID older than the TTL: {d}"
    );

    let ids = publish_n(&gw, "7", 3, "trimmed").await;
    // The oldest entry (ids[1]) is newer than a month ago: trimmed past it.
    let (mut c, d) = connect_since(&gw, "7", &old).await;
    assert_eq!(d["recovered"], false, "{d}");
    assert_eq!(d["replayed"], 2, "still everything newer: {d}");
    assert_eq!(c.next_json().await["id"], ids[1].as_str());
}

/// A resume asked while Redis does not answer cannot read the history. The
/// messages are safe there, so `recovered:false` (re-fetch everything)
/// would be wrong: the gateway refuses with 1013 (try again later), and the
/// retry once Redis answers again recovers exactly what was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_redis_is_unreachable_is_refused_for_a_retry() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut conn = redis.conn().await;
    let published = conn.publish_numbered("42", "BALANCE_UPDATE", 0..=2).await;
    let ids: Vec<String> = published
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();

    redis.pause();
    let opts = ConnectOpts::token(&token("42", &[])).query("since", &ids[0]);
    let mut c = gw
        .connect_raw(&opts)
        .await
        .unwrap_or_else(|e| panic!("handshake refused: {}", describe_ws_error(&e)));
    // Bounded by the subscription wait and the command timeout (5 s each).
    let first = c.next_text_within(Duration::from_secs(30)).await;
    let v: Value = serde_json::from_str(&first).expect("a JSON frame");
    assert_eq!(
        v["type"], "ERROR",
        "no CONNECTED while history is unreadable: {v}"
    );
    assert_eq!(v["data"]["code"], "history_unavailable", "{v}");
    c.expect_close(1013).await;

    redis.resume();
    let (mut c, d) = connect_since(&gw, "42", &ids[0]).await;
    assert_eq!(d["recovered"], true, "{d}");
    for want in &ids[1..] {
        let v = c.next_json().await;
        assert_eq!(v["id"], want.as_str(), "replayed in order: {v}");
    }
    let metrics = gw.get("/metrics").await.text();
    assert!(
        metrics
            .contains(r#"ws_gateway_handshake_rejections_total{reason="history_unavailable"} 1"#),
        "the refusal is counted: {metrics}"
    );
}
