//! `--ledger` on PostgreSQL (with `--replicas` or `--postgres-url`): durable
//! appends through the store's PostgreSQL writer, against plain inserts of
//! the same rows.
//!
//! Each round gets two fresh databases (`crossflow_bench_ledger` with the
//! store's schema, `crossflow_bench_plain` with two one-column tables) and
//! runs three writers batch by batch, each batch timed alone, so a noisy
//! neighbour slows all three alike:
//!
//! - plain `INSERT`s, one statement (one round trip) per row, in one
//!   transaction per batch: the baseline the issue names;
//! - plain multi-row `INSERT`s of the same rows, 256 rows a statement (or
//!   fewer, by powers of four), as the store's writer inserts held-back
//!   ledger rows: the baseline with the same number of round trips;
//! - ledger appends: `--ledger-batch` `crossflow_store::ledger::Appender`
//!   appends in one `Database::write` closure (one transaction: the
//!   `ledger_head` row locked by the first append, the rows inserted many to
//!   a statement, the count written back, one COMMIT), entries hashed
//!   before the write as the services do.
//!
//! Every write is answered after its COMMIT, which PostgreSQL answers once
//! the WAL is flushed (`synchronous_commit` as the server has it). As on
//! SQLite, an `Integrator` on the same store is stepped every
//! [`STEP_EVERY`](super::STEP_EVERY) batches and timed with the ledger:
//! "appended" is sequencing alone (the 30,000/s target), and
//! "integrated" adds reading the leaves back, persisting the tree and
//! signing. Around each timed part the benchmark also takes the CPU time of
//! the store's writer thread and of PostgreSQL's backends (`cpu`), so the
//! figures say how much of each batch was spent computing and how much
//! waiting for round trips.

use std::time::{Duration, Instant};

use crossflow_ledger::{Integrator, Signer};
use crossflow_store::{
    Database, Migration, Postgres,
    ledger::{Appender, Prepared},
    pg_schema,
    sql::Value,
};

use super::{Options, PARTIES, STEP_EVERY, batch, entry, median};
use crate::{
    BoxError,
    cpu::{self, CpuTimes},
    pg,
};

const PLAIN: Migration = Migration {
    name: "bench_plain",
    sql: "CREATE TABLE plain (id BIGSERIAL PRIMARY KEY, bytes BYTEA NOT NULL);
          CREATE TABLE plain_multi (id BIGSERIAL PRIMARY KEY, bytes BYTEA NOT NULL);",
};
/// Most rows in one multi-row insert, as the store's PostgreSQL writer
/// flushes held-back ledger rows.
const ROWS_PER_STATEMENT: usize = 256;
/// The target for durable appends on PostgreSQL.
const TARGET: f64 = 30_000.0;

/// Wall and CPU time spent in one kind of timed part.
#[derive(Debug, Default, Clone, Copy)]
struct Meter {
    wall: Duration,
    /// This process's store writer threads, in µs.
    writer_us: f64,
    /// The benchmark databases' PostgreSQL backends, in µs.
    backends_us: f64,
    /// PostgreSQL's shared processes (WAL writer, checkpointer...), in µs.
    shared_us: f64,
    batches: u64,
}

/// What one round measured.
#[derive(Debug, Default)]
struct Round {
    entries: u64,
    plain: Meter,
    multi: Meter,
    append: Meter,
    integrate: Meter,
}

// === impl Meter ===

impl Meter {
    /// Adds a timed part that started at `started` with CPU sample `before`.
    fn add(&mut self, started: Instant, before: Option<CpuTimes>) {
        self.wall += started.elapsed();
        self.batches += 1;
        if let Some(c) = CpuTimes::since(before, 1) {
            self.writer_us += c.writer_us;
            if let Some(pg) = c.postgres {
                self.backends_us += pg.backends_us;
                self.shared_us += pg.shared_us;
            }
        }
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// "x µs backend + y µs shared + z µs writer" per entry.
    fn cpu_per(&self, n: u64) -> String {
        let n = n.max(1) as f64;
        format!(
            "{:.1} µs PostgreSQL backend + {:.1} µs its shared processes + {:.1} µs store writer",
            self.backends_us / n,
            self.shared_us / n,
            self.writer_us / n
        )
    }

    /// Share of the wall time the writer spent on a CPU.
    fn writer_busy(&self) -> f64 {
        self.writer_us / 1e6 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

pub fn run(o: &Options, admin: &str) -> Result<(), BoxError> {
    cpu::watch_postgres(pg::PREFIX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!();
    println!(
        "ledger append on PostgreSQL {}: {} entries of ~{} bytes in durable batches of {} (one Database::write, one transaction each), {} round(s), each on fresh databases",
        pg::host(admin),
        o.entries,
        entry(0).len(),
        o.batch,
        o.rounds
    );
    let (mut appended, mut integrated, mut plain, mut multi) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        let ledger_url = pg::fresh_database(admin, "ledger")?;
        let plain_url = pg::fresh_database(admin, "plain")?;
        let store = Postgres::connect(&ledger_url, pg_schema::MIGRATIONS)?;
        let baseline = Postgres::connect(&plain_url, &[PLAIN])?;
        let r = rt.block_on(interleaved(o, &store, &baseline));
        store.close();
        baseline.close();
        let r = r?;
        let n = r.entries;
        let (p, m, a) = (r.plain.rate(n), r.multi.rate(n), r.append.rate(n));
        let mut both = r.append;
        both.wall += r.integrate.wall;
        let i = both.rate(n);
        println!(
            "  round {round}: plain INSERT per row {p:>8.0} rows/s | plain multi-row INSERT {m:>8.0} rows/s | ledger appended {a:>8.0}/s, integrated {i:>8.0} entries/s | appended/per-row {:.3}, appended/multi-row {:.3}",
            a / p,
            a / m
        );
        let ms = |x: &Meter| x.wall.as_secs_f64() * 1e3 / x.batches.max(1) as f64;
        println!(
            "    per batch of {}: per-row {:.2} ms, multi-row {:.2} ms, ledger append {:.2} ms; integration {:.2} ms per {} batches",
            o.batch,
            ms(&r.plain),
            ms(&r.multi),
            ms(&r.append),
            ms(&r.integrate),
            STEP_EVERY
        );
        for (what, x) in [
            ("per-row", &r.plain),
            ("multi-row", &r.multi),
            ("ledger append", &r.append),
            ("integration", &r.integrate),
        ] {
            println!(
                "    CPU per entry, {what}: {}; the writer on a CPU {:.0} % of the time",
                x.cpu_per(n),
                x.writer_busy() * 100.0
            );
        }
        appended.push(a);
        integrated.push(i);
        plain.push(p);
        multi.push(m);
        pg::drop_database(admin, &pg::database(&ledger_url))?;
        pg::drop_database(admin, &pg::database(&plain_url))?;
    }
    let (a, i, p, m) = (
        median(&mut appended),
        median(&mut integrated),
        median(&mut plain),
        median(&mut multi),
    );
    let verdict = if a >= TARGET {
        format!("met by {:.0} %", (a / TARGET - 1.0) * 100.0)
    } else {
        format!("NOT met: needs {:.0} % more", (TARGET / a - 1.0) * 100.0)
    };
    println!(
        "  median on PostgreSQL: ledger appended {a:.0} entries/s durably [target >= 30000/s (issue 19): {verdict}], with integration {i:.0}/s; plain per-row {p:.0} rows/s (ratio {:.3}), plain multi-row {m:.0} rows/s (ratio {:.3})",
        a / p,
        a / m
    );
    Ok(())
}

/// One round: the three writers batch by batch, the integrator stepped in
/// between and timed with the ledger.
async fn interleaved(
    o: &Options,
    store: &Postgres,
    baseline: &Postgres,
) -> Result<Round, BoxError> {
    let signer = Signer::from_seed("bench-ledger", &[9; 32])?;
    let mut integrator = Integrator::open(store.clone(), signer, super::ORIGIN.into()).await?;
    let mut r = Round::default();
    let mut batches = 0;
    while r.entries < o.entries {
        let rows = batch(r.entries, o.batch);
        r.entries += rows.len() as u64;
        batches += 1;

        let (before, started) = (CpuTimes::sample(), Instant::now());
        insert_per_row(baseline, rows.clone()).await?;
        r.plain.add(started, before);

        let (before, started) = (CpuTimes::sample(), Instant::now());
        insert_multi_row(baseline, rows.clone()).await?;
        r.multi.add(started, before);

        let (before, started) = (CpuTimes::sample(), Instant::now());
        append_batch(store, rows).await?;
        r.append.add(started, before);

        if batches % STEP_EVERY == 0 || r.entries >= o.entries {
            // As on SQLite: a checkpoint a second apart, the last at once.
            let interval = match r.entries >= o.entries {
                true => Duration::ZERO,
                false => Duration::from_secs(1),
            };
            let (before, started) = (CpuTimes::sample(), Instant::now());
            while integrator.size() < r.entries {
                integrator.step(interval).await?;
            }
            r.integrate.add(started, before);
        }
    }
    Ok(r)
}

/// The baseline: one plain INSERT per row, one transaction per batch.
async fn insert_per_row(db: &Postgres, rows: Vec<Vec<u8>>) -> Result<(), BoxError> {
    Database::write(db, move |c| {
        for r in &rows {
            c.execute("INSERT INTO plain (bytes) VALUES (?1)", &[Value::Blob(r)])?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// The same rows, [`ROWS_PER_STATEMENT`] (or fewer, by powers of four) to
/// a statement, one transaction per batch.
async fn insert_multi_row(db: &Postgres, rows: Vec<Vec<u8>>) -> Result<(), BoxError> {
    Database::write(db, move |c| {
        let mut rest = &rows[..];
        while !rest.is_empty() {
            let mut n = ROWS_PER_STATEMENT;
            while n > rest.len() {
                n /= 4;
            }
            let (chunk, tail) = rest.split_at(n.max(1));
            rest = tail;
            let sql = format!(
                "INSERT INTO plain_multi (bytes) VALUES {}",
                vec!["(?)"; chunk.len()].join(", ")
            );
            let values: Vec<Value<'_>> = chunk.iter().map(|r| Value::Blob(r)).collect();
            c.execute(&sql, &values)?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// One durable batch of ledger appends, hashed before the write.
async fn append_batch(store: &Postgres, rows: Vec<Vec<u8>>) -> Result<(), BoxError> {
    let prepared = rows
        .into_iter()
        .map(|e| Prepared::new(e, &PARTIES))
        .collect::<Result<Vec<_>, _>>()?;
    Database::write(store, move |c| {
        let mut appender = Appender::new(c)?;
        for r in &prepared {
            appender.append(r, 0)?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}
