//! The closed-loop load driver: `concurrency` workers, each issuing one
//! request at a time back to back, first through a warm-up that is not
//! recorded, then through the measured window.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::BoxError;

/// One request in flight. Its output says only whether it succeeded.
pub type Call = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Something to measure: a source of requests.
///
/// A new benchmark is one implementation of this trait (plus an entry in
/// `scenario::SPECS`): it is handed the worker's lane (to pick a connection)
/// and a sequence number unique within the run (to make distinct subjects).
pub trait Scenario: Send + Sync + 'static {
    /// The next request, or `None` when the scenario has run out of work
    /// (e.g. its pre-minted tokens), which ends the run early.
    fn request(&self, lane: usize, seq: u64) -> Option<Call>;
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long past the warm-up.
    After(Duration),
    /// After this many requests past the warm-up.
    Requests(u64),
}

/// How to drive a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub warmup: Duration,
    pub stop: Stop,
    pub concurrency: usize,
}

/// What a run measured. Only requests started after the warm-up count.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Successful requests.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the end of the warm-up to the last recorded completion.
    pub elapsed: Duration,
    /// Latency of each successful request, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// The scenario ran out of work before the plan's end.
    pub exhausted: bool,
    /// Requests issued in the warm-up.
    pub warmup_requests: u64,
}

#[derive(Debug, Default)]
struct Lane {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
    exhausted: bool,
    warmup_requests: u64,
}

// === impl Outcome ===

impl Outcome {
    /// Every request issued, warm-up and errors included: what the CPU
    /// sampled around the run was spent on.
    pub fn issued(&self) -> u64 {
        self.ok + self.errors + self.warmup_requests
    }

    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile `p` (0..=100) of the latencies, in ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let i = rank.clamp(1, n) - 1;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// Runs `scenario` under `plan` on the current runtime.
pub async fn drive(scenario: Arc<dyn Scenario>, plan: Plan) -> Result<Outcome, BoxError> {
    let seq = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + plan.warmup;
    let mut workers = Vec::with_capacity(plan.concurrency);
    for lane in 0..plan.concurrency.max(1) {
        let scenario = scenario.clone();
        let seq = seq.clone();
        let counted = counted.clone();
        workers.push(tokio::spawn(async move {
            worker(&*scenario, lane, plan.stop, measure_from, &seq, &counted).await
        }));
    }
    let mut out = Outcome::default();
    let mut last_done = None::<Instant>;
    for w in workers {
        let lane = w.await?;
        out.ok += lane.latencies_us.len() as u64;
        out.errors += lane.errors;
        out.warmup_requests += lane.warmup_requests;
        out.exhausted |= lane.exhausted;
        if out.first_error.is_none() {
            out.first_error = lane.first_error;
        }
        last_done = last_done.max(lane.last_done);
        out.latencies_us.extend(lane.latencies_us);
    }
    out.latencies_us.sort_unstable();
    out.elapsed = last_done.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_from)
    });
    Ok(out)
}

async fn worker(
    scenario: &dyn Scenario,
    lane: usize,
    stop: Stop,
    measure_from: Instant,
    seq: &AtomicU64,
    counted: &AtomicU64,
) -> Lane {
    let mut l = Lane::default();
    loop {
        let now = Instant::now();
        let measured = now >= measure_from;
        match stop {
            Stop::After(d) if now >= measure_from + d => break,
            // Claim a slot before issuing, so exactly `n` requests count.
            Stop::Requests(n) if measured && counted.fetch_add(1, Ordering::Relaxed) >= n => break,
            _ => {}
        }
        let Some(call) = scenario.request(lane, seq.fetch_add(1, Ordering::Relaxed)) else {
            l.exhausted = true;
            break;
        };
        let started = Instant::now();
        let res = call.await;
        let done = Instant::now();
        if !measured {
            l.warmup_requests += 1;
            continue;
        }
        match res {
            Ok(()) => {
                let us = done.saturating_duration_since(started).as_micros();
                l.latencies_us.push(u64::try_from(us).unwrap_or(u64::MAX));
            }
            Err(e) => {
                l.errors += 1;
                if l.first_error.is_none() {
                    l.first_error = Some(e.to_string());
                }
            }
        }
        l.last_done = Some(done);
    }
    l
}
