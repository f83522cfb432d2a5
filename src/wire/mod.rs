//! The sending side of one connection: every byte the server writes to a
//! client goes through its `Wire`, in order.
//!
//! Why not let tungstenite write everything? Because then every delivery
//! would wake the connection's task, and at 10k connections the wake-ups
//! cost as much CPU as the writes themselves. Instead the fan-out writes
//! published messages straight to the socket when nothing is queued for
//! that client: one non-blocking `writev` of the messages' frames (built
//! once per message and shared by every recipient: no copy per client) for
//! all the messages it has for the client at once. Only when the socket is
//! full does it queue the rest and wake the session task, which flushes the
//! queue once the socket is writable.
//!
//! The fan-out is handed every message that is waiting when it starts (see
//! [`Hub::dispatch`](crate::hub::Hub::dispatch)): at low rates that is one
//! message and one syscall per delivery; the busier the instance, the more
//! messages arrive while a fan-out is under way, and the more of them the
//! next one writes per syscall. No wake-up, no queue, no extra copy on
//! either path.
//!
//! tungstenite still reads the client's frames and writes the server's
//! control frames (pongs, pings, replies, close): it sees the socket through
//! [`WireStream`], whose writes go through the same queue, so they can never
//! interleave with a published message.
//!
//! The parts: `outbox` is the queue's policy (capacity → 4008, bounded
//! replies, holding live messages for a replay), `writev` the socket
//! writer, and `stream` the [`WireStream`]. The outbox is under a
//! per-connection `std::sync::Mutex`: writes under it are non-blocking
//! (`try_write`), nothing under it awaits, and only this connection's own
//! writers ever wait for it.

mod outbox;
mod stream;
mod writev;

pub(crate) use stream::WireStream;

use crate::lock;
use crate::metrics::Stats;
use crate::protocol::Published;
pub use outbox::{Encoding, Limits};
use outbox::{Flushed, Outbox};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The most a closing connection reads and discards ([`Wire::linger`]).
pub const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The most a connection's kernel send buffer holds that it has not yet
/// sent to the client.
const KERNEL_UNSENT_BYTES: u32 = 64 * 1024;

/// Keeps what the kernel holds for a client that does not read to
/// [`KERNEL_UNSENT_BYTES`] (`TCP_NOTSENT_LOWAT`), instead of the
/// megabytes the send buffer grows to; the rest waits in the outbox, where
/// it counts against the client's limits. That bounds the kernel memory a
/// stalled client holds, and it makes the outbox's progress the client's
/// progress: a slow consumer's close frame enters the kernel only a little
/// ahead of the client's reading, so once it is sent the socket can go
/// without a reset destroying it (which a client that keeps sending would
/// cause, while megabytes were still unsent).
fn limit_unsent(socket: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(socket).set_tcp_notsent_lowat(KERNEL_UNSENT_BYTES);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// Why the server closes a connection from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed: close 4008, dropping what is queued.
    SlowConsumer,
    /// The instance is shutting down: write what is queued, then close 1001.
    Shutdown,
}

/// What happened to a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Written, queued, held, or dropped as a duplicate of a replay.
    Queued,
    /// The queue was full; the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection was already closing.
    Closed,
}

pub struct Wire {
    socket: TcpStream,
    state: Mutex<Outbox>,
    /// Wakes the session: bytes are queued, or the wire was closed.
    notify: Notify,
    /// Where its deliveries are counted, whichever path writes them.
    stats: Arc<Stats>,
}

impl Wire {
    /// `limits`: what may be queued before the client counts as a slow
    /// consumer; `encoding`: how messages are framed for it. Live messages
    /// are held until [`Wire::release`].
    pub fn new(
        socket: TcpStream,
        limits: Limits,
        encoding: Encoding,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        limit_unsent(&socket);
        Arc::new(Self {
            socket,
            state: Mutex::new(Outbox::new(limits, encoding)),
            notify: Notify::new(),
            stats,
        })
    }

    /// Fan-out: sends live messages, in order, without waiting.
    pub fn deliver(&self, messages: &[Arc<Published>]) -> Push {
        let (push, wake) = lock(&self.state).deliver(&self.socket, messages, &self.stats);
        self.wake_if(wake);
        push
    }

    /// Sends a replayed message now, ahead of the held live ones.
    pub fn send_replayed(&self, published: &Arc<Published>) {
        let (_, wake) = lock(&self.state).send_replayed(&self.socket, published, &self.stats);
        self.wake_if(wake);
    }

    /// Sends bytes of the transport's own (tungstenite's control frames and
    /// replies, SSE's head and pings), behind what is queued.
    pub fn send_raw(&self, buf: &[u8]) {
        let out = std::iter::once(writev::Out::Raw(buf));
        let (_, wake) = lock(&self.state).send(&self.socket, out, &self.stats);
        self.wake_if(wake);
    }

    /// Ends the hold once `replayed` (the messages sent with
    /// [`Wire::send_replayed`]) is out: live messages flow, minus the
    /// replay's duplicates.
    pub fn release(&self, replayed: &[Arc<Published>]) {
        let (_, wake) = lock(&self.state).release(&self.socket, replayed, &self.stats);
        self.wake_if(wake);
    }

    fn wake_if(&self, wake: bool) {
        if wake {
            self.notify.notify_one();
        }
    }

    /// Closes from outside the session (shutdown); it sees it on its next wake.
    pub fn close(&self, reason: CloseReason) {
        lock(&self.state).close(reason);
        self.notify.notify_one();
    }

    pub fn closed(&self) -> Option<CloseReason> {
        lock(&self.state).closed()
    }

    /// Where this connection's deliveries are counted.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Socket.IO: the recovery offset the last event carried (at first the
    /// connection's resume point, [`Wire::set_offset`]).
    pub fn offset(&self) -> Option<Arc<str>> {
        lock(&self.state).encoding().offset()
    }

    /// Socket.IO: the offset events without an id carry until one with an
    /// id is sent: the resume point the client was given.
    pub fn set_offset(&self, offset: &str) {
        lock(&self.state).encoding().set_offset(offset);
    }

    pub fn has_pending(&self) -> bool {
        lock(&self.state).has_pending()
    }

    /// The bytes queued and not yet taken by the kernel: while this shrinks
    /// the client is reading.
    pub fn pending_bytes(&self) -> usize {
        lock(&self.state).pending_bytes()
    }

    /// Resolves when something changed: bytes queued, or the wire closed.
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Writes everything queued.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match lock(&self.state).write_pending(&self.socket, &self.stats)? {
                Flushed::All => return Poll::Ready(Ok(())),
                Flushed::Blocked => ready!(self.socket.poll_write_ready(cx))?,
            }
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Resolves when the client has closed its side (or the socket failed);
    /// what it sends meanwhile is read and dropped. For a transport whose
    /// client sends nothing after its request (SSE).
    pub async fn client_gone(&self) {
        let mut scratch = [0u8; 512];
        while self.socket.readable().await.is_ok() {
            match self.socket.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// The last thing before the socket is dropped: stop writing (the peer
    /// gets a FIN after what was sent, the close frame included) and read
    /// and discard what the client still sends, for at most `limit` and
    /// [`LINGER_MAX_BYTES`]. Dropping a socket with unread input makes the
    /// kernel answer with a reset, which destroys the close frame in
    /// flight: a client that sent an oversized frame would never read its
    /// 1009.
    pub async fn linger(&self, limit: std::time::Duration) {
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Write);
        let drain = async {
            // On the heap, and only now: an array here would sit in every
            // session's future (16 KiB per idle connection).
            let mut scratch = vec![0u8; 16 * 1024];
            let mut left = LINGER_MAX_BYTES;
            while left > 0 && self.socket.readable().await.is_ok() {
                match self.socket.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_published;
    use bytes::Bytes;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (server, client) = tokio::join!(listener.accept(), client);
        (server.unwrap().0, client.unwrap())
    }

    fn message(text: &str) -> Arc<Published> {
        Arc::new(validate_published(Bytes::from(text.to_string())).unwrap())
    }

    #[tokio::test]
    async fn held_messages_follow_the_replay_in_order() {
        let (server, mut client) = pair().await;
        let stats = Arc::new(Stats::default());
        let wire = Wire::new(
            server,
            Limits::new(16, usize::MAX),
            Encoding::Plain,
            stats.clone(),
        );
        wire.deliver(&[message(r#"{"type":"LIVE","id":"2"}"#)]);
        wire.send_replayed(&message(r#"{"type":"OLD","id":"1"}"#));
        wire.release(&[]);
        wire.flush().await.unwrap();
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while got.len() < 2 * 2 + 22 + 23 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let old = text.find("OLD").unwrap();
        let live = text.find("LIVE").unwrap();
        assert!(old < live, "replay first: {text:?}");
        assert_eq!(stats.messages_delivered.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn replies_to_a_client_that_never_reads_are_bounded_too() {
        use tokio::io::AsyncWriteExt;
        let (server, _client) = pair().await;
        let stats = Arc::new(Stats::default());
        let wire = Wire::new(
            server,
            Limits::new(4, usize::MAX),
            Encoding::Plain,
            stats.clone(),
        );
        wire.release(&[]);
        // Fill the socket until a message stays queued; the replies queue
        // behind it.
        let big = message(&format!(
            r#"{{"type":"X","pad":"{}"}}"#,
            "a".repeat(512 * 1024)
        ));
        for _ in 0..256 {
            if wire.has_pending() {
                break;
            }
            assert_eq!(wire.deliver(std::slice::from_ref(&big)), Push::Queued);
        }
        assert!(wire.has_pending(), "the socket never filled");
        let mut stream = WireStream::new(wire.clone());
        for reply in 1..=3 {
            stream
                .write_all(format!("pong-{reply}").as_bytes())
                .await
                .unwrap();
            assert_eq!(wire.closed(), None);
        }
        stream.write_all(b"pong-4").await.unwrap();
        assert_eq!(wire.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(stats.slow_consumer_disconnects.load(Relaxed), 1);
    }

    /// Messages queued behind a full socket and written by tungstenite's
    /// flush (it flushes when it sends a Pong or a Close) are deliveries too.
    #[tokio::test]
    async fn messages_flushed_through_the_stream_are_counted() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = pair().await;
        let stats = Arc::new(Stats::default());
        let wire = Wire::new(
            server,
            Limits::new(1024, usize::MAX),
            Encoding::Plain,
            stats.clone(),
        );
        wire.release(&[]);
        let big = message(&format!(
            r#"{{"type":"X","pad":"{}"}}"#,
            "a".repeat(256 * 1024)
        ));
        let mut sent = 0u64;
        while !wire.has_pending() && sent < 256 {
            wire.deliver(std::slice::from_ref(&big));
            sent += 1;
        }
        assert!(wire.has_pending(), "the socket never filled");
        let total = sent as usize * big.frame.len();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut read = 0;
            while read < total {
                read += client.read(&mut buf).await.unwrap();
            }
        });
        let mut stream = WireStream::new(wire.clone());
        stream.flush().await.unwrap();
        reader.await.unwrap();
        assert_eq!(stats.messages_delivered.load(Relaxed), sent);
    }

    #[tokio::test]
    async fn a_full_queue_closes_as_slow_consumer() {
        let (server, _client) = pair().await;
        let stats = Arc::new(Stats::default());
        // Held until release, like a client whose socket takes nothing.
        let wire = Wire::new(
            server,
            Limits::new(2, usize::MAX),
            Encoding::Plain,
            stats.clone(),
        );
        let m = [message(r#"{"type":"X"}"#)];
        assert_eq!(wire.deliver(&m), Push::Queued);
        assert_eq!(wire.deliver(&m), Push::Queued);
        assert_eq!(wire.deliver(&m), Push::Overflowed);
        assert_eq!(wire.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(wire.deliver(&m), Push::Closed);
        // One disconnect; the two held and the one that did not fit are
        // dropped, the one after the close never counted.
        assert_eq!(stats.slow_consumer_disconnects.load(Relaxed), 1);
        assert_eq!(stats.messages_dropped.get("slow_consumer"), 3);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let (server, _client) = pair().await;
        let stats = Arc::new(Stats::default());
        // Held until release, like a client whose socket takes nothing.
        let wire = Wire::new(
            server,
            Limits::new(1024, 4096),
            Encoding::Plain,
            stats.clone(),
        );
        let m = [message(&format!(
            r#"{{"type":"X","pad":"{}"}}"#,
            "a".repeat(1000)
        ))];
        let mut accepted = 0;
        while wire.deliver(&m) == Push::Queued {
            accepted += 1;
            assert!(accepted < 100, "never overflowed");
        }
        // Four 1025-byte frames pass 4096 bytes: the fifth overflows.
        assert_eq!(m[0].frame.len(), 1025);
        assert_eq!(accepted, 4);
        assert_eq!(wire.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(stats.messages_dropped.get("slow_consumer"), 5);
    }
}
