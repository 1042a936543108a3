//! The load the gateway is killed under: partners telling small stories
//! (a hop, its redemption, tags about the viewer, an order and its update, an
//! onward hop), and the book of what the gateway acknowledged.
//!
//! Every write carries its idempotency key (request_id or order_id), so a
//! request whose answer was lost in the crash can be sent again unchanged.
//!
//! With several replicas each request goes to one of those up, picked at
//! random, so a hop minted at one replica is redeemed at another.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crossflow_api::rng::SplitMix64;
use crossflow_proto::v1::{
    ConversionStatus, CreateReferralRequest, CreateReferralResponse, GetCheckpointRequest,
    PublishTagsRequest, PublishTagsResponse, RedeemReferralRequest, RedeemReferralResponse,
    ReportConversionRequest, ReportConversionResponse, Tag, UpdateConversionRequest,
    UpdateConversionResponse, conversion_service_client::ConversionServiceClient,
    ledger_service_client::LedgerServiceClient, referral_service_client::ReferralServiceClient,
    tag_service_client::TagServiceClient,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

use crate::BoxError;

/// The demo federation's partners: A refers to B, B onward to C, B back to A.
pub const PARTNERS: [&str; 3] = ["mombaby-live", "homedecor-live", "beauty-live"];
pub const A: usize = 0;
pub const B: usize = 1;
pub const C: usize = 2;
/// Longest wait for one answer; past it the request counts as lost.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// `ErrorInfo.reason` of a call refused because the database is out of
/// reach (nothing was written; retry later).
const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
/// Pause of a worker after such a refusal before its next story.
const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// One partner's clients over its own mTLS connection.
#[derive(Debug, Clone)]
pub struct Party {
    pub referrals: ReferralServiceClient<Channel>,
    pub tags: TagServiceClient<Channel>,
    pub conversions: ConversionServiceClient<Channel>,
    pub ledger: LedgerServiceClient<Channel>,
}

/// One replica's clients: every partner's, indexed like [`PARTNERS`], and
/// an operator's ledger client (operators see every entry).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub parties: Vec<Party>,
    pub operator: LedgerServiceClient<Channel>,
}

/// The clients of every replica (one, for the single gateway). Requests go
/// to a replica picked at random among those not marked down.
#[derive(Debug, Clone)]
pub struct Clients {
    replicas: Vec<Endpoint>,
    /// Replicas killed this cycle: their errors are lost answers, and no
    /// new request goes to them.
    down: Arc<Vec<AtomicBool>>,
    pick: Arc<Mutex<SplitMix64>>,
}

/// A write, exactly as sent (and as resent after a crash).
#[derive(Debug, Clone)]
pub enum Op {
    Create(usize, CreateReferralRequest),
    Redeem(usize, RedeemReferralRequest),
    /// Tags about the origin's user, plus the referral its destination reads
    /// them through.
    Publish(usize, PublishTagsRequest, String),
    Report(usize, ReportConversionRequest),
    Update(usize, UpdateConversionRequest),
}

/// The gateway's answer to an [`Op`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Create(CreateReferralResponse),
    Redeem(RedeemReferralResponse),
    Publish(PublishTagsResponse),
    Report(ReportConversionResponse),
    Update(UpdateConversionResponse),
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Acked {
    pub op: Op,
    pub answer: Answer,
    /// Cycle in which it was acknowledged.
    pub cycle: u32,
    /// Acknowledged only on a retry after a crash.
    pub retried: bool,
}

/// What the load learned.
#[derive(Debug, Default)]
pub struct Book {
    pub acked: Vec<Acked>,
    /// Writes whose answer never came (sent, maybe applied, before the kill).
    pub lost: Vec<Op>,
    /// Writes refused with `UNAVAILABLE` / `STORE_UNAVAILABLE` (the database
    /// was out of reach): not acknowledged, retried after the cycle like
    /// the lost ones.
    pub refused: Vec<Op>,
    /// Errors before the kill: each one is a failure of the run.
    pub unexpected: Vec<String>,
}

// === impl Clients ===

impl Clients {
    /// Connects to every replica in `addrs`; `rng` picks the replica of
    /// each request.
    pub async fn connect(
        bed: &crossflow_gateway::testbed::Testbed,
        addrs: &[SocketAddr],
        operator: &str,
        rng: SplitMix64,
    ) -> Result<Clients, BoxError> {
        let mut replicas = Vec::new();
        for addr in addrs {
            let mut parties = Vec::new();
            for p in PARTNERS {
                let ch = bed.channel(*addr, p).await?;
                parties.push(Party {
                    referrals: ReferralServiceClient::new(ch.clone()),
                    tags: TagServiceClient::new(ch.clone()),
                    conversions: ConversionServiceClient::new(ch.clone()),
                    ledger: LedgerServiceClient::new(ch),
                });
            }
            let operator = LedgerServiceClient::new(bed.channel(*addr, operator).await?);
            replicas.push(Endpoint { parties, operator });
        }
        if replicas.is_empty() {
            return Err("no replica to connect to".into());
        }
        let down = addrs.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Clients {
            replicas,
            down: Arc::new(down),
            pick: Arc::new(Mutex::new(rng)),
        })
    }

    /// A replica for the next request: one of those up, at random.
    pub fn pick(&self) -> usize {
        if self.replicas.len() == 1 {
            return 0;
        }
        let up: Vec<usize> = (0..self.replicas.len())
            .filter(|r| !self.is_down(*r))
            .collect();
        let Ok(mut rng) = self.pick.lock() else {
            return up.first().copied().unwrap_or(0);
        };
        if up.is_empty() {
            rng.below(self.replicas.len())
        } else {
            up[rng.below(up.len())]
        }
    }

    /// Marks replica `r` killed (just before the SIGKILL).
    pub fn set_down(&self, r: usize) {
        if let Some(d) = self.down.get(r) {
            d.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_down(&self, r: usize) -> bool {
        self.down.get(r).is_some_and(|d| d.load(Ordering::SeqCst))
    }

    /// Replica `r`'s clients (replica 0 if there is no such replica).
    pub fn at(&self, r: usize) -> &Endpoint {
        self.replicas.get(r).unwrap_or(&self.replicas[0])
    }

    /// The clients of a replica picked as [`Clients::pick`] does.
    pub fn any(&self) -> &Endpoint {
        self.at(self.pick())
    }

    /// Sends `op` to a replica picked as [`Clients::pick`] does.
    pub async fn send(&self, op: &Op) -> Result<Answer, Status> {
        self.send_at(self.pick(), op).await
    }

    /// Sends `op` to replica `r` and waits (at most [`RPC_TIMEOUT`]) for
    /// its answer.
    pub async fn send_at(&self, r: usize, op: &Op) -> Result<Answer, Status> {
        let party = |p: usize| {
            self.at(r)
                .parties
                .get(p)
                .cloned()
                .ok_or_else(|| Status::internal(format!("no partner #{p}")))
        };
        let call = async {
            Ok(match op {
                Op::Create(p, r) => Answer::Create(
                    party(*p)?
                        .referrals
                        .create_referral(r.clone())
                        .await?
                        .into_inner(),
                ),
                Op::Redeem(p, r) => Answer::Redeem(
                    party(*p)?
                        .referrals
                        .redeem_referral(r.clone())
                        .await?
                        .into_inner(),
                ),
                Op::Publish(p, r, _) => {
                    Answer::Publish(party(*p)?.tags.publish_tags(r.clone()).await?.into_inner())
                }
                Op::Report(p, r) => Answer::Report(
                    party(*p)?
                        .conversions
                        .report_conversion(r.clone())
                        .await?
                        .into_inner(),
                ),
                Op::Update(p, r) => Answer::Update(
                    party(*p)?
                        .conversions
                        .update_conversion(r.clone())
                        .await?
                        .into_inner(),
                ),
            })
        };
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("no answer in 20 s")),
        }
    }
}

// === impl Op ===

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create(..) => "create",
            Op::Redeem(..) => "redeem",
            Op::Publish(..) => "publish",
            Op::Report(..) => "report",
            Op::Update(..) => "update",
        }
    }
}

/// Whether `s` is the precise refusal of a call made while the database
/// was out of reach: `UNAVAILABLE`, reason `STORE_UNAVAILABLE`, with a
/// retry hint.
pub fn store_unavailable(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == STORE_UNAVAILABLE)
        && s.get_details_retry_info().is_some()
}

/// Shared between the workers of one cycle.
#[derive(Debug, Clone)]
pub struct Run {
    pub clients: Clients,
    /// Set when the load ends (with one gateway: just before the SIGKILL).
    pub stop: Arc<AtomicBool>,
    pub book: Arc<Mutex<Book>>,
    pub cycle: u32,
    /// Whether a `STORE_UNAVAILABLE` refusal is booked to be retried (the
    /// replicas on PostgreSQL) rather than as an unexpected error.
    pub refusals: bool,
}

// === impl Run ===

impl Run {
    /// Sends `op` and books the outcome; `None` ends the story (answer lost,
    /// or an unexpected error).
    async fn step(&self, op: Op) -> Option<Answer> {
        let r = self.clients.pick();
        let res = self.clients.send_at(r, &op).await;
        let refused = matches!(&res, Err(s) if self.refusals && store_unavailable(s));
        let answer = self.book(op, res, self.clients.is_down(r));
        if refused {
            tokio::time::sleep(REFUSED_PAUSE).await;
        }
        answer
    }

    /// Books the outcome of `op`; `lost`: its replica was killed.
    fn book(&self, op: Op, res: Result<Answer, Status>, lost: bool) -> Option<Answer> {
        let Ok(mut book) = self.book.lock() else {
            return None;
        };
        match res {
            Ok(answer) => {
                book.acked.push(Acked {
                    op,
                    answer: answer.clone(),
                    cycle: self.cycle,
                    retried: false,
                });
                Some(answer)
            }
            Err(_) if lost => {
                book.lost.push(op);
                None
            }
            Err(s) if self.refusals && store_unavailable(&s) => {
                book.refused.push(op);
                None
            }
            Err(s) => {
                book.unexpected.push(format!(
                    "cycle {} {} {op:?}: {:?} {}",
                    self.cycle,
                    op.kind(),
                    s.code(),
                    s.message()
                ));
                None
            }
        }
    }

    /// Stories back to back until the load ends.
    pub async fn worker(self, worker: usize, mut rng: SplitMix64) {
        let mut n = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let key = format!("c{}w{worker}n{n}", self.cycle);
            n += 1;
            if rng.chance(0.7) {
                self.forward(&key, &mut rng).await;
            } else {
                self.reverse(&key, &mut rng).await;
            }
        }
    }

    /// A -> B, maybe tags about A's user, maybe B's order, maybe onward to C.
    async fn forward(&self, key: &str, rng: &mut SplitMix64) {
        let Some((referral_id, token)) = self
            .hop(A, B, key, &format!("{key}-a"), "", "room/nursery")
            .await
        else {
            return;
        };
        let Some(landed) = self.redeem(B, &token, &format!("{key}-b")).await else {
            return;
        };
        if rng.chance(0.5) {
            let mut tags = vec![tag("iab-audience", "354")];
            let stage = ["expecting", "newborn", "toddler"][rng.below(3)];
            tags.push(tag("life-stage", stage));
            let req = PublishTagsRequest {
                subject: format!("{key}-a"),
                tags,
                request_id: format!("{key}-tags"),
            };
            if self.step(Op::Publish(A, req, referral_id)).await.is_none() {
                return;
            }
        }
        if rng.chance(0.5) && !self.order(B, &format!("{key}-b"), key, rng).await {
            return;
        }
        if rng.chance(0.3) {
            let Some((_, token)) = self
                .hop(
                    B,
                    C,
                    &format!("{key}-on"),
                    &format!("{key}-b"),
                    &landed,
                    "live/glow",
                )
                .await
            else {
                return;
            };
            if self.redeem(C, &token, &format!("{key}-c")).await.is_none() {
                return;
            }
            if rng.chance(0.5) {
                self.order(C, &format!("{key}-c"), &format!("{key}-on"), rng)
                    .await;
            }
        }
    }

    /// B -> A and maybe A's order.
    async fn reverse(&self, key: &str, rng: &mut SplitMix64) {
        let Some((_, token)) = self
            .hop(B, A, key, &format!("{key}-b"), "", "live/bedtime")
            .await
        else {
            return;
        };
        if self.redeem(A, &token, &format!("{key}-a")).await.is_none() {
            return;
        }
        if rng.chance(0.6) {
            self.order(A, &format!("{key}-a"), key, rng).await;
        }
    }

    /// Mints a hop; returns (referral id, token).
    async fn hop(
        &self,
        from: usize,
        to: usize,
        key: &str,
        subject: &str,
        parent: &str,
        target: &str,
    ) -> Option<(String, String)> {
        let req = CreateReferralRequest {
            subject: subject.to_owned(),
            to_partner: PARTNERS[to].to_owned(),
            target: target.to_owned(),
            parent_referral_id: parent.to_owned(),
            request_id: format!("{key}-hop"),
        };
        match self.step(Op::Create(from, req)).await {
            Some(Answer::Create(r)) => Some((
                r.referral.map(|r| r.referral_id).unwrap_or_default(),
                r.token,
            )),
            _ => None,
        }
    }

    /// Redeems `token` as `by`; returns the referral id.
    async fn redeem(&self, by: usize, token: &str, subject: &str) -> Option<String> {
        let req = RedeemReferralRequest {
            token: token.to_owned(),
            subject: subject.to_owned(),
        };
        match self.step(Op::Redeem(by, req)).await {
            Some(Answer::Redeem(r)) => Some(r.referral.map(|r| r.referral_id).unwrap_or_default()),
            _ => None,
        }
    }

    /// Reports an order by `by`'s user `subject`, then maybe confirms or
    /// partly refunds it. False if the story must end.
    async fn order(&self, by: usize, subject: &str, key: &str, rng: &mut SplitMix64) -> bool {
        let order_id = format!("{key}-order-{}", ["a", "b", "c"][by]);
        let amount = 10_000 + 100 * rng.below(1000) as i64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let req = ReportConversionRequest {
            order_id: order_id.clone(),
            subject: subject.to_owned(),
            amount_minor: amount,
            currency: "CNY".to_owned(),
            category: ["furniture", "home-textiles", "skincare"][rng.below(3)].to_owned(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            referral_id: String::new(),
        };
        if self.step(Op::Report(by, req)).await.is_none() {
            return false;
        }
        if rng.chance(0.5) {
            let refund = rng.chance(0.5);
            let req = UpdateConversionRequest {
                order_id: order_id.clone(),
                status: if refund {
                    ConversionStatus::Refunded as i32
                } else {
                    ConversionStatus::Confirmed as i32
                },
                refund_minor: if refund { amount / 4 } else { 0 },
                request_id: format!("{order_id}-upd"),
            };
            if self.step(Op::Update(by, req)).await.is_none() {
                return false;
            }
        }
        true
    }
}

fn tag(namespace: &str, value: &str) -> Tag {
    Tag {
        namespace: namespace.to_owned(),
        value: value.to_owned(),
        ttl: None,
    }
}

/// A signed checkpoint seen while the gateway was up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub root: Vec<u8>,
    pub note: String,
}

/// Polls GetCheckpoint until the load ends (each replica up in turn),
/// keeping every distinct one.
pub async fn watch_checkpoints(clients: Clients, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for r in 0..clients.replicas.len() {
            if clients.is_down(r) {
                continue;
            }
            let mut ledger = clients.at(r).operator.clone();
            if let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(2),
                ledger.get_checkpoint(GetCheckpointRequest {}),
            )
            .await
                && let Some(c) = resp.into_inner().checkpoint
                && c.size > 0
            {
                let s = Seen {
                    size: c.size,
                    root: c.root_hash,
                    note: c.note,
                };
                // Replicas read the latest checkpoint back at their own
                // pace: one polled after another may show an older one
                // again. Two of one size that differ are both kept (and
                // cannot both be proven consistent with the final log).
                if !seen.contains(&s) {
                    seen.push(s);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}
