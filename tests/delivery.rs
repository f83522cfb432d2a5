//! Live delivery through Redis pub/sub (SPEC §3).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channel_reaches_every_connection_of_that_user_only() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;

    let mut a1 = gw.user("42", &[]).await;
    let mut a2 = gw.user("42", &[]).await;
    let mut a3 = gw.user("42", &[]).await;
    let mut b = gw.user("43", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;
    redis.wait_numsub("ws:user:43", 1).await;

    let msg = r#"{"type":"BUDGET_ALERT","id":"m-1","ts":1763812345123,"data":{"category":"dining","spent":460.0,"limit":400.0}}"#;
    redis.publish("ws:user:42", msg).await;
    for (i, c) in [&mut a1, &mut a2, &mut a3].into_iter().enumerate() {
        assert_eq!(
            c.next_text().await,
            msg,
            "connection #{i} of user 42 should get the published bytes unchanged"
        );
    }

    // User 43 must not have received the message for 42: the next frame it
    // gets is the one published to it afterwards.
    let msg43 = r#"{"type":"NEW_TRANSACTION","id":"m-2","data":{"amount":-12.5}}"#;
    redis.publish("ws:user:43", msg43).await;
    assert_eq!(b.next_text().await, msg43, "user 43's next frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_role_channels() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;

    let mut ops1 = gw.user("42", &["ops"]).await;
    let mut plain = gw.user("43", &[]).await;
    let mut ops2 = gw.user("44", &["finance", "ops"]).await;
    let mut fin = gw.user("45", &["finance"]).await;
    redis.wait_deliverable("ws:broadcast").await;
    redis.wait_deliverable("ws:role:ops").await;

    let bc = r#"{"type":"SYSTEM_ALERT","id":"b-1","data":{"text":"maintenance at 2am"}}"#;
    redis.publish("ws:broadcast", bc).await;
    for (name, c) in [
        ("42/ops", &mut ops1),
        ("43", &mut plain),
        ("44/ops", &mut ops2),
        ("45/finance", &mut fin),
    ] {
        assert_eq!(c.next_text().await, bc, "broadcast at {name}");
    }

    let role = r#"{"type":"DASHBOARD_UPDATE","id":"r-1","data":{"for":"ops"}}"#;
    redis.publish("ws:role:ops", role).await;
    assert_eq!(ops1.next_text().await, role, "ws:role:ops at 42 (has ops)");
    assert_eq!(ops2.next_text().await, role, "ws:role:ops at 44 (has ops)");

    // The others must not see it: the next frame they get is the next broadcast.
    let bc2 = r#"{"type":"SYSTEM_ALERT","id":"b-2","data":{}}"#;
    redis.publish("ws:broadcast", bc2).await;
    for (name, c) in [
        ("42/ops", &mut ops1),
        ("43", &mut plain),
        ("44/ops", &mut ops2),
        ("45/finance", &mut fin),
    ] {
        assert_eq!(c.next_text().await, bc2, "next frame at {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_oversized_payloads_are_dropped() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut c = gw.user("42", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;

    let before = gw.stats().await["messages_dropped"]
        .as_u64()
        .expect("messages_dropped is a number");

    // Just over 1 MiB, otherwise a perfectly valid message.
    let big = format!(
        r#"{{"type":"BIG","id":"big-1","data":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let invalid: Vec<&[u8]> = vec![
        b"not json",
        b"[1,2]",
        br#"{"type":5}"#,
        b"{}",
        br#""NOTIFICATION""#,
        br#"{"data":{"type":"X"}}"#,
        big.as_bytes(),
    ];
    let mut conn = redis.conn().await;
    for p in &invalid {
        conn.publish("ws:user:42", p).await;
    }
    let valid = r#"{"type":"NOTIFICATION","id":"ok-1","data":{"text":"hello"}}"#;
    conn.publish("ws:user:42", valid.as_bytes()).await;
    assert_eq!(
        c.next_text().await,
        valid,
        "only the valid message (published last) should be delivered"
    );

    let want = before + invalid.len() as u64;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["messages_dropped"].as_u64() >= Some(want)
    })
    .await;
    assert!(
        ok,
        "/ws/stats messages_dropped should reach >= {want}, stats: {}",
        gw.stats().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_reaches_the_user_on_two_instances() {
    let redis = Redis::start();
    let gw1 = gateway().redis(&redis).start().await;
    let gw2 = gateway().redis(&redis).start().await;

    let (mut c1, d1) = gw1.connect_user(&token("42", &[]), "42").await;
    let (mut c2, d2) = gw2.connect_user(&token("42", &[]), "42").await;
    let mut c2b = gw2.user("42", &[]).await;
    assert_ne!(
        d1["instance"], d2["instance"],
        "two gateway processes should report different instance ids"
    );
    // Each instance subscribes once for user 42.
    redis.wait_numsub("ws:user:42", 2).await;

    let msg = r#"{"type":"BALANCE_UPDATE","id":"x-1","data":{"balance":1234.5}}"#;
    redis.publish("ws:user:42", msg).await;
    assert_eq!(c1.next_text().await, msg, "instance 1");
    assert_eq!(c2.next_text().await, msg, "instance 2, first connection");
    assert_eq!(c2b.next_text().await, msg, "instance 2, second connection");
}

/// Messages that wait in the gateway's Redis reader while a fan-out is under
/// way are written together: a pipelined burst of runs on interleaved
/// channels, with invalid payloads in between, must still arrive complete
/// and in order on each channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_interleaved_channels_arrives_whole_and_in_order() {
    const ROUNDS: usize = 100;
    const RUN: usize = 5;
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut a = gw.user("42", &[]).await;
    let mut b = gw.user("43", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;
    redis.wait_numsub("ws:user:43", 1).await;
    redis.wait_deliverable("ws:broadcast").await;

    // All the PUBLISH commands in one pipeline, then their replies.
    let mut burst: Vec<(&str, String)> = Vec::new();
    let mut publish = |channel: &'static str, payload: &str| {
        burst.push((channel, payload.to_string()));
    };
    for round in 0..ROUNDS {
        for (channel, kind) in [
            ("ws:user:42", "U"),
            ("ws:broadcast", "B"),
            ("ws:user:43", "U"),
        ] {
            for i in 0..RUN {
                let n = round * RUN + i;
                publish(channel, &format!(r#"{{"type":"{kind}","n":{n}}}"#));
                if i == 2 {
                    publish(channel, "not json");
                }
            }
        }
    }
    let mut conn = redis.conn().await;
    let burst: Vec<(&str, &str)> = burst.iter().map(|(c, p)| (*c, p.as_str())).collect();
    let receivers = conn.publish_pipelined(&burst).await;
    assert!(receivers.iter().all(|&n| n == 1), "{receivers:?}");

    let total = ROUNDS * RUN;
    for (name, client) in [("42", &mut a), ("43", &mut b)] {
        let (mut users, mut broadcasts) = (0, 0);
        for _ in 0..2 * total {
            let text = client.next_text().await;
            if text == format!(r#"{{"type":"U","n":{users}}}"#) {
                users += 1;
            } else if text == format!(r#"{{"type":"B","n":{broadcasts}}}"#) {
                broadcasts += 1;
            } else {
                panic!("user {name}: got {text} after {users} user messages and {broadcasts} broadcasts");
            }
        }
        assert_eq!((users, broadcasts), (total, total), "user {name}");
    }
}
