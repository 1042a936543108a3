//! The tower layer that enforces per-partner quotas before any handler runs.
//! It sits after the identity layer, which has put the [`Caller`] in the
//! request's extensions.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use crossflow_api::Caller;
use crossflow_settings::QuotaClass;
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::Quotas;

/// The RPC class a gRPC method path counts against, if any. QuotaService,
/// health and reflection are never limited.
pub fn class_of(path: &str) -> Option<QuotaClass> {
    let service = path.strip_prefix("/crossflow.v1.")?.split('/').next()?;
    match service {
        "ReferralService" => Some(QuotaClass::Referrals),
        "TagService" => Some(QuotaClass::Tags),
        "ConversionService" => Some(QuotaClass::Conversions),
        "LedgerService" => Some(QuotaClass::LedgerReads),
        _ => None,
    }
}

/// Layer enforcing [`Quotas`] on partner calls.
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    quotas: Option<Arc<Quotas>>,
}

impl QuotaLayer {
    pub fn new(quotas: Arc<Quotas>) -> QuotaLayer {
        QuotaLayer {
            quotas: Some(quotas),
        }
    }

    /// A layer that admits everything (benchmarks: the cost of the layer).
    pub fn disabled() -> QuotaLayer {
        QuotaLayer { quotas: None }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaGate {
            inner,
            quotas: self.quotas.clone(),
        }
    }
}

/// Service produced by [`QuotaLayer`].
#[derive(Debug, Clone)]
pub struct QuotaGate<S> {
    inner: S,
    quotas: Option<Arc<Quotas>>,
}

impl<S, B> Service<http::Request<B>> for QuotaGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(quotas) = &self.quotas
            && let Some(Caller::Partner(partner)) = req.extensions().get::<Caller>()
            && let Some(class) = class_of(req.uri().path())
            && let Err(p) = quotas.admit(partner, class)
        {
            if let Some(q) = p.quota.first() {
                tracing::Span::current().record("quota", q.subject.as_str());
            }
            tracing::debug!(
                path = req.uri().path(),
                reason = p.reason,
                "refused by quota"
            );
            return Either::Right(ready(Ok(p.into_status().into_http())));
        }
        Either::Left(self.inner.call(req))
    }
}
