//! The gRPC adapter of `crossflow.v1.ReferralService`.

use crossflow_identity::{ReferralClaims, ReferralId};
use crossflow_proto::v1::{self as pb, ReferralState, referral_service_server::ReferralService};
use crossflow_store::{Landing, LandingStore, OptOutLookup};
use tonic::{Request, Response, Status};

use crate::{CreateRequest, Referrals};

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Fills the domain fields of the gateway's per-RPC span (a no-op when the
/// span does not declare them).
fn record_span(referral_id: &str, agreement_id: &str) {
    let span = tracing::Span::current();
    span.record("referral_id", referral_id);
    span.record("agreement_id", agreement_id);
}

fn minted(c: &ReferralClaims, agreement_id: &str) -> pb::Referral {
    pb::Referral {
        referral_id: c.referral_id.to_string(),
        from_partner: c.from.clone(),
        to_partner: c.to.clone(),
        chain: c.chain.clone(),
        hop: c.hop,
        parent_referral_id: c.parent.map(|p| p.to_string()).unwrap_or_default(),
        target: c.target.clone(),
        agreement_id: agreement_id.to_owned(),
        issued_at: Some(timestamp(c.issued_at_ms)),
        expires_at: Some(timestamp(c.expires_at_ms)),
        state: ReferralState::Minted as i32,
        redeemed_at: None,
    }
}

/// The wire form of a landing.
pub fn redeemed(l: &Landing) -> pb::Referral {
    pb::Referral {
        referral_id: ReferralId(l.referral_id).to_string(),
        from_partner: l.from.clone(),
        to_partner: l.to.clone(),
        chain: l.chain.clone(),
        hop: l.hop,
        parent_referral_id: l
            .parent
            .map(|p| ReferralId(p).to_string())
            .unwrap_or_default(),
        target: l.target.clone(),
        agreement_id: l.agreement_id.clone(),
        issued_at: Some(timestamp(l.issued_at_ms)),
        expires_at: Some(timestamp(l.expires_at_ms)),
        state: ReferralState::Redeemed as i32,
        redeemed_at: Some(timestamp(l.redeemed_at_ms)),
    }
}

#[tonic::async_trait]
impl<S: LandingStore + OptOutLookup> ReferralService for Referrals<S> {
    async fn create_referral(
        &self,
        req: Request<pb::CreateReferralRequest>,
    ) -> Result<Response<pb::CreateReferralResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let r = req.into_inner();
        let m = self
            .create(
                &caller,
                CreateRequest {
                    subject: r.subject,
                    to_partner: r.to_partner,
                    target: r.target,
                    parent_referral_id: r.parent_referral_id,
                    request_id: r.request_id,
                },
            )
            .await
            .map_err(|e| e.problem().into_status())?;
        record_span(&m.claims.referral_id.to_string(), &m.agreement_id);
        crossflow_api::metrics::get().hop_minted(&m.agreement_id);
        tracing::debug!(referral_id = %m.claims.referral_id, agreement_id = %m.agreement_id, hop = m.claims.hop, "referral minted");
        Ok(Response::new(pb::CreateReferralResponse {
            referral: Some(minted(&m.claims, &m.agreement_id)),
            token: m.token,
        }))
    }

    async fn redeem_referral(
        &self,
        req: Request<pb::RedeemReferralRequest>,
    ) -> Result<Response<pb::RedeemReferralResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let r = req.into_inner();
        let l = self
            .redeem(&caller, &r.token, &r.subject)
            .await
            .map_err(|e| e.problem().into_status())?;
        record_span(
            &ReferralId(l.landing.referral_id).to_string(),
            &l.landing.agreement_id,
        );
        if l.new {
            crossflow_api::metrics::get().hop_redeemed(&l.landing.agreement_id);
        }
        tracing::debug!(referral_id = %ReferralId(l.landing.referral_id), agreement_id = %l.landing.agreement_id, new = l.new, "referral redeemed");
        Ok(Response::new(pb::RedeemReferralResponse {
            referral: Some(redeemed(&l.landing)),
            pseudonym: Some(pb::Pseudonym {
                value: l.pseudonym.value,
                epoch: l.pseudonym.epoch,
            }),
        }))
    }

    async fn get_referral(
        &self,
        req: Request<pb::GetReferralRequest>,
    ) -> Result<Response<pb::GetReferralResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let l = self
            .get(&caller, &req.get_ref().referral_id)
            .await
            .map_err(|e| e.problem().into_status())?;
        Ok(Response::new(pb::GetReferralResponse {
            referral: Some(redeemed(&l)),
        }))
    }
}
