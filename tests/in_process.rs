//! Tests that need no process boundary: the gateway runs inside the test's
//! own runtime on port 0 (`server::run_until`), with the embedded broker,
//! and is stopped through a channel. The tests of the CLI, of signals and
//! of the contract with a real Redis keep starting the binary.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use ws_gateway::config::{self, Overrides};
use ws_gateway::server;

/// A gateway in this process.
struct InProcess {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), String>>,
    _dir: TempDir,
}

/// Starts a gateway in-process with the suite's secret and `env` on top
/// (as `GATEWAY_*` variables would be), and waits until it is ready.
async fn start(env: &[(&str, &str)]) -> InProcess {
    let dir = TempDir::new();
    let file = dir.write("gateway.toml", "");
    let mut vars: BTreeMap<String, String> = BTreeMap::from([
        ("GATEWAY_AUTH_SECRET".into(), SECRET.into()),
        ("GATEWAY_CONNECTION_CONNECT_RATE_PER_IP".into(), "0".into()),
    ]);
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let overrides = Overrides {
        env: vars,
        flags: Vec::new(),
    };
    let loaded = config::load(Some(&file), &overrides).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server::run_until(loaded, Some(listener), async {
        let _ = stopped.await;
    }));
    let ready = wait_until(WAIT_TIMEOUT, || async {
        let r = http_request(addr, "GET", "/readyz", &[], None).await;
        matches!(r, Ok(r) if r.status == 200)
    })
    .await;
    assert!(ready, "the in-process gateway did not become ready");
    InProcess {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_and_bad_messages_get_errors() {
    let gw = start(&[]).await;
    let mut c = connect_ws(gw.addr, &ConnectOpts::token(&token("42", &[])))
        .await
        .expect("connect");
    c.expect_connected("42").await;
    c.ping_pong(7).await;
    c.send_text("not json").await;
    c.expect_error("bad_request").await;
    c.send_text(r#"{"type":"NOPE"}"#).await;
    c.expect_error("unknown_type").await;
    c.ping_pong(8).await;
}

/// Stopping drains: the client reads 1001, and `run_until` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_clients_with_1001_and_returns() {
    let gw = start(&[("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")]).await;
    let mut c = connect_ws(gw.addr, &ConnectOpts::token(&token("42", &[])))
        .await
        .expect("connect");
    c.expect_connected("42").await;
    let _ = gw.stop.send(());
    let (texts, code, got_close) = c.read_until_close(Duration::from_secs(10)).await;
    assert!(texts.is_empty() && got_close, "{texts:?}");
    assert_eq!(code, Some(1001));
    let ended = tokio::time::timeout(Duration::from_secs(10), gw.task).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "run_until should return Ok after the drain: {ended:?}"
    );
}
