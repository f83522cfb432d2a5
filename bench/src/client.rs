//! The load generator's WebSocket clients: connect from several loopback
//! source addresses, wait for the first frame, then count every frame and
//! record its publish-to-receive latency from the `ts` (µs) in its payload.

use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Latency histograms are sharded so that thousands of tasks rarely contend.
const SHARDS: usize = 32;
/// Samples a task keeps before taking its shard's lock.
const LOCAL_SAMPLES: usize = 128;

/// Counters and histograms shared by every client task.
pub struct Stats {
    pub received: AtomicU64,
    /// Reader tasks still running (they flush their samples on exit).
    pub readers: AtomicU64,
    pub closed_early: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        let shards = (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect();
        Arc::new(Self {
            received: AtomicU64::new(0),
            readers: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
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
/// without a JSON parse so the load generator stays cheap.
pub fn payload_ts(text: &str) -> Option<u64> {
    let start = text.find("\"ts\":")? + 5;
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens one WebSocket from `source` and waits for the server's first frame.
pub async fn connect(target: SocketAddr, url: &str, source: Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(first)))) if first.contains("\"CONNECTED\"") => Ok(ws),
        Ok(Some(Ok(other))) => Err(format!("first frame was not CONNECTED: {other:?}")),
        Ok(Some(Err(e))) => Err(format!("read: {e}")),
        Ok(None) => Err("closed before CONNECTED".into()),
        Err(_) => Err("no CONNECTED within 10 s".into()),
    }
}

/// Reads until `stop`, counting frames and recording latencies.
pub async fn read(mut ws: Ws, index: usize, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    stats.readers.fetch_add(1, Relaxed);
    let mut samples = Vec::with_capacity(LOCAL_SAMPLES);
    // Frames counted here and not yet in `stats.received`: the shared
    // counter is updated when the socket has nothing more to read, since a
    // per-frame atomic shared by both cores would cost the load generator
    // (and so the machine) more than the frame itself.
    let mut unreported = 0;
    loop {
        let frame = match ws.next().now_or_never() {
            Some(frame) => frame,
            None => {
                stats
                    .received
                    .fetch_add(std::mem::take(&mut unreported), Relaxed);
                tokio::select! {
                    frame = ws.next() => frame,
                    _ = stop.changed() => break,
                }
            }
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                let now = now_micros();
                unreported += 1;
                if let Some(ts) = payload_ts(&text) {
                    samples.push(now.saturating_sub(ts));
                    if samples.len() == LOCAL_SAMPLES {
                        stats.record(index, &mut samples);
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                if !*stop.borrow() {
                    stats.closed_early.fetch_add(1, Relaxed);
                }
                break;
            }
        }
    }
    stats.received.fetch_add(unreported, Relaxed);
    stats.record(index, &mut samples);
    stats.readers.fetch_sub(1, Relaxed);
    // Dropped without a closing handshake: the run is over.
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
    }
}
