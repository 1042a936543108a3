//! Wall-clock time in Unix milliseconds, behind a trait so services can be
//! tested at chosen instants.

use std::time::SystemTime;

/// Source of the current time, replaceable in tests.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A shareable clock that is `Debug` (a `dyn Clock` is not), for structs
/// that derive it. Defaults to the system clock.
#[derive(Clone)]
pub struct SharedClock(pub std::sync::Arc<dyn Clock>);

impl Default for SharedClock {
    fn default() -> Self {
        SharedClock(std::sync::Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedClock(now_ms = {})", self.0.now_ms())
    }
}

impl Clock for SharedClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

/// The system clock shifted by an adjustable offset: time still flows, and
/// [`OffsetClock::jump_to`] moves "now" to a chosen instant. The demo uses it
/// to live through a month-end in seconds; tests use it to close periods.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

// === impl OffsetClock ===

impl OffsetClock {
    /// A clock that reads `start_ms` now.
    pub fn starting_at(start_ms: i64) -> OffsetClock {
        let c = OffsetClock::default();
        c.jump_to(start_ms);
        c
    }

    /// Moves the clock so that it reads `at_ms` now. Moving it backwards is
    /// allowed but services assume time does not run backwards; callers
    /// should only jump forward.
    pub fn jump_to(&self, at_ms: i64) {
        self.offset_ms.store(
            at_ms.saturating_sub(now_ms()),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.offset_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_jumps_and_keeps_flowing() {
        let c = OffsetClock::starting_at(1_000_000);
        let a = c.now_ms();
        assert!((1_000_000..1_000_000 + 5_000).contains(&a), "{a}");
        c.jump_to(5_000_000_000);
        let b = c.now_ms();
        assert!((5_000_000_000..5_000_000_000 + 5_000).contains(&b), "{b}");
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }
}
