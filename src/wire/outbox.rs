//! What a connection's queue accepts: the policy between the fan-out and
//! the socket writer ([`writev`](super::writev)). Published messages count
//! against the [`Limits`] (a number of messages and of bytes: past either
//! the client is a slow consumer: close 4008, the queue dropped); so do
//! replies, when a client sends but never reads;
//! live messages are held until the session has sent CONNECTED and any
//! replay, then filtered against that replay. Conflation would be one more
//! rule here.

use super::writev::{self, Out};
use super::{CloseReason, Push};
use crate::engineio::{offset_tail, Events};
use crate::metrics::Stats;
use crate::protocol::{text_frame, text_frame_of, Published};
use crate::resume::{Admit, Gate};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpStream;

pub(super) struct Outbox {
    /// Bytes accepted and not yet written, oldest first.
    pending: VecDeque<Chunk>,
    /// Published messages in `pending` and held by the gate, against
    /// `limits.messages`.
    queued: u32,
    /// Bytes in `pending` not yet written and held by the gate, against
    /// `limits.bytes`.
    queued_bytes: u32,
    limits: Limits,
    closed: Option<CloseReason>,
    /// Holds live messages until the session has sent CONNECTED and any
    /// replay, then drops live copies of what the replay sent.
    gate: Gate,
    encoding: Encoding,
}

/// How published messages are framed for a connection.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// As published (`/ws`).
    Plain,
    /// As server-sent events (SPEC §12).
    Sse,
    /// As Socket.IO events (SPEC §11). Every event ends with a recovery
    /// offset: its id, or for a message without one `offset` again, the
    /// last one sent (at first the connection's resume point).
    SocketIo {
        events: Arc<Events>,
        offset: Arc<str>,
        /// `offset` as the end of a packet, made when an event without an
        /// id first needs it.
        tail: Option<Bytes>,
    },
}

impl Encoding {
    /// Socket.IO: the offset of the last event (its fallback for the next
    /// without an id). `/ws` has none.
    pub(super) fn offset(&self) -> Option<Arc<str>> {
        match self {
            Encoding::Plain | Encoding::Sse => None,
            Encoding::SocketIo { offset, .. } => Some(offset.clone()),
        }
    }

    pub(super) fn set_offset(&mut self, to: &str) {
        if let Encoding::SocketIo { offset, tail, .. } = self {
            *offset = to.into();
            *tail = None;
        }
    }

    /// `published`'s frame: shared by every recipient of this encoding.
    /// A Socket.IO event without an id ends with this connection's offset:
    /// its recipients share the packet up to it, and each adds its own end.
    fn frame(&mut self, published: &Published) -> Bytes {
        match self {
            Encoding::Plain => published.frame.clone(),
            Encoding::Sse => published.sse_frame().clone(),
            Encoding::SocketIo {
                events,
                offset,
                tail,
            } => match &published.id {
                Some(id) => {
                    *offset = id.clone();
                    *tail = None;
                    let build = |p: &Published| text_frame(events.packet(p, "").as_bytes());
                    published.socketio_frame(build).clone()
                }
                None => {
                    let build = |p: &Published| Bytes::from(events.packet_head(p));
                    let head = published.socketio_frame(build);
                    let tail = tail.get_or_insert_with(|| Bytes::from(offset_tail(offset)));
                    text_frame_of(&[head, tail])
                }
            },
        }
    }
}

/// Bytes to write (a published message's shared frame, or raw bytes), and
/// how much of them is already written.
struct Chunk {
    bytes: Bytes,
    written: usize,
    /// A published message (counts against the queue and as a delivery).
    message: bool,
}

impl Chunk {
    /// The bytes still to write.
    fn left(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// The chunk to queue, with `written` bytes already sent.
    fn of(out: Out<'_>, written: usize) -> Chunk {
        let (bytes, message) = match out {
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

/// How much a connection's queue holds before the client counts as a slow
/// consumer (`connection.send_queue`, `connection.send_queue_bytes`).
/// Queueing stops once either is reached, so a queue holds at most
/// `bytes` plus one message (a message bigger than `bytes` still goes).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: u32,
    pub bytes: u32,
}

impl Limits {
    /// From the configuration; values past `u32::MAX` are as good as
    /// unbounded.
    pub fn new(messages: usize, bytes: usize) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            messages: clamp(messages),
            bytes: clamp(bytes),
        }
    }
}

/// What a write attempt under the lock achieved.
pub(super) enum Flushed {
    All,
    Blocked,
}

impl Outbox {
    /// Holds live messages until [`Outbox::release`].
    pub(super) fn new(limits: Limits, encoding: Encoding) -> Self {
        Self {
            // Allocated on first use: an idle connection costs nothing here.
            pending: VecDeque::new(),
            queued: 0,
            queued_bytes: 0,
            limits,
            closed: None,
            gate: Gate::holding(),
            encoding,
        }
    }

    /// Sends a replayed message now, ahead of the held live ones.
    pub(super) fn send_replayed(
        &mut self,
        socket: &TcpStream,
        published: &Published,
        stats: &Stats,
    ) -> (Push, bool) {
        let frame = self.encoding.frame(published);
        self.send(socket, std::iter::once(Out::Message(&frame)), stats)
    }

    /// Ends the hold once `replayed` is out: the held live messages go
    /// out, minus the replay's duplicates, and so do later ones.
    pub(super) fn release(
        &mut self,
        socket: &TcpStream,
        replayed: &[Arc<Published>],
        stats: &Stats,
    ) -> (Push, bool) {
        let held = self.gate.open(replayed);
        self.recount();
        self.deliver(socket, &held, stats)
    }

    /// Counts what `pending` holds (the gate holds nothing any more).
    fn recount(&mut self) {
        let messages = self.pending.iter().filter(|c| c.message).count();
        let bytes: usize = self.pending.iter().map(Chunk::left).sum();
        self.queued = u32::try_from(messages).unwrap_or(u32::MAX);
        self.queued_bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    }

    /// Whether the queue is at a limit: nothing more may join it.
    fn full(&self) -> bool {
        self.queued >= self.limits.messages || self.queued_bytes >= self.limits.bytes
    }

    fn enqueue(&mut self, chunk: Chunk) {
        let left = u32::try_from(chunk.left()).unwrap_or(u32::MAX);
        self.queued_bytes = self.queued_bytes.saturating_add(left);
        if chunk.message {
            self.queued += 1;
        }
        self.pending.push_back(chunk);
    }

    /// Closes (unless already closing): the session sees it on its next wake.
    pub(super) fn close(&mut self, reason: CloseReason) {
        self.closed.get_or_insert(reason);
    }

    pub(super) fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    pub(super) fn encoding(&mut self) -> &mut Encoding {
        &mut self.encoding
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(super) fn pending_bytes(&self) -> usize {
        self.pending.iter().map(Chunk::left).sum()
    }

    /// Writes queued chunks until done or the socket is full; counts the
    /// messages completed as delivered.
    pub(super) fn write_pending(
        &mut self,
        socket: &TcpStream,
        stats: &Stats,
    ) -> io::Result<Flushed> {
        while !self.pending.is_empty() {
            let tails = self.pending.iter().map(|c| &c.bytes[c.written..]);
            let Some(mut n) = writev::write_queued(socket, tails)? else {
                return Ok(Flushed::Blocked);
            };
            let written = u32::try_from(n).unwrap_or(u32::MAX);
            self.queued_bytes = self.queued_bytes.saturating_sub(written);
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
                    stats.messages_delivered.fetch_add(1, Relaxed);
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
    pub(super) fn send<'a>(
        &mut self,
        socket: &TcpStream,
        outs: impl Iterator<Item = Out<'a>> + Clone,
        stats: &Stats,
    ) -> (Push, bool) {
        let was_empty = self.pending.is_empty();
        let (mut written, mut partial) = (0, 0);
        if was_empty {
            // The common case: no queue, no allocation, one syscall.
            (written, partial) = writev::write_now(socket, outs.clone(), &stats.messages_delivered);
        }
        let mut unwritten = outs.skip(written);
        while let Some(out) = unwritten.next() {
            let chunk = Chunk::of(out, std::mem::take(&mut partial));
            // A started frame is always kept: the stream must not break.
            if chunk.message && chunk.written == 0 && self.full() {
                let unsent = 1 + unwritten.filter(|o| matches!(o, Out::Message(_))).count();
                self.overflow(stats, unsent);
                return (Push::Overflowed, true);
            }
            let replies_full = self.pending.len() >= self.limits.messages as usize
                || self.queued_bytes >= self.limits.bytes;
            if !chunk.message && replies_full && self.closed.is_none() {
                // A client that sends but never reads piles up our replies:
                // bounded like published messages.
                self.overflow(stats, 0);
            }
            self.enqueue(chunk);
        }
        (Push::Queued, was_empty && !self.pending.is_empty())
    }

    /// Sends live messages in order, minus those held (until the replay is
    /// sent) and the duplicates of a replay.
    pub(super) fn deliver(
        &mut self,
        socket: &TcpStream,
        messages: &[Arc<Published>],
        stats: &Stats,
    ) -> (Push, bool) {
        if self.closed.is_some() {
            return (Push::Closed, false);
        }
        if self.gate.is_clear() {
            if let Encoding::Plain = self.encoding {
                // The hot path: the shared frames, no copy, no allocation.
                return self.send(socket, messages.iter().map(frame_of), stats);
            }
            if let [message] = messages {
                // One message, the common case: no Vec.
                let frame = self.encoding.frame(message);
                return self.send(socket, std::iter::once(Out::Message(&frame)), stats);
            }
            let frames: Vec<Bytes> = messages.iter().map(|m| self.encoding.frame(m)).collect();
            return self.send(socket, frames.iter().map(Out::Message), stats);
        }
        // Around a resume: one at a time.
        let mut wake = false;
        for (i, published) in messages.iter().enumerate() {
            match self.gate.admit(published) {
                Admit::Held if self.full() => {
                    self.overflow(stats, messages.len() - i);
                    return (Push::Overflowed, true);
                }
                Admit::Held => {
                    let bytes = u32::try_from(published.frame.len()).unwrap_or(u32::MAX);
                    self.queued += 1;
                    self.queued_bytes = self.queued_bytes.saturating_add(bytes);
                    continue;
                }
                Admit::Duplicate => continue,
                Admit::Pass => {}
            }
            let frame = self.encoding.frame(published);
            let (push, woken) = self.send(socket, std::iter::once(Out::Message(&frame)), stats);
            wake |= woken;
            if push != Push::Queued {
                return (push, wake);
            }
        }
        (Push::Queued, wake)
    }

    /// A slow consumer: drop what is queued (but finish a frame already
    /// started, or the stream would be corrupt) and close. `unsent`: the
    /// published messages of this delivery that were not queued; they are
    /// dropped too.
    fn overflow(&mut self, stats: &Stats, unsent: usize) {
        if self.closed.replace(CloseReason::SlowConsumer) != Some(CloseReason::SlowConsumer) {
            stats.slow_consumer_disconnects.fetch_add(1, Relaxed);
        }
        let started = self.pending.front().is_some_and(|c| c.written > 0);
        self.pending.truncate(usize::from(started));
        // A started message still goes out whole, but is not counted as
        // delivered: the client is closed before it could act on it.
        if let Some(front) = self.pending.front_mut() {
            front.message = false;
        }
        stats
            .messages_dropped
            .add("slow_consumer", u64::from(self.queued) + unsent as u64);
        self.gate.discard();
        self.recount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_published;

    fn message(text: &str) -> Published {
        validate_published(Bytes::from(text.to_string())).unwrap()
    }

    /// A broadcast to Socket.IO clients costs one encoding, not one per
    /// client: every connection gets the same bytes.
    #[test]
    fn a_socketio_frame_is_built_once_and_shared() {
        let names = std::collections::BTreeMap::new();
        let events = Arc::new(Events::new(&names, "data"));
        let connection = |offset: &str| Encoding::SocketIo {
            events: events.clone(),
            offset: offset.into(),
            tail: None,
        };
        let (mut a, mut b) = (connection("pa"), connection("pb"));
        let m = message(r#"{"type":"X","id":"m1","data":1}"#);
        let (fa, fb) = (a.frame(&m), b.frame(&m));
        assert_eq!(fa.as_ptr(), fb.as_ptr(), "shared, not copied");
        assert!(fa.ends_with(br#"42["X",1,"m1"]"#), "{fa:?}");
        // Without an id, each connection ends the event with its last
        // offset; the packet up to it is built once and shared.
        b.set_offset("pb2");
        let n = message(r#"{"type":"Y"}"#);
        assert!(a.frame(&n).ends_with(br#"42["Y",{"type":"Y"},"m1"]"#));
        assert!(b.frame(&n).ends_with(br#"42["Y",{"type":"Y"},"pb2"]"#));
        let head = n.socketio_frame(|_| panic!("built by the first recipient only"));
        assert_eq!(&head[..], br#"42["Y",{"type":"Y"},"#);
        // SSE events are shared too.
        let (fa, fb) = (Encoding::Sse.frame(&m), Encoding::Sse.frame(&m));
        assert_eq!(fa.as_ptr(), fb.as_ptr());
        assert_eq!(
            &fa[..],
            b"37\r\nid: m1\nevent: X\ndata: {\"type\":\"X\",\"id\":\"m1\",\"data\":1}\n\n\r\n"
        );
    }
}
