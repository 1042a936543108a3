use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::task::{Wake, Waker};

use super::*;

/// Records every write it takes (kept after the `Coalesced` is dropped);
/// takes at most `budget` more bytes, then refuses.
#[derive(Default)]
struct Sink {
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    budget: Option<usize>,
    flushed: usize,
    shut: bool,
}

impl Sink {
    fn with_budget(budget: usize) -> Sink {
        Sink {
            budget: Some(budget),
            ..Sink::default()
        }
    }

    fn writes(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().clone()
    }

    /// How much of `data` it takes now.
    fn take(&self, data: &[u8]) -> usize {
        let n = self.budget.map_or(data.len(), |b| b.min(data.len()));
        if n > 0 {
            self.log.lock().unwrap().push(data[..n].to_vec());
        }
        n
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.take(data) {
            0 => Poll::Pending,
            n => {
                if let Some(b) = &mut this.budget {
                    *b -= n;
                }
                Poll::Ready(Ok(n))
            }
        }
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

impl TryWrite for Sink {
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self.take(data) {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker that counts its wakes.
fn counting_waker() -> (Arc<Wakes>, Waker) {
    let wakes = Arc::new(Wakes::default());
    (wakes.clone(), Waker::from(wakes))
}

fn write(c: &mut Coalesced<Sink>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    Pin::new(c).poll_write(cx, data)
}

fn flush(c: &mut Coalesced<Sink>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    Pin::new(c).poll_flush(cx)
}

#[test]
fn writes_wait_for_a_flush_that_yields_then_sends_them_in_one_write() {
    let (wakes, waker) = counting_waker();
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
    assert!(c.io.writes().is_empty(), "nothing leaves before a flush");

    // The first flush yields, asking to be polled again at once.
    assert!(flush(&mut c, &mut cx).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert!(c.io.writes().is_empty());
    // What other tasks add meanwhile leaves with it; as the pass brought
    // more, the flush yields once more.
    assert!(write(&mut c, &mut cx, b" next").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    assert!(c.io.writes().is_empty());

    // A pass that brings nothing ends the yielding.
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!(c.io.writes(), vec![b"headers data trailers next".to_vec()]);
    assert_eq!(c.io.flushed, 1);
    assert_eq!(c.buffered(), 0);

    // A flush with nothing buffered neither yields nor writes.
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    assert_eq!(c.io.writes().len(), 1);
    // The next flush yields again.
    assert!(write(&mut c, &mut cx, b"again").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending());
    assert!(flush(&mut c, &mut cx).is_ready());
    assert_eq!(c.io.writes().len(), 2);
}

#[test]
fn a_flush_yields_at_most_max_yields_times_however_much_keeps_coming() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Sink::default());

    for _ in 0..MAX_YIELDS {
        assert!(write(&mut c, &mut cx, b"x").is_ready());
        assert!(flush(&mut c, &mut cx).is_pending());
    }
    assert!(write(&mut c, &mut cx, b"x").is_ready());
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!(wakes.0.load(Ordering::SeqCst), usize::from(MAX_YIELDS));
    assert_eq!(c.io.writes(), vec![vec![b'x'; usize::from(MAX_YIELDS) + 1]]);
    // The count starts again with the next flush.
    assert!(write(&mut c, &mut cx, b"y").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending());
}

#[test]
fn a_flush_with_keep_bytes_buffered_writes_at_once_and_a_forced_drain_resets_the_yields() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Sink::default());

    // A large write goes without yielding.
    assert!(write(&mut c, &mut cx, &vec![1u8; KEEP]).is_ready());
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    assert_eq!(c.io.writes().len(), 1);

    // A flush yields, then writes past the high-water mark force a drain;
    // the flush after that yields again rather than write at once.
    assert!(write(&mut c, &mut cx, b"x").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending());
    assert!(write(&mut c, &mut cx, &vec![2u8; HIGH_WATER]).is_ready());
    assert!(write(&mut c, &mut cx, b"y").is_ready());
    assert_eq!(c.io.writes().len(), 2, "the write past the mark drained");
    assert_eq!(c.buffered(), 1);
    assert!(flush(&mut c, &mut cx).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    assert!(flush(&mut c, &mut cx).is_ready());
    assert_eq!(c.io.writes().last().unwrap(), b"y");
}

#[test]
fn past_the_high_water_mark_a_write_waits_for_the_socket() {
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Sink::with_budget(0));
    let chunk = vec![7u8; HIGH_WATER];
    assert!(matches!(write(&mut c, &mut cx, &chunk), Poll::Ready(Ok(n)) if n == HIGH_WATER));
    // The socket takes nothing: the next write is refused for now.
    assert!(write(&mut c, &mut cx, b"more").is_pending());
    assert_eq!(c.buffered(), HIGH_WATER);

    c.io.budget = None;
    assert!(matches!(
        write(&mut c, &mut cx, b"more"),
        Poll::Ready(Ok(4))
    ));
    assert_eq!(c.io.writes(), vec![chunk]);
    assert_eq!(c.buffered(), 4);
}

#[test]
fn a_partly_written_buffer_still_counts_toward_the_high_water_mark() {
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Sink::with_budget(10));
    assert!(write(&mut c, &mut cx, &[1; 100]).is_ready());
    assert!(flush(&mut c, &mut cx).is_pending()); // the yield
    assert!(flush(&mut c, &mut cx).is_pending()); // 10 bytes taken, then full
    assert_eq!(c.buffered(), 90);
    // The buffer still holds the 10 written bytes until it drains fully, so
    // it reaches the mark here although only HIGH_WATER - 10 are unsent...
    assert!(write(&mut c, &mut cx, &vec![2; HIGH_WATER - 100]).is_ready());
    assert_eq!(c.buffered(), HIGH_WATER - 10);
    // ...and the next write waits instead of growing it further.
    assert!(write(&mut c, &mut cx, b"more").is_pending());

    c.io.budget = None;
    assert!(write(&mut c, &mut cx, b"more").is_ready());
    assert_eq!(c.buffered(), 4);
    assert!(c.buf.capacity() <= KEEP, "capacity {}", c.buf.capacity());
}

#[test]
fn shutdown_sends_what_is_buffered_first() {
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Sink::default());
    assert!(write(&mut c, &mut cx, b"goaway").is_ready());
    assert!(matches!(
        Pin::new(&mut c).poll_shutdown(&mut cx),
        Poll::Ready(Ok(()))
    ));
    assert_eq!(c.io.writes(), vec![b"goaway".to_vec()]);
    assert!(c.io.shut);
}

#[test]
fn what_is_left_at_drop_is_written_without_waiting() {
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    // A TLS alert written without a flush, then the connection dropped.
    let sink = Sink::default();
    let log = sink.log.clone();
    let mut c = Coalesced::new(sink);
    assert!(write(&mut c, &mut cx, b"alert").is_ready());
    drop(c);
    assert_eq!(*log.lock().unwrap(), vec![b"alert".to_vec()]);

    // A socket that takes nothing does not hold the drop up.
    let sink = Sink::with_budget(0);
    let log = sink.log.clone();
    let mut c = Coalesced::new(sink);
    assert!(write(&mut c, &mut cx, b"alert").is_ready());
    drop(c);
    assert!(log.lock().unwrap().is_empty());
}
