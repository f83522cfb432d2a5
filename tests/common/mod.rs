//! Black-box test harness for ws-gateway.
//!
//! Every test starts the real `ws-gateway` binary (and, where needed, a real
//! `redis-server`) on free loopback ports, talks to it over real sockets and
//! kills every child process when the guard structs are dropped.
#![allow(dead_code)]

use std::collections::HashMap;
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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
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
    let mut cmd = Command::new(BIN);
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
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// Mints a token with the suite's secret. Tokens with a long TTL are cached.
pub fn mint(sub: &str, roles: &[&str], ttl: &str) -> String {
    mint_with_secret(SECRET, sub, roles, ttl)
}

/// A one-hour token for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    mint(sub, roles, "1h")
}

/// A one-hour admin token.
pub fn admin_token() -> String {
    mint("admin-user", &["admin"], "1h")
}

pub fn mint_with_secret(secret: &str, sub: &str, roles: &[&str], ttl: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cacheable = ttl == "1h";
    let key = format!("{secret}\0{sub}\0{}\0{ttl}", roles.join(","));
    if cacheable {
        if let Some(t) = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .get(&key)
        {
            return t.clone();
        }
    }
    let roles_joined = roles.join(",");
    let mut args = vec!["token", "--sub", sub, "--ttl", ttl];
    if !roles.is_empty() {
        args.push("--roles");
        args.push(&roles_joined);
    }
    let out = run_cli(&args, &[("GATEWAY_AUTH_SECRET", secret)]);
    assert!(
        out.status.success(),
        "`ws-gateway {}` failed: {:?}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout)
        .expect("token output is UTF-8")
        .trim()
        .to_string();
    assert_eq!(
        tok.split('.').count(),
        3,
        "`ws-gateway token` should print a JWT alone on stdout, got {tok:?}"
    );
    if cacheable {
        CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .insert(key, tok.clone());
    }
    tok
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    _dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(None)
    }

    /// Starts a redis-server on a given port (e.g. to restart one).
    pub fn start_on(port: u16) -> Redis {
        Self::start_with(Some(port))
    }

    fn start_with(fixed_port: Option<u16>) -> Redis {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let dir = TempDir::new();
            let port = fixed_port.unwrap_or_else(free_port);
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ])
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => {
                    last_err = format!("spawn redis-server: {e}");
                    continue;
                }
            };
            let mut redis = Redis {
                child: Some(child),
                port,
                _dir: dir,
            };
            let up = wait_until_sync(Duration::from_secs(5), || {
                if let Some(c) = redis.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        return true; // exited: stop waiting, checked below
                    }
                }
                redis.ping_sync()
            });
            if up && redis.ping_sync() {
                return redis;
            }
            last_err = format!("redis-server on port {port} did not come up");
            // `redis` dropped here: the child is killed.
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Kills the server now (simulating an outage).
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (SIGSTOP): its sockets stay open, nothing is
    /// answered, as when Redis hangs. [`Redis::resume`] continues it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a server stopped by [`Redis::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn ping_sync(&self) -> bool {
        use std::io::Write;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p PORT args...` and returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A raw RESP connection (for pipelines and large payloads).
    pub async fn conn(&self) -> RespConn {
        let s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to redis");
        s.set_nodelay(true).ok();
        RespConn {
            stream: TokioBufReader::new(s),
        }
    }

    /// `PUBLISH channel payload`; returns the number of receivers.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        self.conn().await.publish(channel, payload.as_ref()).await
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        let v = self
            .conn()
            .await
            .command(&[b"PUBSUB", b"CHANNELS", pattern.as_bytes()])
            .await;
        let mut out: Vec<String> = v
            .array()
            .iter()
            .map(|x| x.string().expect("channel name"))
            .collect();
        out.sort();
        out
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let v = self
            .conn()
            .await
            .command(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()])
            .await;
        v.array()[1].int()
    }

    /// `PUBSUB NUMPAT`.
    pub async fn numpat(&self) -> i64 {
        self.conn()
            .await
            .command(&[b"PUBSUB", b"NUMPAT"])
            .await
            .int()
    }

    /// Waits until the channel has at least `n` (non-pattern) subscribers.
    pub async fn wait_numsub(&self, channel: &str, n: i64) {
        let ok = wait_until(WAIT_TIMEOUT, || async { self.numsub(channel).await >= n }).await;
        assert!(
            ok,
            "expected {channel} to have >= {n} subscribers within {WAIT_TIMEOUT:?}, have {}",
            self.numsub(channel).await
        );
    }

    /// Waits until a message on `channel` would reach someone: either the
    /// channel has a subscriber or a pattern subscription exists.
    pub async fn wait_deliverable(&self, channel: &str) {
        let ok = wait_until(WAIT_TIMEOUT, || async {
            self.numsub(channel).await >= 1 || self.numpat().await >= 1
        })
        .await;
        assert!(ok, "nobody subscribed to {channel} within {WAIT_TIMEOUT:?}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(v)) => v.clone(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
    pub fn string(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A minimal RESP2 client over one TCP connection.
pub struct RespConn {
    stream: TokioBufReader<TcpStream>,
}

impl RespConn {
    pub fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        buf
    }

    /// Sends one command without reading its reply (pipelining).
    pub async fn send(&mut self, args: &[&[u8]]) {
        let buf = Self::encode(args);
        self.stream
            .get_mut()
            .write_all(&buf)
            .await
            .expect("write to redis");
    }

    /// Reads one reply, bounded to 10 s.
    pub async fn read_reply(&mut self) -> Resp {
        tokio::time::timeout(Duration::from_secs(10), Self::read_value(&mut self.stream))
            .await
            .expect("redis reply within 10 s")
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> Resp {
        self.send(args).await;
        self.read_reply().await
    }

    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> i64 {
        self.command(&[b"PUBLISH", channel.as_bytes(), payload])
            .await
            .int()
    }

    fn read_value(
        r: &mut TokioBufReader<TcpStream>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Resp> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            r.read_line(&mut line).await.expect("read from redis");
            assert!(line.ends_with("\r\n"), "bad RESP line {line:?}");
            let line = &line[..line.len() - 2];
            let (kind, rest) = line.split_at(1);
            match kind {
                "+" => Resp::Simple(rest.to_string()),
                "-" => Resp::Error(rest.to_string()),
                ":" => Resp::Int(rest.parse().expect("RESP integer")),
                "$" => {
                    let n: i64 = rest.parse().expect("RESP bulk length");
                    if n < 0 {
                        return Resp::Bulk(None);
                    }
                    let mut buf = vec![0u8; n as usize + 2];
                    r.read_exact(&mut buf).await.expect("read bulk");
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
                "*" => {
                    let n: i64 = rest.parse().expect("RESP array length");
                    if n < 0 {
                        return Resp::Array(None);
                    }
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(Self::read_value(r).await);
                    }
                    Resp::Array(Some(v))
                }
                _ => panic!("unexpected RESP line {line:?}"),
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Fallible RESP and the canonical publish path (for tests that publish
// through Redis outages: errors are returned, never panicked on)
// ---------------------------------------------------------------------------

impl RespConn {
    /// Connects to `127.0.0.1:port` within `timeout`; an error, not a panic,
    /// when Redis is down.
    pub async fn try_connect(port: u16, timeout: Duration) -> Result<RespConn, String> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| format!("connect to redis :{port}: timed out after {timeout:?}"))?
            .map_err(|e| format!("connect to redis :{port}: {e}"))?;
        s.set_nodelay(true).ok();
        Ok(RespConn {
            stream: TokioBufReader::new(s),
        })
    }

    /// Writes raw bytes (one or more encoded commands).
    pub async fn try_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|e| format!("write to redis: {e}"))
    }

    /// Reads one reply within `timeout`; I/O and protocol problems are errors.
    pub async fn try_read_reply(&mut self, timeout: Duration) -> Result<Resp, String> {
        tokio::time::timeout(timeout, Self::try_read_value(&mut self.stream))
            .await
            .map_err(|_| format!("no redis reply within {timeout:?}"))?
    }

    /// Sends one command and reads its reply within `timeout`.
    pub async fn try_command(&mut self, args: &[&[u8]], timeout: Duration) -> Result<Resp, String> {
        self.try_write(&Self::encode(args)).await?;
        self.try_read_reply(timeout).await
    }

    /// The canonical publish path of SPEC §3, as a backend does it: one
    /// transaction `MULTI; RPUSH notifications:U M; LTRIM notifications:U
    /// -N -1; EXPIRE notifications:U 604800; PUBLISH ws:user:U M; EXEC`
    /// (pipelined in one write; the six replies are read).
    ///
    /// `Ok(true)`: EXEC returned an array without errors, so the message is
    /// in the history list and was published. `Ok(false)`: Redis answered
    /// but refused (EXEC error or nil): the message did not reach history.
    /// `Err`: the connection failed (Redis down, timeout); the message may
    /// or may not have been applied, and the connection should be dropped.
    pub async fn publish_canonical(
        &mut self,
        user: &str,
        message: &[u8],
        history_size: usize,
        timeout: Duration,
    ) -> Result<bool, String> {
        let key = format!("notifications:{user}");
        let channel = format!("ws:user:{user}");
        let trim = format!("-{history_size}");
        let mut buf = Self::encode(&[b"MULTI"]);
        buf.extend(Self::encode(&[b"RPUSH", key.as_bytes(), message]));
        buf.extend(Self::encode(&[
            b"LTRIM",
            key.as_bytes(),
            trim.as_bytes(),
            b"-1",
        ]));
        buf.extend(Self::encode(&[b"EXPIRE", key.as_bytes(), b"604800"]));
        buf.extend(Self::encode(&[b"PUBLISH", channel.as_bytes(), message]));
        buf.extend(Self::encode(&[b"EXEC"]));
        let deadline = tokio::time::Instant::now() + timeout;
        self.try_write(&buf).await?;
        let mut replies = Vec::with_capacity(6);
        for _ in 0..6 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            replies.push(self.try_read_reply(left).await?);
        }
        Ok(match &replies[5] {
            Resp::Array(Some(results)) => !results.iter().any(|r| matches!(r, Resp::Error(_))),
            _ => false,
        })
    }

    fn try_read_value(
        r: &mut TokioBufReader<TcpStream>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Resp, String>> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            let n = r
                .read_line(&mut line)
                .await
                .map_err(|e| format!("read from redis: {e}"))?;
            if n == 0 {
                return Err("redis closed the connection".into());
            }
            if !line.ends_with("\r\n") || line.len() < 3 {
                return Err(format!("bad RESP line {line:?}"));
            }
            let line = &line[..line.len() - 2];
            let (kind, rest) = line.split_at(1);
            let bad = |what: &str| format!("bad RESP {what} in {line:?}");
            Ok(match kind {
                "+" => Resp::Simple(rest.to_string()),
                "-" => Resp::Error(rest.to_string()),
                ":" => Resp::Int(rest.parse().map_err(|_| bad("integer"))?),
                "$" => {
                    let n: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
                    if n < 0 {
                        return Ok(Resp::Bulk(None));
                    }
                    let mut buf = vec![0u8; n as usize + 2];
                    r.read_exact(&mut buf)
                        .await
                        .map_err(|e| format!("read bulk from redis: {e}"))?;
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
                "*" => {
                    let n: i64 = rest.parse().map_err(|_| bad("array length"))?;
                    if n < 0 {
                        return Ok(Resp::Array(None));
                    }
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(Self::try_read_value(r).await?);
                    }
                    Resp::Array(Some(v))
                }
                _ => return Err(format!("unexpected RESP line {line:?}")),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------

/// How to start a gateway.
pub struct GatewayBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    secret: Option<String>,
    wait_ready: bool,
}

/// A builder with the suite defaults: secret [`SECRET`], no per-IP connect
/// rate limit, embedded broker, `--listen 127.0.0.1:0`.
pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        env: vec![("GATEWAY_CONNECTION_CONNECT_RATE_PER_IP".into(), "0".into())],
        args: Vec::new(),
        secret: Some(SECRET.to_string()),
        wait_ready: true,
    }
}

impl GatewayBuilder {
    pub fn redis(self, redis: &Redis) -> Self {
        self.env("GATEWAY_REDIS_URL", &redis.url())
    }

    /// Sets (or overrides) an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(ek, _)| ek != k);
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// No key material at all: dev mode.
    pub fn no_secret(mut self) -> Self {
        self.secret = None;
        self
    }

    /// Do not wait for `/readyz` to return 200 after start.
    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = TempDir::new();
        let mut cmd = gateway_command(dir.path());
        cmd.env("RUST_LOG", "info");
        if let Some(s) = &self.secret {
            cmd.env("GATEWAY_AUTH_SECRET", s);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let has_listen = self.args.iter().any(|a| a == "--listen");
        cmd.arg("serve");
        if !has_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ws-gateway");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        for (pipe, prefix) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                "",
            ),
            (Box::new(child.stderr.take().unwrap()), "[stderr] "),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let reader = BufReader::new(pipe);
                for line in reader.split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&String::from_utf8_lossy(&line));
                    logs.lock().unwrap().push(format!("{prefix}{line}"));
                }
            });
        }
        let mut gw = Gateway {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            logs,
            _dir: dir,
        };

        // Wait for the "listening ... addr=127.0.0.1:PORT" line.
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(a) = gw.find_listen_addr() {
                break a;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                // Give the reader threads a moment to collect the output.
                wait_until_sync(Duration::from_millis(500), || false);
                panic!(
                    "ws-gateway exited early with {status}; output:\n{}",
                    gw.logs_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "ws-gateway did not log `listening ... addr=` within 20 s; output:\n{}",
                    gw.logs_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        gw.addr = addr;

        if self.wait_ready {
            let ok = wait_until(Duration::from_secs(20), || async {
                matches!(gw.try_get("/readyz").await, Some(r) if r.status == 200)
            })
            .await;
            assert!(
                ok,
                "GET /readyz did not return 200 within 20 s; output:\n{}",
                gw.logs_text()
            );
        }
        gw
    }
}

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Extracts `127.0.0.1:PORT` from a log line with `addr=...`.
pub fn parse_addr_field(line: &str) -> Option<SocketAddr> {
    let idx = line.find("addr=")?;
    let rest = &line[idx + "addr=".len()..];
    let value: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
        .collect();
    value.parse().ok()
}

impl Gateway {
    fn find_listen_addr(&self) -> Option<SocketAddr> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|l| l.contains("listening"))
            .find_map(|l| parse_addr_field(l))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().expect("running").try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line the process printed so far (stdout, then stderr lines
    /// prefixed with `[stderr] `, interleaved in arrival order).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn logs_text(&self) -> String {
        self.logs().join("\n")
    }

    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/ws", self.addr)
        } else {
            format!("ws://{}/ws?{}", self.addr, query)
        }
    }

    /// Opens a WebSocket; returns the raw result (to inspect refusals).
    pub async fn connect_raw(&self, opts: &ConnectOpts) -> Result<Client, tungstenite::Error> {
        let mut params: Vec<String> = Vec::new();
        if let Some(t) = &opts.token {
            params.push(format!("token={t}"));
        }
        params.extend(opts.query.iter().map(|(k, v)| format!("{k}={v}")));
        let query = params.join("&");
        let mut req = self.ws_url(&query).into_client_request()?;
        for (k, v) in &opts.headers {
            req.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let (ws, resp) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("WebSocket handshake did not finish within 5 s")?;
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        Ok(Client {
            ws,
            response_headers: headers,
        })
    }

    /// Opens a WebSocket with `?token=` and asserts the handshake succeeded
    /// (does not read the CONNECTED frame).
    pub async fn connect_token(&self, token: &str) -> Client {
        self.connect_raw(&ConnectOpts::token(token))
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake failed: {}", describe_ws_error(&e)))
    }

    /// Opens a WebSocket with `?token=`, reads the CONNECTED frame and
    /// checks its user id. Returns the client and the CONNECTED `data`.
    pub async fn connect_user(&self, token: &str, expected_user: &str) -> (Client, Value) {
        let mut c = self.connect_token(token).await;
        let data = c.expect_connected(expected_user).await;
        (c, data)
    }

    /// Shorthand: connect a user with a fresh one-hour token and the given roles.
    pub async fn user(&self, user: &str, roles: &[&str]) -> Client {
        self.connect_user(&token(user, roles), user).await.0
    }

    /// Performs an HTTP request against this gateway.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http_request(self.addr, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
    }

    pub async fn try_get(&self, path: &str) -> Option<HttpResponse> {
        http_request(self.addr, "GET", path, &[], None).await.ok()
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.http("GET", path, &[], None).await
    }

    pub async fn get_bearer(&self, path: &str, bearer: &str) -> HttpResponse {
        let auth = format!("Bearer {bearer}");
        self.http("GET", path, &[("Authorization", &auth)], None)
            .await
    }

    pub async fn post_bearer(&self, path: &str, bearer: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {bearer}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.http("POST", path, &headers, Some(body)).await
    }

    /// `GET /ws/health` as JSON.
    pub async fn health(&self) -> Value {
        let r = self.get("/ws/health").await;
        r.json()
    }

    /// `GET /ws/stats` with an admin token; asserts 200.
    pub async fn stats(&self) -> Value {
        let r = self.get_bearer("/ws/stats", &admin_token()).await;
        assert_eq!(r.status, 200, "GET /ws/stats as admin: {r:?}");
        r.json()
    }

    /// Waits until `/ws/health` reports exactly `n` connections.
    pub async fn wait_connections(&self, n: u64) {
        let ok = wait_until(WAIT_TIMEOUT, || async {
            self.health().await["connections"].as_u64() == Some(n)
        })
        .await;
        assert!(
            ok,
            "expected /ws/health connections == {n} within {WAIT_TIMEOUT:?}, last: {}",
            self.health().await
        );
    }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Options for [`Gateway::connect_raw`].
#[derive(Default, Clone, Debug)]
pub struct ConnectOpts {
    /// Sent as `?token=`.
    pub token: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters (already URL-safe).
    pub query: Vec<(String, String)>,
}

impl ConnectOpts {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn token(t: &str) -> Self {
        ConnectOpts {
            token: Some(t.to_string()),
            ..Default::default()
        }
    }
    pub fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_string(), v.to_string()));
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// Describes a handshake error, including the body of an HTTP refusal.
pub fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "HTTP {} {:?}",
            resp.status(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => format!("{other}"),
    }
}

/// An HTTP refusal of a WebSocket handshake.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A header's value from lower-cased `(name, value)` pairs.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

impl Refusal {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {:?}", self.body))
    }
}

/// Expects the handshake to have been refused with an HTTP status.
pub fn expect_refusal(r: Result<Client, tungstenite::Error>) -> Refusal {
    match r {
        Ok(_) => panic!("expected the handshake to be refused, but it was accepted"),
        Err(tungstenite::Error::Http(resp)) => Refusal {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        Err(e) => panic!("expected an HTTP refusal, got error: {e}"),
    }
}

/// What arrived when reading a frame.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Close(Option<u16>),
    /// The stream ended (EOF or error) without a Close frame.
    End(String),
}

pub struct Client {
    pub ws: Ws,
    /// Handshake response headers (lower-cased names).
    pub response_headers: Vec<(String, String)>,
}

impl Client {
    pub fn response_header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.response_headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Looks at the bytes waiting in the kernel socket buffer without
    /// consuming them (so tungstenite does not read, and does not answer
    /// pings). Returns `None` when nothing is waiting, `Some(empty)` at EOF.
    pub async fn peek_raw(&self) -> Option<Vec<u8>> {
        let MaybeTlsStream::Plain(s) = self.ws.get_ref() else {
            panic!("only plain TCP is used in tests");
        };
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_millis(20), s.peek(&mut buf)).await {
            Err(_) => None,
            Ok(Ok(n)) => {
                buf.truncate(n);
                Some(buf)
            }
            Ok(Err(_)) => Some(Vec::new()),
        }
    }

    /// Waits (bounded) until the server has sent a Close frame or ended the
    /// stream, by peeking at the raw socket without reading it. Returns the
    /// close code seen in the raw bytes (`None` if the stream just ended).
    pub async fn wait_server_close_unread(&self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.peek_raw().await {
                Some(b) if b.is_empty() => return None,
                Some(b) => {
                    if let Some(code) = raw_close_code(&b) {
                        return code;
                    }
                }
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "the server did not close the connection within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the next frame (Pongs are skipped). `None` on timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            return Some(match msg {
                None => Frame::End("stream ended".into()),
                Some(Err(e)) => Frame::End(format!("error: {e}")),
                Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_string()),
                Some(Ok(Message::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_))) => Frame::Ping,
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(f))) => Frame::Close(f.map(|f| u16::from(f.code))),
            });
        }
    }

    /// The next text frame (Pings skipped); panics on anything else.
    pub async fn next_text_within(&mut self, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(Frame::Text(t)) => return t,
                Some(Frame::Ping) => continue,
                None => panic!("expected a text frame within {timeout:?}, got nothing"),
                Some(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn next_text(&mut self) -> String {
        self.next_text_within(FRAME_TIMEOUT).await
    }

    pub async fn next_json(&mut self) -> Value {
        let t = self.next_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t:?}"))
    }

    /// Reads the CONNECTED frame and checks its shape and user id.
    pub async fn expect_connected(&mut self, user: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"], "CONNECTED",
            "first frame should be CONNECTED: {v}"
        );
        let d = &v["data"];
        assert_eq!(d["user_id"], user, "CONNECTED user_id: {v}");
        assert!(
            d["connection_id"].as_str().is_some_and(|s| !s.is_empty()),
            "CONNECTED connection_id: {v}"
        );
        assert!(
            d["instance"].as_str().is_some_and(|s| !s.is_empty()),
            "CONNECTED instance: {v}"
        );
        assert!(
            d["heartbeat_secs"].is_u64(),
            "CONNECTED heartbeat_secs: {v}"
        );
        d.clone()
    }

    /// Asserts that nothing but (optionally) pings arrives for `window`.
    /// Used only where the point is "nothing arrives"; prefer ordering
    /// checks (publish a marker, expect the marker next) elsewhere.
    pub async fn expect_silence(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(left).await {
                None | Some(Frame::Ping) => continue,
                Some(f) => panic!("expected nothing, got {f:?}"),
            }
        }
    }

    /// Reads frames until a Close frame (or end of stream); returns the texts
    /// seen before it and the close code (`None` for a Close without code or
    /// a stream that ended without Close).
    pub async fn read_until_close(
        &mut self,
        timeout: Duration,
    ) -> (Vec<String>, Option<u16>, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                None => panic!(
                    "no Close within {timeout:?} (after {} text frames; last: {:?})",
                    texts.len(),
                    texts
                        .last()
                        .map(|t: &String| t.chars().take(200).collect::<String>())
                ),
                Some(Frame::Text(t)) => texts.push(t),
                Some(Frame::Binary(_)) | Some(Frame::Ping) => continue,
                Some(Frame::Close(code)) => {
                    // Keep polling so tungstenite sends the Close reply and
                    // the server can finish the closing handshake.
                    let until = tokio::time::Instant::now() + FRAME_TIMEOUT;
                    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, self.ws.next()).await
                    {
                    }
                    return (texts, code, true);
                }
                Some(Frame::End(_)) => return (texts, None, false),
            }
        }
    }

    /// Expects a Close frame with `code` as the next non-ping frame.
    pub async fn expect_close(&mut self, code: u16) {
        match self.read_until_close(FRAME_TIMEOUT).await {
            (texts, _, _) if !texts.is_empty() => {
                panic!("expected Close {code}, got text frames first: {texts:?}")
            }
            (_, Some(c), true) => assert_eq!(c, code, "close code"),
            (_, None, true) => panic!("expected Close {code}, got a Close frame without code"),
            (_, _, false) => {
                panic!("expected Close {code}, the stream ended without a Close frame")
            }
        }
    }

    /// Expects `{"type":"ERROR","data":{"code":code,...}}` then Close `close`.
    pub async fn expect_error_then_close(&mut self, code: &str, close: u16) {
        let v = self.next_json().await;
        assert_eq!(v["type"], "ERROR", "expected an ERROR frame, got {v}");
        assert_eq!(v["data"]["code"], code, "ERROR code in {v}");
        assert!(
            v["data"]["message"].is_string(),
            "ERROR frame should carry a message: {v}"
        );
        self.expect_close(close).await;
    }

    /// Expects an ERROR frame with `code` (connection stays open).
    pub async fn expect_error(&mut self, code: &str) {
        let v = self.next_json().await;
        assert_eq!(v["type"], "ERROR", "expected an ERROR frame, got {v}");
        assert_eq!(v["data"]["code"], code, "ERROR code in {v}");
        assert!(v["data"]["message"].is_string(), "ERROR message in {v}");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send text frame");
    }

    /// Sends a PING and expects the matching PONG.
    pub async fn ping_pong(&mut self, ts: i64) {
        self.send_text(&format!(r#"{{"type":"PING","ts":{ts}}}"#))
            .await;
        let v = self.next_json().await;
        assert_eq!(
            v,
            serde_json::json!({"type":"PONG","data":{"ts":ts}}),
            "PONG for PING ts={ts}"
        );
    }

    /// Closes politely and waits (bounded) for the server's Close / EOF.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// Scans unmasked server frames in `buf`; returns `Some(code)` for the first
/// Close frame (`Some(None)` if it carries no code), `None` if there is none.
pub fn raw_close_code(buf: &[u8]) -> Option<Option<u16>> {
    let mut i = 0;
    while i + 2 <= buf.len() {
        let opcode = buf[i] & 0x0f;
        let mut len = (buf[i + 1] & 0x7f) as usize;
        let mut hdr = 2;
        if len == 126 {
            if i + 4 > buf.len() {
                return None;
            }
            len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
            hdr = 4;
        } else if len == 127 {
            if i + 10 > buf.len() {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i + 2..i + 10]);
            len = u64::from_be_bytes(b) as usize;
            hdr = 10;
        }
        if opcode == 0x8 {
            let p = i + hdr;
            return Some(
                (len >= 2 && p + 2 <= buf.len()).then(|| u16::from_be_bytes([buf[p], buf[p + 1]])),
            );
        }
        i += hdr + len;
    }
    None
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// Asserts the status code (showing the body on failure).
    pub fn assert_status(&self, status: u16) {
        assert_eq!(self.status, status, "HTTP status; body: {}", self.text());
    }
    /// Asserts status and an error body `{"error":code,"message":...}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "HTTP status; body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"], code, "error code in {v}");
        assert!(v["message"].is_string(), "error message in {v}");
    }
}

/// One HTTP/1.1 request with `Connection: close`, reading to EOF (10 s bound).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        s.write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_http_response(&buf)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
}

fn parse_http_response(buf: &[u8]) -> Result<HttpResponse, String> {
    let sep = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(buf)))?;
    let head = String::from_utf8_lossy(&buf[..sep]).into_owned();
    let mut body = buf[sep + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_str = String::from_utf8_lossy(&data[..line_end]);
        let size_str = size_str.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_str, 16).map_err(|e| format!("chunk size: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Dev mode's secret file (SPEC §9)
// ---------------------------------------------------------------------------

/// HOME and XDG_STATE_HOME inside `dir`, for a process whose dev-mode
/// secret must stay there, never in the real home directory.
pub fn state_env(dir: &Path) -> [(&'static str, String); 2] {
    [
        ("HOME", dir.join("home").display().to_string()),
        ("XDG_STATE_HOME", dir.join("state").display().to_string()),
    ]
}

/// The dev-mode secret file of a process run with [`state_env`]`(dir)`.
pub fn dev_secret_file(dir: &Path) -> PathBuf {
    dir.join("state").join("ws-gateway").join("dev-secret")
}

impl GatewayBuilder {
    /// Runs the gateway with [`state_env`]`(dir)`.
    pub fn state_home(mut self, dir: &Path) -> Self {
        for (k, v) in state_env(dir) {
            self = self.env(k, &v);
        }
        self
    }
}

/// Runs the CLI in `dir` with [`state_env`]`(dir)`, then `env`.
pub fn run_cli_with_state(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let state = state_env(dir);
    let mut all: Vec<(&str, &str)> = state.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    run_cli_in(dir, args, &all)
}
