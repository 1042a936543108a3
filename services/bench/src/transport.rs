//! The load generator's connections: tonic's generated clients and codec
//! over a hyper HTTP/2 connection, with the same mTLS a partner uses.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of the connection: every
//! request crosses an mpsc to a worker task before it reaches hyper's own
//! dispatch queue, and that hop cost the generator about a tenth of its CPU
//! (perf, ReportConversion at 256 in flight). The generator shares the two
//! cores with the servers it measures, so what it spends is taken from them.
//! [`Conn`] hands requests to hyper's queue directly, and its socket writes
//! are [`Coalesced`] like the gateway's, so requests issued together leave in
//! one write. Every scenario, the echo baseline included, uses it; the
//! end-to-end tests keep tonic's `Channel`.

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use crossflow_gateway::{coalesce::Coalesced, testbed::Testbed};
use http::{Request, Response, Uri, uri};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::body::Body;

use crate::BoxError;

/// One HTTP/2 connection to a server; clones share it.
#[derive(Debug, Clone)]
pub struct Conn {
    send: SendRequest<Body>,
}

/// The name the testbed's server certificate carries.
const SERVER_NAME: &str = "localhost";

/// Connects to `addr` as the testbed partner `name`.
pub async fn connect(bed: &Testbed, addr: SocketAddr, name: &str) -> Result<Conn, BoxError> {
    let pki = bed.dir.join("pki");
    Conn::connect(
        addr,
        &pki.join("ca.crt"),
        &pki.join(format!("{name}.crt")),
        &pki.join(format!("{name}.key")),
    )
    .await
}

// === impl Conn ===

impl Conn {
    /// Opens an mTLS connection (ALPN h2) with the given PEM files.
    pub async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Conn, BoxError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];

        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVER_NAME)?, Coalesced::new(tcp))
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!("{addr} did not negotiate h2").into());
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            // The connection ends when every clone of `send` is dropped; an
            // error here surfaces in the requests it fails.
            let _ = conn.await;
        });
        Ok(Conn { send })
    }
}

impl tower::Service<Request<Body>> for Conn {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // tonic's clients send the path only; HTTP/2 wants the scheme and
        // authority as pseudo-headers (what `Channel` adds as the origin).
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(uri::Scheme::HTTPS);
        parts.authority = Some(uri::Authority::from_static(SERVER_NAME));
        match Uri::from_parts(parts) {
            Ok(u) => *req.uri_mut() = u,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        let sent = self.send.send_request(req);
        Box::pin(async move { Ok(sent.await?) })
    }
}
