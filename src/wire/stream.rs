//! The connection as tungstenite sees it ([`WireStream`]): reads from the
//! socket, writes through the wire's queue, so that its frames can never
//! interleave with a published message.

use super::Wire;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

    pub fn wire(&self) -> &Arc<Wire> {
        &self.wire
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
        self.wire.send_raw(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wire.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
