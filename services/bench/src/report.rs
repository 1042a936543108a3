//! What the benchmark prints.

use std::time::Duration;

use crossflow_store::WriterStats;

use crate::{
    cpu::PerRequest,
    load::{Outcome, Stop},
    pg,
    replicas::{Config, Deployment},
    scenario::{Env, Spec},
};

/// One scenario's result.
#[derive(Debug)]
pub struct Row {
    /// 1 for the first round.
    pub round: usize,
    pub spec: &'static Spec,
    /// What it ran against.
    pub config: Config,
    pub outcome: Outcome,
    pub note: Option<String>,
    /// Wall time of the run, warm-up included.
    pub ran: Duration,
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
    /// PostgreSQL's own counters over the run, warm-up included
    /// (PostgreSQL configurations).
    pub pg: Option<pg::Counters>,
}

// === impl Row ===

impl Row {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        round: usize,
        spec: &'static Spec,
        config: Config,
        outcome: Outcome,
        note: Option<String>,
        ran: Duration,
        before: WriterStats,
        after: WriterStats,
    ) -> Row {
        Row {
            round,
            spec,
            config,
            outcome,
            note,
            ran,
            commits: after.commits.saturating_sub(before.commits),
            writes: after.writes.saturating_sub(before.writes),
            syncs: after.syncs.saturating_sub(before.syncs),
            checkpoints: after.checkpoints.saturating_sub(before.checkpoints),
            writer_checkpoints: after
                .writer_checkpoints
                .saturating_sub(before.writer_checkpoints),
            cpu: None,
            pg: None,
        }
    }

    /// The scenario's name, with the configuration's label if it has one.
    fn name(&self) -> String {
        match self.config.label.as_str() {
            "" => self.spec.name.to_owned(),
            l => format!("{} {l}", self.spec.name),
        }
    }

    /// A line as soon as the scenario has run.
    pub fn progress(&self) {
        let o = &self.outcome;
        println!(
            "  round {} {:<16} {:>9} ok in {:>5.2} s  {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {} errors",
            self.round,
            self.name(),
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
        env.gateways
            .first()
            .map_or_else(String::new, ToString::to_string),
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
}

/// The `--replicas` configurations, after [`header`].
pub fn replicas_header(deployments: &[Deployment], postgres: &str, server_threads: usize) {
    for d in deployments {
        let c = &d.config;
        let addrs: Vec<String> = d.addrs().iter().map(|a| format!("https://{a}")).collect();
        match &c.database {
            None => println!(
                "  {:<7}  the gateway above (embedded SQLite); {} connections per partner",
                c.label, c.connections
            ),
            Some(db) => println!(
                "  {:<7}  {} replica(s) {} on PostgreSQL {postgres}/{db} (fresh); {} connections per partner, round-robin over the replicas",
                c.label,
                c.replicas,
                addrs.join(" "),
                c.connections
            ),
        }
    }
    println!(
        "  order:   each round runs echo, then each scenario against every configuration in turn; all replicas share the servers' runtime ({server_threads} worker threads) and this machine's cores with PostgreSQL"
    );
}

/// Ends the header.
pub fn header_end() {
    println!();
}

/// One line of a table: a scenario in one round, or the median of rounds.
#[derive(Debug, Clone)]
struct Line {
    spec: &'static Spec,
    config: Config,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests/s as a share of the baseline's in the same round.
    ratio: Option<f64>,
    /// PostgreSQL configurations: requests/s as a share of the SQLite
    /// gateway's on the same scenario in the same round.
    sqlite_ratio: Option<f64>,
}

fn line(r: &Row, round: &[&Row]) -> Line {
    let o = &r.outcome;
    let share = |base: f64| (base > 0.0).then(|| o.rps() / base);
    let ratio = r.spec.target.and_then(|t| {
        let base = round.iter().find(|b| b.spec.name == t.baseline)?;
        share(base.outcome.rps())
    });
    let sqlite_ratio = r.config.database.as_ref().and_then(|_| {
        let base = round
            .iter()
            .find(|b| b.spec.name == r.spec.name && b.config.is_sqlite_in_replica_run())?;
        share(base.outcome.rps())
    });
    Line {
        spec: r.spec,
        config: r.config.clone(),
        requests: o.ok,
        rps: o.rps(),
        p50_ms: o.percentile_ms(50.0),
        p99_ms: o.percentile_ms(99.0),
        errors: o.errors,
        ratio,
        sqlite_ratio,
    }
}

// === impl Line ===

impl Line {
    fn label(&self) -> String {
        match self.config.label.as_str() {
            "" => self.spec.label.to_owned(),
            l => format!("{} {l}", self.spec.label),
        }
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
                .filter(|l| l.spec.name == first.spec.name && l.config == first.config)
                .collect();
            let m = |f: fn(&Line) -> f64| median(all.iter().map(|l| f(l)).collect());
            let ratios: Vec<f64> = all.iter().filter_map(|l| l.ratio).collect();
            let sqlite_ratios: Vec<f64> = all.iter().filter_map(|l| l.sqlite_ratio).collect();
            med.push(Line {
                spec: first.spec,
                config: first.config.clone(),
                requests: all.iter().map(|l| l.requests).sum(),
                rps: m(|l| l.rps),
                p50_ms: m(|l| l.p50_ms),
                p99_ms: m(|l| l.p99_ms),
                errors: all.iter().map(|l| l.errors).sum(),
                ratio: (!ratios.is_empty()).then(|| median(ratios)),
                sqlite_ratio: (!sqlite_ratios.is_empty()).then(|| median(sqlite_ratios)),
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
        let name = r.name();
        let tag = if rounds > 1 {
            format!("round {} {name}", r.round)
        } else {
            name
        };
        if let Some(n) = &r.note {
            println!("{tag}: {n}");
        }
        if r.config.database.is_some() {
            if let Some(line) = postgres_line(r) {
                println!("{tag}: {line}");
            }
        } else if r.writes > 0 {
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
            if let Some(line) = writer_wait_line(r, c) {
                println!("{tag}: {line}");
            }
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
/// time scales linearly and the cores are never idle). With PostgreSQL on
/// this machine, its processes' time counts as server side too.
pub(crate) fn cpu_line(c: &PerRequest) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let side = c.server_side_us();
    let mut s = format!(
        "CPU per request, warm-up included: server runtime {:.1} µs + store writer {:.1} µs + other store threads {:.1} µs = {side:.1} µs server side; load generator {:.1} µs",
        c.server_us, c.writer_us, c.store_us, c.client_us
    );
    let mut all = side;
    if let Some(pg) = c.postgres {
        all += pg.backends_us + pg.shared_us;
        s += &format!(
            "; PostgreSQL backends {:.1} µs + its shared processes {:.1} µs, {all:.1} µs with the gateway",
            pg.backends_us, pg.shared_us
        );
    }
    if all > 0.0 {
        let what = if c.postgres.is_some() {
            "the gateway and PostgreSQL"
        } else {
            "the server"
        };
        s += &format!(
            "; {cores} cores running only {what}: at most {:.0} req/s",
            cores as f64 * 1e6 / all
        );
    }
    // Scenarios that write nothing still wake the writer now and then. A
    // PostgreSQL writer waits for the server most of the time: its CPU is
    // no bound (see `writer_wait_line`).
    if c.writer_us >= 1.0 && c.postgres.is_none() {
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

/// PostgreSQL configurations: how much of the run the writer threads spent
/// on a CPU; the rest of their time they waited (for PostgreSQL, or for
/// work).
fn writer_wait_line(r: &Row, c: &PerRequest) -> Option<String> {
    r.config.database.as_ref()?;
    let wall = r.ran.as_secs_f64() * r.config.replicas as f64;
    if wall <= 0.0 || r.commits == 0 {
        return None;
    }
    let on_cpu = c.writer_us * r.outcome.issued() as f64 / 1e6;
    let per_commit_ms = wall * 1e3 / r.commits as f64;
    Some(format!(
        "the {} writer thread(s) were on a CPU {:.0} % of the run and off it {:.0} %; one transaction per {per_commit_ms:.2} ms per writer, {:.1} writes each",
        r.config.replicas,
        100.0 * on_cpu / wall,
        100.0 * (1.0 - on_cpu / wall).max(0.0),
        r.writes as f64 / r.commits as f64,
    ))
}

/// PostgreSQL configurations: the writers' batches and what PostgreSQL
/// counted, per request (warm-up included).
fn postgres_line(r: &Row) -> Option<String> {
    let db = r.config.database.as_ref()?;
    let mut s = format!(
        "store on PostgreSQL ({db}, {} writer(s)): {} writes in {} transactions ({:.1} per COMMIT); warm-up included",
        r.config.replicas,
        r.writes,
        r.commits,
        r.writes as f64 / r.commits.max(1) as f64,
    );
    if let Some(pg) = &r.pg {
        let n = r.outcome.issued().max(1) as f64;
        let per = |v: i64| v as f64 / n;
        s += &format!(
            "; PostgreSQL counted per request: {:.2} transactions committed, {:.3} rolled back, {:.3} sessions opened, {:.2} rows inserted, {:.2} updated; server-wide {:.3} WAL syncs, {:.0} B of WAL",
            per(pg.xact_commit),
            per(pg.xact_rollback),
            per(pg.sessions),
            per(pg.tup_inserted),
            per(pg.tup_updated),
            per(pg.wal_sync),
            per(pg.wal_bytes),
        );
    }
    Some(s)
}

fn print_lines(lines: &[Line]) {
    let replicas = lines.iter().any(|l| l.config.database.is_some());
    let width = lines
        .iter()
        .map(|l| l.label().chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    let sqlite_head = if replicas { "   /sqlite" } else { "" };
    println!(
        "{:<width$} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9}{sqlite_head} {:>7}  verdict",
        "scenario",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        if replicas { "/echo" } else { "/baseline" },
        "target"
    );
    for l in lines {
        let (ratio, target, verdict) = if l.config.database.is_some() {
            postgres_verdict(l)
        } else {
            verdict(l)
        };
        let sqlite = match (replicas, l.sqlite_ratio) {
            (false, _) => String::new(),
            (true, None) => format!(" {:>9}", "-"),
            (true, Some(r)) => format!(" {:>9}", format!("{:.1} %", r * 100.0)),
        };
        println!(
            "{:<width$} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>9}{sqlite} {:>7}  {}",
            l.label(),
            l.requests,
            l.rps,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            ratio,
            target,
            verdict
        );
    }
}

/// Ratio to the baseline, target and verdict of a line against its spec's
/// target (the echo baseline's share, or an absolute rate).
fn verdict(l: &Line) -> (String, String, String) {
    match (l.spec.target, l.ratio) {
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
    }
}

/// The same for a PostgreSQL configuration: its target is a share of the
/// SQLite gateway's requests/s on one replica (issue 19); with more
/// replicas the issue asks for the ratios only.
fn postgres_verdict(l: &Line) -> (String, String, String) {
    let ratio = l
        .ratio
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1} %", r * 100.0));
    let target = l.spec.postgres_min_ratio.filter(|_| l.config.replicas == 1);
    let verdict = match (target, l.sqlite_ratio) {
        _ if l.errors > 0 => "FAIL: errors".to_owned(),
        (None, _) => "no target (issue 19 asks for the ratios)".to_owned(),
        (Some(_), None) => "no verdict: run the SQLite gateway in the same round".to_owned(),
        (Some(min), Some(r)) if r >= min => format!(
            "pass: {:.1} % of the SQLite gateway's req/s (issue 19)",
            r * 100.0
        ),
        (Some(min), Some(r)) => format!(
            "SHORT by {:.1} points of the SQLite gateway's req/s: needs {:.0} % more req/s (issue 19)",
            (min - r) * 100.0,
            (min / r.max(f64::MIN_POSITIVE) - 1.0) * 100.0
        ),
    };
    let target = target.map_or_else(|| "-".to_owned(), |m| format!("≥{:.0} %", m * 100.0));
    (ratio, target, verdict)
}
