//! What a connection's queue accepts: the policy between the fan-out and
//! the socket writer ([`writev`](super::writev)). Published messages count
//! against `capacity` (past it the client is a slow consumer: close 4008,
//! the queue dropped); so do replies, when a client sends but never reads;
//! live messages are held until the session has sent CONNECTED and any
//! replay, then filtered against that replay. Conflation would be one more
//! rule here.

use super::writev::{self, Out};
use super::{CloseReason, Push};
use crate::metrics::Stats;
use crate::protocol::Published;
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
    /// `capacity`.
    queued: usize,
    capacity: usize,
    closed: Option<CloseReason>,
    /// Holds live messages until the session has sent CONNECTED and any
    /// replay, then drops live copies of what the replay sent.
    gate: Gate,
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

pub(super) fn frame_of(published: &Arc<Published>) -> Out<'_> {
    Out::Message(&published.frame)
}

/// What a write attempt under the lock achieved.
pub(super) enum Flushed {
    All,
    Blocked,
}

impl Outbox {
    /// Holds live messages until [`Outbox::release`].
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            // Allocated on first use: an idle connection costs nothing here.
            pending: VecDeque::new(),
            queued: 0,
            capacity,
            closed: None,
            gate: Gate::holding(),
        }
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
        self.queued -= held.len().min(self.queued);
        self.deliver(socket, &held, stats)
    }

    /// Closes (unless already closing): the session sees it on its next wake.
    pub(super) fn close(&mut self, reason: CloseReason) {
        self.closed.get_or_insert(reason);
    }

    pub(super) fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
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
            if chunk.message && chunk.written == 0 && self.queued >= self.capacity {
                let unsent = 1 + unwritten.filter(|o| matches!(o, Out::Message(_))).count();
                self.overflow(stats, unsent);
                return (Push::Overflowed, true);
            }
            if chunk.message {
                self.queued += 1;
            } else if self.pending.len() >= self.capacity && self.closed.is_none() {
                // A client that sends but never reads piles up our replies:
                // bounded like published messages.
                self.overflow(stats, 0);
            }
            self.pending.push_back(chunk);
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
            return self.send(socket, messages.iter().map(frame_of), stats);
        }
        // Around a resume: one at a time.
        let mut wake = false;
        for (i, published) in messages.iter().enumerate() {
            match self.gate.admit(published) {
                Admit::Held if self.queued >= self.capacity => {
                    self.overflow(stats, messages.len() - i);
                    return (Push::Overflowed, true);
                }
                Admit::Held => {
                    self.queued += 1;
                    continue;
                }
                Admit::Duplicate => continue,
                Admit::Pass => {}
            }
            let (push, woken) = self.send(socket, std::iter::once(frame_of(published)), stats);
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
            .add("slow_consumer", (self.queued + unsent) as u64);
        self.gate.discard();
        self.queued = 0;
    }
}
