//! The gRPC adapter of `crossflow.v1.QuotaService`, and the reload status it
//! shows operators.

use std::sync::{Arc, Mutex};

use crossflow_api::{Caller, Kind, Problem, check::Checks};
use crossflow_proto::v1::{self as pb, quota_service_server::QuotaService};
use tonic::{Request, Response, Status};

use crate::{QuotaKind, Quotas, class_name};

/// The outcome of configuration loads, written by the gateway's reload loop
/// and shown to operators by `GetQuotaStatus`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus(Arc<Mutex<ReloadState>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadState {
    pub file: String,
    pub generation: u64,
    pub applied_at_ms: i64,
    /// Every error of the last refused file; empty after a good one.
    pub last_errors: Vec<String>,
    pub last_failure_at_ms: Option<i64>,
}

// === impl ReloadStatus ===

impl ReloadStatus {
    /// A configuration from `file` is now running.
    pub fn applied(&self, file: &str, at_ms: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.file = file.to_owned();
            s.generation += 1;
            s.applied_at_ms = at_ms;
            s.last_errors.clear();
        }
    }

    /// The file was read and found to match the running configuration (or
    /// to differ only in ways already applied): clears a past failure.
    pub fn unchanged(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.last_errors.clear();
        }
    }

    /// A file was refused; the running configuration stays.
    pub fn failed(&self, errors: Vec<String>, at_ms: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.last_errors = errors;
            s.last_failure_at_ms = Some(at_ms);
        }
    }

    pub fn get(&self) -> ReloadState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `crossflow.v1.QuotaService`.
#[derive(Debug, Clone)]
pub struct QuotaApi {
    quotas: Arc<Quotas>,
    reload: ReloadStatus,
}

impl QuotaApi {
    pub fn new(quotas: Arc<Quotas>, reload: ReloadStatus) -> QuotaApi {
        QuotaApi { quotas, reload }
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn kind(k: QuotaKind) -> pb::QuotaKind {
    match k {
        QuotaKind::Rate => pb::QuotaKind::Rate,
        QuotaKind::DailyCap => pb::QuotaKind::DailyCap,
        QuotaKind::ReferralsPerDay => pb::QuotaKind::ReferralsPerDay,
        QuotaKind::Reciprocity => pb::QuotaKind::Reciprocity,
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn get_quota_status(
        &self,
        req: Request<pb::GetQuotaStatusRequest>,
    ) -> Result<Response<pb::GetQuotaStatusResponse>, Status> {
        let caller = crossflow_api::caller(&req)?;
        let asked = req.into_inner().partner;
        if !asked.is_empty() {
            let mut c = Checks::new();
            c.slug("partner", &asked);
            c.finish().map_err(Problem::into_status)?;
        }
        let (partner, operator) = match &caller {
            Caller::Partner(p) if asked.is_empty() || asked == *p => (p.clone(), false),
            Caller::Partner(_) => {
                return Err(Problem::new(
                    Kind::PermissionDenied,
                    "OTHER_PARTNER",
                    "a partner can only see its own quotas; leave `partner` empty",
                )
                .into_status());
            }
            Caller::Operator(_) if asked.is_empty() => {
                return Err(Problem::field(
                    "PARTNER_REQUIRED",
                    "partner",
                    "an operator must name the partner to report on",
                )
                .into_status());
            }
            // Without this an operator's typo reads as a partner without
            // quotas.
            Caller::Operator(_) if !self.quotas.knows(&asked) => {
                return Err(Problem::field(
                    "UNKNOWN_PARTNER",
                    "partner",
                    format!("partner: no configured partner {asked:?}"),
                )
                .with("partner", asked)
                .into_status());
            }
            Caller::Operator(_) => (asked, true),
        };
        let r = self.quotas.report_async(&partner).await;
        let config = operator.then(|| {
            let s = self.reload.get();
            pb::ConfigStatus {
                file: s.file,
                generation: s.generation,
                applied_at: Some(timestamp(s.applied_at_ms)),
                last_errors: s.last_errors,
                last_failure_at: s.last_failure_at_ms.map(timestamp),
            }
        });
        Ok(Response::new(pb::GetQuotaStatusResponse {
            partner: r.partner,
            day: r.day,
            timezone: r.timezone,
            quotas: r
                .quotas
                .into_iter()
                .map(|q| pb::QuotaStatus {
                    quota: q.quota,
                    kind: kind(q.kind) as i32,
                    rpc_class: q.class.map(class_name).unwrap_or_default().to_owned(),
                    agreement_id: q.agreement_id,
                    to_partner: q.to_partner,
                    limit: q.limit,
                    remaining: q.remaining,
                    reset_time: Some(timestamp(q.reset_at_ms)),
                    rate_per_sec: q.rate_per_sec,
                    shadow: q.shadow,
                    used: q.used,
                })
                .collect(),
            config,
        }))
    }
}
