//! The identity edge: a tower layer that turns the verified client
//! certificate into a [`Caller`] in the request's extensions.
//!
//! rustls has already verified the chain against the configured CA during the
//! handshake (no certificate, no connection). Here we read only the SPIFFE URI
//! SAN, and for `crossflow.v1` methods require a configured, enabled partner
//! (or an operator). Health and reflection accept any certificate the CA
//! signed, so standard tooling works with any partner's credentials.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use crossflow_api::{Caller, Kind, Problem};
use crossflow_identity::{Principal, principal_from_cert};
use crossflow_settings::SettingsHandle;
use futures_util::future::{Either, Ready, ready};
use tonic::transport::{
    CertificateDer,
    server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

/// Most connections whose parsed principal is remembered.
const CACHE_LIMIT: usize = 4096;

/// A connection's verified certificate chain, as tonic hands it to every
/// request of that connection (one `Arc` per TLS connection).
type Chain = Arc<Vec<CertificateDer<'static>>>;

/// Layer that authenticates every request.
#[derive(Debug, Clone)]
pub struct IdentityLayer {
    settings: SettingsHandle,
    // Parsing X.509 per request costs more than the rest of a small RPC, and
    // so does hashing the whole DER to find it in a cache. tonic gives every
    // request of a TLS connection the same `Arc` of the peer's chain, so the
    // principal is parsed once per connection and found again by that
    // `Arc`'s address. The cache holds a clone of the `Arc`, so the address
    // cannot be reused by another connection while it is a key.
    cache: Arc<Mutex<HashMap<usize, (Chain, Principal)>>>,
}

impl IdentityLayer {
    pub fn new(settings: SettingsHandle) -> IdentityLayer {
        IdentityLayer {
            settings,
            cache: Arc::default(),
        }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = IdentityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdentityService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service produced by [`IdentityLayer`].
#[derive(Debug, Clone)]
pub struct IdentityService<S> {
    inner: S,
    layer: IdentityLayer,
}

impl<S, B> Service<http::Request<B>> for IdentityService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.layer.authorize(&req) {
            Ok(caller) => {
                // The telemetry layer's per-RPC span, if it declares it.
                tracing::Span::current().record("partner", tracing::field::display(&caller));
                req.extensions_mut().insert(caller);
                Either::Left(self.inner.call(req))
            }
            Err(p) => {
                tracing::info!(
                    path = req.uri().path(),
                    reason = p.reason,
                    "refused at the edge"
                );
                Either::Right(ready(Ok(p.into_status().into_http())))
            }
        }
    }
}

impl IdentityLayer {
    fn authorize<B>(&self, req: &http::Request<B>) -> Result<Caller, Problem> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .ok_or_else(no_client_cert)?;
        let settings = self.settings.get();
        let principal = self.principal(certs, &settings.gateway.federation)?;
        let caller = match principal {
            Principal::Partner(id) => Caller::Partner(id),
            Principal::Operator(name) => Caller::Operator(name),
        };
        if !req.uri().path().starts_with("/crossflow.") {
            return Ok(caller);
        }
        if let Caller::Partner(id) = &caller {
            match settings.partner(id) {
                None => {
                    return Err(Problem::new(
                        Kind::PermissionDenied,
                        "UNKNOWN_PARTNER",
                        format!("partner {id:?} is not configured in this federation"),
                    )
                    .with("partner", id.clone()));
                }
                Some(p) if !p.enabled => {
                    return Err(Problem::new(
                        Kind::PermissionDenied,
                        "PARTNER_DISABLED",
                        format!("partner {id:?} is disabled"),
                    )
                    .with("partner", id.clone()));
                }
                Some(_) => {}
            }
        }
        Ok(caller)
    }

    /// The principal of a connection's chain; an empty chain is
    /// `NO_CLIENT_CERT` (never cached, so found only here).
    fn principal(&self, chain: Chain, federation: &str) -> Result<Principal, Problem> {
        let key = Arc::as_ptr(&chain) as usize;
        if let Some(p) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&key).map(|(_, p)| p.clone()))
        {
            return Ok(p);
        }
        let leaf = chain.first().ok_or_else(no_client_cert)?;
        let p = principal_from_cert(leaf.as_ref(), federation)
            .map_err(|e| Problem::new(Kind::PermissionDenied, "BAD_IDENTITY", e.to_string()))?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(key, (chain, p.clone()));
        }
        Ok(p)
    }
}

/// A TLS connection without a client certificate.
fn no_client_cert() -> Problem {
    Problem::new(
        Kind::Unauthenticated,
        "NO_CLIENT_CERT",
        "no client certificate was presented",
    )
}
