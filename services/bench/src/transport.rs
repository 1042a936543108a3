//! The load generator's connections: tonic's generated clients and codec
//! over a hyper HTTP/2 connection, with the same mTLS a partner uses.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of the connection: every
//! request crosses an mpsc to a worker task before it reaches hyper's own
//! dispatch queue, and that hop cost the generator about a tenth of its CPU
//! (perf, ReportConversion at 256 in flight). The generator shares the two
//! cores with the servers it measures, so what it spends is taken from them.
//! [`Conn`] hands requests to hyper's queue directly. Its socket is a plain
//! `TcpStream` (Nagle off): h2 writes each time its connection task runs, as
//! under tonic. Coalescing these writes as the gateway does its own
//! (`crossflow_gateway::coalesce`) was tried and measured: it did not make
//! ReportConversion faster and changed what the gateway receives
//! (docs/BENCHMARKS.md). Every scenario, the echo baseline included, uses
//! this transport; the end-to-end tests keep tonic's `Channel`.

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use crossflow_gateway::testbed::{SERVER_NAME, Testbed};
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

/// Longest a connection (TCP, TLS and HTTP/2 handshakes) may take, as with
/// the testbed's `Channel`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to `addr` as the testbed client `name`.
pub async fn connect(bed: &Testbed, addr: SocketAddr, name: &str) -> Result<Conn, BoxError> {
    let mut conns = connect_n(bed, addr, name, 1).await?;
    conns.pop().ok_or_else(|| "no connection".into())
}

/// `n` (at least one) connections to `addr` as the testbed client `name`,
/// sharing one TLS configuration: its PEM files are read once.
pub async fn connect_n(
    bed: &Testbed,
    addr: SocketAddr,
    name: &str,
    n: usize,
) -> Result<Vec<Conn>, BoxError> {
    let p = bed.client_pki(name);
    let tls = tls(&p.ca, &p.cert, &p.key)?;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let send = tokio::time::timeout(CONNECT_TIMEOUT, handshake(tls.clone(), addr))
            .await
            .map_err(|_| format!("connecting to {addr}: no answer in {CONNECT_TIMEOUT:?}"))??;
        out.push(Conn { send });
    }
    Ok(out)
}

/// A TLS client (ALPN h2) trusting `ca`, presenting `cert` and `key`.
fn tls(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConnector, BoxError> {
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
    Ok(TlsConnector::from(Arc::new(config)))
}

/// TCP, TLS and HTTP/2 handshakes with `addr`; spawns the connection's task.
async fn handshake(tls: TlsConnector, addr: SocketAddr) -> Result<SendRequest<Body>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tls.connect(ServerName::try_from(SERVER_NAME)?, tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!("{addr} did not negotiate h2").into());
    }
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(async move {
        // Ends when every clone of `send` is dropped. The requests it
        // fails see only "closed"; the cause (a TLS alert, say) is here.
        if let Err(e) = conn.await {
            eprintln!("connection to {addr}: {e}");
        }
    });
    Ok(send)
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
