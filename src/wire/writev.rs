//! The socket writer: non-blocking `writev`s of frames, and nothing else.
//! It knows bytes and slices; what may be queued, and when a client is too
//! slow, is the [outbox](super::outbox)'s business.

use bytes::Bytes;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::net::TcpStream;

/// Frames written per `writev` (far below `IOV_MAX`; one bit each in a `u64`).
const MAX_FRAMES: usize = 64;

/// What to send: a published message's frame (shared by all recipients),
/// or raw bytes (tungstenite's control frames and replies).
#[derive(Clone, Copy)]
pub(super) enum Out<'a> {
    Message(&'a Bytes),
    Raw(&'a [u8]),
}

impl<'a> Out<'a> {
    pub(super) fn bytes(self) -> &'a [u8] {
        match self {
            Out::Message(frame) => frame,
            Out::Raw(bytes) => bytes,
        }
    }
}

/// Writes `outs` now, as far as the socket takes them, in `writev`s of up to
/// [`MAX_FRAMES`] frames. Returns how many were written whole (counting
/// published ones in `delivered`) and how many bytes of the next one. An
/// error counts as nothing written: the session's flush meets it.
pub(super) fn write_now<'a>(
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

/// One `writev` of the first [`MAX_FRAMES`] of `chunks`: how many bytes the
/// socket took, or None when it is full.
pub(super) fn write_queued<'a>(
    socket: &TcpStream,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> io::Result<Option<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_FRAMES];
    let mut count = 0;
    for (slice, chunk) in slices.iter_mut().zip(chunks) {
        *slice = IoSlice::new(chunk);
        count += 1;
    }
    match socket.try_write_vectored(&slices[..count]) {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}
