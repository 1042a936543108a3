//! `report-conversion`: homedecor-live reports orders of viewers that
//! mombaby-live referred to it, end to end through gRPC.
//!
//! Preparation (not timed): mombaby-live mints a hop for each of [`BUYERS`]
//! viewers and homedecor-live redeems it, so every buyer has one landing at
//! the reporter. The timed part is ReportConversion as homedecor-live,
//! round-robin over those buyers, each with a distinct order id: every report
//! is attributed (one touch), computes its postings, and answers only once
//! its conversion row and ledger entry are durable. An answer that is not
//! attributed, or is held, counts as an error, so a fixture that stopped
//! attributing could not pass as fast.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crossflow_proto::v1::{
    RedeemReferralRequest, ReportConversionRequest,
    conversion_service_client::ConversionServiceClient,
    referral_service_client::ReferralServiceClient,
};

use crate::{
    BoxError,
    load::{Call, Scenario},
    scenario::{self, Built, DESTINATION, Env, ORIGIN, pick},
    transport::Conn,
};

/// Buyers the reports go round-robin over (one landing each).
const BUYERS: u64 = 1_000;

/// Distinguishes the subjects and order ids of each build (one per round).
static BUILDS: AtomicU64 = AtomicU64::new(0);

fn buyer(build: u64, i: u64) -> String {
    format!("bench-buyer-{build}-{i:06}")
}

/// Mints and redeems one referred buyer per request.
struct Land {
    build: u64,
    origin: Vec<ReferralServiceClient<Conn>>,
    destination: Vec<ReferralServiceClient<Conn>>,
    landed: Arc<AtomicU64>,
}

impl Scenario for Land {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        if seq >= BUYERS {
            return None;
        }
        let mut o = pick(&self.origin, lane);
        let mut d = pick(&self.destination, lane);
        let subject = format!("bench-viewer-{}-{seq:06}", self.build);
        let landed_as = buyer(self.build, seq);
        let landed = self.landed.clone();
        Some(Box::pin(async move {
            let token = o
                .create_referral(scenario::referral_to_destination(subject))
                .await?
                .into_inner()
                .token;
            d.redeem_referral(RedeemReferralRequest {
                token,
                subject: landed_as,
            })
            .await?;
            landed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }))
    }
}

/// The timed reports.
struct Report {
    build: u64,
    clients: Vec<ConversionServiceClient<Conn>>,
}

impl Scenario for Report {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let req = ReportConversionRequest {
            order_id: format!("bench-order-{}-{seq:09}", self.build),
            subject: buyer(self.build, seq % BUYERS),
            amount_minor: 12_990,
            currency: "CNY".to_owned(),
            category: "home-decor".to_owned(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(now.as_secs()).ok()?,
                nanos: i32::try_from(now.subsec_nanos()).ok()?,
            }),
            referral_id: String::new(),
        };
        let mut c = pick(&self.clients, lane);
        Some(Box::pin(async move {
            let answer = c.report_conversion(req).await?.into_inner();
            let conversion = answer
                .conversion
                .ok_or("ReportConversion without a conversion")?;
            if !conversion.attributed || conversion.held || answer.entry.is_none() {
                return Err(format!(
                    "order {} not attributed as expected (attributed {}, held {} {:?})",
                    conversion.order_id,
                    conversion.attributed,
                    conversion.held,
                    conversion.hold_reason
                )
                .into());
            }
            Ok(())
        }))
    }
}

pub fn build(env: &Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + '_>> {
    Box::pin(async move {
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let destination_conns = env.gateway_conns(DESTINATION).await?;
        let land = Arc::new(Land {
            build,
            origin: env
                .gateway_conns(ORIGIN)
                .await?
                .into_iter()
                .map(ReferralServiceClient::new)
                .collect(),
            destination: destination_conns
                .iter()
                .cloned()
                .map(ReferralServiceClient::new)
                .collect(),
            landed: Arc::default(),
        });
        let started = std::time::Instant::now();
        scenario::prepare(
            env,
            land.clone(),
            BUYERS,
            "preparing buyers for ReportConversion",
        )
        .await?;
        let landed = land.landed.load(Ordering::Relaxed);
        if landed != BUYERS {
            return Err(format!("only {landed} of {BUYERS} buyers landed").into());
        }
        let note = format!(
            "{landed} buyers referred by {ORIGIN} and landed at {DESTINATION} in {:.1} s (not timed); each report: one touch, distinct order id",
            started.elapsed().as_secs_f64()
        );
        Ok(Built {
            scenario: Arc::new(Report {
                build,
                clients: destination_conns
                    .into_iter()
                    .map(ConversionServiceClient::new)
                    .collect(),
            }),
            note: Some(note),
        })
    })
}
