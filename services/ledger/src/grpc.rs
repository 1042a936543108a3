//! The gRPC adapter of `crossflow.v1.LedgerService`.

use crossflow_api::{Problem, check::Checks};
use crossflow_proto::v1::{self as pb, get_receipt_request, ledger_service_server::LedgerService};
use crossflow_store::ledger::{Entry, LedgerStore};
use tonic::{Request, Response, Status};

use crate::log::{Ledger, LedgerError, Signed};

/// `next_page_token` for a page that ends before `next`. Opaque to clients;
/// the prefix lets a token format change later be told apart.
fn page_token(next: u64) -> String {
    format!("i{next}")
}

fn parse_page_token(token: &str) -> Result<u64, LedgerError> {
    token
        .strip_prefix('i')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| i64::try_from(*n).is_ok())
        // Only the exact spelling page_token() writes ("i+5", "i05" parse).
        .filter(|n| page_token(*n) == token)
        .ok_or_else(|| LedgerError::InvalidField {
            field: "page_token",
            message: "is not a next_page_token this service issued".into(),
        })
}

fn checkpoint(c: &Signed) -> pb::Checkpoint {
    pb::Checkpoint {
        note: c.note.clone(),
        size: c.size,
        root_hash: c.root.to_vec(),
    }
}

fn entry(e: Entry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        index: e.index,
        entry: e.bytes,
        leaf_hash: e.leaf_hash.to_vec(),
    }
}

fn status(e: LedgerError) -> Status {
    e.problem().into_status()
}

#[tonic::async_trait]
impl<S: LedgerStore + Clone> LedgerService for Ledger<S> {
    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        crossflow_api::caller(&req)?;
        let c = self.checkpoint().map_err(status)?;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: Some(checkpoint(&c)),
        }))
    }

    async fn get_receipt(
        &self,
        req: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let caller = crossflow_api::caller(&req)?;
        let index = match &req.get_ref().entry {
            Some(get_receipt_request::Entry::Index(i)) => *i,
            Some(get_receipt_request::Entry::OrderId(o)) => {
                // ReportConversion's rule: an id no order can have is a bad
                // field, not an unknown order.
                let mut c = Checks::new();
                if o.is_empty() {
                    c.violation("order_id", "must not be empty");
                } else {
                    c.request_id("order_id", o);
                }
                c.finish().map_err(Problem::into_status)?;
                self.resolve(&caller, o).await.map_err(status)?
            }
            None => {
                return Err(status(LedgerError::InvalidField {
                    field: "entry",
                    message: "set either index or order_id".into(),
                }));
            }
        };
        let issued = self
            .receipt(&caller, index, self.receipt_wait())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetReceiptResponse {
            receipt: issued.text,
            entry: Some(entry(issued.entry)),
            checkpoint: Some(checkpoint(&issued.checkpoint)),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        crossflow_api::caller(&req)?;
        let r = req.into_inner();
        let c = self
            .consistency(r.from_size, r.to_size)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            proof: c.proof.iter().map(|h| h.to_vec()).collect(),
            from_checkpoint: c.from.as_ref().map(checkpoint),
            to_checkpoint: Some(checkpoint(&c.to)),
        }))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let caller = crossflow_api::caller(&req)?;
        let r = req.into_inner();
        let since = match r.page_token.as_str() {
            "" => r.since_index,
            t => parse_page_token(t).map_err(status)?,
        };
        let page = self
            .list(&caller, since, r.page_size)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: page.entries.into_iter().map(entry).collect(),
            next_page_token: page.next.map(page_token).unwrap_or_default(),
        }))
    }

    async fn get_log_key(
        &self,
        req: Request<pb::GetLogKeyRequest>,
    ) -> Result<Response<pb::GetLogKeyResponse>, Status> {
        crossflow_api::caller(&req)?;
        Ok(Response::new(pb::GetLogKeyResponse {
            verifier_key: self.verifier().to_string(),
            origin: self.origin().to_owned(),
        }))
    }
}
