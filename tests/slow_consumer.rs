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

/// Publishes SEQ messages of `pad` bytes to user 9, at most `max`, until
/// the gateway counts a slow consumer (looked at every `check_every`).
async fn publish_until_slow_consumer(
    gw: &Gateway,
    redis: &Redis,
    pad: usize,
    max: u32,
    check_every: u32,
) {
    let pad = "x".repeat(pad);
    let mut conn = redis.conn().await;
    for n in 0..max {
        let msg = format!(r#"{{"type":"SEQ","data":{{"n":{n},"pad":"{pad}"}}}}"#);
        conn.publish("ws:user:9", msg.as_bytes()).await;
        if n % check_every == check_every - 1 && gw.stats().await["slow_consumer_disconnects"] == 1
        {
            return;
        }
    }
    panic!("never a slow consumer");
}

/// A connection that reads the SEQ messages of [`publish_all_while_reading`].
trait SeqReader {
    /// The next message's `n`.
    async fn next_seq(&mut self) -> u64;
}

impl SeqReader for Client {
    async fn next_seq(&mut self) -> u64 {
        seq_of(&self.next_text().await)
    }
}

impl SeqReader for Sse {
    async fn next_seq(&mut self) -> u64 {
        let event = self.next_event().await;
        assert_eq!(event.event.as_deref(), Some("SEQ"), "{event:?}");
        seq_of(&event.data.join("\n"))
    }
}

impl SeqReader for SioClient {
    async fn next_seq(&mut self) -> u64 {
        let event = self.wait_ev(WAIT_TIMEOUT, "event").await;
        assert_eq!(event["name"], "SEQ", "{:.200}", event.to_string());
        event["args"][0]["n"].as_u64().expect("data.n")
    }
}

/// Publishes [`COUNT`] SEQ messages of [`PAD`] bytes to user 9, never more
/// than [`WINDOW`] ahead of what `reader` has read, and checks that it
/// reads every one, in order (bounded to 60 s).
async fn publish_all_while_reading(redis: &Redis, reader: &mut impl SeqReader) {
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
        let n = reader.next_seq().await;
        assert_eq!(
            n, received as u64,
            "the reading connection must get every message in order"
        );
        received += 1;
    }
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

    publish_all_while_reading(&redis, &mut fast).await;

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
/// the close frame.
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
    // Fill its socket buffers and queue until it is a slow consumer
    // (bounded: 64 MiB is far more than any socket buffers).
    publish_until_slow_consumer(&gw, &redis, 64 * 1024, 1024, 16).await;
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

/// A slow consumer on a bad network: it reads at about 32 KiB/s for 16 s,
/// sending PINGs as its app would, then recovers and reads at full speed.
/// Its close frame sat behind megabytes of kernel send buffer, and the
/// socket was dropped after the 10 s close grace; the next PING to the
/// closed socket drew a reset, which destroyed all that was unsent: the
/// client read what its own buffer held, then a reset, never its 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_reads_slowly_then_recovers_reads_its_4008() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "16")
        .start()
        .await;
    let mut slow = gw.user("9", &[]).await;
    redis.wait_numsub("ws:user:9", 1).await;
    publish_until_slow_consumer(&gw, &redis, 64 * 1024, 1024, 16).await;
    let started = std::time::Instant::now();
    let mut frames = 0;
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no close after {frames} frames in 120 s"
        );
        match slow.next_frame(Duration::from_secs(30)).await {
            Some(Frame::Text(t)) => {
                assert_eq!(seq_of(&t), frames, "in order, no gap");
                frames += 1;
                if started.elapsed() < Duration::from_secs(16) {
                    // Its app keeps saying it is alive.
                    slow.try_send_text(r#"{"type":"PING"}"#).await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
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

/// The next whole frame of a server's stream at `at`: its opcode, its
/// payload and where the frame after it starts.
fn frame_at(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let head = buf.get(at..at + 2)?;
    let (opcode, len7) = (head[0] & 0x0f, (head[1] & 0x7f) as usize);
    let (len, start) = match len7 {
        126 => (
            u16::from_be_bytes(buf.get(at + 2..at + 4)?.try_into().ok()?) as usize,
            at + 4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(at + 2..at + 10)?.try_into().ok()?) as usize,
            at + 10,
        ),
        n => (n, at + 2),
    };
    Some((opcode, buf.get(start..start + len)?, start + len))
}

/// A WebSocket client on a raw socket, so that the test decides how fast
/// it reads: the upgrade, then whatever the server sent after it.
async fn raw_client(gw: &Gateway, user: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A small receive buffer: the gateway sees the client's reading only
    // as its buffer frees, and a test has no minutes to wait for that.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        token(user, &[]),
        gw.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        assert!(got.len() < 64 * 1024, "no end of the upgrade response");
        let n = tokio::time::timeout(WAIT_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("upgrade response in time")
            .unwrap();
        assert!(n > 0, "closed during the upgrade");
        got.extend_from_slice(&buf[..n]);
    };
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    (stream, got.split_off(end))
}

/// The same with 1 MiB messages, so that the frame already started when the
/// client became a slow consumer (up to 1 MiB) takes a trickle reader far
/// longer than the close grace: it read that frame's start, then a bare
/// end of stream in the middle of it. It keeps sending PINGs, as its app
/// would, while it reads slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_stuck_in_a_big_frame_still_reads_its_4008() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let (mut stream, mut got) = raw_client(&gw, "9").await;
    redis.wait_numsub("ws:user:9", 1).await;
    publish_until_slow_consumer(&gw, &redis, 1000 * 1000, 64, 1).await;
    // 8 KiB/s for 20 s, a masked PING every 2 s; then full speed until the
    // Close frame or the end of the stream.
    let started = std::time::Instant::now();
    let ping = [&[0x81u8, 0x80 | 15, 0, 0, 0, 0][..], br#"{"type":"PING"}"#].concat();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut frames, mut close, mut ticks) = (0, 0u64, None, 0u32);
    while close.is_none() && started.elapsed() < Duration::from_secs(80) {
        let slow = started.elapsed() < Duration::from_secs(20);
        if slow {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticks += 1;
            if ticks % 8 == 0 {
                let _ = stream.write_all(&ping).await;
            }
        }
        let want = if slow { 2048 } else { buf.len() };
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
        while let Some((opcode, payload, next)) = frame_at(&got, at) {
            match opcode {
                // CONNECTED and PONGs aside, the messages in order.
                0x1 if payload.starts_with(br#"{"type":"SEQ""#) => {
                    let text = std::str::from_utf8(payload).unwrap();
                    assert_eq!(seq_of(text), frames, "in order, no gap");
                    frames += 1;
                }
                0x8 => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
                _ => {}
            }
            at = next;
        }
    }
    assert_eq!(
        close,
        Some(4008),
        "after {frames} frames and {} bytes in {:?}: {}",
        got.len(),
        started.elapsed(),
        gw.logs_text()
    );
}

/// SSE (SPEC §12) has the same rule: a stream that reads nothing is ended
/// after what it was sent, in order (an `EventSource` then comes back with
/// its Last-Event-ID), and the other stream of the user reads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_slow_consumer_is_ended_and_the_other_stream_gets_everything() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "16")
        .start()
        .await;
    let target = format!("/sse?token={}", token("9", &[]));
    let mut fast = Sse::open(gw.addr, &target, &[]).await;
    let mut stalled = Sse::open(gw.addr, &target, &[]).await;
    for sse in [&mut fast, &mut stalled] {
        assert_eq!(sse.next_event().await.event.as_deref(), Some("CONNECTED"));
    }
    redis.wait_numsub("ws:user:9", 1).await;

    publish_all_while_reading(&redis, &mut fast).await;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["slow_consumer_disconnects"] == 1
    })
    .await;
    assert!(ok, "one slow consumer: {}", gw.stats().await);

    let mut buffered = 0u64;
    for _ in 0..=COUNT {
        match stalled.next().await {
            Some(e) if e.comment.is_some() => continue,
            Some(e) => {
                assert_eq!(e.event.as_deref(), Some("SEQ"), "{e:?}");
                assert_eq!(seq_of(&e.data.join("\n")), buffered, "in order, no gap");
                buffered += 1;
            }
            None => break,
        }
    }
    assert!(
        buffered < COUNT as u64,
        "the stalled stream received all {COUNT} messages; it was never a slow consumer"
    );
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["connections"] == 1
    })
    .await;
    assert!(ok, "only the reading stream is left: {}", gw.stats().await);
}

/// Socket.IO (SPEC §11) too: the raw Engine.IO client below stops reading
/// after its CONNECT; it reads what it was sent, in order, then close 4008
/// (no `41`, so a real client reconnects with recovery). The real
/// socket.io-client of the same user reads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_slow_consumer_gets_4008_and_the_other_client_gets_everything() {
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_SEND_QUEUE", "16")
        .start()
        .await;
    let mut fast = SioClient::start().await;
    fast.connect(&SioConnect::to(gw.addr).token(&token("9", &[])));
    fast.expect_connect(WAIT_TIMEOUT).await;
    let mut stalled = raw_socketio(gw.addr, &token("9", &[])).await;
    redis.wait_numsub("ws:user:9", 1).await;
    gw.wait_connections(2).await;

    publish_all_while_reading(&redis, &mut fast).await;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["slow_consumer_disconnects"] == 1
    })
    .await;
    assert!(ok, "one slow consumer: {}", gw.stats().await);

    let (texts, code, got_close) = stalled.read_until_close(Duration::from_secs(30)).await;
    let events: Vec<&String> = texts.iter().filter(|t| t.as_str() != "2").collect();
    for (i, t) in events.iter().enumerate() {
        let packet: Value = serde_json::from_str(&t[2..])
            .unwrap_or_else(|e| panic!("not a 42 event ({e}): {:.200}", t));
        assert!(t.starts_with("42"), "{:.200}", t);
        assert_eq!(packet[0], "SEQ");
        assert_eq!(packet[1]["n"], i as u64, "in order, no gap");
    }
    assert!(
        events.len() < COUNT,
        "the stalled client received everything"
    );
    assert!(got_close, "the stream ended without a Close frame");
    assert_eq!(code, Some(4008), "a close the client reconnects after");
    assert!(
        !texts.iter().any(|t| t == "41"),
        "no 41: the client must reconnect"
    );
}
