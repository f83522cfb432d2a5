//! The Socket.IO test harness itself (tests/common/socketio.rs driving
//! tests/socketio/driver.mjs), without a gateway: the real socket.io-client
//! loads, reports a refused connection, and reports bad commands.

mod common;
use common::*;

use std::time::Duration;

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let mut sio = SioClient::start().await;
    assert!(
        sio.version.starts_with("4.8."),
        "socket.io-client {}",
        sio.version
    );
    // Nothing listens on a port that was free a moment ago.
    let url = format!("http://127.0.0.1:{}", free_port());
    sio.connect(&SioConnect::new(&url).token("t").reconnection(false));
    let err = sio.wait_ev(FRAME_TIMEOUT, "connect_error").await;
    assert_eq!(err["message"], "websocket error", "{err}");
    assert!(
        err["description"]
            .as_str()
            .is_some_and(|d| d.contains("ECONNREFUSED")),
        "{err}"
    );
    // Without reconnection nothing follows.
    if let Some(v) = sio.next_event(Duration::from_millis(500)).await {
        panic!("after connect_error with reconnection off: {v}");
    }
    let state = sio.state().await;
    assert_eq!(state["connected"], false, "{state}");
}

#[tokio::test]
async fn bad_commands_are_reported_and_stdin_eof_ends_the_driver() {
    let mut sio = SioClient::start().await;
    sio.send_raw("this is not json");
    let err = sio.wait_ev(FRAME_TIMEOUT, "error").await;
    assert_eq!(err["line"], "this is not json", "{err}");
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("JSON")),
        "{err}"
    );

    sio.send(&serde_json::json!({ "cmd": "fly" }));
    let err = sio.wait_ev(FRAME_TIMEOUT, "error").await;
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("fly")),
        "{err}"
    );

    // A command that needs a socket, before connect: the reply names it.
    sio.send(&serde_json::json!({ "cmd": "emit", "event": "subscribe", "tag": "e1" }));
    let err = sio.wait_ev(FRAME_TIMEOUT, "error").await;
    assert_eq!(err["tag"], "e1", "{err}");

    let status = sio
        .close_stdin_and_wait(FRAME_TIMEOUT)
        .expect("the driver exits when its stdin closes");
    assert!(status.success(), "driver exited with {status}");
}
