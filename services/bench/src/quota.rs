//! `crossflow-bench --quota`: what quotas cost and whether they isolate.
//!
//! 1. Cost of the quota layer: the same closed-loop CreateReferral load
//!    against a gateway whose config has no quotas ("off") and one where
//!    every limit applies to every call but never binds ("on": a per-class
//!    rate, a daily cap, the flow's referrals_per_day and the agreement's
//!    reciprocity limit, all far above the load), rounds interleaved.
//! 2. Isolation: on one gateway, a "normal" partner (mombaby-live) sends
//!    at half its rate quota, open loop, alone and then while a "flooding"
//!    partner (beauty-live) sends at 10x its own rate quota. The normal
//!    partner must see no rejection and keep its p99.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossflow_gateway::{demo::DEMO_BODY, server, testbed::Testbed};
use crossflow_proto::v1::{CreateReferralRequest, referral_service_client::ReferralServiceClient};
use tokio::runtime::Runtime;
use tonic::Code;

use crate::{
    BoxError,
    transport::{self, Conn},
};

const FEDERATION: &str = "crossflow.example";
const NORMAL: &str = "mombaby-live";
const FLOODER: &str = "beauty-live";
const HOMEDECOR: &str = "homedecor-live";
const PARTNERS: &[&str] = &[NORMAL, HOMEDECOR, FLOODER];

/// Options of the quota benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured seconds per cost round and per isolation phase.
    pub secs: f64,
    /// Cost rounds (off, on, off, on, ...).
    pub rounds: usize,
    pub concurrency: usize,
    pub connections: usize,
    /// Requests/s quota of each partner in the isolation run; the normal
    /// partner sends at half of it, the flooder at 10x.
    pub rate: u32,
}

/// Latencies and outcomes of one phase.
#[derive(Debug, Default)]
struct Sample {
    ok: u64,
    rejected: u64,
    other: u64,
    lat: Vec<Duration>,
    elapsed: Duration,
}

impl Sample {
    /// The `p` quantile of the latencies (sorted by [`finish`]).
    fn pct(&self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.lat.len() as f64 * p).ceil() as usize).clamp(1, self.lat.len()) - 1;
        self.lat[i]
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn quotas_on(body: &str) -> String {
    // Every kind of quota applies to mombaby-live's CreateReferral, none binds.
    let limits = "[partners.quotas.referrals]\nrate_per_sec = 10000000\nburst = 10000000\ndaily_cap = 1000000000000\n";
    body.replacen(
        "name = \"Mom & Baby Live\"\n",
        &format!("name = \"Mom & Baby Live\"\n{limits}"),
        1,
    )
    .replacen(
        "upstream_share_bps = 2000\n",
        "upstream_share_bps = 2000\nmax_daily_imbalance = 1000000000000\n",
        1,
    )
    .replacen(
        "to = \"homedecor-live\"\n",
        "to = \"homedecor-live\"\nreferrals_per_day = 1000000000000\n",
        1,
    )
}

fn isolation_body(rate: u32) -> String {
    let q = |name: &str| {
        format!(
            "name = \"{name}\"\n[partners.quotas.referrals]\nrate_per_sec = {rate}\nburst = {rate}\n"
        )
    };
    DEMO_BODY
        .replacen("name = \"Mom & Baby Live\"\n", &q("Mom & Baby Live"), 1)
        .replacen("name = \"Beauty Live\"\n", &q("Beauty Live"), 1)
}

fn req(i: u64, to: &str) -> CreateReferralRequest {
    CreateReferralRequest {
        subject: format!("bench-user-{i}"),
        to_partner: to.to_owned(),
        target: "room/bench".to_owned(),
        parent_referral_id: String::new(),
        request_id: String::new(),
    }
}

async fn clients(
    bed: &Testbed,
    addr: SocketAddr,
    who: &str,
    n: usize,
) -> Result<Vec<ReferralServiceClient<Conn>>, BoxError> {
    Ok(transport::connect_n(bed, addr, who, n)
        .await?
        .into_iter()
        .map(ReferralServiceClient::new)
        .collect())
}

fn record(s: &Mutex<Sample>, r: Result<(), tonic::Status>, took: Duration) {
    if let Ok(mut s) = s.lock() {
        match r {
            Ok(()) => {
                s.ok += 1;
                s.lat.push(took);
            }
            Err(e) if e.code() == Code::ResourceExhausted => s.rejected += 1,
            Err(_) => s.other += 1,
        }
    }
}

/// Closed loop: `concurrency` workers, each waiting for its answer.
async fn closed_loop(
    clients: &[ReferralServiceClient<Conn>],
    to: &str,
    concurrency: usize,
    dur: Duration,
) -> Sample {
    let sample = Arc::new(Mutex::new(Sample::default()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = clients[w % clients.len()].clone();
        let s = sample.clone();
        let to = to.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut i = (w as u64) << 32;
            while start.elapsed() < dur {
                i += 1;
                let t = Instant::now();
                let r = c.create_referral(req(i, &to)).await.map(|_| ());
                record(&s, r, t.elapsed());
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    finish(&sample, start)
}

/// Open loop: one call started every `1/rate` s, whatever the answers do.
async fn open_loop(
    clients: Vec<ReferralServiceClient<Conn>>,
    to: String,
    rate: f64,
    dur: Duration,
    seed: u64,
) -> Sample {
    let sample = Arc::new(Mutex::new(Sample::default()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut i = seed << 40;
    while start.elapsed() < dur {
        tick.tick().await;
        i += 1;
        let mut c = clients[i as usize % clients.len()].clone();
        let s = sample.clone();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.create_referral(req(i, &to)).await.map(|_| ());
            record(&s, r, t.elapsed());
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    finish(&sample, start)
}

fn finish(sample: &Mutex<Sample>, start: Instant) -> Sample {
    let mut out = std::mem::take(&mut *sample.lock().unwrap_or_else(|p| p.into_inner()));
    out.elapsed = start.elapsed();
    out.lat.sort_unstable();
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs both parts and prints the figures.
pub fn run(o: &Options, client_rt: &Runtime, server_rt: &Runtime) -> Result<(), BoxError> {
    let dur = Duration::try_from_secs_f64(o.secs).map_err(|_| "--duration-secs must be ≥ 0")?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;

    // 1. Cost.
    println!(
        "quota layer cost: CreateReferral, closed loop, concurrency {}, {} connections, {:.1} s x {} rounds per side",
        o.concurrency, o.connections, o.secs, o.rounds
    );
    let mut sides = Vec::new();
    for (name, body) in [("off", DEMO_BODY.to_owned()), ("on", quotas_on(DEMO_BODY))] {
        let bed = Testbed::create(None, FEDERATION, "127.0.0.1:0", PARTNERS, &[], &body)?;
        let gw = server_rt.block_on(server::start(bed.settings()?, Some(loopback)))?;
        let cs = client_rt.block_on(clients(&bed, gw.addr, NORMAL, o.connections))?;
        // Warm-up.
        client_rt.block_on(closed_loop(
            &cs,
            HOMEDECOR,
            o.concurrency,
            Duration::from_millis(500),
        ));
        sides.push((name, bed, gw, cs));
    }
    let mut rps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p99: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=o.rounds.max(1) {
        for (k, (name, _, _, cs)) in sides.iter().enumerate() {
            let s = client_rt.block_on(closed_loop(cs, HOMEDECOR, o.concurrency, dur));
            let (p50, p) = (s.pct(0.50), s.pct(0.99));
            println!(
                "  round {round} quotas {name:<3}: {:>8.0} req/s  p50 {}  p99 {}  (rejected {}, other errors {})",
                s.rps(),
                ms(p50),
                ms(p),
                s.rejected,
                s.other
            );
            rps[k].push(s.rps());
            p99[k].push(p);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut rps[0]), median(&mut rps[1]));
    println!(
        "  median req/s: off {off:.0}, on {on:.0}; on/off = {:.3}",
        on / off.max(1e-9)
    );
    for (_, _, gw, _) in sides {
        server_rt.block_on(gw.shutdown())?;
    }

    // 2. Isolation.
    let rate = f64::from(o.rate.max(1));
    let (normal_rate, flood_rate) = (rate / 2.0, rate * 10.0);
    println!(
        "\nisolation: both partners limited to {rate:.0}/s (burst {rate:.0}); {NORMAL} sends {normal_rate:.0}/s, {FLOODER} floods at {flood_rate:.0}/s; open loop, {:.1} s per phase",
        o.secs
    );
    let bed = Testbed::create(
        None,
        FEDERATION,
        "127.0.0.1:0",
        PARTNERS,
        &[],
        &isolation_body(o.rate),
    )?;
    let gw = server_rt.block_on(server::start(bed.settings()?, Some(loopback)))?;
    let normal = client_rt.block_on(clients(&bed, gw.addr, NORMAL, o.connections))?;
    let flood = client_rt.block_on(clients(&bed, gw.addr, FLOODER, o.connections))?;
    client_rt.block_on(open_loop(
        normal.clone(),
        HOMEDECOR.into(),
        normal_rate,
        Duration::from_millis(500),
        1,
    ));
    let alone = client_rt.block_on(open_loop(
        normal.clone(),
        HOMEDECOR.into(),
        normal_rate,
        dur,
        2,
    ));
    let (with, flooded) = client_rt.block_on(async {
        let f = tokio::spawn(open_loop(flood, HOMEDECOR.into(), flood_rate, dur, 3));
        let n = open_loop(normal, HOMEDECOR.into(), normal_rate, dur, 4).await;
        (n, f.await.unwrap_or_default())
    });
    let (a99, w99) = (alone.pct(0.99), with.pct(0.99));
    println!(
        "  {NORMAL} alone:      {} ok, {} rejected, {} other; p50 {} p99 {}",
        alone.ok,
        alone.rejected,
        alone.other,
        ms(alone.pct(0.5)),
        ms(a99)
    );
    println!(
        "  {NORMAL} with flood: {} ok, {} rejected, {} other; p50 {} p99 {}",
        with.ok,
        with.rejected,
        with.other,
        ms(with.pct(0.5)),
        ms(w99)
    );
    println!(
        "  {FLOODER} flooding:  {} sent, {} ok ({:.0}/s), {} rejected RESOURCE_EXHAUSTED, {} other; p99 of its admitted calls {}",
        flooded.ok + flooded.rejected + flooded.other,
        flooded.ok,
        flooded.rps(),
        flooded.rejected,
        flooded.other,
        ms(flooded.pct(0.99))
    );
    let ratio = w99.as_secs_f64() / a99.as_secs_f64().max(1e-9);
    println!(
        "  {NORMAL} p99 with flood / alone = {ratio:.2} (target ≤ 1.5); its rejections under flood: {} (target 0)",
        with.rejected
    );
    server_rt.block_on(gw.shutdown())?;
    Ok(())
}
