//! A connection whose send queue overflows is closed with 4008 without
//! hurting the other connections of the same user (SPEC §2, §6).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const COUNT: usize = 2000;
const PAD: usize = 16 * 1024;
/// Messages in flight beyond what the fast reader has received; well below
/// send_queue so the fast reader can never overflow.
const WINDOW: usize = 6;

fn seq_of(text: &str) -> u64 {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:.200}", text));
    assert_eq!(v["type"], "SEQ", "unexpected frame {:.200}", text);
    v["data"]["n"].as_u64().expect("data.n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_gets_4008_and_the_other_gets_everything() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "16")
        .start()
        .await;
    let mut fast = gw.user("9", &[]).await;
    let mut stalled = gw.user("9", &[]).await;
    redis.wait_numsub("ws:user:9", 1).await;

    let pad = "x".repeat(PAD);
    let mut conn = redis.conn().await;
    let mut published = 0usize;
    let mut received = 0usize;
    let started = std::time::Instant::now();
    while received < COUNT {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "publishing {COUNT} messages took over 60 s (received {received})"
        );
        while published < COUNT && published < received + WINDOW {
            let msg = format!(r#"{{"type":"SEQ","data":{{"n":{published},"pad":"{pad}"}}}}"#);
            conn.publish("ws:user:9", msg.as_bytes()).await;
            published += 1;
        }
        let t = fast.next_text().await;
        let n = seq_of(&t);
        assert_eq!(
            n, received as u64,
            "the reading connection must get every message in order"
        );
        received += 1;
    }

    // The stalled client now resumes: whatever was buffered arrives in
    // order from 0 without gaps, then a Close 4008.
    let (texts, code, got_close) = stalled.read_until_close(Duration::from_secs(30)).await;
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(seq_of(t), i as u64, "buffered frames of the stalled client");
    }
    assert!(
        texts.len() < COUNT,
        "the stalled client received all {COUNT} messages; it was never a slow consumer"
    );
    assert!(
        got_close,
        "expected a Close frame after {} buffered frames, the stream just ended",
        texts.len()
    );
    assert_eq!(code, Some(4008), "slow consumer close code");

    // The fast connection is still fine.
    fast.ping_pong(1).await;

    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["slow_consumer_disconnects"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        ok,
        "slow_consumer_disconnects should be >= 1: {}",
        gw.stats().await
    );
}

/// The probe: with the default limits (1,024 messages, 512 KiB), 1 MiB
/// messages to a client that reads nothing used to queue up to 1 GiB. Now
/// the bytes limit makes it a slow consumer after a few, and it reads its
/// 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_to_a_stalled_client_are_bounded_in_bytes() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut stalled = gw.user("9", &[]).await;
    redis.wait_numsub("ws:user:9", 1).await;
    let pad = "x".repeat(1000 * 1000);
    let mut conn = redis.conn().await;
    // 40 MB: far more than socket buffers and 512 KiB, far fewer than 1,024.
    for n in 0..40 {
        let msg = format!(r#"{{"type":"SEQ","data":{{"n":{n},"pad":"{pad}"}}}}"#);
        conn.publish("ws:user:9", msg.as_bytes()).await;
    }
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["slow_consumer_disconnects"].as_u64() == Some(1)
    })
    .await;
    assert!(ok, "no slow consumer: {}", gw.stats().await);
    let (texts, code, got_close) = stalled.read_until_close(Duration::from_secs(30)).await;
    assert!(texts.len() < 40, "got all {} messages", texts.len());
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(seq_of(t), i as u64, "in order, no gap");
    }
    assert!(got_close, "the stream ended without a Close frame");
    assert_eq!(code, Some(4008));
}

/// The probe: a slow consumer that reads at a trickle never read its 4008.
/// Its queue is dropped on overflow, and the close lingers (shutdown, then
/// drain its input), so the kernel delivers what the socket holds and then
/// the close frame. A reader much slower than this one could still lose the
/// close frame left in the gateway's queue after the 10 s close grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_reading_at_a_trickle_still_reads_its_4008() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "16")
        .start()
        .await;
    let mut slow = gw.user("9", &[]).await;
    redis.wait_numsub("ws:user:9", 1).await;
    let pad = "x".repeat(64 * 1024);
    let mut conn = redis.conn().await;
    // Fill its socket buffers and queue until it is a slow consumer
    // (bounded: 64 MiB is far more than any socket buffers).
    let mut overflowed = false;
    for n in 0..1024 {
        let msg = format!(r#"{{"type":"SEQ","data":{{"n":{n},"pad":"{pad}"}}}}"#);
        conn.publish("ws:user:9", msg.as_bytes()).await;
        if n % 16 == 15 && gw.stats().await["slow_consumer_disconnects"] == 1 {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "never a slow consumer");
    // Read at a trickle: about 320 KiB/s, so what the buffers hold takes
    // longer than the 10 s close grace.
    let started = std::time::Instant::now();
    let mut frames = 0;
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no close after {frames} frames in 90 s"
        );
        match slow.next_frame(Duration::from_secs(15)).await {
            Some(Frame::Text(t)) => {
                assert_eq!(seq_of(&t), frames, "in order, no gap");
                frames += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Frame::Close(code)) => break code,
            Some(Frame::Ping) => {}
            other => panic!(
                "after {frames} frames in {:?}: {other:?}",
                started.elapsed()
            ),
        }
    };
    assert_eq!(code, Some(4008), "after {frames} frames");
}
