//! The load generator's clients: connect from several loopback source
//! addresses over one of the gateway's transports, wait until the server
//! says the connection is ready, then count every delivery and record its
//! publish-to-receive latency from the `ts` (µs) in its payload.
//!
//! - `/ws`: a WebSocket; ready at the `CONNECTED` frame; every text frame
//!   after it is a delivery.
//! - `/socket.io/`: Engine.IO v4 / Socket.IO v5 over a WebSocket; ready at
//!   the CONNECT reply `40{…}`; every `42[…]` event is a delivery, and every
//!   server ping `2` is answered `3` (and is not a delivery).
//! - `/sse`: plain HTTP/1.1; ready after the `CONNECTED` event; every
//!   `event: BENCH` is a delivery ([`crate::sse`]).
//!
//! The two WebSocket dialects share one reader ([`read`]), generic over
//! what a text frame is ([`Dialect`]), so the `/ws` path compiles to what it
//! was before there were dialects.

use crate::sse::{self, SseEvent};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Latency histograms are sharded so that thousands of tasks rarely contend.
const SHARDS: usize = 32;
/// Samples a task keeps before taking its shard's lock.
const LOCAL_SAMPLES: usize = 128;
/// How long the server may take to say a connection is ready.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Frames a client reads at most while waiting for that (Socket.IO may
/// send a ping or two first).
const READY_FRAMES: usize = 16;
/// The largest HTTP response head accepted from `/sse`.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bytes an SSE client reads at once (as a WebSocket client's read buffer).
const SSE_READ_BUFFER: usize = 8 * 1024;

/// Which of the gateway's endpoints the clients use.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /ws`, the gateway's own protocol.
    Ws,
    /// `GET /socket.io/?EIO=4&transport=websocket`, Socket.IO 4 clients.
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
    /// `GET /sse`, server-sent events.
    Sse,
}

impl Transport {
    /// The endpoint's path and fixed query on a server at `addr`.
    pub fn url(self, addr: SocketAddr) -> String {
        match self {
            Transport::Ws => format!("ws://{addr}/ws"),
            Transport::SocketIo => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            Transport::Sse => format!("http://{addr}/sse"),
        }
    }
}

/// Counters and histograms shared by every client task.
pub struct Stats {
    pub received: AtomicU64,
    /// Reader tasks still running (they flush their samples on exit).
    pub readers: AtomicU64,
    pub closed_early: AtomicU64,
    /// Server heartbeats the clients saw: WebSocket pings, Engine.IO pings
    /// (each answered), SSE `: ping` comments. Never counted as deliveries.
    pub pings: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        let shards = (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect();
        Arc::new(Self {
            received: AtomicU64::new(0),
            readers: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            shards,
        })
    }

    /// All shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }

    fn record(&self, shard: usize, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            for &us in samples.iter() {
                let _ = h.record(us.max(1));
            }
        }
        samples.clear();
    }
}

/// Microsecond latencies from 1 µs to 100 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 100_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("static histogram bounds are valid: {e}"),
    }
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The `ts` of a benchmark payload, `{"type":"BENCH","ts":<µs>,…}`, read
/// without a JSON parse so the load generator stays cheap: the first
/// `"ts":` in the text. Wrapped payloads (`42["BENCH",{…},"<id>"]`, an
/// SSE `data:` line) carry it the same way.
pub fn payload_ts(text: &str) -> Option<u64> {
    let start = text.find("\"ts\":")? + 5;
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

/// [`payload_ts`] of raw bytes (an SSE `data:` line).
pub fn payload_ts_bytes(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":";
    let start = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    // ASCII digits only: valid UTF-8.
    std::str::from_utf8(&text[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// One reader's deliveries not yet in the shared [`Stats`]: the shared
/// counter is updated when the socket has nothing more to read, since a
/// per-delivery atomic shared by both cores would cost the load generator
/// (and so the machine) more than the delivery itself.
struct Tally {
    stats: Arc<Stats>,
    index: usize,
    samples: Vec<u64>,
    unreported: u64,
}

impl Tally {
    fn new(stats: Arc<Stats>, index: usize) -> Self {
        stats.readers.fetch_add(1, Relaxed);
        Self {
            stats,
            index,
            samples: Vec::with_capacity(LOCAL_SAMPLES),
            unreported: 0,
        }
    }

    /// One delivery, received at `now`, sent at `ts` (when it says).
    #[inline]
    fn delivery(&mut self, now: u64, ts: Option<u64>) {
        self.unreported += 1;
        if let Some(ts) = ts {
            self.samples.push(now.saturating_sub(ts));
            if self.samples.len() == LOCAL_SAMPLES {
                self.stats.record(self.index, &mut self.samples);
            }
        }
    }

    /// Adds what was counted to the shared total.
    #[inline]
    fn report(&mut self) {
        self.stats
            .received
            .fetch_add(std::mem::take(&mut self.unreported), Relaxed);
    }

    /// The reader ended; `stopped` when the run told it to.
    fn finish(mut self, stopped: bool) {
        if !stopped {
            self.stats.closed_early.fetch_add(1, Relaxed);
        }
        self.report();
        self.stats.record(self.index, &mut self.samples);
        self.stats.readers.fetch_sub(1, Relaxed);
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// What a text frame from the server is, in one WebSocket dialect.
pub enum Frame {
    /// A published message: counted, its latency taken from its `ts`.
    Delivery,
    /// A heartbeat the client must answer with [`Dialect::PONG`].
    Ping,
    /// Anything else: ignored.
    Other,
}

/// How the generic WebSocket [`read`] classifies text frames.
pub trait Dialect {
    /// The answer to a [`Frame::Ping`].
    const PONG: &'static str;
    fn classify(text: &str) -> Frame;
}

/// `/ws`: every text frame after CONNECTED is a published message.
pub struct Plain;

impl Dialect for Plain {
    const PONG: &'static str = "";
    #[inline(always)]
    fn classify(_: &str) -> Frame {
        Frame::Delivery
    }
}

/// `/socket.io/`: Engine.IO packets; `42` is a Socket.IO EVENT (the
/// gateway emits each message as `42["<event>",<payload>,"<offset>"]`),
/// `2` the server's ping.
pub struct SocketIo;

impl Dialect for SocketIo {
    const PONG: &'static str = "3";
    #[inline]
    fn classify(text: &str) -> Frame {
        match text.as_bytes() {
            [b'4', b'2', ..] => Frame::Delivery,
            [b'2'] => Frame::Ping,
            _ => Frame::Other,
        }
    }
}

/// A TCP connection to `target` from `source`, with Nagle off.
async fn tcp(target: SocketAddr, source: Ipv4Addr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn websocket(target: SocketAddr, url: &str, source: Ipv4Addr) -> Result<Ws, String> {
    let tcp = tcp(target, source).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Opens one `/ws` WebSocket from `source` and waits for the server's
/// first frame, CONNECTED.
pub async fn connect(target: SocketAddr, url: &str, source: Ipv4Addr) -> Result<Ws, String> {
    let mut ws = websocket(target, url, source).await?;
    match tokio::time::timeout(READY_WITHIN, ws.next()).await {
        Ok(Some(Ok(Message::Text(first)))) if first.contains("\"CONNECTED\"") => Ok(ws),
        Ok(Some(Ok(other))) => Err(format!("first frame was not CONNECTED: {other:?}")),
        Ok(Some(Err(e))) => Err(format!("read: {e}")),
        Ok(None) => Err("closed before CONNECTED".into()),
        Err(_) => Err("no CONNECTED within 10 s".into()),
    }
}

/// Opens one Socket.IO connection from `source`: the WebSocket, Engine.IO's
/// open packet `0{…}`, our CONNECT `40{"token":…}`, and the server's
/// `40{"sid":…}` (a refusal is `44{…}`).
pub async fn connect_socketio(
    target: SocketAddr,
    url: &str,
    token: &str,
    source: Ipv4Addr,
) -> Result<Ws, String> {
    let mut ws = websocket(target, url, source).await?;
    let handshake = async {
        let mut opened = false;
        for _ in 0..READY_FRAMES {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(format!("unexpected frame: {other:?}")),
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed before the CONNECT reply".into()),
            };
            match text.as_bytes() {
                [b'0', b'{', ..] if !opened => {
                    opened = true;
                    let connect = format!("40{}", serde_json::json!({ "token": token }));
                    ws.send(Message::text(connect))
                        .await
                        .map_err(|e| format!("send CONNECT: {e}"))?;
                }
                [b'4', b'0', ..] if opened => return Ok(()),
                [b'4', b'4', ..] => return Err(format!("CONNECT refused: {text}")),
                [b'2'] => ws
                    .send(Message::text(SocketIo::PONG))
                    .await
                    .map_err(|e| format!("send pong: {e}"))?,
                _ => {
                    return Err(format!(
                        "unexpected packet before the CONNECT reply: {text}"
                    ))
                }
            }
        }
        Err("no CONNECT reply within the first frames".into())
    };
    match tokio::time::timeout(READY_WITHIN, handshake).await {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no CONNECT reply within 10 s".into()),
    }
}

/// Reads a WebSocket until `stop`, counting deliveries (as `D` classifies
/// text frames) and recording latencies.
pub async fn read<D: Dialect>(
    mut ws: Ws,
    index: usize,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tally = Tally::new(stats, index);
    loop {
        let frame = match ws.next().now_or_never() {
            Some(frame) => frame,
            None => {
                tally.report();
                tokio::select! {
                    frame = ws.next() => frame,
                    _ = stop.changed() => break,
                }
            }
        };
        match frame {
            Some(Ok(Message::Text(text))) => match D::classify(&text) {
                Frame::Delivery => tally.delivery(now_micros(), payload_ts(&text)),
                Frame::Ping => {
                    tally.stats.pings.fetch_add(1, Relaxed);
                    if ws
                        .send(Message::Text(Utf8Bytes::from_static(D::PONG)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Frame::Other => {}
            },
            // tungstenite has queued the pong already.
            Some(Ok(Message::Ping(_))) => {
                tally.stats.pings.fetch_add(1, Relaxed);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let stopped = *stop.borrow();
    tally.finish(stopped);
    // Dropped without a closing handshake: the run is over.
}

/// An SSE stream whose CONNECTED event has arrived.
pub struct Sse {
    tcp: TcpStream,
    parser: sse::Parser,
    /// Deliveries that arrived with CONNECTED, in the same read.
    early: Vec<Option<u64>>,
}

/// Opens one `/sse` stream from `source`: `GET <path>` with
/// `Accept: text/event-stream`, a `200` head, then the stream up to its
/// first event, CONNECTED.
pub async fn connect_sse(target: SocketAddr, url: &str, source: Ipv4Addr) -> Result<Sse, String> {
    let path = url
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
        .ok_or_else(|| format!("an SSE URL is http://IP:PORT/path, got {url}"))?;
    let mut tcp = tcp(target, source).await?;
    let open = async {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send request: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = vec![0u8; SSE_READ_BUFFER];
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err("response head too large".to_string());
            }
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before the response head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = sse::Head::parse(&buf[..head_end])?;
        let mut parser = sse::Parser::new(head.chunked);
        let mut early = Vec::new();
        let mut bytes = &buf[head_end..];
        // Bounded by the size of the events before CONNECTED (none, in the
        // gateway) and by READY_WITHIN.
        for _ in 0..READY_FRAMES * 64 {
            let mut events = Vec::new();
            parser.feed(bytes, &mut |event| events.push(event));
            let mut connected = false;
            for event in events {
                match event {
                    SseEvent::Connected => connected = true,
                    SseEvent::Delivery(ts) => early.push(ts),
                    SseEvent::Ping => {}
                    SseEvent::End => return Err("the stream ended before CONNECTED".to_string()),
                    SseEvent::Broken(why) => return Err(why.to_string()),
                }
            }
            if connected {
                return Ok((parser, early));
            }
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before CONNECTED".into());
            }
            bytes = &chunk[..n];
        }
        Err("no CONNECTED event in the first reads".into())
    };
    match tokio::time::timeout(READY_WITHIN, open).await {
        Ok(Ok((parser, early))) => Ok(Sse { tcp, parser, early }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no CONNECTED event within 10 s".into()),
    }
}

/// Reads an SSE stream until `stop`, counting BENCH events and recording
/// latencies; the same batching of the shared counter as [`read`].
pub async fn read_sse(sse: Sse, index: usize, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let Sse {
        tcp,
        mut parser,
        early,
    } = sse;
    let mut tally = Tally::new(stats, index);
    let now = now_micros();
    for ts in early {
        tally.delivery(now, ts);
    }
    let mut buf = vec![0u8; SSE_READ_BUFFER];
    let mut ended = false;
    // Bounded by the run: the stream ends at `stop` or when it closes.
    while !ended {
        let n = match tcp.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tally.report();
                tokio::select! {
                    ready = tcp.readable() => match ready {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            Err(_) => break,
        };
        let now = now_micros();
        parser.feed(&buf[..n], &mut |event| match event {
            SseEvent::Delivery(ts) => tally.delivery(now, ts),
            SseEvent::Ping => {
                tally.stats.pings.fetch_add(1, Relaxed);
            }
            SseEvent::Connected => {}
            SseEvent::End | SseEvent::Broken(_) => ended = true,
        });
    }
    let stopped = *stop.borrow();
    tally.finish(stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ts() {
        assert_eq!(
            payload_ts(r#"{"type":"BENCH","ts":123,"seq":1}"#),
            Some(123)
        );
        assert_eq!(payload_ts(r#"{"type":"X"}"#), None);
        assert_eq!(
            payload_ts(r#"42["BENCH",{"type":"BENCH","ts":77,"seq":1},"01J"]"#),
            Some(77)
        );
        assert_eq!(payload_ts(r#"{"ts":}"#), None);
    }

    #[test]
    fn socketio_frames() {
        assert!(matches!(
            SocketIo::classify(r#"42["BENCH",{"ts":1},"x"]"#),
            Frame::Delivery
        ));
        assert!(matches!(SocketIo::classify("2"), Frame::Ping));
        assert!(matches!(SocketIo::classify("3"), Frame::Other));
        assert!(matches!(
            SocketIo::classify(r#"40{"sid":"s"}"#),
            Frame::Other
        ));
        assert!(matches!(SocketIo::classify("41"), Frame::Other));
        assert!(matches!(SocketIo::classify(""), Frame::Other));
        assert!(matches!(Plain::classify("anything"), Frame::Delivery));
    }

    #[test]
    fn urls() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(Transport::Ws.url(addr), "ws://127.0.0.1:9/ws");
        assert_eq!(
            Transport::SocketIo.url(addr),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(Transport::Sse.url(addr), "http://127.0.0.1:9/sse");
    }
}
