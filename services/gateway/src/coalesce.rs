//! Write coalescing for accepted connections.
//!
//! HTTP/2 writes whatever its streams have ready each time the connection
//! task runs, and the task runs as soon as one response is ready: answers
//! that the store releases together (one group commit answers dozens of
//! reports) would otherwise leave one TLS record and one `writev` each, and
//! on loopback each `writev` also pays for the receiver's TCP processing.
//! [`Coalesced`] sits under TLS: writes go to a buffer, and a flush first
//! yields once to the scheduler, so the responses finished in the same pass
//! of the runtime go out in one write. The yield costs one extra poll of the
//! connection task; when nothing else is runnable it comes straight back.
//!
//! Backpressure is kept: past [`HIGH_WATER`] buffered bytes a write waits
//! for the socket before it is accepted.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Buffered bytes past which a write first drains the buffer.
pub const HIGH_WATER: usize = 256 * 1024;

/// An IO whose writes are held until a flush, and whose flush yields once.
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `io`.
    written: usize,
    /// This flush has yielded once already.
    yielded: bool,
}

// === impl Coalesced ===

impl<IO> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes accepted but not yet written to the IO.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
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
        if self.buf.capacity() > HIGH_WATER {
            // One large answer (a page of entries) need not stay allocated.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
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
        if this.buffered() >= HIGH_WATER {
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
        if this.buffered() > 0 && !this.yielded {
            // Let the tasks that are runnable now add their frames first.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use std::task::{Wake, Waker};

    use super::*;

    /// Records every write it is given; refuses them while `full`.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        full: bool,
        flushed: usize,
        shut: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.full {
                return Poll::Pending;
            }
            this.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushed += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(
        c: &mut Coalesced<Sink>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(c).poll_write(cx, data)
    }

    #[test]
    fn writes_wait_for_a_flush_that_yields_once_then_sends_them_in_one_write() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Sink::default());

        assert!(matches!(
            write(&mut c, &mut cx, b"headers "),
            Poll::Ready(Ok(8))
        ));
        let bufs = [io::IoSlice::new(b"data "), io::IoSlice::new(b"trailers")];
        assert!(matches!(
            Pin::new(&mut c).poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(13))
        ));
        assert!(
            c.get_ref().writes.is_empty(),
            "nothing leaves before a flush"
        );

        // The first flush yields, asking to be polled again at once.
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(c.get_ref().writes.is_empty());
        // What other tasks add meanwhile leaves with it.
        assert!(write(&mut c, &mut cx, b" next").is_ready());

        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            c.get_ref().writes,
            vec![b"headers data trailers next".to_vec()]
        );
        assert_eq!(c.get_ref().flushed, 1);
        assert_eq!(c.buffered(), 0);

        // A flush with nothing buffered neither yields nor writes.
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(c.get_ref().writes.len(), 1);
        // The next flush yields again.
        assert!(write(&mut c, &mut cx, b"again").is_ready());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.get_ref().writes.len(), 2);
    }

    #[test]
    fn past_the_high_water_mark_a_write_waits_for_the_socket() {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Sink {
            full: true,
            ..Sink::default()
        });
        let chunk = vec![7u8; HIGH_WATER];
        assert!(matches!(write(&mut c, &mut cx, &chunk), Poll::Ready(Ok(n)) if n == HIGH_WATER));
        // The socket takes nothing: the next write is refused for now.
        assert!(write(&mut c, &mut cx, b"more").is_pending());
        assert_eq!(c.buffered(), HIGH_WATER);

        c.io.full = false;
        assert!(matches!(
            write(&mut c, &mut cx, b"more"),
            Poll::Ready(Ok(4))
        ));
        assert_eq!(c.get_ref().writes, vec![chunk]);
        assert_eq!(c.buffered(), 4);
    }

    #[test]
    fn shutdown_sends_what_is_buffered_first() {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Sink::default());
        assert!(write(&mut c, &mut cx, b"goaway").is_ready());
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.get_ref().writes, vec![b"goaway".to_vec()]);
        assert!(c.get_ref().shut);
    }
}
