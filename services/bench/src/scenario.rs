//! The scenarios: what each one sends, how it prepares, and what it is
//! measured against.
//!
//! To add a benchmark (GetReferredUserTags, ReportConversion, ledger appends
//! against plain SQLite inserts, quotas on and off, a mixed workload...):
//! write a type implementing [`Scenario`], a `build_*` function that prepares
//! it from the [`Env`], and one [`Spec`] line in [`SPECS`]. A spec with a
//! [`Target`] is reported as a ratio of its baseline's requests/s.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crossflow_gateway::testbed::Testbed;
use crossflow_proto::v1::{
    CreateReferralRequest, RedeemReferralRequest, referral_service_client::ReferralServiceClient,
};
use prost::Message as _;

use crate::{
    BoxError,
    load::{self, Call, Plan, Scenario, Stop},
    pb::{EchoRequest, EchoResponse, echo_service_client::EchoServiceClient},
    transport::{self, Conn},
};

/// The partner that mints hops (and whose certificate the echo client uses).
pub const ORIGIN: &str = "mombaby-live";
/// The partner that redeems them.
pub const DESTINATION: &str = "homedecor-live";
/// Where the benchmark's viewers are sent.
const TARGET: &str = "room/nursery-makeover";
/// Most tokens pre-minted for RedeemReferral (about 0.5 KiB each in memory).
const MAX_TOKENS: usize = 2_000_000;

/// What the scenarios are built from: the federation, the servers, and the
/// plan every scenario runs under.
#[derive(Debug)]
pub struct Env {
    pub bed: Testbed,
    /// The gateway replicas under test (one, but for PostgreSQL runs with
    /// `--replicas`): every partner's connections go round-robin over them.
    pub gateways: Vec<SocketAddr>,
    pub echo: SocketAddr,
    /// HTTP/2 connections per scenario (per partner certificate).
    pub connections: usize,
    pub plan: Plan,
    /// Wire sizes (request, response) of one CreateReferral, which the echo
    /// mimics.
    pub echo_sizes: (usize, usize),
}

/// A scenario's lowest acceptable requests/s, as a share of its baseline's.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name of the baseline spec.
    pub baseline: &'static str,
    pub min_ratio: f64,
    /// An absolute floor of requests/s, where the issue sets one (checked
    /// besides `min_ratio`).
    pub min_rps: Option<f64>,
    /// Where the target comes from.
    pub source: &'static str,
}

type Build = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + 'a>>;

/// A prepared scenario.
pub struct Built {
    pub scenario: Arc<dyn Scenario>,
    /// What preparation did, for the report (e.g. tokens pre-minted).
    pub note: Option<String>,
}

/// A benchmark that can be selected with `--scenario NAME`.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// Row label in the table.
    pub label: &'static str,
    pub about: &'static str,
    pub target: Option<Target>,
    /// With `--replicas`: the lowest acceptable requests/s on one
    /// PostgreSQL replica, as a share of the SQLite gateway's in the same
    /// round (issue 19).
    pub postgres_min_ratio: Option<f64>,
    pub build: Build,
}

/// Every scenario, in the order they run.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "echo",
        label: "echo (baseline)",
        about: "bare tonic unary echo, same mTLS, payload sized like CreateReferral",
        target: None,
        postgres_min_ratio: None,
        build: build_echo,
    },
    Spec {
        name: "create-referral",
        label: "CreateReferral",
        about: "gateway: mint a hop mombaby-live -> homedecor-live, distinct subject each",
        target: Some(Target {
            baseline: "echo",
            min_ratio: 0.60,
            min_rps: None,
            source: "issue 2",
        }),
        postgres_min_ratio: None,
        build: build_create,
    },
    Spec {
        name: "redeem-referral",
        label: "RedeemReferral",
        about: "gateway: redeem a pre-minted hop (durable write), distinct subject each",
        target: Some(Target {
            baseline: "echo",
            min_ratio: 0.30,
            min_rps: None,
            source: "issue 2",
        }),
        postgres_min_ratio: Some(0.50),
        build: build_redeem,
    },
    Spec {
        name: "get-referred-user-tags",
        label: "GetReferredUserTags",
        about: "gateway: homedecor-live reads a referred user's tags (audit row each), round-robin over pre-redeemed hops",
        target: Some(Target {
            baseline: "echo",
            min_ratio: 0.0,
            min_rps: None,
            source: "issue 3 sets no target",
        }),
        postgres_min_ratio: None,
        build: crate::tags::build,
    },
    Spec {
        name: "report-conversion",
        label: "ReportConversion",
        about: "gateway: homedecor-live reports an attributed order (conversion row + ledger entry, durable), distinct order ids over 1000 pre-landed buyers",
        target: Some(Target {
            baseline: "echo",
            min_ratio: 0.0,
            min_rps: Some(20_000.0),
            source: "issue 4: >= 20,000/s",
        }),
        postgres_min_ratio: Some(0.50),
        build: crate::conversions::build,
    },
];

pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

// === impl Env ===

impl Env {
    /// `self.connections` mTLS HTTP/2 connections to `addr` as `name`.
    pub async fn conns(&self, addr: SocketAddr, name: &str) -> Result<Vec<Conn>, BoxError> {
        transport::connect_n(&self.bed, addr, name, self.connections).await
    }

    /// `self.connections` mTLS HTTP/2 connections to the gateway as `name`,
    /// connection `i` to replica `i % replicas` (workers pick connections
    /// round-robin by lane, so they are spread over the replicas too).
    pub async fn gateway_conns(&self, name: &str) -> Result<Vec<Conn>, BoxError> {
        let Some(&first) = self.gateways.first() else {
            return Err("no gateway to connect to".into());
        };
        if self.gateways.len() == 1 {
            return self.conns(first, name).await;
        }
        let mut out = Vec::with_capacity(self.connections.max(1));
        for i in 0..self.connections.max(1) {
            let addr = self.gateways[i % self.gateways.len()];
            out.push(transport::connect(&self.bed, addr, name).await?);
        }
        Ok(out)
    }

    async fn referral_clients(
        &self,
        name: &str,
    ) -> Result<Vec<ReferralServiceClient<Conn>>, BoxError> {
        Ok(self
            .gateway_conns(name)
            .await?
            .into_iter()
            .map(ReferralServiceClient::new)
            .collect())
    }
}

pub fn pick<T: Clone>(v: &[T], lane: usize) -> T {
    // `conns` never returns an empty vector.
    v[lane % v.len()].clone()
}

/// Untimed preparation: drives `requests` requests of `scenario` and fails
/// with the first error, prefixed by `what`.
pub async fn prepare(
    env: &Env,
    scenario: Arc<dyn Scenario>,
    requests: u64,
    what: &str,
) -> Result<(), BoxError> {
    let out = load::drive(
        scenario,
        Plan {
            warmup: Duration::ZERO,
            stop: Stop::Requests(requests),
            concurrency: env.plan.concurrency,
        },
    )
    .await?;
    match out.first_error {
        Some(e) => Err(format!("{what} failed: {e}").into()),
        None => Ok(()),
    }
}

/// A CreateReferral request for viewer number `seq`.
pub fn create_request(seq: u64) -> CreateReferralRequest {
    referral_to_destination(format!("bench-viewer-{seq:08}"))
}

/// A CreateReferral request sending `subject` from [`ORIGIN`] to
/// [`DESTINATION`]'s benchmark target.
pub fn referral_to_destination(subject: String) -> CreateReferralRequest {
    CreateReferralRequest {
        subject,
        to_partner: DESTINATION.to_owned(),
        target: TARGET.to_owned(),
        parent_referral_id: String::new(),
        request_id: String::new(),
    }
}

// === echo ===

struct Echo {
    clients: Vec<EchoServiceClient<Conn>>,
    payload: Vec<u8>,
    reply_bytes: u32,
}

impl Scenario for Echo {
    fn request(&self, lane: usize, _seq: u64) -> Option<Call> {
        let mut c = pick(&self.clients, lane);
        let req = EchoRequest {
            payload: self.payload.clone(),
            reply_bytes: self.reply_bytes,
        };
        Some(Box::pin(async move {
            c.echo(req).await?;
            Ok(())
        }))
    }
}

fn build_echo(env: &Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + '_>> {
    Box::pin(async move {
        let clients = env
            .conns(env.echo, ORIGIN)
            .await?
            .into_iter()
            .map(EchoServiceClient::new)
            .collect();
        let (req, resp) = env.echo_sizes;
        let (payload, reply_bytes) = echo_shape(req, resp);
        let up = EchoRequest {
            payload: payload.clone(),
            reply_bytes,
        }
        .encoded_len();
        let down = EchoResponse {
            payload: vec![b'x'; reply_bytes as usize],
        }
        .encoded_len();
        Ok(Built {
            scenario: Arc::new(Echo {
                clients,
                payload,
                reply_bytes,
            }),
            note: Some(format!(
                "echo messages {up} B up, {down} B down; one CreateReferral is {req} B up, {resp} B down"
            )),
        })
    })
}

/// The largest echo payload and answer size whose messages are no bigger
/// than `req` and `resp` bytes on the wire.
fn echo_shape(req: usize, resp: usize) -> (Vec<u8>, u32) {
    let mut down = resp;
    while down > 0
        && (EchoResponse {
            payload: vec![b'x'; down],
        })
        .encoded_len()
            > resp
    {
        down -= 1;
    }
    let reply_bytes = u32::try_from(down).unwrap_or(u32::MAX);
    let mut up = req;
    while up > 0
        && (EchoRequest {
            payload: vec![b'x'; up],
            reply_bytes,
        })
        .encoded_len()
            > req
    {
        up -= 1;
    }
    (vec![b'x'; up], reply_bytes)
}

// === create-referral ===

struct Create {
    clients: Vec<ReferralServiceClient<Conn>>,
}

impl Scenario for Create {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        let mut c = pick(&self.clients, lane);
        let req = create_request(seq);
        Some(Box::pin(async move {
            c.create_referral(req).await?;
            Ok(())
        }))
    }
}

fn build_create(env: &Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + '_>> {
    Box::pin(async move {
        Ok(Built {
            scenario: Arc::new(Create {
                clients: env.referral_clients(ORIGIN).await?,
            }),
            note: None,
        })
    })
}

// === redeem-referral ===

/// Mints through the gateway, keeping the tokens.
struct Mint {
    clients: Vec<ReferralServiceClient<Conn>>,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Scenario for Mint {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        if seq >= MAX_TOKENS as u64 {
            return None;
        }
        let mut c = pick(&self.clients, lane);
        let req = create_request(seq);
        let tokens = self.tokens.clone();
        Some(Box::pin(async move {
            let token = c.create_referral(req).await?.into_inner().token;
            tokens
                .lock()
                .map_err(|_| "token pool poisoned")?
                .push(token);
            Ok(())
        }))
    }
}

struct Redeem {
    clients: Vec<ReferralServiceClient<Conn>>,
    tokens: Vec<String>,
    next: AtomicUsize,
}

impl Scenario for Redeem {
    fn request(&self, lane: usize, _seq: u64) -> Option<Call> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let token = self.tokens.get(i)?.clone();
        let mut c = pick(&self.clients, lane);
        let req = RedeemReferralRequest {
            token,
            subject: format!("bench-landed-{i:08}"),
        };
        Some(Box::pin(async move {
            c.redeem_referral(req).await?;
            Ok(())
        }))
    }
}

fn build_redeem(env: &Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + '_>> {
    Box::pin(async move {
        // Minting is cheaper than redeeming (no write), so minting for as long
        // as the redemptions will run yields more tokens than they can use;
        // if they ever run out, the run ends early and the report says so.
        let mint_for = match env.plan.stop {
            Stop::After(d) => (env.plan.warmup + d).mul_f64(1.2),
            Stop::Requests(_) => env.plan.warmup.mul_f64(1.2),
        };
        let mint = Arc::new(Mint {
            clients: env.referral_clients(ORIGIN).await?,
            tokens: Arc::default(),
        });
        let minted = load::drive(
            mint.clone(),
            Plan {
                warmup: Duration::ZERO,
                stop: Stop::After(mint_for),
                concurrency: env.plan.concurrency,
            },
        )
        .await?;
        if let Stop::Requests(n) = env.plan.stop {
            load::drive(
                mint.clone(),
                Plan {
                    warmup: Duration::ZERO,
                    stop: Stop::Requests(n),
                    concurrency: env.plan.concurrency,
                },
            )
            .await?;
        }
        if let Some(e) = minted.first_error {
            return Err(format!("minting tokens for RedeemReferral failed: {e}").into());
        }
        let tokens = std::mem::take(&mut *mint.tokens.lock().map_err(|_| "token pool poisoned")?);
        let note = format!(
            "{} tokens pre-minted through the gateway in {:.1} s (not timed)",
            tokens.len(),
            mint_for.as_secs_f64()
        );
        Ok(Built {
            scenario: Arc::new(Redeem {
                clients: env.referral_clients(DESTINATION).await?,
                tokens,
                next: AtomicUsize::new(0),
            }),
            note: Some(note),
        })
    })
}
