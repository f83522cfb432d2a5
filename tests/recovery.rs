//! Offline recovery with `since=<id>` (SPEC §4), on Redis and on the
//! embedded broker.

mod common;

use common::*;
use serde_json::{json, Value};

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
