//! A real redis-server per test, and a client for it: fred, the client the
//! gateway itself uses (no hand-written RESP).

use super::*;
use bytes::Bytes;
use fred::prelude::{
    Builder as FredBuilder, Client as FredClient, ClientLike, Config as FredConfig,
    ErrorKind as FredErrorKind, KeysInterface, ListInterface, PubsubInterface,
    TransactionInterface, Value as FredValue,
};
use fred::types::{ClusterHash, CustomCommand};

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

    /// Whether the server answers (through redis-cli: start-up is not async).
    fn ping_sync(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
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

    /// A connection of its own (for pipelines, transactions, large values).
    pub async fn conn(&self) -> RespConn {
        RespConn::try_connect(self.port, Duration::from_secs(5))
            .await
            .expect("connect to redis")
    }

    /// `args` on a connection of its own, closed before returning (so
    /// that `CLIENT LIST` never sees it).
    pub async fn command(&self, args: &[&[u8]]) -> Resp {
        let mut conn = self.conn().await;
        let reply = conn.command(args).await;
        conn.close().await;
        reply
    }

    /// `PUBLISH channel payload`; returns the number of receivers.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        self.command(&[b"PUBLISH", channel.as_bytes(), payload.as_ref()])
            .await
            .int()
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        let v = self
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
            .command(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()])
            .await;
        v.array()[1].int()
    }

    /// `PUBSUB NUMPAT`.
    pub async fn numpat(&self) -> i64 {
        self.command(&[b"PUBSUB", b"NUMPAT"]).await.int()
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

/// A reply from Redis, as the tests look at it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
    Other(String),
}

impl From<FredValue> for Resp {
    fn from(value: FredValue) -> Self {
        match value {
            FredValue::Integer(i) => Resp::Int(i),
            FredValue::Null => Resp::Bulk(None),
            FredValue::String(s) => Resp::Bulk(Some(s.as_bytes().to_vec())),
            FredValue::Bytes(b) => Resp::Bulk(Some(b.to_vec())),
            FredValue::Array(items) => Resp::Array(items.into_iter().map(Resp::from).collect()),
            other => Resp::Other(format!("{other:?}")),
        }
    }
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
            Resp::Array(v) => v.clone(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
    pub fn string(&self) -> Option<String> {
        match self {
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// One connection to Redis through fred. It does not reconnect: a test
/// that publishes through an outage sees each failure and decides.
pub struct RespConn {
    client: FredClient,
}

/// A dropped connection closes soon after, like a dropped socket would
/// (fred's keeps running until told to quit).
impl Drop for RespConn {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

impl RespConn {
    /// Connects to `127.0.0.1:port` within `timeout`; an error, not a
    /// panic, when Redis is down.
    pub async fn try_connect(port: u16, timeout: Duration) -> Result<RespConn, String> {
        let config = FredConfig::from_url(&format!("redis://127.0.0.1:{port}"))
            .map_err(|e| format!("redis url: {e}"))?;
        let client = FredBuilder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout.max(WAIT_TIMEOUT))
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .build()
            .map_err(|e| format!("redis client: {e}"))?;
        tokio::time::timeout(timeout, client.init())
            .await
            .map_err(|_| format!("connect to redis :{port}: timed out after {timeout:?}"))?
            .map_err(|e| format!("connect to redis :{port}: {e}"))?;
        Ok(RespConn { client })
    }

    /// Any command, e.g. `&[b"LRANGE", key, b"0", b"-1"]`; panics on an
    /// error reply (bounded by the command timeout).
    pub async fn command(&mut self, args: &[&[u8]]) -> Resp {
        let (name, rest) = args.split_first().expect("a command name");
        let name = String::from_utf8_lossy(name).into_owned();
        let cmd = CustomCommand::new(name, ClusterHash::FirstKey, false);
        let rest: Vec<FredValue> = rest
            .iter()
            .map(|a| FredValue::Bytes(Bytes::copy_from_slice(a)))
            .collect();
        let value: FredValue = self
            .client
            .custom(cmd, rest)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"));
        Resp::from(value)
    }

    /// Closes the connection (QUIT), waiting for it.
    pub async fn close(self) {
        let _ = self.client.quit().await;
    }

    /// `PUBLISH channel payload`; returns the number of receivers.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> i64 {
        let payload = Bytes::copy_from_slice(payload);
        self.client
            .publish(channel, payload)
            .await
            .unwrap_or_else(|e| panic!("redis PUBLISH {channel}: {e}"))
    }

    /// Every `(channel, payload)` PUBLISHed in one pipeline (sent together,
    /// so the gateway receives them as a burst); returns each receiver count.
    pub async fn publish_pipelined(&mut self, messages: &[(&str, &str)]) -> Vec<i64> {
        let pipeline = self.client.pipeline();
        for (channel, payload) in messages {
            let () = pipeline
                .publish(*channel, *payload)
                .await
                .expect("queue a PUBLISH");
        }
        pipeline.all().await.expect("pipelined PUBLISHes")
    }

    /// Publishes `{"type": ty, "id": <a new ULID>, "data": {"n": n}}` for
    /// each `n`, through the canonical path (history 100, each within
    /// [`WAIT_TIMEOUT`]), and returns the messages; panics on a failure.
    pub async fn publish_numbered(
        &mut self,
        user: &str,
        ty: &str,
        ns: std::ops::RangeInclusive<u32>,
    ) -> Vec<Value> {
        let mut messages = Vec::new();
        for n in ns {
            let id = ulid::Ulid::new().to_string();
            let m = serde_json::json!({"type": ty, "id": id, "data": {"n": n}});
            let published = self
                .publish_canonical(user, m.to_string().as_bytes(), 100, WAIT_TIMEOUT)
                .await;
            assert_eq!(published, Ok(true), "publish {m}");
            messages.push(m);
        }
        messages
    }

    /// The canonical publish path (SPEC §3) in one MULTI/EXEC: RPUSH to
    /// `notifications:{user}`, LTRIM to `history_size`, EXPIRE, PUBLISH on
    /// `ws:user:{user}`.
    ///
    /// `Ok(true)`: EXEC returned without errors, so the message is in the
    /// history list and was published. `Ok(false)`: Redis answered but
    /// refused: the message did not reach history. `Err`: the connection
    /// failed (Redis down, timeout); the message may or may not have been
    /// applied, and the connection should be dropped.
    pub async fn publish_canonical(
        &mut self,
        user: &str,
        message: &[u8],
        history_size: usize,
        timeout: Duration,
    ) -> Result<bool, String> {
        let key = format!("notifications:{user}");
        let channel = format!("ws:user:{user}");
        let message = Bytes::copy_from_slice(message);
        let trx = self.client.multi();
        let queued = async {
            let () = trx.rpush(&key, message.clone()).await?;
            let () = trx.ltrim(&key, -(history_size as i64), -1).await?;
            let () = trx.expire(&key, 604_800, None).await?;
            trx.publish::<(), _, _>(&channel, message).await
        };
        queued
            .await
            .map_err(|e| format!("queue the transaction: {e}"))?;
        match tokio::time::timeout(timeout, trx.exec::<FredValue>(true)).await {
            Err(_) => Err(format!("EXEC: no answer within {timeout:?}")),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    FredErrorKind::IO | FredErrorKind::Timeout | FredErrorKind::Canceled
                ) =>
            {
                Err(format!("EXEC: {e}"))
            }
            Ok(Err(_)) => Ok(false),
        }
    }
}
