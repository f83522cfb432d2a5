//! Black-box test harness for ws-gateway.
//!
//! Tests start the real `ws-gateway` binary, or, where no process boundary
//! matters, the same server in-process ([`GatewayBuilder::in_process`]);
//! where needed also a real `redis-server`, all on free loopback ports. They
//! talk to it over real sockets, and every child process is killed when its
//! guard struct is dropped.
//!
//! By concern: [`tokens`], [`redis`] (the server and a RESP client),
//! [`gateway`] (the binary and its CLI), [`client`] (WebSocket), [`http`],
//! [`dev_secret`], [`socketio`] (the real socket.io-client), [`sse`], [`readme`] (its
//! marked blocks); generic helpers
//! (bounded waits, temporary directories, free ports) are here. Every item is
//! re-exported, so tests `use common::*`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HMAC secret every gateway in the suite is configured with (unless a
/// test asks for dev mode).
pub const SECRET: &str = "test-secret";

/// Default bound for "the next frame should arrive now".
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound for conditions that need some background work to settle.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

pub const BIN: &str = env!("CARGO_BIN_EXE_ws-gateway");

mod tokens;
#[allow(unused_imports)] // each test uses a part of the harness
pub use tokens::*;
mod redis;
#[allow(unused_imports)] // each test uses a part of the harness
pub use redis::*;
mod gateway;
#[allow(unused_imports)] // each test uses a part of the harness
pub use gateway::*;
mod client;
#[allow(unused_imports)] // each test uses a part of the harness
pub use client::*;
mod http;
#[allow(unused_imports)] // each test uses a part of the harness
pub use http::*;
mod dev_secret;
#[allow(unused_imports)] // each test uses a part of the harness
pub use dev_secret::*;
mod process;
#[allow(unused_imports)] // each test uses a part of the harness
pub use process::*;
mod node_driver;
#[allow(unused_imports)] // each test uses a part of the harness
pub use node_driver::*;
mod js_client;
#[allow(unused_imports)] // each test uses a part of the harness
pub use js_client::*;
mod socketio;
#[allow(unused_imports)] // each test uses a part of the harness
pub use socketio::*;
mod sse;
#[allow(unused_imports)] // each test uses a part of the harness
pub use sse::*;
mod readme;
#[allow(unused_imports)] // each test uses a part of the harness
pub use readme::*;

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

/// Polls `cond` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`wait_until`] for non-async code.
pub fn wait_until_sync(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Removes ANSI colour escapes (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "ws-gateway-test-{}-{}-{}",
            std::process::id(),
            n,
            nanos
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A `Command` for the gateway binary with every inherited `GATEWAY_*`
/// variable removed and the working directory set to `dir`.
pub fn gateway_command(dir: &Path) -> Command {
    clean_gateway_env(Command::new(BIN), dir)
}

/// [`gateway_command`] under an open-files limit of `nofile` (soft and
/// hard: the gateway raises its soft limit to the hard one), via prlimit.
pub fn gateway_command_with_nofile(dir: &Path, nofile: u64) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(BIN);
    clean_gateway_env(cmd, dir)
}

fn clean_gateway_env(mut cmd: Command, dir: &Path) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEWAY_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("NO_COLOR", "1");
    cmd.current_dir(dir);
    cmd
}

/// Runs the CLI to completion (in a fresh temp dir) with the given env.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = TempDir::new();
    run_cli_in(dir.path(), args, env)
}

/// Runs the CLI to completion in `dir` with the given env, bounded to 30 s.
pub fn run_cli_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = gateway_command(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ws-gateway CLI");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let child = guard.0.as_mut().unwrap();
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            panic!("ws-gateway {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    guard.0 = None;
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Kills the child (if still owned) on drop.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
