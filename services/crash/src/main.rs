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
//!
//! With `--replicas N` (N ≥ 2) it runs N replicas on one fresh PostgreSQL
//! database instead; requests spread over them, each cycle SIGKILLs one at
//! random while the load goes on at the others (or, in one cycle, restarts
//! PostgreSQL itself), checks that the survivors checkpoint every
//! acknowledged entry (a new leader takes over when the leader was the one
//! killed), restarts the killed one and runs the same checks against the
//! shared database.
#![forbid(unsafe_code)]

mod check;
mod fleet;
mod load;
mod storage;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use crossflow_api::rng::SplitMix64;
use crossflow_gateway::{demo::DEMO_BODY, testbed::Testbed};
use crossflow_ledger::Verifier;
use crossflow_proto::v1::{GetCheckpointRequest, GetLogKeyRequest};

use crate::{
    fleet::Fleet,
    load::{Book, Clients, PARTNERS, Run, Seen},
    storage::Storage,
};

/// Any error, propagated to `main`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FEDERATION: &str = "crossflow.example";
/// Operator name; its certificate is `pki/operator-crash.crt`.
const OPERATOR: &str = "crash";
/// Checkpoints every 200 ms, so a cycle sees several before the kill.
const LEDGER: &str = "\n[ledger]\ncheckpoint_interval_ms = 200\n";

/// Environment defaults of `--postgres-url` and `--postgres-restart-cmd`.
const POSTGRES_URL_ENV: &str = crossflow_store::testing::POSTGRES_URL_ENV;
const POSTGRES_RESTART_ENV: &str = "CROSSFLOW_TEST_POSTGRES_RESTART";
/// How long after a kill the survivors must have checkpointed every
/// acknowledged entry (the bound of the checkpoint check after a restart).
const COVER_WITHIN: Duration = Duration::from_secs(30);

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
    /// Gateway replicas. 1: the single gateway on SQLite. 2 or more:
    /// replicas on one PostgreSQL database (see `--postgres-url`), one of
    /// them SIGKILLed at random each cycle while the others carry the load.
    #[arg(long, default_value_t = 1, value_name = "N")]
    replicas: usize,
    /// Admin URL of the PostgreSQL server the replicas' fresh database
    /// `crossflow_crash_<seed>` is made on (default: $CROSSFLOW_TEST_POSTGRES_URL).
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// The cycle in which PostgreSQL itself is restarted (with
    /// `--postgres-restart-cmd`) instead of a replica being killed.
    #[arg(long, value_name = "K")]
    restart_postgres_cycle: Option<u32>,
    /// Shell command that restarts the PostgreSQL server, run with `sh -c`
    /// (default: $CROSSFLOW_TEST_POSTGRES_RESTART). Without one the
    /// PostgreSQL cycle kills a replica like the others.
    #[arg(long, value_name = "CMD")]
    postgres_restart_cmd: Option<String>,
    /// With replicas: how long the load goes on at the survivors after the
    /// kill (or after PostgreSQL is back), before it ends and the killed
    /// replica is restarted.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    load_after_kill_ms: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Tamper {
    Landing,
    Ledger,
}

/// Deletes the row of the newest acknowledged write of a kind while the
/// gateway is down (`--tamper`); the same SQL on SQLite and PostgreSQL.
async fn tamper(storage: &Storage, book: &Mutex<Book>, what: Tamper) -> Result<(), BoxError> {
    use crate::load::Answer;
    let n = match what {
        Tamper::Landing => {
            let id = book_lock(book)?
                .acked
                .iter()
                .rev()
                .find_map(|a| match &a.answer {
                    Answer::Redeem(r) => r.referral.as_ref().map(|r| r.referral_id.clone()),
                    _ => None,
                })
                .ok_or("no acknowledged redemption to delete")?;
            let id = hex::decode(&id)?;
            storage
                .write(move |c| {
                    c.execute(
                        "DELETE FROM landings WHERE referral_id = ?1",
                        crossflow_store::values![&id],
                    )
                })
                .await?
        }
        Tamper::Ledger => {
            let idx = book_lock(book)?
                .acked
                .iter()
                .rev()
                .find_map(|a| match &a.answer {
                    Answer::Report(r) => r.entry.as_ref().map(|e| e.index),
                    _ => None,
                })
                .ok_or("no acknowledged report to delete")?;
            let idx = i64::try_from(idx)?;
            storage
                .write(move |c| {
                    c.execute(
                        "DELETE FROM ledger_entries WHERE idx = ?1",
                        crossflow_store::values![idx],
                    )
                })
                .await?
        }
    };
    println!("  --tamper {what:?}: deleted {n} acknowledged row(s) before the restart");
    Ok(())
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
    /// With replicas: writes refused with STORE_UNAVAILABLE, and retried.
    refused: u64,
    refused_retried: u64,
    refused_replayed: u64,
    kills: u64,
    /// Time from a kill of the leader to a survivor's "leads" line.
    failovers: Vec<Duration>,
    /// Time from the end of a cycle's load to a checkpoint covering every
    /// acknowledged entry at the survivors.
    covered: Vec<Duration>,
    postgres_restarts: u64,
    /// Cycles whose figures are counted (the last one may have failed).
    cycles: u32,
}

/// What the database of a replica run is.
#[derive(Debug)]
struct Pg {
    admin: String,
    name: String,
    url: String,
    restart_cmd: Option<String>,
    restart_cycle: Option<u32>,
}

/// What happened at a cycle's random moment, with replicas.
#[derive(Debug, Default)]
struct Event {
    /// The replica killed, or `None` when PostgreSQL was restarted.
    killed: Option<usize>,
    /// Whether the killed replica led the ledger at the kill.
    killed_leader: bool,
    /// The replicas that led before the event (by their logs).
    leaders_before: Vec<usize>,
    /// How long the PostgreSQL restart command took.
    command: Option<Duration>,
    /// The replica that won the lead after the event, and when.
    led: Option<(usize, Duration)>,
    /// How long after the end of the load a checkpoint at the survivors
    /// covered every acknowledged entry.
    covered: Option<Duration>,
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

/// The database settings of a run with `--replicas` ≥ 2 (`None` for the
/// single gateway), with a fresh database made for it.
fn postgres(cli: &Cli, seed: u64) -> Result<Option<Pg>, BoxError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cli.replicas < 2 {
        if cli.postgres_url.is_some() || cli.restart_postgres_cycle.is_some() {
            return Err(
                "--postgres-url and --restart-postgres-cycle need --replicas 2 or more".into(),
            );
        }
        return Ok(None);
    }
    let admin = cli
        .postgres_url
        .clone()
        .or_else(|| env(POSTGRES_URL_ENV))
        .ok_or_else(|| {
            format!(
                "--replicas {} needs a PostgreSQL server: pass --postgres-url or set {POSTGRES_URL_ENV}",
                cli.replicas
            )
        })?;
    let name = fleet::database_name(seed);
    let url = fleet::fresh_database(&admin, &name)?;
    Ok(Some(Pg {
        admin,
        name,
        url,
        restart_cmd: cli
            .postgres_restart_cmd
            .clone()
            .or_else(|| env(POSTGRES_RESTART_ENV)),
        restart_cycle: cli.restart_postgres_cycle,
    }))
}

async fn run(cli: Cli) -> Result<bool, BoxError> {
    let bin = match &cli.bin {
        Some(b) => b.clone(),
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
    let pg = postgres(&cli, seed)?;
    let (dir, tmp) = match &cli.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("crossflow-crash-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let addrs: Vec<SocketAddr> = if pg.is_some() {
        fleet::free_addrs(cli.replicas)?
    } else {
        vec![format!("127.0.0.1:{}", free_port()?).parse()?]
    };
    let addr = addrs[0];
    let body = match &pg {
        None => format!("{DEMO_BODY}{LEDGER}"),
        Some(pg) => format!("{}{DEMO_BODY}{LEDGER}", fleet::store_toml(&pg.url)),
    };
    let bed = Testbed::create(
        Some(&dir),
        FEDERATION,
        &addr.to_string(),
        &PARTNERS,
        &[OPERATOR],
        &body,
    )?;
    let config = bed.config_path();
    let operator = format!("operator-{OPERATOR}");
    println!(
        "crossflow-crash: seed {seed}, {} cycles, {} workers, kill {}..{} ms into each cycle",
        cli.cycles, cli.workers, cli.kill_min_ms, cli.kill_max_ms
    );
    match &pg {
        None => println!(
            "  gateway {} on {addr}, federation in {}",
            bin.display(),
            dir.display()
        ),
        Some(pg) => {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            println!(
                "  {} replicas of {} on {}, federation in {}",
                addrs.len(),
                bin.display(),
                list.join(", "),
                dir.display()
            );
            println!(
                "  PostgreSQL database {}; the load goes on {} ms after each kill",
                pg.name, cli.load_after_kill_ms
            );
            match (pg.restart_cycle, &pg.restart_cmd) {
                (Some(k), Some(cmd)) => {
                    println!(
                        "  cycle {k} restarts PostgreSQL (`{cmd}`) instead of killing a replica"
                    );
                }
                (Some(k), None) => println!(
                    "  note: no --postgres-restart-cmd (nor {POSTGRES_RESTART_ENV}): PostgreSQL is not restarted, cycle {k} kills a replica like the others"
                ),
                (None, _) => {}
            }
        }
    }

    let rng = SplitMix64::new(seed);
    let mut fleet = Fleet::lay_out(&bin, &bed, &addrs)?;
    for i in 0..fleet.count() {
        fleet.start(i, &bed).await?;
    }
    let storage = match &pg {
        None => Storage::sqlite(&dir),
        Some(pg) => Storage::postgres(&pg.url)?,
    };
    let clients = Clients::connect(&bed, &addrs, &operator, rng.fork(0, u64::MAX - 1)).await?;
    let key = clients
        .at(0)
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
    let shared = pg.is_some();
    let n = fleet.count();

    for cycle in 1..=cli.cycles {
        let t0 = Instant::now();
        let clients = Clients::connect(
            &bed,
            &addrs,
            &operator,
            rng.fork(u64::from(cycle), u64::MAX - 1),
        )
        .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            clients: clients.clone(),
            stop: stop.clone(),
            book: book.clone(),
            cycle,
            refusals: shared,
        };
        let mut workers = Vec::new();
        for w in 0..cli.workers.max(1) {
            workers.push(tokio::spawn(
                run.clone().worker(w, rng.fork(u64::from(cycle), w as u64)),
            ));
        }
        let watcher = tokio::spawn(load::watch_checkpoints(clients.clone(), stop.clone()));
        let mut crng = rng.fork(u64::from(cycle), u64::MAX);
        let delay = crng.between(cli.kill_min_ms, cli.kill_max_ms.max(cli.kill_min_ms));
        // Drawn only with replicas, so the single gateway's choices stay
        // what they were.
        let restart_postgres = pg
            .as_ref()
            .is_some_and(|pg| pg.restart_cycle == Some(cycle) && pg.restart_cmd.is_some());
        let victim = if shared && !restart_postgres {
            Some(crng.below(n))
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let mut event = Event::default();
        let mut rep = check::Report::default();
        let after = Duration::from_millis(cli.load_after_kill_ms);
        let t_event = Instant::now();
        let wins = fleet.wins();
        if !shared {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            clients.set_down(0);
            fleet.kill(0)?;
        } else if let Some(k) = victim {
            event.leaders_before = fleet.leaders();
            event.killed = Some(k);
            event.killed_leader = event.leaders_before.contains(&k);
            clients.set_down(k);
            fleet.kill(k)?;
            watch_lead(&fleet, &wins, t_event, t_event + after, &mut event.led).await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        } else if let Some(cmd) = pg.as_ref().and_then(|pg| pg.restart_cmd.clone()) {
            event.leaders_before = fleet.leaders();
            let restart = tokio::spawn(fleet::run_command(cmd, dir.join("postgres-restart.log")));
            while !restart.is_finished() {
                watch_lead(
                    &fleet,
                    &wins,
                    t_event,
                    Instant::now() + Duration::from_millis(50),
                    &mut event.led,
                )
                .await;
            }
            event.command = Some(restart.await??);
            watch_lead(
                &fleet,
                &wins,
                t_event,
                Instant::now() + after,
                &mut event.led,
            )
            .await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        for w in workers {
            w.await?;
        }
        let seen = watcher.await?;
        // Every answer is in: what is acknowledged now must be checkpointed.
        let load_ended = Instant::now();
        if shared {
            // The survivors (all replicas, after a PostgreSQL restart) must
            // sign a checkpoint covering every acknowledged entry; a kill of
            // the leader or a restart of the database must bring a new lead.
            let expect_lead = event.killed_leader || event.killed.is_none();
            let (covered, need, got) = await_coverage(
                &run.clients,
                &storage,
                &book,
                &fleet,
                &wins,
                (t_event, load_ended),
                expect_lead,
                &mut event.led,
            )
            .await?;
            event.covered = covered;
            let what = match event.killed {
                Some(k) if event.killed_leader => format!("the kill of replica {k} (the leader)"),
                Some(k) => format!("the kill of replica {k}"),
                None => "the PostgreSQL restart".to_owned(),
            };
            rep.checks += 1;
            if covered.is_none() {
                rep.failures.push(format!(
                    "{} s after {what} the newest checkpoint at the replicas up covers {got} entries, but {need} are stored or acknowledged",
                    COVER_WITHIN.as_secs()
                ));
            }
            if expect_lead {
                rep.checks += 1;
                if event.led.is_none() {
                    rep.failures.push(format!(
                        "no replica took the ledger's lead within {} s of {what} (logs: {})",
                        COVER_WITHIN.as_secs(),
                        log_names(&fleet)
                    ));
                }
            }
        }
        drop(clients);
        if cycle == 1
            && let Some(t) = cli.tamper
        {
            tamper(&storage, &book, t).await?;
        }

        let recovery = match (shared, event.killed) {
            (false, _) => {
                let t_restart = Instant::now();
                fleet.start(0, &bed).await?;
                Some(t_restart.elapsed())
            }
            (true, Some(k)) => {
                let t_restart = Instant::now();
                fleet.start(k, &bed).await?;
                Some(t_restart.elapsed())
            }
            (true, None) => None,
        };
        let clients = Clients::connect(
            &bed,
            &addrs,
            &operator,
            rng.fork(u64::from(cycle), u64::MAX - 2),
        )
        .await?;
        let home = if shared { crng.below(n) } else { 0 };

        let mut book = std::mem::take(&mut *book.lock().map_err(|_| "book poisoned")?);
        let acked = book.acked.iter().filter(|a| a.cycle == cycle).count() as u64;
        let lost = book.lost.len() as u64;
        let refused = book.refused.len() as u64;
        let ctx = check::Ctx {
            clients: &clients,
            home,
            config: &config,
            storage: &storage,
            bin: &bin,
            verifier: &verifier,
            origin: &key.origin,
        };
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
        check::stored(&ctx, &book, &mut rep).await?;
        check::fsck(&ctx, &mut rep)?;
        if shared {
            let leaders = fleet.leaders();
            rep.checks += 1;
            if leaders.len() != 1 {
                rep.failures.push(format!(
                    "after the checks {} replicas say they lead the ledger ({leaders:?}; logs: {})",
                    leaders.len(),
                    log_names(&fleet)
                ));
            }
        }
        // Later cycles prove against the newest checkpoint before each
        // crash and the first one after each restart.
        history.extend(seen.iter().max_by_key(|s| s.size).cloned());
        history.extend(latest);
        *book_lock(&run.book)? = book;

        let kinds = kinds(&run.book, cycle)?;
        if shared {
            println!(
                "cycle {cycle:>3}: {}; acked {acked:>4} ({kinds}); in flight lost {lost:>2}, retried {} ({} already durable); refused {refused} (STORE_UNAVAILABLE), retried {} ({} written after all); resent {}; checkpoints proven {}; ledger {} entries; {} checks, {} failed; restart {}; cycle {:.1} s",
                describe(&event, delay),
                rep.retried,
                rep.replayed,
                rep.refused_retried,
                rep.refused_replayed,
                rep.resent,
                rep.checkpoints_proven,
                rep.ledger_size,
                rep.checks,
                rep.failures.len(),
                recovery.map_or("-".to_owned(), |d| format!(
                    "{:.0} ms",
                    d.as_secs_f64() * 1000.0
                )),
                t0.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "cycle {cycle:>3}: killed at {delay:>4} ms; acked {acked:>4} ({kinds}); in flight lost {lost:>2}, retried {} ({} already durable); resent {}; checkpoints proven {}; ledger {} entries; {} checks, {} failed; restart {:.0} ms; cycle {:.1} s",
                rep.retried,
                rep.replayed,
                rep.resent,
                rep.checkpoints_proven,
                rep.ledger_size,
                rep.checks,
                rep.failures.len(),
                recovery.unwrap_or_default().as_secs_f64() * 1000.0,
                t0.elapsed().as_secs_f64()
            );
        }
        totals.cycles += 1;
        totals.acked += acked;
        totals.lost += lost;
        totals.retried += rep.retried;
        totals.replayed += rep.replayed;
        totals.resent += rep.resent;
        totals.checks += rep.checks;
        totals.proven += rep.checkpoints_proven;
        totals.recovery.extend(recovery);
        totals.refused += refused;
        totals.refused_retried += rep.refused_retried;
        totals.refused_replayed += rep.refused_replayed;
        if shared {
            match event.killed {
                Some(_) => totals.kills += 1,
                None => totals.postgres_restarts += 1,
            }
            if event.killed_leader
                && let Some((_, d)) = event.led
            {
                totals.failovers.push(d);
            }
            totals.covered.extend(event.covered);
        }
        if !rep.failures.is_empty() {
            for f in &rep.failures {
                println!("  FAILED: {f}");
            }
            ok = false;
            break;
        }
    }
    fleet.kill_all()?;

    let book = book_lock(&book)?;
    let mut rec = totals.recovery.clone();
    rec.sort();
    println!();
    println!(
        "total: {} cycles in {:.1} s; {} writes acknowledged ({} on first try, {} only on a retry after the crash); {} in flight lost and all retried: {} ({} reports/updates among them were already durable); {} acknowledged writes resent; {} pre-crash checkpoints proven consistent; {} checks, {}",
        totals.cycles,
        started.elapsed().as_secs_f64(),
        book.acked.len(),
        totals.acked,
        totals.retried + totals.refused_retried,
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
        ms(median(&rec)),
        ms(rec.last())
    );
    if shared {
        let mut failovers = totals.failovers.clone();
        failovers.sort();
        let mut covered = totals.covered.clone();
        covered.sort();
        println!(
            "replicas: {n} on PostgreSQL; {} SIGKILLs of a replica ({} of the leader: a survivor led after median {:.2} s, max {:.2} s), {} PostgreSQL restart(s); every acknowledged entry checkpointed by the replicas up median {:.2} s, max {:.2} s after the load ended; {} writes refused with STORE_UNAVAILABLE and all retried: {} ({} were written after all)",
            totals.kills,
            failovers.len(),
            secs(median(&failovers)),
            secs(failovers.last()),
            totals.postgres_restarts,
            secs(median(&covered)),
            secs(covered.last()),
            totals.refused,
            if totals.refused == totals.refused_retried {
                "yes"
            } else {
                "no"
            },
            totals.refused_replayed,
        );
    }
    drop(book);
    if let Some(pg) = &pg {
        storage.close();
        drop(storage);
        if ok {
            fleet::drop_database(&pg.admin, &pg.name)?;
        } else {
            println!("kept database {} for inspection", pg.name);
        }
    }
    if !ok && let Some(t) = tmp {
        let kept = t.keep();
        println!("kept {} for inspection", kept.display());
    }
    Ok(ok)
}

fn ms(d: Option<&Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn secs(d: Option<&Duration>) -> f64 {
    d.map_or(0.0, Duration::as_secs_f64)
}

/// The median of sorted `v` (the upper one of an even count).
fn median(v: &[Duration]) -> Option<&Duration> {
    v.get(v.len() / 2)
}

/// What a replica cycle's event was, for its line.
fn describe(e: &Event, delay: u64) -> String {
    let led = match e.led {
        Some((i, d)) => format!(", replica {i} led after {:.2} s", d.as_secs_f64()),
        None => String::new(),
    };
    let covered = match e.covered {
        Some(d) => format!(
            ", every acknowledged entry checkpointed {:.2} s after the load",
            d.as_secs_f64()
        ),
        None => ", acknowledged entries NOT checkpointed".to_owned(),
    };
    match e.killed {
        Some(k) => format!(
            "killed replica {k} ({}) at {delay:>4} ms{led}{covered}",
            if e.killed_leader {
                "the leader"
            } else if e.leaders_before.is_empty() {
                "no replica led"
            } else {
                "a follower"
            }
        ),
        None => format!(
            "restarted PostgreSQL at {delay:>4} ms (command {:.2} s; leader before: {}){led}{covered}",
            e.command.map_or(0.0, |d| d.as_secs_f64()),
            if e.leaders_before.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", e.leaders_before)
            }
        ),
    }
}

/// Where the replicas' logs are, for failures about the lead.
fn log_names(fleet: &Fleet) -> String {
    let names: Vec<String> = fleet
        .replicas
        .iter()
        .map(|r| r.log.display().to_string())
        .collect();
    names.join(", ")
}

/// Reads the replicas' logs until `until` (every 50 ms) for a replica that
/// has won the lead since `wins` was taken; notes the first, and when
/// (since `t0`).
async fn watch_lead(
    fleet: &Fleet,
    wins: &[usize],
    t0: Instant,
    until: Instant,
    led: &mut Option<(usize, Duration)>,
) {
    loop {
        if led.is_none()
            && let Some(i) = fleet
                .wins()
                .iter()
                .zip(wins)
                .position(|(now, before)| now > before)
        {
            *led = Some((i, t0.elapsed()));
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
    }
}

/// Waits (until [`COVER_WITHIN`] after `t0`, the event) for a checkpoint at
/// the replicas up that covers every acknowledged and every stored entry,
/// and, if `expect_lead`, for a new lead. How long after `ended` (the end of
/// the load) it came, and (needed, newest size).
#[allow(clippy::too_many_arguments)]
async fn await_coverage(
    clients: &Clients,
    storage: &Storage,
    book: &Mutex<Book>,
    fleet: &Fleet,
    wins: &[usize],
    (t0, ended): (Instant, Instant),
    expect_lead: bool,
    led: &mut Option<(usize, Duration)>,
) -> Result<(Option<Duration>, u64, u64), BoxError> {
    let acked = book_lock(book)?
        .acked
        .iter()
        .filter_map(|a| match &a.answer {
            load::Answer::Report(r) => r.entry.as_ref(),
            load::Answer::Update(r) => r.entry.as_ref(),
            _ => None,
        })
        .map(|e| e.index + 1)
        .max()
        .unwrap_or(0);
    let need = acked.max(check::stored_entries(storage).await?);
    let deadline = t0 + COVER_WITHIN;
    let mut covered = None;
    let mut got = 0;
    loop {
        watch_lead(fleet, wins, t0, Instant::now(), led).await;
        if covered.is_none() {
            let mut ops = clients.any().operator.clone();
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                ops.get_checkpoint(GetCheckpointRequest {}),
            )
            .await
            {
                let size = c.into_inner().checkpoint.map_or(0, |c| c.size);
                got = got.max(size);
                if size >= need {
                    covered = Some(ended.elapsed());
                }
            }
        }
        if (covered.is_some() && (led.is_some() || !expect_lead)) || Instant::now() > deadline {
            return Ok((covered, need, got));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
