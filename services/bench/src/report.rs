//! What the benchmark prints.

use crossflow_store::WriterStats;

use crate::{
    cpu::PerRequest,
    load::{Outcome, Stop},
    scenario::{Env, Spec},
};

/// One scenario's result.
#[derive(Debug)]
pub struct Row {
    /// 1 for the first round.
    pub round: usize,
    pub spec: &'static Spec,
    pub outcome: Outcome,
    pub note: Option<String>,
    /// Store commits, writes and fsyncs during the run, warm-up included.
    pub commits: u64,
    pub writes: u64,
    pub syncs: u64,
    /// WAL checkpoints by the checkpointer thread and by the writer itself
    /// (each of the writer's stalls every write queued behind it).
    pub checkpoints: u64,
    pub writer_checkpoints: u64,
    /// CPU time per request by thread role, warm-up included.
    pub cpu: Option<PerRequest>,
}

// === impl Row ===

impl Row {
    pub fn new(
        round: usize,
        spec: &'static Spec,
        outcome: Outcome,
        note: Option<String>,
        before: WriterStats,
        after: WriterStats,
    ) -> Row {
        Row {
            round,
            spec,
            outcome,
            note,
            commits: after.commits.saturating_sub(before.commits),
            writes: after.writes.saturating_sub(before.writes),
            syncs: after.syncs.saturating_sub(before.syncs),
            checkpoints: after.checkpoints.saturating_sub(before.checkpoints),
            writer_checkpoints: after
                .writer_checkpoints
                .saturating_sub(before.writer_checkpoints),
            cpu: None,
        }
    }

    /// A line as soon as the scenario has run.
    pub fn progress(&self) {
        let o = &self.outcome;
        println!(
            "  round {} {:<16} {:>9} ok in {:>5.2} s  {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {} errors",
            self.round,
            self.spec.name,
            o.ok,
            o.elapsed.as_secs_f64(),
            o.rps(),
            o.percentile_ms(50.0),
            o.percentile_ms(99.0),
            o.errors,
        );
    }
}

pub fn header(env: &Env, server_threads: usize, client_threads: usize) {
    let build = if cfg!(debug_assertions) {
        "DEBUG build (figures are meaningless: use --release)"
    } else {
        "release build"
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let plan = env.plan;
    let stop = match plan.stop {
        Stop::After(d) => format!("{:.1} s measured", d.as_secs_f64()),
        Stop::Requests(n) => format!("{n} requests measured"),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "crossflow-bench: {build}, {cpus} CPUs available to this process, load average before start: {}",
        if load.is_empty() { "unknown" } else { &load }
    );
    println!(
        "  servers: gateway https://{} (demo federation {}, store in {}), echo https://{}; one runtime, {server_threads} worker threads",
        env.gateway,
        env.bed.federation,
        env.bed.dir.join("data").display(),
        env.echo,
    );
    println!(
        "  client:  one runtime, {client_threads} worker threads; {} requests in flight (closed loop) over {} mTLS HTTP/2 connections per scenario",
        plan.concurrency, env.connections,
    );
    println!(
        "  plan:    per scenario {:.1} s warm-up (not recorded), then {stop}",
        plan.warmup.as_secs_f64()
    );
    println!();
}

/// One line of a table: a scenario in one round, or the median of rounds.
#[derive(Debug, Clone)]
struct Line {
    spec: &'static Spec,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests/s as a share of the baseline's in the same round.
    ratio: Option<f64>,
}

fn line(r: &Row, round: &[&Row]) -> Line {
    let o = &r.outcome;
    let ratio = r.spec.target.and_then(|t| {
        let base = round
            .iter()
            .find(|b| b.spec.name == t.baseline)?
            .outcome
            .rps();
        (base > 0.0).then(|| o.rps() / base)
    });
    Line {
        spec: r.spec,
        requests: o.ok,
        rps: o.rps(),
        p50_ms: o.percentile_ms(50.0),
        p99_ms: o.percentile_ms(99.0),
        errors: o.errors,
        ratio,
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints the result table (one per round, then the medians if there were
/// several rounds) and the notes.
pub fn table(rows: &[Row]) {
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
    let mut per_round: Vec<Vec<Line>> = Vec::new();
    for n in 1..=rounds {
        let round: Vec<&Row> = rows.iter().filter(|r| r.round == n).collect();
        per_round.push(round.iter().map(|r| line(r, &round)).collect());
    }
    for (i, lines) in per_round.iter().enumerate() {
        println!();
        if rounds > 1 {
            println!("round {}:", i + 1);
        }
        print_lines(lines);
    }
    if rounds > 1 {
        let mut med = Vec::new();
        for first in per_round.first().into_iter().flatten() {
            let all: Vec<&Line> = per_round
                .iter()
                .flatten()
                .filter(|l| l.spec.name == first.spec.name)
                .collect();
            let m = |f: fn(&Line) -> f64| median(all.iter().map(|l| f(l)).collect());
            let ratios: Vec<f64> = all.iter().filter_map(|l| l.ratio).collect();
            med.push(Line {
                spec: first.spec,
                requests: all.iter().map(|l| l.requests).sum(),
                rps: m(|l| l.rps),
                p50_ms: m(|l| l.p50_ms),
                p99_ms: m(|l| l.p99_ms),
                errors: all.iter().map(|l| l.errors).sum(),
                ratio: (!ratios.is_empty()).then(|| median(ratios)),
            });
        }
        println!();
        println!(
            "median of {rounds} rounds (requests and errors: totals; ratio: median of the rounds' ratios):"
        );
        print_lines(&med);
    }
    println!();
    for r in rows {
        let name = r.spec.name;
        let tag = if rounds > 1 {
            format!("round {} {name}", r.round)
        } else {
            name.to_owned()
        };
        if let Some(n) = &r.note {
            println!("{tag}: {n}");
        }
        if r.writes > 0 {
            println!(
                "{tag}: store wrote {} rows in {} group commits and {} fsyncs ({:.1} per fsync); WAL checkpoints: {} by the checkpointer, {} by the writer; warm-up included",
                r.writes,
                r.commits,
                r.syncs,
                r.writes as f64 / r.syncs.max(1) as f64,
                r.checkpoints,
                r.writer_checkpoints
            );
        }
        if let Some(c) = &r.cpu {
            println!("{tag}: {}", cpu_line(c));
        }
        if let Some(e) = &r.outcome.first_error {
            println!("{tag}: first error: {e}");
        }
        if r.outcome.exhausted {
            println!(
                "{tag}: ran out of prepared work after {:.2} s; the rate is over that time",
                r.outcome.elapsed.as_secs_f64()
            );
        }
    }
}

/// Where a request's CPU time went, and what that allows on this machine's
/// cores running only the server (both are upper bounds: they assume the
/// time scales linearly and the cores are never idle).
pub(crate) fn cpu_line(c: &PerRequest) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let side = c.server_side_us();
    let mut s = format!(
        "CPU per request, warm-up included: server runtime {:.1} µs + store writer {:.1} µs + other store threads {:.1} µs = {side:.1} µs server side; load generator {:.1} µs",
        c.server_us, c.writer_us, c.store_us, c.client_us
    );
    if side > 0.0 {
        s += &format!(
            "; {cores} cores running only the server: at most {:.0} req/s",
            cores as f64 * 1e6 / side
        );
    }
    // Scenarios that write nothing still wake the writer now and then.
    if c.writer_us >= 1.0 {
        s += &format!(", the one writer thread at most {:.0}", 1e6 / c.writer_us);
    }
    if let Some(steal) = c.steal {
        s += &format!(
            "; meanwhile the hypervisor gave {:.0} % of the host's CPU time to others (steal)",
            steal * 100.0
        );
    }
    s
}

fn print_lines(lines: &[Line]) {
    println!(
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9} {:>7}  verdict",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "errors", "/baseline", "target"
    );
    for l in lines {
        let (ratio, target, verdict) = match (l.spec.target, l.ratio) {
            (None, _) => ("-".to_owned(), "-".to_owned(), "baseline".to_owned()),
            (Some(t), None) => (
                "-".to_owned(),
                format!("≥{:.0} %", t.min_ratio * 100.0),
                format!("no verdict: run {} in the same invocation", t.baseline),
            ),
            (Some(t), Some(ratio)) => {
                let verdict = if l.errors > 0 {
                    "FAIL: errors".to_owned()
                } else if let Some(min) = t.min_rps.filter(|&m| l.rps < m) {
                    format!(
                        "SHORT of {min:.0} req/s: needs {:.0} % more req/s ({})",
                        (min / l.rps.max(f64::MIN_POSITIVE) - 1.0) * 100.0,
                        t.source
                    )
                } else if ratio >= t.min_ratio {
                    format!("pass ({})", t.source)
                } else {
                    format!(
                        "SHORT by {:.1} points: needs {:.0} % more req/s ({})",
                        (t.min_ratio - ratio) * 100.0,
                        (t.min_ratio / ratio.max(f64::MIN_POSITIVE) - 1.0) * 100.0,
                        t.source
                    )
                };
                let target = match t.min_rps {
                    Some(m) => format!("≥{:.0}k/s", m / 1000.0),
                    None => format!("≥{:.0} %", t.min_ratio * 100.0),
                };
                (format!("{:.1} %", ratio * 100.0), target, verdict)
            }
        };
        println!(
            "{:<16} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>9} {:>7}  {}",
            l.spec.label, l.requests, l.rps, l.p50_ms, l.p99_ms, l.errors, ratio, target, verdict
        );
    }
}
