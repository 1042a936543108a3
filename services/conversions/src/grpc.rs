//! The gRPC adapter of `crossflow.v1.ConversionService`.

use crossflow_api::Caller;
use crossflow_proto::v1::{
    self as pb, ConversionStatus, conversion_service_server::ConversionService,
};
use crossflow_store::conversions::ConversionRecord;
use tonic::{Request, Response, Status as GrpcStatus};

use crate::{
    ConversionError, Conversions, Recorded, Releaser, ReportRequest, Status, UpdateRequest, money,
};

/// Milliseconds since the Unix epoch as a protobuf timestamp.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp in milliseconds; `None` when out of range.
fn millis(t: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(t.nanos / 1_000_000))
}

fn status_to_wire(s: &str) -> ConversionStatus {
    match Status::parse(s) {
        Ok(Status::Pending) => ConversionStatus::Pending,
        Ok(Status::Confirmed) => ConversionStatus::Confirmed,
        Ok(Status::Cancelled) => ConversionStatus::Cancelled,
        Ok(Status::Refunded) => ConversionStatus::Refunded,
        Err(_) => ConversionStatus::Unspecified,
    }
}

/// The wire form of a stored conversion.
pub fn conversion(c: ConversionRecord) -> pb::Conversion {
    // Derived fields first; the strings then move.
    let currency_exponent = u32::from(money::exponent(&c.currency).unwrap_or(0));
    let status = status_to_wire(&c.status) as i32;
    pb::Conversion {
        conversion_id: hex::encode(c.conversion_id),
        reporter: c.reporter,
        order_id: c.order_id,
        amount_minor: c.amount_minor,
        currency: c.currency,
        currency_exponent,
        category: c.category,
        occurred_at: Some(timestamp(c.occurred_at_ms)),
        status,
        commission_minor: c.commission_minor,
        refunded_minor: c.refunded_minor,
        attributed: c.touches > 0,
        attribution_model: c.model,
        touches: c.touches,
        held: c.held,
        hold_reason: c.hold_reason,
        report_index: c.report_index,
        latest_index: c.latest_index,
    }
}

/// The wire form of an answer: its conversion and ledger entry.
fn answer(r: Recorded) -> (Option<pb::Conversion>, Option<pb::LedgerEntryRef>) {
    let entry = pb::LedgerEntryRef {
        index: r.entry.index,
        leaf_hash: r.entry.leaf_hash.to_vec(),
        entry: r.entry.bytes,
    };
    (Some(conversion(r.conversion)), Some(entry))
}

fn refuse(e: ConversionError) -> GrpcStatus {
    e.problem().into_status()
}

#[tonic::async_trait]
impl<D: crossflow_store::Database> ConversionService for Conversions<D> {
    async fn report_conversion(
        &self,
        req: Request<pb::ReportConversionRequest>,
    ) -> Result<Response<pb::ReportConversionResponse>, GrpcStatus> {
        let caller = crossflow_api::partner(&req)?;
        let r = req.into_inner();
        // An invalid timestamp is checked with the other fields, so one
        // answer still names every bad field.
        let occurred_at_ms = r
            .occurred_at
            .as_ref()
            .map(|t| millis(t).unwrap_or(crate::INVALID_TIMESTAMP_MS));
        let rec = self
            .report(
                &caller,
                ReportRequest {
                    order_id: r.order_id,
                    subject: r.subject,
                    amount_minor: r.amount_minor,
                    currency: r.currency,
                    category: r.category,
                    occurred_at_ms,
                    referral_id: r.referral_id,
                },
            )
            .await
            .map_err(refuse)?;
        tracing::debug!(
            conversion_id = %hex::encode(rec.conversion.conversion_id),
            index = rec.entry.index,
            replayed = rec.replayed,
            held = rec.conversion.held,
            "conversion reported"
        );
        if !rec.replayed {
            let c = &rec.conversion;
            let commission = u64::try_from(c.commission_minor).unwrap_or(0);
            crossflow_api::metrics::get().conversion(&c.currency, &c.status, commission);
        }
        let replayed = rec.replayed;
        let (conversion, entry) = answer(rec);
        Ok(Response::new(pb::ReportConversionResponse {
            conversion,
            entry,
            replayed,
        }))
    }

    async fn update_conversion(
        &self,
        req: Request<pb::UpdateConversionRequest>,
    ) -> Result<Response<pb::UpdateConversionResponse>, GrpcStatus> {
        let caller = crossflow_api::partner(&req)?;
        let r = req.into_inner();
        let status = match ConversionStatus::try_from(r.status) {
            Ok(ConversionStatus::Pending) => Some(Status::Pending),
            Ok(ConversionStatus::Confirmed) => Some(Status::Confirmed),
            Ok(ConversionStatus::Cancelled) => Some(Status::Cancelled),
            Ok(ConversionStatus::Refunded) => Some(Status::Refunded),
            Ok(ConversionStatus::Unspecified) | Err(_) => None,
        };
        let rec = self
            .update(
                &caller,
                UpdateRequest {
                    order_id: r.order_id,
                    status,
                    refund_minor: r.refund_minor,
                    request_id: r.request_id,
                },
            )
            .await
            .map_err(refuse)?;
        if !rec.replayed {
            // Reversals move commission back; the counter only counts events.
            let c = &rec.conversion;
            crossflow_api::metrics::get().conversion(&c.currency, &c.status, 0);
        }
        let replayed = rec.replayed;
        let (conversion, entry) = answer(rec);
        Ok(Response::new(pb::UpdateConversionResponse {
            conversion,
            entry,
            replayed,
        }))
    }

    async fn get_conversion(
        &self,
        req: Request<pb::GetConversionRequest>,
    ) -> Result<Response<pb::GetConversionResponse>, GrpcStatus> {
        let caller = crossflow_api::partner(&req)?;
        let c = self
            .get(&caller, &req.get_ref().order_id)
            .await
            .map_err(refuse)?;
        Ok(Response::new(pb::GetConversionResponse {
            conversion: Some(conversion(c)),
        }))
    }

    async fn release_conversion(
        &self,
        req: Request<pb::ReleaseConversionRequest>,
    ) -> Result<Response<pb::ReleaseConversionResponse>, GrpcStatus> {
        let name = match crossflow_api::caller(&req)? {
            Caller::Operator(name) => name,
            Caller::Partner(_) => return Err(refuse(ConversionError::OperatorOnly)),
        };
        let r = req.into_inner();
        let rec = self
            .release(Releaser::Operator(&name), &r.conversion_id, &r.note)
            .await
            .map_err(refuse)?;
        tracing::info!(
            conversion_id = %r.conversion_id,
            operator = %name,
            index = rec.entry.index,
            "held conversion released"
        );
        let (conversion, entry) = answer(rec);
        Ok(Response::new(pb::ReleaseConversionResponse {
            conversion,
            entry,
        }))
    }
}
