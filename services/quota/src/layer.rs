//! The tower layer that enforces per-partner quotas before any handler runs.
//! It sits after the identity layer, which has put the [`Caller`] in the
//! request's extensions.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use crossflow_api::{Caller, Problem};
use crossflow_settings::QuotaClass;
use futures_util::future::{BoxFuture, Either, Ready, ready};
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
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    /// Local quotas decide synchronously (no allocation); Redis-backed ones
    /// need a round trip first, so the call waits in a boxed future.
    type Future = Either<
        Either<S::Future, Ready<Result<Self::Response, S::Error>>>,
        BoxFuture<'static, Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limited = match (&self.quotas, req.extensions().get::<Caller>()) {
            (Some(quotas), Some(Caller::Partner(partner))) => {
                class_of(req.uri().path()).map(|class| (quotas.clone(), partner.clone(), class))
            }
            _ => None,
        };
        let Some((quotas, partner, class)) = limited else {
            return Either::Left(Either::Left(self.inner.call(req)));
        };
        if !quotas.is_shared() {
            return match quotas.admit(&partner, class) {
                Ok(()) => Either::Left(Either::Left(self.inner.call(req))),
                Err(p) => Either::Left(Either::Right(ready(Ok(refused(p, req.uri().path()))))),
            };
        }
        // The service that was polled ready goes into the future; a clone
        // stays for the next poll_ready (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::Span::current();
        Either::Right(Box::pin(async move {
            match quotas.admit_async(&partner, class).await {
                Ok(()) => inner.call(req).await,
                Err(p) => Ok(span.in_scope(|| refused(p, req.uri().path()))),
            }
        }))
    }
}

/// The response to a call a quota refused.
fn refused(p: Problem, path: &str) -> http::Response<tonic::body::Body> {
    if let Some(q) = p.quota.first() {
        tracing::Span::current().record("quota", q.subject.as_str());
    }
    tracing::debug!(path, reason = p.reason, "refused by quota");
    p.into_status().into_http()
}
