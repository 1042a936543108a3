//! CPU time of this process's threads, by role.
//!
//! The load generator shares the machine with the servers, so req/s alone
//! mixes the two. Each thread's time on a CPU (the first field of
//! `/proc/self/task/<tid>/schedstat`, in nanoseconds) is summed by thread
//! name: the servers' runtime (`bench-server`), the store's writer
//! (`crossflow-writer`), its other threads (`crossflow-*`) and the load
//! generator (`bench-client`). A thread that exits between two samples
//! drops out of both; none of these do while a scenario runs.

use std::{fs, time::Duration};

/// CPU time per role, since each thread started.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// The gateway's (or echo server's) runtime threads.
    pub server: Duration,
    /// The store's single writer thread.
    pub writer: Duration,
    /// The store's other threads (the syncer).
    pub store: Duration,
    /// The load generator's runtime threads.
    pub client: Duration,
}

/// CPU time spent per request between two samples.
#[derive(Debug, Clone, Copy)]
pub struct PerRequest {
    pub server_us: f64,
    pub writer_us: f64,
    pub store_us: f64,
    pub client_us: f64,
}

// === impl CpuTimes ===

impl CpuTimes {
    /// The process's threads now, or `None` where `/proc` has no schedstat.
    pub fn sample() -> Option<CpuTimes> {
        let mut t = CpuTimes::default();
        for task in fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            // A thread may exit while we read; skip it.
            let (Ok(comm), Ok(stat)) = (
                fs::read_to_string(dir.join("comm")),
                fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue;
            };
            let Some(ns) = stat.split_whitespace().next().and_then(|f| f.parse().ok()) else {
                continue;
            };
            let d = Duration::from_nanos(ns);
            // `comm` is cut to 15 bytes: "crossflow-write", "crossflow-synce".
            let comm = comm.trim_end();
            if comm.starts_with("bench-server") {
                t.server += d;
            } else if comm.starts_with("crossflow-write") {
                t.writer += d;
            } else if comm.starts_with("crossflow-") {
                t.store += d;
            } else if comm.starts_with("bench-client") {
                t.client += d;
            }
        }
        Some(t)
    }

    /// Time spent from `before` to `self`, per request of `requests`.
    pub fn per_request(&self, before: &CpuTimes, requests: u64) -> Option<PerRequest> {
        if requests == 0 {
            return None;
        }
        let us =
            |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e6 / requests as f64;
        Some(PerRequest {
            server_us: us(self.server, before.server),
            writer_us: us(self.writer, before.writer),
            store_us: us(self.store, before.store),
            client_us: us(self.client, before.client),
        })
    }
}

// === impl PerRequest ===

impl PerRequest {
    /// Everything but the load generator.
    pub fn server_side_us(&self) -> f64 {
        self.server_us + self.writer_us + self.store_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_is_counted_under_its_role() {
        let Some(before) = CpuTimes::sample() else {
            return; // no schedstat on this system: nothing to check
        };
        let spin = std::thread::Builder::new()
            .name("bench-client-t".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(50) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                // Sampled while the thread still exists.
                CpuTimes::sample()
            })
            .expect("spawn");
        let after = spin.join().expect("join").expect("sample");
        let per = after.per_request(&before, 1).expect("one request");
        assert!(per.client_us >= 20_000.0, "{per:?}");
        assert!(per.server_us < 20_000.0, "{per:?}");
        assert!(before.per_request(&before, 0).is_none());
    }
}
