//! The gRPC adapter of `crossflow.v1.TagService`.

use crossflow_proto::v1::{self as pb, tag_service_server::TagService};
use crossflow_referrals::grpc::timestamp;
use crossflow_store::tags::{StoredTag, TagStore};
use tonic::{Request, Response, Status};

use crate::{TagInput, Tags};

fn stored(t: StoredTag) -> pb::StoredTag {
    pb::StoredTag {
        namespace: t.namespace,
        value: t.value,
        expires_at: Some(timestamp(t.expires_at_ms)),
    }
}

fn pseudonym(p: crossflow_identity::Pseudonym) -> pb::Pseudonym {
    pb::Pseudonym {
        value: p.value,
        epoch: p.epoch,
    }
}

/// Whole non-negative seconds, or `Err` (nanos or a negative value).
fn ttl(d: Option<prost_types::Duration>) -> Option<Result<u64, ()>> {
    d.map(|d| {
        if d.nanos != 0 {
            return Err(());
        }
        u64::try_from(d.seconds).map_err(|_| ())
    })
}

#[tonic::async_trait]
impl<S: TagStore> TagService for Tags<S> {
    async fn publish_tags(
        &self,
        req: Request<pb::PublishTagsRequest>,
    ) -> Result<Response<pb::PublishTagsResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let r = req.into_inner();
        let tags: Vec<TagInput> = r
            .tags
            .into_iter()
            .map(|t| TagInput {
                namespace: t.namespace,
                value: t.value,
                ttl_secs: ttl(t.ttl),
            })
            .collect();
        let stored_tags = self
            .publish(&caller, &r.subject, &tags, &r.request_id)
            .await
            .map_err(|e| e.problem().into_status())?;
        Ok(Response::new(pb::PublishTagsResponse {
            tags: stored_tags.into_iter().map(stored).collect(),
        }))
    }

    async fn get_referred_user_tags(
        &self,
        req: Request<pb::GetReferredUserTagsRequest>,
    ) -> Result<Response<pb::GetReferredUserTagsResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let r = self
            .read(&caller, &req.get_ref().referral_id)
            .await
            .map_err(|e| e.problem().into_status())?;
        if !r.tags.is_empty() {
            crossflow_api::metrics::get().tags_disclosed(&r.agreement_id, r.tags.len() as u64);
        }
        Ok(Response::new(pb::GetReferredUserTagsResponse {
            pseudonym: Some(pseudonym(r.pseudonym)),
            previous_pseudonyms: r.previous_pseudonyms.into_iter().map(pseudonym).collect(),
            tags: r.tags.into_iter().map(stored).collect(),
            scopes: r.scopes.into_iter().collect(),
            origin_partner: r.origin,
            agreement_id: r.agreement_id,
        }))
    }

    async fn opt_out(
        &self,
        req: Request<pb::OptOutRequest>,
    ) -> Result<Response<pb::OptOutResponse>, Status> {
        let caller = crossflow_api::partner(&req)?;
        let r = Tags::opt_out(self, &caller, &req.get_ref().subject)
            .await
            .map_err(|e| e.problem().into_status())?;
        tracing::debug!(partner = %caller, removed = r.tags_removed, "user opted out of tag sharing");
        Ok(Response::new(pb::OptOutResponse {
            tags_removed: u32::try_from(r.tags_removed).unwrap_or(u32::MAX),
            newly_opted_out: r.newly_opted_out,
        }))
    }
}
