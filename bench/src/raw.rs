//! The raw-TCP fan-out baseline: a plain tokio server that accepts the same
//! WebSocket clients and writes the same bytes (frame header + payload) to
//! each of them, one `write` per connection per message, from a single task
//! with no queues or wake-ups in between. Its deliveries per CPU-second are
//! the physical limit of this machine for that traffic.

use crate::pacing::{self, Pacer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub struct RawArgs {
    pub listen: SocketAddr,
    pub connections: usize,
    pub rate: u32,
    pub duration: Duration,
    pub payload: usize,
    /// Pause between the last connection and the first message, so the
    /// driver can take its CPU sample first.
    pub start_delay: Duration,
}

pub async fn serve(args: RawArgs) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "raw-server listening addr={addr} pid={}",
        std::process::id()
    );

    let (tx, mut rx) = mpsc::channel::<TcpStream>(1024);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(stream) = handshake(stream).await {
                    let _ = tx.send(stream).await;
                }
            });
        }
    });
    let mut streams = Vec::with_capacity(args.connections);
    let accept_deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while streams.len() < args.connections {
        match tokio::time::timeout_at(accept_deadline, rx.recv()).await {
            Ok(Some(stream)) => streams.push(stream),
            _ => {
                return Err(format!(
                    "only {} of {} connected",
                    streams.len(),
                    args.connections
                ))
            }
        }
    }
    println!("raw-server: {} connected", streams.len());
    tokio::time::sleep(args.start_delay).await;

    let mut failed = 0u64;
    let mut sent = 0u64;
    let mut pacer = Pacer::new(args.rate, args.duration);
    while let Some(seq) = pacer.next().await {
        let frame = frame(pacing::payload(seq, args.payload).as_bytes());
        for stream in streams.iter_mut() {
            if stream.write_all(&frame).await.is_err() {
                failed += 1;
            }
        }
        sent += 1;
    }
    println!(
        "raw-server: sent {sent} messages to {} connections, {failed} failed writes",
        streams.len()
    );
    // Keep the sockets open while the driver drains.
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

/// Answers a WebSocket upgrade (no checks: this is a baseline) and sends the
/// first frame the clients wait for.
async fn handshake(mut stream: TcpStream) -> Result<TcpStream, String> {
    let _ = stream.set_nodelay(true);
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 || request.len() > 16 * 1024 {
            return Err("bad request".into());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .ok_or("no key")?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream
        .write_all(response.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&frame(br#"{"type":"CONNECTED"}"#))
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// An unmasked server text frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}
