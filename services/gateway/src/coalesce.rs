//! Write coalescing for accepted connections (and any other).
//!
//! HTTP/2 writes whatever its streams have ready each time the connection
//! task runs, and the task runs as soon as one response is ready: answers
//! that the store releases together (one group commit answers dozens of
//! reports) would otherwise leave one TLS record and one `writev` each, and
//! on loopback each `writev` also pays for the receiver's TCP processing.
//! [`Coalesced`] sits under TLS: writes go to a buffer, and a flush first
//! yields to the scheduler, so the responses finished in the same pass of
//! the runtime go out in one write; it yields again while each pass brings
//! more (at most [`MAX_YIELDS`] times). A yield costs one extra poll of the
//! connection task; when nothing else is runnable it comes straight back.
//!
//! Backpressure is kept: past [`HIGH_WATER`] buffered bytes a write waits
//! for the socket before it is accepted. What is still buffered when the
//! connection is dropped without a flush (rustls writes a fatal alert, e.g.
//! `UnknownCA` for a client certificate from another CA, and returns the
//! error without flushing) is written without waiting, as far as the socket
//! takes it, so the peer learns why.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Buffered bytes past which a write first drains the buffer.
const HIGH_WATER: usize = 256 * 1024;

/// Most yields of one flush. A flush yields once, then again as long as the
/// pass before brought more bytes and fewer than [`KEEP`] are buffered: the
/// answers that one group commit releases reach the connection over several
/// passes of the runtime (each caller's task runs, then hands its frames
/// over). With one yield a loaded gateway made one `send` per two answers;
/// with up to eight, one per four to five (ReportConversion at 256 in
/// flight), and echo's server CPU per call fell by a fifth.
const MAX_YIELDS: u8 = 8;

/// Buffer capacity kept after a drain; a larger one (after a large answer)
/// is released.
const KEEP: usize = 64 * 1024;

/// A write that never waits: what the socket takes now (`WouldBlock` when
/// it takes nothing).
pub trait TryWrite {
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, data)
    }
}

/// An IO whose writes are held until a flush, and whose flush yields first.
#[derive(Debug)]
pub struct Coalesced<IO: TryWrite> {
    io: IO,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `io`.
    written: usize,
    /// Times this flush has yielded.
    yields: u8,
    /// Bytes buffered when this flush last yielded.
    at_yield: usize,
}

// === impl Coalesced ===

impl<IO: TryWrite> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            buf: Vec::new(),
            written: 0,
            yields: 0,
            at_yield: 0,
        }
    }

    /// Bytes accepted but not yet written to the IO.
    fn buffered(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<IO: AsyncWrite + TryWrite + Unpin> Coalesced<IO> {
    /// Writes the buffer out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        self.buf.clear();
        // One large answer (a page of entries) need not stay allocated.
        self.buf.shrink_to(KEEP);
        // The next flush starts yielding afresh (also after a drain that a
        // write past the high-water mark forced).
        self.yields = 0;
        self.at_yield = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + TryWrite + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + TryWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The whole buffer, written part included: it only shrinks on a
        // complete drain.
        if this.buf.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let buffered = this.buffered();
        if buffered > this.at_yield && buffered < KEEP && this.yields < MAX_YIELDS {
            // Let the tasks that are runnable now add their frames first,
            // and again while each pass brings more; a buffer of `KEEP`
            // bytes is a large enough write to go at once.
            this.yields += 1;
            this.at_yield = buffered;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: TryWrite> Drop for Coalesced<IO> {
    fn drop(&mut self) {
        while self.written < self.buf.len() {
            match self.io.try_write(&self.buf[self.written..]) {
                Ok(n) if n > 0 => self.written += n,
                // Full, closed or failed: nothing more can be done here.
                _ => break,
            }
        }
    }
}

impl<IO: Connected + TryWrite> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests;
