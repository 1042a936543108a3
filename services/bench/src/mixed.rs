//! `--mixed`: a realistic mix of the partner RPCs from many partners at once,
//! against the echo baseline measured in the same run.
//!
//! The federation is a ring of `partners` platforms (the first two are the
//! demo's mombaby-live and homedecor-live, so the echo client has its usual
//! certificate); each platform has an agreement with both neighbours, and each
//! platform talks over its own mTLS connection. Each request picks its
//! partner round-robin and its RPC by these weights (per 100 requests):
//!
//! | share | RPC |
//! |------:|-----|
//! | 35 | CreateReferral to the next platform, distinct subject |
//! | 25 | RedeemReferral of a token pre-minted before the timed part |
//! | 15 | GetReferredUserTags on a referral redeemed before the timed part |
//! | 10 | PublishTags (2 tags) about one of the partner's prepared users |
//! | 10 | ReportConversion, distinct order, buyer with a landing (attributed) |
//! |  3 | UpdateConversion: refund 1 minor unit of an order reported before the timed part (a new ledger entry each) |
//! |  2 | GetQuotaStatus |
//!
//! The writes (redeem, publish, report, update, and each tag read's audit
//! row) wait for the store's group commit, as in production.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossflow_api::rng::SplitMix64;
use crossflow_gateway::{server, testbed::Testbed};
use crossflow_proto::v1::{
    ConversionStatus, CreateReferralRequest, GetQuotaStatusRequest, GetReferredUserTagsRequest,
    PublishTagsRequest, RedeemReferralRequest, ReportConversionRequest, Tag,
    UpdateConversionRequest, conversion_service_client::ConversionServiceClient,
    quota_service_client::QuotaServiceClient, referral_service_client::ReferralServiceClient,
    tag_service_client::TagServiceClient,
};
use tokio::runtime::Runtime;

use crate::{
    BoxError,
    cpu::CpuTimes,
    echo,
    load::{self, Call, Outcome, Plan, Scenario, Stop},
    report,
    scenario::{self, DESTINATION, Env, ORIGIN},
    transport::{self, Conn},
};

/// Prepared users per partner (tag reads, conversions and updates use them).
const USERS: usize = 100;
/// The RPCs of the mix, with their weights (per 100).
const MIX: [(&str, u64); 7] = [
    ("CreateReferral", 35),
    ("RedeemReferral", 25),
    ("GetReferredUserTags", 15),
    ("PublishTags", 10),
    ("ReportConversion", 10),
    ("UpdateConversion", 3),
    ("GetQuotaStatus", 2),
];

/// How to run the mixed profile.
#[derive(Debug, Clone)]
pub struct Options {
    pub partners: usize,
    pub plan: Plan,
    pub rounds: usize,
    /// HTTP/2 connections of the echo baseline.
    pub connections: usize,
    pub server_threads: usize,
    pub client_threads: usize,
}

/// One partner's clients over its own connection.
#[derive(Clone)]
struct Partner {
    referrals: ReferralServiceClient<Conn>,
    tags: TagServiceClient<Conn>,
    conversions: ConversionServiceClient<Conn>,
    quota: QuotaServiceClient<Conn>,
}

fn partner_ids(n: usize) -> Vec<String> {
    let mut ids = vec![ORIGIN.to_owned(), DESTINATION.to_owned()];
    for i in 2..n {
        ids.push(format!("shop-{:02}", i + 1));
    }
    ids
}

/// Partners in a ring, each with an agreement with the next (both ways).
fn body(ids: &[String]) -> String {
    let mut b = String::new();
    for id in ids {
        let _ = writeln!(b, "[[partners]]\nid = \"{id}\"\nname = \"{id}\"\n");
    }
    for (i, a) in ids.iter().enumerate() {
        let c = &ids[(i + 1) % ids.len()];
        let _ = writeln!(
            b,
            r#"[[agreements]]
id = "ring-{i:02}"
between = ["{a}", "{c}"]
max_hops = 2
token_ttl_secs = 900
upstream_share_bps = 1000

[[agreements.flows]]
from = "{a}"
to = "{c}"
tag_scopes = ["iab-audience", "life-stage"]
commission = {{ default_bps = 500 }}

[[agreements.flows]]
from = "{c}"
to = "{a}"
tag_scopes = ["iab-audience", "life-stage"]
commission = {{ default_bps = 400 }}
"#
        );
    }
    b.push_str(
        r#"[tags]
[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"
[[tags.namespaces]]
name = "life-stage"
values = ["expecting", "newborn", "toddler"]
"#,
    );
    b
}

fn tags() -> Vec<Tag> {
    [("iab-audience", "354"), ("life-stage", "newborn")]
        .into_iter()
        .map(|(namespace, value)| Tag {
            namespace: namespace.to_owned(),
            value: value.to_owned(),
            ttl: None,
        })
        .collect()
}

/// An order placed now (whole seconds).
fn order(order_id: String, subject: String, amount_minor: i64) -> ReportConversionRequest {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ReportConversionRequest {
        order_id,
        subject,
        amount_minor,
        currency: "CNY".to_owned(),
        category: "furniture".to_owned(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        referral_id: String::new(),
    }
}

/// SplitMix64 of the sequence number: which RPC a request is.
fn op_of(seq: u64) -> usize {
    let mut roll = SplitMix64::mix(seq) % 100;
    for (i, (_, w)) in MIX.iter().enumerate() {
        if roll < *w {
            return i;
        }
        roll -= w;
    }
    0
}

/// What preparation made, per partner.
#[derive(Default)]
struct Pools {
    /// Referrals this partner redeemed (it may read their users' tags).
    reads: Vec<Vec<String>>,
    /// This partner's own subjects that landed there (buyers).
    landed: Vec<Vec<String>>,
    /// Orders this partner reported (to refund bit by bit).
    orders: Vec<Vec<String>>,
    /// (destination, token) pre-minted for RedeemReferral.
    tokens: Vec<(usize, String)>,
}

/// Latency and result of each timed request, by RPC.
type Samples = Mutex<Vec<(usize, Instant, u32, bool)>>;

struct Mixed {
    ids: Vec<String>,
    partners: Vec<Partner>,
    pools: Pools,
    next_token: AtomicUsize,
    next_update: Vec<AtomicUsize>,
    samples: Arc<Samples>,
    round: usize,
}

impl Scenario for Mixed {
    fn request(&self, _lane: usize, seq: u64) -> Option<Call> {
        let n = self.partners.len();
        let p = usize::try_from(seq % n as u64).ok()?;
        let k = usize::try_from(seq / n as u64).ok()?;
        let next = (p + 1) % n;
        let op = op_of(seq);
        let c = self.partners[p].clone();
        let samples = self.samples.clone();
        let round = self.round;
        let fut: Call = match op {
            0 => {
                let mut r = c.referrals;
                let to = self.ids[next].clone();
                Box::pin(async move {
                    r.create_referral(CreateReferralRequest {
                        subject: format!("mix-{round}-{seq}"),
                        to_partner: to,
                        target: "live/mixed".to_owned(),
                        parent_referral_id: String::new(),
                        request_id: String::new(),
                    })
                    .await?;
                    Ok(())
                })
            }
            1 => {
                let i = self.next_token.fetch_add(1, Ordering::Relaxed);
                let (dest, token) = self.pools.tokens.get(i)?.clone();
                let mut r = self.partners[dest].referrals.clone();
                Box::pin(async move {
                    r.redeem_referral(RedeemReferralRequest {
                        token,
                        subject: format!("mix-landed-{round}-{i}"),
                    })
                    .await?;
                    Ok(())
                })
            }
            2 => {
                let reads = &self.pools.reads[p];
                let referral_id = reads.get(k % reads.len().max(1))?.clone();
                let mut t = c.tags;
                Box::pin(async move {
                    t.get_referred_user_tags(GetReferredUserTagsRequest { referral_id })
                        .await?;
                    Ok(())
                })
            }
            3 => {
                let mut t = c.tags;
                Box::pin(async move {
                    t.publish_tags(PublishTagsRequest {
                        subject: format!("user-{p}-{}", k % USERS),
                        tags: tags(),
                        request_id: String::new(),
                    })
                    .await?;
                    Ok(())
                })
            }
            4 => {
                let landed = &self.pools.landed[p];
                let subject = landed.get(k % landed.len().max(1))?.clone();
                let mut v = c.conversions;
                Box::pin(async move {
                    v.report_conversion(order(
                        format!("mix-{round}-{seq}"),
                        subject,
                        10_000 + (seq % 1000) as i64,
                    ))
                    .await?;
                    Ok(())
                })
            }
            5 => {
                let orders = &self.pools.orders[p];
                let j = self.next_update[p].fetch_add(1, Ordering::Relaxed);
                let order_id = orders.get(j % orders.len().max(1))?.clone();
                let mut v = c.conversions;
                // A 0.01 CNY partial refund under a fresh request_id: always
                // a new ledger entry (a repeated confirm would be a replay).
                Box::pin(async move {
                    v.update_conversion(UpdateConversionRequest {
                        order_id,
                        status: ConversionStatus::Refunded as i32,
                        refund_minor: 1,
                        request_id: format!("mix-{round}-{seq}"),
                    })
                    .await?;
                    Ok(())
                })
            }
            _ => {
                let mut q = c.quota;
                Box::pin(async move {
                    q.get_quota_status(GetQuotaStatusRequest {
                        partner: String::new(),
                    })
                    .await?;
                    Ok(())
                })
            }
        };
        Some(Box::pin(async move {
            let started = Instant::now();
            let res = fut.await;
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            if let Ok(mut s) = samples.lock() {
                s.push((op, started, us, res.is_ok()));
            }
            res
        }))
    }
}

/// Preparation (not timed): per partner, USERS users tagged, referred to the
/// next platform, redeemed there, and one order each reported there.
struct Prepare {
    ids: Vec<String>,
    partners: Vec<Partner>,
    pools: Arc<Mutex<Pools>>,
}

impl Scenario for Prepare {
    fn request(&self, _lane: usize, seq: u64) -> Option<Call> {
        let n = self.partners.len();
        let seq = usize::try_from(seq).ok()?;
        if seq >= n * USERS {
            return None;
        }
        let (p, u) = (seq % n, seq / n);
        let d = (p + 1) % n;
        let origin = self.partners[p].clone();
        let dest = self.partners[d].clone();
        let to = self.ids[d].clone();
        let pools = self.pools.clone();
        Some(Box::pin(async move {
            let subject = format!("user-{p}-{u}");
            origin
                .tags
                .clone()
                .publish_tags(PublishTagsRequest {
                    subject: subject.clone(),
                    tags: tags(),
                    request_id: String::new(),
                })
                .await?;
            let hop = origin
                .referrals
                .clone()
                .create_referral(CreateReferralRequest {
                    subject,
                    to_partner: to,
                    target: "live/prepared".to_owned(),
                    parent_referral_id: String::new(),
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            let buyer = format!("buyer-{d}-{u}");
            dest.referrals
                .clone()
                .redeem_referral(RedeemReferralRequest {
                    token: hop.token,
                    subject: buyer.clone(),
                })
                .await?;
            let order_id = format!("prep-{d}-{u}");
            dest.conversions
                .clone()
                .report_conversion(order(order_id.clone(), buyer.clone(), 20_000))
                .await?;
            let referral_id = hop
                .referral
                .ok_or("CreateReferral without a referral")?
                .referral_id;
            let mut pools = pools.lock().map_err(|_| "pools poisoned")?;
            pools.reads[d].push(referral_id);
            pools.landed[d].push(buyer);
            pools.orders[d].push(order_id);
            Ok(())
        }))
    }
}

/// Pre-mints tokens for the timed RedeemReferral share.
struct Mint {
    ids: Vec<String>,
    partners: Vec<Partner>,
    round: usize,
    tokens: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scenario for Mint {
    fn request(&self, _lane: usize, seq: u64) -> Option<Call> {
        let n = self.partners.len();
        let p = usize::try_from(seq % n as u64).ok()?;
        let d = (p + 1) % n;
        let mut r = self.partners[p].referrals.clone();
        let to = self.ids[d].clone();
        let tokens = self.tokens.clone();
        let round = self.round;
        Some(Box::pin(async move {
            let token = r
                .create_referral(CreateReferralRequest {
                    subject: format!("mint-{round}-{seq}"),
                    to_partner: to,
                    target: "live/mixed".to_owned(),
                    parent_referral_id: String::new(),
                    request_id: String::new(),
                })
                .await?
                .into_inner()
                .token;
            tokens
                .lock()
                .map_err(|_| "tokens poisoned")?
                .push((d, token));
            Ok(())
        }))
    }
}

async fn connect(env: &Env, ids: &[String]) -> Result<Vec<Partner>, BoxError> {
    let gateway = *env.gateways.first().ok_or("no gateway")?;
    let mut out = Vec::new();
    for id in ids {
        let conn = transport::connect(&env.bed, gateway, id).await?;
        out.push(Partner {
            referrals: ReferralServiceClient::new(conn.clone()),
            tags: TagServiceClient::new(conn.clone()),
            conversions: ConversionServiceClient::new(conn.clone()),
            quota: QuotaServiceClient::new(conn),
        });
    }
    Ok(out)
}

/// One round's figures.
struct Round {
    echo: Outcome,
    mixed: Outcome,
    tokens: usize,
}

fn ratio(r: &Round) -> f64 {
    let base = r.echo.rps();
    if base > 0.0 {
        r.mixed.rps() / base
    } else {
        0.0
    }
}

/// Runs the mixed profile and prints its tables.
pub fn run(o: &Options, client_rt: &Runtime, server_rt: &Runtime) -> Result<(), BoxError> {
    let ids = partner_ids(o.partners.max(3));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let bed = Testbed::create(
        None,
        crate::FEDERATION,
        "127.0.0.1:0",
        &refs,
        &[],
        &body(&ids),
    )?;
    let settings = bed.settings()?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let gateway = server_rt.block_on(server::start(settings.clone(), Some(loopback)))?;
    let tls = &settings.gateway.tls;
    let echo = server_rt.block_on(echo::EchoServer::start(echo::TlsFiles {
        ca: &tls.ca,
        cert: &tls.cert,
        key: &tls.key,
    }))?;
    let echo_sizes = client_rt.block_on(crate::probe(&bed, gateway.addr))?;
    let env = Env {
        bed,
        gateways: vec![gateway.addr],
        echo: echo.addr,
        connections: o.connections.max(1),
        plan: o.plan,
        echo_sizes,
    };
    report::header(&env, o.server_threads, o.client_threads);
    let mix: Vec<String> = MIX.iter().map(|(n, w)| format!("{w} % {n}")).collect();
    println!(
        "  mixed:   {} partners in a ring (agreement with each neighbour), one mTLS connection each; {}",
        ids.len(),
        mix.join(", ")
    );

    let partners = client_rt.block_on(connect(&env, &ids))?;
    let n = partners.len();
    let pools = Arc::new(Mutex::new(Pools {
        reads: vec![Vec::new(); n],
        landed: vec![Vec::new(); n],
        orders: vec![Vec::new(); n],
        tokens: Vec::new(),
    }));
    let prep_started = Instant::now();
    let prepared = client_rt.block_on(load::drive(
        Arc::new(Prepare {
            ids: ids.clone(),
            partners: partners.clone(),
            pools: pools.clone(),
        }),
        Plan {
            warmup: Duration::ZERO,
            stop: Stop::Requests((n * USERS) as u64),
            concurrency: o.plan.concurrency,
        },
    ))?;
    if let Some(e) = prepared.first_error {
        return Err(format!("preparing the mixed profile failed: {e}").into());
    }
    println!(
        "  prepared {} users (tags, hop, redemption, one order each) in {:.1} s (not timed)",
        n * USERS,
        prep_started.elapsed().as_secs_f64()
    );
    let prepared = std::mem::take(&mut *pools.lock().map_err(|_| "pools poisoned")?);
    let echo_spec = scenario::spec("echo").ok_or("no echo scenario")?;

    let mut rounds: Vec<Round> = Vec::new();
    let mut shares: Vec<Vec<(u64, u64, Vec<u32>)>> = Vec::new();
    for round in 1..=o.rounds.max(1) {
        let built = client_rt.block_on((echo_spec.build)(&env))?;
        let cpu_before = CpuTimes::sample();
        let echo_out = client_rt.block_on(load::drive(built.scenario, o.plan))?;
        let echo_cpu = CpuTimes::since(cpu_before, echo_out.issued());

        // Minting is cheaper than the mix, and only a quarter of the mix
        // redeems: minting for 60 % of the run's time leaves spare tokens.
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let mint = Arc::new(Mint {
            ids: ids.clone(),
            partners: partners.clone(),
            round,
            tokens: tokens.clone(),
        });
        let mint_stop = match o.plan.stop {
            Stop::After(d) => Stop::After((o.plan.warmup + d).mul_f64(0.6)),
            Stop::Requests(r) => Stop::Requests(r / 3 + 1000),
        };
        let minted = client_rt.block_on(load::drive(
            mint,
            Plan {
                warmup: Duration::ZERO,
                stop: mint_stop,
                concurrency: o.plan.concurrency,
            },
        ))?;
        if let Some(e) = minted.first_error {
            return Err(format!("minting tokens for the mix failed: {e}").into());
        }
        let tokens = std::mem::take(&mut *tokens.lock().map_err(|_| "tokens poisoned")?);
        let samples = Arc::new(Samples::default());
        let mixed = Arc::new(Mixed {
            ids: ids.clone(),
            partners: partners.clone(),
            pools: Pools {
                reads: prepared.reads.clone(),
                landed: prepared.landed.clone(),
                orders: prepared.orders.clone(),
                tokens,
            },
            next_token: AtomicUsize::new(0),
            next_update: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            samples: samples.clone(),
            round,
        });
        let measure_from = Instant::now() + o.plan.warmup;
        let cpu_before = CpuTimes::sample();
        let out = client_rt.block_on(load::drive(mixed.clone(), o.plan))?;
        let mixed_cpu = CpuTimes::since(cpu_before, out.issued());
        let mut per: Vec<(u64, u64, Vec<u32>)> = vec![(0, 0, Vec::new()); MIX.len()];
        for (op, started, us, ok) in samples.lock().map_err(|_| "samples poisoned")?.iter() {
            if *started < measure_from {
                continue;
            }
            let e = &mut per[*op];
            if *ok {
                e.0 += 1;
                e.2.push(*us);
            } else {
                e.1 += 1;
            }
        }
        let r = Round {
            echo: echo_out,
            mixed: out,
            tokens: mixed.pools.tokens.len(),
        };
        println!(
            "  round {round}: echo {:>7.0} req/s; mixed {:>7.0} req/s ({:.1} % of echo), p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, {} errors; {} tokens pre-minted, {} redeemed",
            r.echo.rps(),
            r.mixed.rps(),
            ratio(&r) * 100.0,
            r.mixed.percentile_ms(50.0),
            r.mixed.percentile_ms(99.0),
            r.mixed.percentile_ms(99.9),
            r.mixed.errors,
            r.tokens,
            mixed.next_token.load(Ordering::Relaxed).min(r.tokens),
        );
        if let Some(c) = &echo_cpu {
            println!("  round {round} echo: {}", report::cpu_line(c));
        }
        if let Some(c) = &mixed_cpu {
            println!("  round {round} mixed: {}", report::cpu_line(c));
        }
        rounds.push(r);
        shares.push(per);
    }
    table(&rounds, &shares);

    drop(env);
    server_rt.block_on(echo.stop())?;
    server_rt.block_on(gateway.shutdown())?;
    Ok(())
}

/// Percentile `p` of `v` (sorted, microseconds), in milliseconds.
fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    f64::from(v[rank.clamp(1, v.len()) - 1]) / 1000.0
}

fn table(rounds: &[Round], shares: &[Vec<(u64, u64, Vec<u32>)>]) {
    println!();
    println!(
        "{:<7} {:>10} {:>10} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "round", "echo r/s", "mixed r/s", "/echo", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:<7} {:>10.0} {:>10.0} {:>8.1}% {:>8.2} {:>8.2} {:>9.2} {:>7}",
            i + 1,
            r.echo.rps(),
            r.mixed.rps(),
            ratio(r) * 100.0,
            r.mixed.percentile_ms(50.0),
            r.mixed.percentile_ms(99.0),
            r.mixed.percentile_ms(99.9),
            r.mixed.errors
        );
    }
    if rounds.len() > 1 {
        let m = |f: &dyn Fn(&Round) -> f64| report::median(rounds.iter().map(f).collect());
        println!(
            "{:<7} {:>10.0} {:>10.0} {:>8.1}% {:>8.2} {:>8.2} {:>9.2} {:>7}",
            "median",
            m(&|r| r.echo.rps()),
            m(&|r| r.mixed.rps()),
            m(&|r| ratio(r)) * 100.0,
            m(&|r| r.mixed.percentile_ms(50.0)),
            m(&|r| r.mixed.percentile_ms(99.0)),
            m(&|r| r.mixed.percentile_ms(99.9)),
            rounds.iter().map(|r| r.mixed.errors).sum::<u64>()
        );
    }
    println!();
    println!("per RPC, all rounds together (measured window only):");
    println!(
        "{:<20} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}",
        "rpc", "ok", "share", "errors", "p50 ms", "p99 ms", "p99.9 ms"
    );
    let total: u64 = shares.iter().flatten().map(|s| s.0 + s.1).sum();
    for (i, (name, _)) in MIX.iter().enumerate() {
        let mut lat: Vec<u32> = shares.iter().flat_map(|r| r[i].2.iter().copied()).collect();
        lat.sort_unstable();
        let ok: u64 = shares.iter().map(|r| r[i].0).sum();
        let errors: u64 = shares.iter().map(|r| r[i].1).sum();
        println!(
            "{:<20} {:>9} {:>6.1}% {:>7} {:>8.2} {:>8.2} {:>9.2}",
            name,
            ok,
            (ok + errors) as f64 * 100.0 / total.max(1) as f64,
            errors,
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            pct(&lat, 99.9)
        );
    }
    for (i, r) in rounds.iter().enumerate() {
        if let Some(e) = &r.mixed.first_error {
            println!("round {}: first error: {e}", i + 1);
        }
        if r.mixed.exhausted {
            println!(
                "round {}: ran out of pre-minted tokens after {:.2} s; the rate is over that time",
                i + 1,
                r.mixed.elapsed.as_secs_f64()
            );
        }
    }
}
