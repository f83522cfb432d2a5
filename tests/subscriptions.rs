//! Redis subscriptions follow the set of locally connected users (SPEC §3).

mod common;

use common::*;
use std::time::Duration;

async fn wait_channel_present(redis: &Redis, channel: &str, present: bool) {
    let ok = wait_until(WAIT_TIMEOUT, || async {
        redis
            .channels("ws:user:*")
            .await
            .iter()
            .any(|c| c == channel)
            == present
    })
    .await;
    assert!(
        ok,
        "expected {channel} to be {} in PUBSUB CHANNELS within {WAIT_TIMEOUT:?}; channels: {:?}",
        if present { "listed" } else { "absent" },
        redis.channels("ws:user:*").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_while_connected_unsubscribed_after_last_close() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;

    assert!(
        !redis
            .channels("ws:user:*")
            .await
            .contains(&"ws:user:42".to_string()),
        "no ws:user:42 subscription before anyone connects"
    );
    let first = gw.user("42", &[]).await;
    wait_channel_present(&redis, "ws:user:42", true).await;
    let mut second = gw.user("42", &[]).await;

    // Closing one of two connections keeps the subscription: the remaining
    // connection still receives messages.
    first.close().await;
    gw.wait_connections(1).await;
    assert!(
        redis
            .channels("ws:user:*")
            .await
            .contains(&"ws:user:42".to_string()),
        "ws:user:42 must stay subscribed while a connection of 42 remains"
    );
    let msg = r#"{"type":"NOTIFICATION","id":"s-1","data":{}}"#;
    redis.publish("ws:user:42", msg).await;
    assert_eq!(second.next_text().await, msg, "remaining connection of 42");

    second.close().await;
    wait_channel_present(&redis, "ws:user:42", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_also_unsubscribes() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let c = gw.user("42", &[]).await;
    wait_channel_present(&redis, "ws:user:42", true).await;
    // Drop the TCP connection without a close handshake.
    drop(c);
    wait_channel_present(&redis, "ws:user:42", false).await;
    gw.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_stale_subscription() {
    let redis = Redis::start();
    let gw = std::sync::Arc::new(gateway().redis(&redis).start().await);

    let mut steady = gw.user("8", &[]).await;
    wait_channel_present(&redis, "ws:user:8", true).await;

    let tok7 = token("7", &[]);
    let mut tasks = Vec::new();
    for task in 0..4 {
        let gw = gw.clone();
        let tok7 = tok7.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..13 {
                let (c, _) = gw.connect_user(&tok7, "7").await;
                if (task + round) % 3 == 0 {
                    // Abrupt: drop the socket without a close handshake.
                    drop(c);
                } else {
                    c.close().await;
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(60), t)
            .await
            .expect("churn task finished within 60 s")
            .expect("churn task did not panic");
    }

    wait_channel_present(&redis, "ws:user:7", false).await;
    gw.wait_connections(1).await;
    assert!(
        redis
            .channels("ws:user:*")
            .await
            .contains(&"ws:user:8".to_string()),
        "ws:user:8 must still be subscribed after the churn of user 7"
    );
    let msg = r#"{"type":"GOAL_PROGRESS_UPDATE","id":"g-1","data":{"pct":50}}"#;
    redis.publish("ws:user:8", msg).await;
    assert_eq!(steady.next_text().await, msg, "long-lived user 8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_do_not_grow_with_clients() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let count_clients = || {
        // Every client connection Redis has, minus redis-cli's own.
        redis.cli(&["CLIENT", "LIST"]).lines().count() - 1
    };
    let before = count_clients();
    assert!(
        before <= 2,
        "an idle instance uses {before} Redis connections"
    );
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(gw.user(&format!("u{i}"), &["ops"]).await);
    }
    redis.wait_numsub("ws:user:u39", 1).await;
    let after = count_clients();
    assert_eq!(
        after, before,
        "40 clients of 40 users must not add Redis connections"
    );
}

/// CONNECTED means the user's channel is subscribed *in Redis*, not only
/// that the SUBSCRIBE was written (fred answers then): a Redis that hangs
/// (SIGSTOP) must hold CONNECTED back, and the subscription then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_waits_for_redis_to_confirm_the_subscription() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    redis.pause();
    let mut c = gw
        .connect_raw(&ConnectOpts::token(&token("held-1", &[])))
        .await
        .expect("the upgrade is answered without Redis");
    c.expect_silence(Duration::from_millis(1500)).await;
    redis.resume();
    c.expect_connected("held-1").await;
    redis
        .publish("ws:user:held-1", r#"{"type":"AFTER","id":"a1"}"#)
        .await;
    assert_eq!(c.next_json().await["type"], "AFTER");
}
