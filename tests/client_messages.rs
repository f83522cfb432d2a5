//! Client → server messages, frame limits, heartbeats (SPEC §5, §6).
//!
//! In-process: nothing here needs a process boundary.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_errors_and_connection_stays_open() {
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;

    c.ping_pong(123).await;

    c.send_text(r#"{"type":"PING"}"#).await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "PONG", "PING without ts: {v}");

    c.send_text(r#"{"type":"NOPE"}"#).await;
    c.expect_error("unknown_type").await;

    c.send_text("not json").await;
    c.expect_error("bad_request").await;

    c.send_text(r#"{"no_type":true}"#).await;
    c.expect_error("bad_request").await;

    // Still open and serving.
    c.ping_pong(456).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_closes_with_1003() {
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;
    c.ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    c.expect_close(1003).await;
    gw.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(invalid))
        .await
        .expect("send the frame");
    c.expect_close(1007).await;
    gw.wait_connections(0).await;
}

/// RFC 6455 §5.1: a client must mask its frames; an unmasked one is a
/// protocol violation, closed with 1002 (SPEC §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_closes_with_1002() {
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::MaybeTlsStream;
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;
    let MaybeTlsStream::Plain(socket) = c.ws.get_mut() else {
        panic!("a plain TCP WebSocket");
    };
    // FIN + text, unmasked, "hi".
    socket
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("write");
    c.expect_close(1002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_text_frame_closes_with_1009() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_MAX_MESSAGE_BYTES", "1024")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    // A message just under the limit is fine...
    let ok = format!(r#"{{"type":"PING","ts":1,"pad":"{}"}}"#, "x".repeat(900));
    assert!(ok.len() < 1024);
    c.send_text(&ok).await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "PONG", "{v}");
    // ...one over it closes the connection with 1009.
    let big = format!(r#"{{"type":"PING","ts":1,"pad":"{}"}}"#, "x".repeat(2000));
    c.send_text(&big).await;
    c.expect_close(1009).await;
}

/// The probe: after a big oversized frame the 1009 was written, but the
/// socket was dropped with the rest of the frame unread, which sends a
/// reset, and the client never saw the 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_oversized_frame_still_gets_its_1009() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_SERVER_MAX_MESSAGE_BYTES", "1024")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    let big = format!(
        r#"{{"type":"PING","pad":"{}"}}"#,
        "x".repeat(8 * 1024 * 1024)
    );
    c.send_text(&big).await;
    c.expect_close(1009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sends_websocket_pings() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "1")
        .start()
        .await;
    let (mut c, d) = gw.connect_user(&token("42", &[]), "42").await;
    assert_eq!(d["heartbeat_secs"], 1, "CONNECTED heartbeat_secs: {d}");
    match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Ping) => {}
        other => panic!("expected a WebSocket Ping within 5 s, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_idle_timeout() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "1")
        .env("GATEWAY_CONNECTION_IDLE_TIMEOUT_SECS", "2")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    // Do not read (so no Pong goes back) and send nothing: the server must
    // close on its own. Watch the raw socket without consuming it.
    let raw = c.wait_server_close_unread(Duration::from_secs(10)).await;
    // Now resume reading: pings may come first, then the Close (or EOF).
    let (texts, code, got_close) = c.read_until_close(Duration::from_secs(10)).await;
    assert!(texts.is_empty(), "unexpected text frames: {texts:?}");
    if got_close || raw.is_some() {
        assert_eq!(raw, Some(1001), "close code in the raw bytes");
        assert_eq!(code, Some(1001), "close code for an idle connection");
    }
    gw.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responsive_client_is_not_closed_for_idleness() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "1")
        .env("GATEWAY_CONNECTION_IDLE_TIMEOUT_SECS", "2")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    // Keep reading (tungstenite answers the server's pings) for longer than
    // the idle timeout; the connection must stay up.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match c.next_frame(left).await {
            None => break,
            Some(Frame::Ping) => pings += 1,
            Some(other) => panic!("expected only pings, got {other:?}"),
        }
    }
    assert!(pings >= 2, "expected >= 2 pings in 4 s, got {pings}");
    c.ping_pong(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_message_rate_is_limited() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_CONNECTION_CLIENT_MESSAGES_PER_SEC", "1")
        .start()
        .await;
    let mut c = gw.user("42", &[]).await;
    // The burst is twice the rate: two PINGs pass, the third is refused
    // (sent back to back, far faster than one per second refills).
    c.ping_pong(1).await;
    c.ping_pong(2).await;
    c.send_text(r#"{"type":"PING","ts":3}"#).await;
    c.expect_error("rate_limited").await;
    // A refusal is not a disconnect: published messages still arrive.
    let r = gw
        .post_bearer("/ws/test-message/42", &admin_token(), b"")
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = c.next_json().await;
    assert_eq!(v["type"], "NOTIFICATION", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_bad_messages_close_with_1008() {
    let gw = gateway().in_process().start().await;
    let mut c = gw.user("42", &[]).await;
    // Nine refused messages are answered...
    for _ in 0..9 {
        c.send_text("not json").await;
        c.expect_error("bad_request").await;
    }
    // ...a good one in between does not wipe them out (they fade at one a
    // second, so a flood that mixes in good messages still adds up)...
    c.ping_pong(1).await;
    // ...and a few more close the connection with 1008 (ten, less what
    // faded while the test ran).
    for _ in 0..3 {
        c.send_text(r#"{"type":"NOPE"}"#).await;
    }
    let (texts, code, got_close) = c.read_until_close(FRAME_TIMEOUT).await;
    assert!(got_close && code == Some(1008), "{code:?} after {texts:?}");
    assert!(
        texts.len() < 3,
        "answered {} more before closing",
        texts.len()
    );
    gw.wait_connections(0).await;
}
