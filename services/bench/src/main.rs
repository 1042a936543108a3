//! `crossflow-bench`: how close the gateway comes to bare tonic.
//!
//! In one process it starts a bare tonic echo service and the real gateway
//! (`crossflow_gateway::server::start` on a fresh testbed of the demo
//! federation), both on 127.0.0.1:0 behind the same mTLS, drives each
//! scenario with the same closed-loop client concurrency over the same number
//! of HTTP/2 connections, and prints requests/s, p50/p99 latency and the
//! ratio to the baseline against the targets.
//!
//! Servers and client get separate runtimes (like two processes), but they
//! share this machine's cores: see docs/BENCHMARKS.md.
//!
//! With `--replicas 1,2,3` (and a PostgreSQL server: `--postgres-url`), the
//! same run also drives every gateway scenario against 1, 2 and 3 gateway
//! replicas on PostgreSQL, beside the SQLite gateway (see `replicas`); with
//! `--ledger` it adds the ledger's PostgreSQL variant. Without either flag
//! nothing touches PostgreSQL.
#![forbid(unsafe_code)]

mod conversions;
mod cpu;
mod echo;
mod ledger;
mod load;
mod mixed;
mod pg;
mod quota;
mod replicas;
mod report;
mod scenario;
mod tags;
mod transport;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use crossflow_gateway::{demo::DEMO_BODY, server, testbed::Testbed};
use crossflow_proto::v1::referral_service_client::ReferralServiceClient;
use prost::Message as _;
use tokio::runtime::Runtime;

use crate::{
    load::{Plan, Stop},
    replicas::Deployment,
    report::Row,
    scenario::{DESTINATION, Env, ORIGIN, SPECS},
};

/// The same allocator as the `crossflow` binary, so the figures are the
/// gateway's as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Any error, propagated to `main`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The benchmark's own echo service.
pub mod pb {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("crossflow.bench.v1");
}

/// Federation name of the benchmark's testbed.
const FEDERATION: &str = "crossflow.example";
/// Partners of the demo federation.
const PARTNERS: &[&str] = &[ORIGIN, DESTINATION, "beauty-live"];

/// Load-test the crossflow gateway against a bare tonic echo with the same
/// mTLS, on 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "crossflow-bench", about)]
struct Cli {
    /// Scenarios to run, in the order given (default: all). See --list.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Partners and agreements (TOML, everything after `[gateway]`) to bench
    /// instead of the demo federation's; mombaby-live must be allowed to
    /// refer viewers to homedecor-live.
    #[arg(long, value_name = "FILE")]
    body: Option<std::path::PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Measured time per scenario, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Measure exactly this many requests per scenario instead of a duration.
    #[arg(long, conflicts_with = "duration_secs")]
    requests: Option<u64>,
    /// Unrecorded warm-up per scenario.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Requests in flight at once (closed loop: each worker waits for its
    /// answer before sending the next).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per scenario; workers are spread over them.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Worker threads of the servers' runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Run the scenarios this many times, interleaved, and also report the
    /// median of the rounds (a shared machine is noisy).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// CI smoke run: 0.5 s warm-up and 1 s per scenario, one round.
    #[arg(long)]
    quick: bool,
    /// Run the ledger storage benchmark instead (durable append vs plain
    /// SQLite inserts, inclusion proof time at --ledger-proof-entries).
    #[arg(long)]
    ledger: bool,
    /// Entries appended per round of the ledger benchmark.
    #[arg(long, default_value_t = 300_000)]
    ledger_entries: u64,
    /// Entries per durable batch (one commit) in the ledger benchmark.
    #[arg(long, default_value_t = 1000)]
    ledger_batch: usize,
    /// Size of the log built to time inclusion proofs (0: skip).
    #[arg(long, default_value_t = 10_000_000)]
    ledger_proof_entries: u64,
    /// Run the quota benchmark instead: the quota layer's cost (quotas on vs
    /// off, --rounds interleaved, --duration-secs each) and isolation (one
    /// partner flooding at 10x its rate while another sends at half of it).
    #[arg(long)]
    quota: bool,
    /// Rate quota (requests/s) of each partner in the isolation run.
    #[arg(long, default_value_t = 200)]
    quota_rate: u32,
    /// Run the mixed load profile instead: many partners, a weighted mix of
    /// the partner RPCs (see services/bench/src/mixed.rs), against the echo
    /// baseline in the same run.
    #[arg(long)]
    mixed: bool,
    /// Partners of the mixed profile's federation (at least 3).
    #[arg(long, default_value_t = 12)]
    mixed_partners: usize,
    /// Directory for the ledger benchmark's temporary stores.
    #[arg(long)]
    ledger_dir: Option<std::path::PathBuf>,
    /// Admin URL of a PostgreSQL server for `--replicas` and the ledger's
    /// PostgreSQL variant (default: $CROSSFLOW_TEST_POSTGRES_URL); the
    /// benchmark creates databases `crossflow_bench_*` on it. Giving it asks
    /// for the PostgreSQL runs (with --replicas 1,2,3 unless set); the
    /// variable alone does not.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Also run the gateway scenarios against this many gateway replicas
    /// on PostgreSQL, each count on a fresh database, beside the SQLite
    /// gateway (e.g. 1,2,3); with --ledger, also run the ledger's
    /// PostgreSQL variant.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    replicas: Vec<usize>,
    /// Internal (the ledger benchmark runs itself with it): open the ledger
    /// in DIR as `serve` does, serve receipts, print time to ready and RSS.
    #[arg(long, hide = true, value_name = "DIR")]
    ledger_restart: Option<std::path::PathBuf>,
}

fn main() -> Result<(), BoxError> {
    crossflow_gateway::allocator::disable_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(dir) = &cli.ledger_restart {
        return ledger::restart(dir);
    }
    let postgres = postgres_url(&cli)?;
    if cli.ledger {
        return ledger::run(&ledger::Options {
            entries: cli.ledger_entries,
            batch: cli.ledger_batch.max(1),
            rounds: cli.rounds.max(1),
            proof_entries: cli.ledger_proof_entries,
            proofs: 1000,
            dir: cli.ledger_dir,
            postgres,
        });
    }
    if cli.quota {
        let server_rt = runtime("bench-server", cli.server_threads)?;
        let client_rt = runtime("bench-client", cli.client_threads)?;
        return quota::run(
            &quota::Options {
                secs: if cli.quick { 1.0 } else { cli.duration_secs },
                rounds: if cli.quick { 1 } else { cli.rounds.max(1) },
                concurrency: cli.concurrency.max(1),
                connections: cli.connections.max(1),
                rate: cli.quota_rate,
            },
            &client_rt,
            &server_rt,
        );
    }
    if cli.list {
        for s in SPECS {
            println!("{:<18} {}", s.name, s.about);
        }
        return Ok(());
    }
    let specs = if cli.scenario.is_empty() {
        SPECS.iter().collect::<Vec<_>>()
    } else {
        cli.scenario
            .iter()
            .map(|n| {
                scenario::spec(n).ok_or_else(|| format!("unknown scenario {n:?} (see --list)"))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let (warmup, stop) = if cli.quick {
        (
            Duration::from_millis(500),
            Stop::After(Duration::from_secs(1)),
        )
    } else {
        let d = |s: f64, what: &str| {
            Duration::try_from_secs_f64(s).map_err(|_| format!("{what} must be ≥ 0, got {s}"))
        };
        let stop = match cli.requests {
            Some(n) => Stop::Requests(n),
            None => Stop::After(d(cli.duration_secs, "--duration-secs")?),
        };
        (d(cli.warmup_secs, "--warmup-secs")?, stop)
    };
    let plan = Plan {
        warmup,
        stop,
        concurrency: cli.concurrency.max(1),
    };

    let server_rt = runtime("bench-server", cli.server_threads)?;
    let client_rt = runtime("bench-client", cli.client_threads)?;
    if cli.mixed {
        let o = mixed::Options {
            partners: cli.mixed_partners,
            plan,
            rounds: if cli.quick { 1 } else { cli.rounds.max(1) },
            connections: cli.connections.max(1),
            server_threads: cli.server_threads,
            client_threads: cli.client_threads,
        };
        return mixed::run(&o, &client_rt, &server_rt);
    }

    let body = match &cli.body {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        None => DEMO_BODY.to_owned(),
    };
    let bed = Testbed::create(None, FEDERATION, "127.0.0.1:0", PARTNERS, &[], &body)?;
    let settings = bed.settings()?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let gateway = server_rt.block_on(server::start(settings.clone(), Some(loopback)))?;
    let tls = &settings.gateway.tls;
    let echo = server_rt.block_on(echo::EchoServer::start(echo::TlsFiles {
        ca: &tls.ca,
        cert: &tls.cert,
        key: &tls.key,
    }))?;

    let echo_sizes = client_rt.block_on(probe(&bed, gateway.addr))?;
    let connections = cli.connections.max(1);
    let mut deployments = vec![Deployment::sqlite(gateway, connections, postgres.is_some())];
    if let Some(admin) = &postgres {
        cpu::watch_postgres(pg::PREFIX);
        for &n in &replica_counts(&cli) {
            deployments.push(Deployment::postgres(
                &bed,
                admin,
                n,
                connections,
                &server_rt,
            )?);
        }
    }
    let mut env = Env {
        bed,
        gateways: deployments[0].addrs(),
        echo: echo.addr,
        connections,
        plan,
        echo_sizes,
    };
    report::header(&env, cli.server_threads, cli.client_threads);
    if let Some(admin) = &postgres {
        report::replicas_header(&deployments, &pg::host(admin), cli.server_threads);
    }
    report::header_end();

    let mut admin = match &postgres {
        Some(url) => Some(pg::admin(url)?),
        None => None,
    };
    let rounds = if cli.quick { 1 } else { cli.rounds.max(1) };
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=rounds {
        for &spec in &specs {
            // The echo baseline runs once a round; every gateway scenario
            // against each configuration in turn.
            let against = match spec.target {
                None => &deployments[..1],
                Some(_) => &deployments[..],
            };
            for d in against {
                let config = match spec.target {
                    None => replicas::Config {
                        label: String::new(),
                        ..d.config.clone()
                    },
                    Some(_) => d.config.clone(),
                };
                env.gateways = d.addrs();
                env.connections = d.config.connections;
                let built = client_rt.block_on((spec.build)(&env))?;
                // PostgreSQL's counters, once the preparation's are flushed.
                let pg_before = match (&mut admin, &d.config.database) {
                    (Some(c), Some(db)) => {
                        pg::settle();
                        Some(pg::counters(c, db)?)
                    }
                    _ => None,
                };
                let before = d.stats();
                let cpu_before = cpu::CpuTimes::sample();
                let started = Instant::now();
                let outcome = client_rt.block_on(load::drive(built.scenario, plan))?;
                let ran = started.elapsed();
                let cpu = cpu::CpuTimes::since(cpu_before, outcome.issued());
                let after = d.stats();
                let pg_used = match (&mut admin, &d.config.database, pg_before) {
                    (Some(c), Some(db), Some(before)) => {
                        pg::settle();
                        Some(pg::counters(c, db)?.since(&before))
                    }
                    _ => None,
                };
                let mut row =
                    Row::new(round, spec, config, outcome, built.note, ran, before, after);
                row.cpu = cpu;
                row.pg = pg_used;
                row.progress();
                rows.push(row);
            }
        }
    }
    report::table(&rows);

    drop(env);
    drop(admin);
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server_rt.block_on(echo.stop())?;
    for d in deployments {
        let database = d.config.database.clone();
        d.shutdown(&server_rt)?;
        if let (Some(admin), Some(db)) = (&postgres, database) {
            pg::drop_database(admin, &db)?;
        }
    }
    Ok(())
}

/// The PostgreSQL admin URL, if the run asks for PostgreSQL (`--replicas`
/// or `--postgres-url`): the flag's, else the environment's.
fn postgres_url(cli: &Cli) -> Result<Option<String>, BoxError> {
    if cli.postgres_url.is_none() && cli.replicas.is_empty() {
        return Ok(None);
    }
    if cli.replicas.contains(&0) {
        return Err("--replicas: every count must be at least 1".into());
    }
    let url = cli
        .postgres_url
        .clone()
        .or_else(|| std::env::var(pg::POSTGRES_URL_ENV).ok())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            format!(
                "--replicas needs a PostgreSQL server: --postgres-url URL or {}",
                pg::POSTGRES_URL_ENV
            )
        })?;
    Ok(Some(url))
}

/// The replica counts to run: `--replicas`, or 1, 2 and 3.
fn replica_counts(cli: &Cli) -> Vec<usize> {
    match cli.replicas.is_empty() {
        true => vec![1, 2, 3],
        false => cli.replicas.clone(),
    }
}

fn runtime(name: &str, threads: usize) -> Result<Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// One CreateReferral through the gateway: proves it answers, and gives the
/// wire sizes the echo baseline copies.
async fn probe(bed: &Testbed, gateway: SocketAddr) -> Result<(usize, usize), BoxError> {
    let mut c = ReferralServiceClient::new(transport::connect(bed, gateway, ORIGIN).await?);
    let req = scenario::create_request(0);
    let up = req.encoded_len();
    let down = c.create_referral(req).await?.into_inner().encoded_len();
    Ok((up, down))
}
