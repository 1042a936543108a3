//! `crossflow-crash`: SIGKILL the real gateway under load and check that
//! nothing it acknowledged was lost, doubled or half-written.
//!
//! It lays out the demo federation (plus an operator) in a directory, starts
//! `crossflow serve` on it, and then, each cycle: partners drive hops,
//! redemptions, onward hops, tags, conversions and their updates over mTLS;
//! at a random moment (seeded) the process is killed with SIGKILL; it is
//! restarted on the same data directory; every request whose answer was lost
//! is resent; and the checks in `check.rs` run. Any failed check stops the
//! run with exit status 1 and keeps the directory for inspection.
#![forbid(unsafe_code)]

mod check;
mod load;

use std::{
    fs::OpenOptions,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use crossflow_api::rng::SplitMix64;
use crossflow_gateway::{demo::DEMO_BODY, testbed::Testbed};
use crossflow_ledger::Verifier;
use crossflow_proto::v1::GetLogKeyRequest;

use crate::load::{Book, Clients, PARTNERS, Run, Seen};

/// Any error, propagated to `main`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FEDERATION: &str = "crossflow.example";
/// Operator name; its certificate is `pki/operator-crash.crt`.
const OPERATOR: &str = "crash";
/// Checkpoints every 200 ms, so a cycle sees several before the kill.
const LEDGER: &str = "\n[ledger]\ncheckpoint_interval_ms = 200\n";

/// Kill the real `crossflow serve` at random moments under load and check
/// what survives.
#[derive(Debug, Parser)]
#[command(name = "crossflow-crash", about)]
struct Cli {
    /// The crossflow binary (default: `crossflow` next to this program).
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Kill/restart cycles.
    #[arg(long, default_value_t = 5)]
    cycles: u32,
    /// Concurrent partner stories.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// The kill comes uniformly between these many ms after load starts.
    #[arg(long, default_value_t = 300)]
    kill_min_ms: u64,
    #[arg(long, default_value_t = 2500)]
    kill_max_ms: u64,
    /// Self-test of the checks: after the first kill, delete a row the gateway
    /// acknowledged (`landing`: the newest landing; `ledger`: the newest
    /// ledger entry) before restarting. The run must then fail.
    #[arg(long, value_enum)]
    tamper: Option<Tamper>,
    /// Federation directory (default: a temporary one, removed on success).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Tamper {
    Landing,
    Ledger,
}

/// Deletes the row of the newest acknowledged write of a kind while the
/// gateway is down (`--tamper`).
fn tamper(db: &Path, book: &Mutex<Book>, what: Tamper) -> Result<(), BoxError> {
    use crate::load::Answer;
    let book = book_lock(book)?;
    let c = rusqlite::Connection::open(db)?;
    let n = match what {
        Tamper::Landing => {
            let id = book
                .acked
                .iter()
                .rev()
                .find_map(|a| match &a.answer {
                    Answer::Redeem(r) => r.referral.as_ref().map(|r| r.referral_id.clone()),
                    _ => None,
                })
                .ok_or("no acknowledged redemption to delete")?;
            c.execute(
                "DELETE FROM landings WHERE referral_id = ?1",
                [hex::decode(&id)?],
            )?
        }
        Tamper::Ledger => {
            let idx = book
                .acked
                .iter()
                .rev()
                .find_map(|a| match &a.answer {
                    Answer::Report(r) => r.entry.as_ref().map(|e| e.index),
                    _ => None,
                })
                .ok_or("no acknowledged report to delete")?;
            c.execute(
                "DELETE FROM ledger_entries WHERE idx = ?1",
                [i64::try_from(idx)?],
            )?
        }
    };
    println!("  --tamper {what:?}: deleted {n} acknowledged row(s) before the restart");
    Ok(())
}

/// A running `crossflow serve`.
struct Gateway {
    child: Child,
}

// === impl Gateway ===

impl Gateway {
    /// Starts `bin serve` and waits until it answers over mTLS.
    async fn start(bin: &Path, bed: &Testbed, addr: SocketAddr) -> Result<Gateway, BoxError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(bed.dir.join("serve.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(bed.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut gw = Gateway { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = gw.child.try_wait()? {
                return Err(format!(
                    "crossflow serve exited with {status} (see {})",
                    bed.dir.join("serve.log").display()
                )
                .into());
            }
            if let Ok(ch) = bed.channel(addr, PARTNERS[0]).await {
                let mut l =
                    crossflow_proto::v1::ledger_service_client::LedgerServiceClient::new(ch);
                if l.get_log_key(GetLogKeyRequest {}).await.is_ok() {
                    return Ok(gw);
                }
            }
            if Instant::now() > deadline {
                gw.kill()?;
                return Err("crossflow serve did not answer within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Totals {
    acked: u64,
    lost: u64,
    retried: u64,
    replayed: u64,
    resent: u64,
    checks: u64,
    proven: u64,
    recovery: Vec<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn run(cli: Cli) -> Result<bool, BoxError> {
    let bin = match cli.bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or("this program has no directory")?
            .join("crossflow"),
    };
    if !bin.is_file() {
        return Err(format!("{} not found (build it, or pass --bin)", bin.display()).into());
    }
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let (dir, tmp) = match cli.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("crossflow-crash-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let body = format!("{DEMO_BODY}{LEDGER}");
    let bed = Testbed::create(
        Some(&dir),
        FEDERATION,
        &addr.to_string(),
        &PARTNERS,
        &[OPERATOR],
        &body,
    )?;
    let config = bed.config_path();
    let db = dir.join("data").join("crossflow.db");
    let operator = format!("operator-{OPERATOR}");
    println!(
        "crossflow-crash: seed {seed}, {} cycles, {} workers, kill {}..{} ms into each cycle",
        cli.cycles, cli.workers, cli.kill_min_ms, cli.kill_max_ms
    );
    println!(
        "  gateway {} on {addr}, federation in {}",
        bin.display(),
        dir.display()
    );

    let rng = SplitMix64::new(seed);
    let mut gw = Gateway::start(&bin, &bed, addr).await?;
    let clients = Clients::connect(&bed, addr, &operator).await?;
    let key = clients
        .operator
        .clone()
        .get_log_key(GetLogKeyRequest {})
        .await?
        .into_inner();
    let verifier = Verifier::parse(&key.verifier_key)?;
    let book = Arc::new(Mutex::new(Book::default()));
    let mut history: Vec<Seen> = Vec::new();
    let mut totals = Totals::default();
    let started = Instant::now();
    let mut ok = true;

    for cycle in 1..=cli.cycles {
        let t0 = Instant::now();
        let clients = Clients::connect(&bed, addr, &operator).await?;
        let killed = Arc::new(AtomicBool::new(false));
        let run = Run {
            clients: clients.clone(),
            killed: killed.clone(),
            book: book.clone(),
            cycle,
        };
        let mut workers = Vec::new();
        for w in 0..cli.workers.max(1) {
            workers.push(tokio::spawn(
                run.clone().worker(w, rng.fork(u64::from(cycle), w as u64)),
            ));
        }
        let watcher = tokio::spawn(load::watch_checkpoints(
            clients.operator.clone(),
            killed.clone(),
        ));
        let mut crng = rng.fork(u64::from(cycle), u64::MAX);
        let delay = crng.between(cli.kill_min_ms, cli.kill_max_ms.max(cli.kill_min_ms));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
        gw.kill()?;
        for w in workers {
            w.await?;
        }
        let seen = watcher.await?;
        drop(clients);
        if cycle == 1
            && let Some(t) = cli.tamper
        {
            tamper(&db, &book, t)?;
        }

        let t_restart = Instant::now();
        gw = Gateway::start(&bin, &bed, addr).await?;
        let recovery = t_restart.elapsed();
        let clients = Clients::connect(&bed, addr, &operator).await?;

        let mut book = std::mem::take(&mut *book.lock().map_err(|_| "book poisoned")?);
        let acked = book.acked.iter().filter(|a| a.cycle == cycle).count() as u64;
        let lost = book.lost.len() as u64;
        let ctx = check::Ctx {
            clients: &clients,
            config: &config,
            db: &db,
            bin: &bin,
            verifier: &verifier,
            origin: &key.origin,
        };
        let mut rep = check::Report::default();
        for u in std::mem::take(&mut book.unexpected) {
            rep.checks += 1;
            rep.failures.push(format!("error before the kill: {u}"));
        }
        check::retry_lost(&ctx, &mut book, cycle, &mut rep).await;
        check::resend_acked(&ctx, &book, &mut crng, &mut rep).await;
        let mut proven_against = history.clone();
        proven_against.extend(seen.iter().cloned());
        let latest = check::checkpoints(&ctx, &book, &proven_against, &mut rep).await?;
        check::ledger(&ctx, &book, &mut rep).await?;
        check::read_back(&ctx, &book, cycle, &mut crng, &mut rep).await?;
        check::sqlite(&ctx, &book, &mut rep)?;
        check::fsck(&ctx, &mut rep)?;
        // Later cycles prove against the newest checkpoint before each
        // crash and the first one after each restart.
        history.extend(seen.last().cloned());
        history.extend(latest);
        *book_lock(&run.book)? = book;

        let kinds = kinds(&run.book, cycle)?;
        println!(
            "cycle {cycle:>3}: killed at {delay:>4} ms; acked {acked:>4} ({kinds}); in flight lost {lost:>2}, retried {} ({} already durable); resent {}; checkpoints proven {}; ledger {} entries; {} checks, {} failed; restart {:.0} ms; cycle {:.1} s",
            rep.retried,
            rep.replayed,
            rep.resent,
            rep.checkpoints_proven,
            rep.ledger_size,
            rep.checks,
            rep.failures.len(),
            recovery.as_secs_f64() * 1000.0,
            t0.elapsed().as_secs_f64()
        );
        totals.acked += acked;
        totals.lost += lost;
        totals.retried += rep.retried;
        totals.replayed += rep.replayed;
        totals.resent += rep.resent;
        totals.checks += rep.checks;
        totals.proven += rep.checkpoints_proven;
        totals.recovery.push(recovery);
        if !rep.failures.is_empty() {
            for f in &rep.failures {
                println!("  FAILED: {f}");
            }
            ok = false;
            break;
        }
    }
    gw.kill()?;

    let book = book_lock(&book)?;
    let mut rec = totals.recovery.clone();
    rec.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!();
    println!(
        "total: {} cycles in {:.1} s; {} writes acknowledged ({} on first try, {} only on a retry after the crash); {} in flight lost and all retried: {} ({} reports/updates among them were already durable); {} acknowledged writes resent; {} pre-crash checkpoints proven consistent; {} checks, {}",
        totals.recovery.len(),
        started.elapsed().as_secs_f64(),
        book.acked.len(),
        totals.acked,
        totals.retried,
        totals.lost,
        if totals.lost == totals.retried {
            "yes"
        } else {
            "no"
        },
        totals.replayed,
        totals.resent,
        totals.proven,
        totals.checks,
        if ok { "all passed" } else { "FAILURES above" },
    );
    println!(
        "restart to first answer: median {:.0} ms, max {:.0} ms",
        ms(rec.get(rec.len() / 2)),
        ms(rec.last())
    );
    if !ok && let Some(t) = tmp {
        let kept = t.keep();
        println!("kept {} for inspection", kept.display());
    }
    Ok(ok)
}

fn book_lock(book: &Mutex<Book>) -> Result<std::sync::MutexGuard<'_, Book>, BoxError> {
    book.lock().map_err(|_| "book poisoned".into())
}

/// "create N, redeem N, ..." for one cycle's acknowledged writes.
fn kinds(book: &Mutex<Book>, cycle: u32) -> Result<String, BoxError> {
    let book = book_lock(book)?;
    let mut out = Vec::new();
    for kind in ["create", "redeem", "publish", "report", "update"] {
        let n = book
            .acked
            .iter()
            .filter(|a| a.cycle == cycle && !a.retried && a.op.kind() == kind)
            .count();
        out.push(format!("{kind} {n}"));
    }
    Ok(out.join(", "))
}
