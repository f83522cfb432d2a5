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
//! The state is under a per-connection `std::sync::Mutex`: writes under it
//! are non-blocking (`try_write`), nothing under it awaits, and only this
//! connection's own writers ever wait for it.

use crate::lock;
use crate::metrics::Stats;
use crate::protocol::Published;
use crate::resume::{self, Dedupe};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

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

/// Frames written per `writev` (far below `IOV_MAX`; one bit each in a `u64`).
const MAX_FRAMES: usize = 64;

pub struct Wire {
    socket: TcpStream,
    state: Mutex<State>,
    /// Wakes the session: bytes are queued, or the wire was closed.
    notify: Notify,
    /// Where its deliveries are counted, whichever path writes them.
    stats: Arc<Stats>,
}

struct State {
    /// Bytes accepted and not yet written, oldest first.
    pending: VecDeque<Chunk>,
    /// Published messages in `pending` and `held`, against `capacity`.
    queued: usize,
    capacity: usize,
    closed: Option<CloseReason>,
    /// Live messages waiting until the session has sent CONNECTED and any
    /// replay; `None` once released.
    held: Option<Vec<Arc<Published>>>,
    /// Drops live copies of what a replay sent.
    dedupe: Option<Box<Dedupe>>,
}

/// Bytes to write (a published message's shared frame, or raw bytes), and
/// how much of them is already written.
struct Chunk {
    bytes: Bytes,
    written: usize,
    /// A published message (counts against the queue and as a delivery).
    message: bool,
}

/// What to send: a published message's frame (shared by all recipients),
/// or raw bytes (tungstenite's control frames and replies).
#[derive(Clone, Copy)]
enum Out<'a> {
    Message(&'a Bytes),
    Raw(&'a [u8]),
}

impl<'a> Out<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Out::Message(frame) => frame,
            Out::Raw(bytes) => bytes,
        }
    }

    /// The chunk to queue, with `written` bytes already sent.
    fn into_chunk(self, written: usize) -> Chunk {
        let (bytes, message) = match self {
            Out::Message(frame) => (frame.clone(), true),
            Out::Raw(bytes) => (Bytes::copy_from_slice(bytes), false),
        };
        Chunk {
            bytes,
            written,
            message,
        }
    }
}

fn frame_of(published: &Arc<Published>) -> Out<'_> {
    Out::Message(&published.frame)
}

/// What a write attempt under the lock achieved.
enum Flushed {
    All,
    Blocked,
}

/// Writes `outs` now, as far as the socket takes them, in `writev`s of up to
/// [`MAX_FRAMES`] frames. Returns how many were written whole (counting
/// published ones in `delivered`) and how many bytes of the next one. An
/// error counts as nothing written: the session's flush meets it.
fn write_now<'a>(
    socket: &TcpStream,
    mut outs: impl Iterator<Item = Out<'a>>,
    delivered: &AtomicU64,
) -> (usize, usize) {
    let (mut done, mut messages) = (0, 0);
    let partial = 'write: loop {
        let mut slices = [IoSlice::new(&[]); MAX_FRAMES];
        // Bit i: slice i is a published message (counted as delivered).
        let mut published = 0u64;
        let mut count = 0;
        for (i, (slice, out)) in slices.iter_mut().zip(outs.by_ref()).enumerate() {
            *slice = IoSlice::new(out.bytes());
            published |= u64::from(matches!(out, Out::Message(_))) << i;
            count += 1;
        }
        if count == 0 {
            break 0;
        }
        let mut n = socket.try_write_vectored(&slices[..count]).unwrap_or(0);
        for (i, slice) in slices[..count].iter().enumerate() {
            if n < slice.len() {
                break 'write n;
            }
            n -= slice.len();
            done += 1;
            messages += (published >> i) & 1;
        }
        if count < MAX_FRAMES {
            break 0;
        }
    };
    // One update per call: the counter is shared by every fan-out.
    delivered.fetch_add(messages, Relaxed);
    (done, partial)
}

impl State {
    /// Writes queued chunks until done or the socket is full; counts the
    /// messages completed in `delivered`.
    fn write_pending(&mut self, socket: &TcpStream, delivered: &AtomicU64) -> io::Result<Flushed> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES];
            let mut count = 0;
            for (slice, chunk) in slices.iter_mut().zip(&self.pending) {
                *slice = IoSlice::new(&chunk.bytes[chunk.written..]);
                count += 1;
            }
            let mut n = match socket.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            };
            while n > 0 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                let left = front.bytes.len() - front.written;
                if n < left {
                    front.written += n;
                    break;
                }
                n -= left;
                if front.message {
                    self.queued -= 1;
                    delivered.fetch_add(1, Relaxed);
                }
                self.pending.pop_front();
            }
        }
        Ok(Flushed::All)
    }

    /// Writes `outs` at once when nothing is queued, and queues what the
    /// socket did not take (or all of them, behind what is queued). Wakes
    /// the session (true) when the queue was empty and is not; overflows
    /// when published messages exceed the capacity.
    fn send<'a>(
        &mut self,
        socket: &TcpStream,
        outs: impl Iterator<Item = Out<'a>> + Clone,
        delivered: &AtomicU64,
    ) -> (Push, bool) {
        let was_empty = self.pending.is_empty();
        let (mut written, mut partial) = (0, 0);
        if was_empty {
            // The common case: no queue, no allocation, one syscall.
            (written, partial) = write_now(socket, outs.clone(), delivered);
        }
        for out in outs.skip(written) {
            let chunk = out.into_chunk(std::mem::take(&mut partial));
            // A started frame is always kept: the stream must not break.
            if chunk.message && chunk.written == 0 && self.queued >= self.capacity {
                self.overflow();
                return (Push::Overflowed, true);
            }
            if chunk.message {
                self.queued += 1;
            } else if self.pending.len() >= self.capacity && self.closed.is_none() {
                // A client that sends but never reads piles up our replies:
                // bounded like published messages.
                self.overflow();
            }
            self.pending.push_back(chunk);
        }
        (Push::Queued, was_empty && !self.pending.is_empty())
    }

    /// Sends live messages in order, minus those held (until the replay is
    /// sent) and the duplicates of a replay.
    fn deliver(
        &mut self,
        socket: &TcpStream,
        messages: &[Arc<Published>],
        delivered: &AtomicU64,
    ) -> (Push, bool) {
        if self.closed.is_some() {
            return (Push::Closed, false);
        }
        if self.held.is_none() && self.dedupe.is_none() {
            return self.send(socket, messages.iter().map(frame_of), delivered);
        }
        // Around a resume: one at a time.
        let mut wake = false;
        for published in messages {
            if let Some(held) = &mut self.held {
                if self.queued >= self.capacity {
                    self.overflow();
                    return (Push::Overflowed, true);
                }
                held.push(published.clone());
                self.queued += 1;
                continue;
            }
            if resume::skip(&mut self.dedupe, published) {
                continue;
            }
            let (push, woken) = self.send(socket, std::iter::once(frame_of(published)), delivered);
            wake |= woken;
            if push != Push::Queued {
                return (push, wake);
            }
        }
        (Push::Queued, wake)
    }

    /// A slow consumer: drop what is queued (but finish a frame already
    /// started, or the stream would be corrupt) and close.
    fn overflow(&mut self) {
        self.closed = Some(CloseReason::SlowConsumer);
        let started = self.pending.front().is_some_and(|c| c.written > 0);
        self.pending.truncate(usize::from(started));
        if let Some(front) = self.pending.front_mut() {
            front.message = false;
        }
        self.held = None;
        self.queued = 0;
    }
}

impl Wire {
    /// `capacity`: published messages queued before the client counts as a
    /// slow consumer. Live messages are held until [`Wire::release`].
    pub fn new(socket: TcpStream, capacity: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            socket,
            state: Mutex::new(State {
                // Allocated on first use: an idle connection costs nothing here.
                pending: VecDeque::new(),
                queued: 0,
                capacity,
                closed: None,
                held: Some(Vec::new()),
                dedupe: None,
            }),
            notify: Notify::new(),
            stats,
        })
    }

    fn delivered(&self) -> &AtomicU64 {
        &self.stats.messages_delivered
    }

    /// Fan-out: sends live messages, in order, without waiting.
    pub fn deliver(&self, messages: &[Arc<Published>]) -> Push {
        let (push, wake) = lock(&self.state).deliver(&self.socket, messages, self.delivered());
        self.wake_if(wake);
        push
    }

    /// Sends a replayed message now, ahead of the held live ones.
    pub fn send_replayed(&self, published: &Arc<Published>) {
        let out = std::iter::once(frame_of(published));
        let (_, wake) = lock(&self.state).send(&self.socket, out, self.delivered());
        self.wake_if(wake);
    }

    /// Ends the hold: live messages flow, minus those `dedupe` says were
    /// replayed.
    pub fn release(&self, dedupe: Option<Dedupe>) {
        let mut state = lock(&self.state);
        let held = state.held.take().unwrap_or_default();
        state.queued -= held.len().min(state.queued);
        state.dedupe = dedupe.map(Box::new);
        let (_, wake) = state.deliver(&self.socket, &held, self.delivered());
        drop(state);
        self.wake_if(wake);
    }

    fn wake_if(&self, wake: bool) {
        if wake {
            self.notify.notify_one();
        }
    }

    /// Closes from outside the session (shutdown); it sees it on its next wake.
    pub fn close(&self, reason: CloseReason) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    pub fn closed(&self) -> Option<CloseReason> {
        lock(&self.state).closed
    }

    pub fn has_pending(&self) -> bool {
        !lock(&self.state).pending.is_empty()
    }

    /// Resolves when something changed: bytes queued, or the wire closed.
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Writes everything queued.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match lock(&self.state).write_pending(&self.socket, self.delivered())? {
                Flushed::All => return Poll::Ready(Ok(())),
                Flushed::Blocked => ready!(self.socket.poll_write_ready(cx))?,
            }
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }
}

/// The connection as tungstenite sees it: reads from the socket, writes
/// through the wire's queue. Its flush also writes (and counts) the
/// published messages queued ahead of its frames.
pub struct WireStream {
    wire: Arc<Wire>,
}

impl WireStream {
    pub fn new(wire: Arc<Wire>) -> Self {
        Self { wire }
    }
}

impl AsyncRead for WireStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &self.wire.socket;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared; poll again to register the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Accepted whole into the queue (written at once if it is empty);
        // control frames are small and few.
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wire = &self.wire;
        let out = std::iter::once(Out::Raw(buf));
        let (_, wake) = lock(&wire.state).send(&wire.socket, out, wire.delivered());
        wire.wake_if(wake);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wire.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_published;
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
        let wire = Wire::new(server, 16, stats.clone());
        wire.deliver(&[message(r#"{"type":"LIVE","id":"2"}"#)]);
        wire.send_replayed(&message(r#"{"type":"OLD","id":"1"}"#));
        wire.release(None);
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
        let wire = Wire::new(server, 4, stats.clone());
        wire.release(None);
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
    }

    /// Messages queued behind a full socket and written by tungstenite's
    /// flush (it flushes when it sends a Pong or a Close) are deliveries too.
    #[tokio::test]
    async fn messages_flushed_through_the_stream_are_counted() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = pair().await;
        let stats = Arc::new(Stats::default());
        let wire = Wire::new(server, 1024, stats.clone());
        wire.release(None);
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
        let wire = Wire::new(server, 2, stats.clone());
        let m = [message(r#"{"type":"X"}"#)];
        assert_eq!(wire.deliver(&m), Push::Queued);
        assert_eq!(wire.deliver(&m), Push::Queued);
        assert_eq!(wire.deliver(&m), Push::Overflowed);
        assert_eq!(wire.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(wire.deliver(&m), Push::Closed);
    }
}
