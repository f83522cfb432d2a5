//! A real redis-server per test, and a small RESP client for it.

use super::*;

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
