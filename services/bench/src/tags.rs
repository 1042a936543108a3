//! `get-referred-user-tags`: homedecor-live reads the tags of users
//! mombaby-live referred to it.
//!
//! Preparation (not timed): mombaby-live publishes tags for [`USERS`] users,
//! mints a hop for each to homedecor-live, and homedecor-live redeems it. The
//! timed part is GetReferredUserTags as homedecor-live, round-robin over those
//! referrals. Each read also records a disclosure-audit row (durable), so it
//! is a write path, like RedeemReferral.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crossflow_proto::v1::{
    GetReferredUserTagsRequest, PublishTagsRequest, RedeemReferralRequest, Tag,
    referral_service_client::ReferralServiceClient, tag_service_client::TagServiceClient,
};

use crate::{
    BoxError,
    load::{Call, Scenario},
    scenario::{self, Built, DESTINATION, Env, ORIGIN, pick},
    transport::Conn,
};

/// Referred users the reads go round-robin over.
const USERS: u64 = 1_000;

/// Distinguishes the subjects of each build (one per round).
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// The tags published for every user: two in the flow's scope
/// (`iab-audience`, `life-stage`) and one outside it (`budget-band`).
fn tags() -> Vec<Tag> {
    [
        ("iab-audience", "354"),
        ("life-stage", "expecting"),
        ("budget-band", "premium"),
    ]
    .into_iter()
    .map(|(namespace, value)| Tag {
        namespace: namespace.to_owned(),
        value: value.to_owned(),
        ttl: None,
    })
    .collect()
}

/// Publishes, mints and redeems one referred user per request.
struct Prepare {
    build: u64,
    origin_tags: Vec<TagServiceClient<Conn>>,
    origin: Vec<ReferralServiceClient<Conn>>,
    destination: Vec<ReferralServiceClient<Conn>>,
    referrals: Arc<Mutex<Vec<String>>>,
}

impl Scenario for Prepare {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        if seq >= USERS {
            return None;
        }
        let subject = format!("bench-tagged-{}-{seq:06}", self.build);
        let landed = format!("bench-tags-landed-{}-{seq:06}", self.build);
        let mut t = pick(&self.origin_tags, lane);
        let mut o = pick(&self.origin, lane);
        let mut d = pick(&self.destination, lane);
        let referrals = self.referrals.clone();
        Some(Box::pin(async move {
            t.publish_tags(PublishTagsRequest {
                subject: subject.clone(),
                tags: tags(),
                request_id: String::new(),
            })
            .await?;
            let created = o
                .create_referral(scenario::referral_to_destination(subject))
                .await?
                .into_inner();
            d.redeem_referral(RedeemReferralRequest {
                token: created.token,
                subject: landed,
            })
            .await?;
            let id = created
                .referral
                .ok_or("CreateReferral without a referral")?
                .referral_id;
            referrals
                .lock()
                .map_err(|_| "referral pool poisoned")?
                .push(id);
            Ok(())
        }))
    }
}

/// The timed reads.
struct Read {
    clients: Vec<TagServiceClient<Conn>>,
    referrals: Vec<String>,
}

impl Scenario for Read {
    fn request(&self, lane: usize, seq: u64) -> Option<Call> {
        let i = usize::try_from(seq % self.referrals.len() as u64).ok()?;
        let req = GetReferredUserTagsRequest {
            referral_id: self.referrals[i].clone(),
        };
        let mut c = pick(&self.clients, lane);
        Some(Box::pin(async move {
            c.get_referred_user_tags(req).await?;
            Ok(())
        }))
    }
}

pub fn build(env: &Env) -> Pin<Box<dyn Future<Output = Result<Built, BoxError>> + '_>> {
    Box::pin(async move {
        let origin_conns = env.gateway_conns(ORIGIN).await?;
        let destination_conns = env.gateway_conns(DESTINATION).await?;
        let prepare = Arc::new(Prepare {
            build: BUILDS.fetch_add(1, Ordering::Relaxed),
            origin_tags: origin_conns
                .iter()
                .cloned()
                .map(TagServiceClient::new)
                .collect(),
            origin: origin_conns
                .into_iter()
                .map(ReferralServiceClient::new)
                .collect(),
            destination: destination_conns
                .iter()
                .cloned()
                .map(ReferralServiceClient::new)
                .collect(),
            referrals: Arc::default(),
        });
        let started = std::time::Instant::now();
        scenario::prepare(
            env,
            prepare.clone(),
            USERS,
            "preparing referred users for GetReferredUserTags",
        )
        .await?;
        let referrals = std::mem::take(
            &mut *prepare
                .referrals
                .lock()
                .map_err(|_| "referral pool poisoned")?,
        );
        if referrals.is_empty() {
            return Err("no referred users prepared for GetReferredUserTags".into());
        }
        let note = format!(
            "{} users tagged (3 tags, 2 in scope), referred and redeemed through the gateway in {:.1} s (not timed)",
            referrals.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(Built {
            scenario: Arc::new(Read {
                clients: destination_conns
                    .into_iter()
                    .map(TagServiceClient::new)
                    .collect(),
                referrals,
            }),
            note: Some(note),
        })
    })
}
