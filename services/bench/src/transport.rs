//! The load generator's connections: tonic's generated clients and codec
//! over an `h2` client connection, with the same mTLS a partner uses.
//!
//! The generator shares the two cores with the servers it measures, so what
//! it spends per request is taken from them. Two client stacks were measured
//! before this one (perf, ReportConversion at 256 in flight,
//! docs/BENCHMARKS.md): tonic's `Channel` puts a `tower::Buffer` in front of
//! the connection (an mpsc hop to a worker task per request, a tenth of the
//! generator's CPU); hyper's HTTP/2 client, used directly, still hands each
//! request through an mpsc to its connection task, spawns a task per request
//! to wait for the answer (and another to pipe the body unless it is ready at
//! once), and answers through a oneshot, which with the large futures moved
//! into those tasks was about a third of the generator's samples. [`Conn`]
//! opens the HTTP/2 stream from the calling task with `h2` itself and awaits
//! the answer there: no task, channel or hand-off per request. Requests and
//! answers are still encoded, framed and checked by tonic (its generated
//! clients, codec and status handling), and the frames on the wire are the
//! ones hyper's client sent: HEADERS, the message in one DATA frame, then an
//! empty DATA frame with END_STREAM.
//!
//! The socket (Nagle off) is wrapped in the gateway's own `Coalesced`, under
//! TLS: what the workers issue in one pass of the runtime (all woken by one
//! burst of answers) is buffered and leaves in one `send` (a few TLS
//! records: one per h2 flush), as production gRPC clients batch their
//! writes (grpc-go's writer flushes when its queue is empty; grpc-java's
//! Netty transport consolidates flushes). Written plainly, the generator
//! made about one `writev` per request, and on loopback each one also pays
//! for the receiver's TCP processing: about a quarter of the generator's CPU
//! per report (docs/BENCHMARKS.md, "Another host; coalesced client writes
//! and background checkpoints"). The gateway then reads fewer, larger
//! chunks, so its CPU per request is not comparable with figures taken
//! before (commit 3081131). This holds while a request's message is under
//! h2's 256-byte chaining threshold (echo's and CreateReferral's are 62 B;
//! a RedeemReferral carries a sealed token and may not be): a larger DATA
//! payload is chained rather than copied, and h2 flushes before it buffers
//! the next one, which through `Coalesced` is a yield and a write per
//! request. Every scenario, the echo baseline included, uses this
//! transport; the end-to-end tests keep tonic's `Channel`.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use crossflow_gateway::{
    coalesce::Coalesced,
    testbed::{ClientPki, SERVER_NAME, Testbed},
};
use h2::{RecvStream, client::SendRequest};
use http::{Request, Response, Uri, uri};
use http_body::{Body as _, Frame};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::body::Body;

use crate::BoxError;

/// One HTTP/2 connection to a server; clones share it.
#[derive(Debug, Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
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
    let tls = tls(&bed.client_pki(name))?;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let send =
            tokio::time::timeout(CONNECT_TIMEOUT, handshake(tls.clone(), addr, STREAM_WINDOW))
                .await
                .map_err(|_| format!("connecting to {addr}: no answer in {CONNECT_TIMEOUT:?}"))??;
        out.push(Conn { send });
    }
    Ok(out)
}

/// A TLS client (ALPN h2) trusting the testbed client's CA and presenting
/// its certificate and key.
fn tls(p: &ClientPki) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&p.ca)? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(&p.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&p.key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

// HTTP/2 settings as hyper's client sets them (h2's own windows are 64 KiB),
// so the gateway sees the SETTINGS it saw under hyper. The send-buffer size
// and the initial stream limit are local (not sent).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams opened before the server's SETTINGS say how many it allows.
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// TCP, TLS and HTTP/2 handshakes with `addr`, announcing `stream_window`;
/// spawns the connection's task.
async fn handshake(
    tls: TlsConnector,
    addr: SocketAddr,
    stream_window: u32,
) -> Result<SendRequest<Bytes>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // Requests issued in the same pass of the runtime leave in one write,
    // as a gRPC client's writer batches them (grpc-go's flushes when its
    // queue is empty): see the module docs.
    let tls = tls
        .connect(ServerName::try_from(SERVER_NAME)?, Coalesced::new(tcp))
        .await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!("{addr} did not negotiate h2").into());
    }
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await?;
    tokio::spawn(async move {
        // Ends when every clone of `send` and every open stream is dropped.
        // The requests it fails see only the error's kind; the cause (a TLS
        // alert, say) is here.
        if let Err(e) = conn.await {
            eprintln!("connection to {addr}: {e}");
        }
    });
    Ok(send)
}

impl tower::Service<Request<Body>> for Conn {
    type Response = Response<Answer>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing to wait for here: h2 never opens more streams than the
        // server allows (the ones beyond its limit wait in h2's own queue,
        // bounded by the generator's concurrency), and a broken connection
        // is reported by the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let send = self.send.clone();
        Box::pin(async move {
            let (mut head, mut body) = req.into_parts();
            // tonic's clients send the path only; HTTP/2 wants the scheme and
            // authority as pseudo-headers (what `Channel` adds as the origin).
            let mut uri = std::mem::take(&mut head.uri).into_parts();
            uri.scheme = Some(uri::Scheme::HTTPS);
            uri.authority = Some(uri::Authority::from_static(SERVER_NAME));
            head.uri = Uri::from_parts(uri)?;
            // `ready` on a fresh clone resolves at once unless the connection
            // has failed; h2 asks for it before every `send_request`.
            let mut send = send.ready().await?;
            let (answer, mut stream) = send.send_request(Request::from_parts(head, ()), false)?;
            // The body as hyper's client sent it: each chunk in its own DATA
            // frame, then an empty DATA frame with END_STREAM once the body
            // says it has ended (tonic's never says so before), so the server
            // decodes the frames it always did. A unary call's body is one
            // encoded message, ready at once; the answer is awaited only
            // after the whole body is sent, so a call whose server answers
            // before the client has finished sending (bidirectional
            // streaming) is not supported.
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(chunk) = frame?.into_data() {
                    stream.send_data(chunk, false)?;
                }
            }
            stream.send_data(Bytes::new(), true)?;
            Ok(answer.await?.map(Answer::new))
        })
    }
}

/// An answer's body: its DATA frames, then its trailers (where gRPC puts
/// the status). Each chunk read is given back to the stream's and the
/// connection's flow-control windows at once: h2 never sends a stream's
/// WINDOW_UPDATE by itself (when a stream's handles are dropped it returns
/// the unread bytes to the connection's window only), so an answer larger
/// than the stream's window would stall.
#[derive(Debug)]
pub struct Answer {
    stream: RecvStream,
    data_done: bool,
    done: bool,
}

impl Answer {
    fn new(stream: RecvStream) -> Answer {
        Answer {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    self.stream.flow_control().release_capacity(chunk.len())?;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.stream.poll_trailers(cx));
        self.done = true;
        Poll::Ready(trailers.transpose().map(|t| t.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.stream.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::{
        FEDERATION, PARTNERS,
        echo::{EchoServer, MAX_REPLY_BYTES, TlsFiles},
        pb::{EchoRequest, echo_service_client::EchoServiceClient},
    };

    use super::*;

    /// HTTP/2's default initial window (h2's too).
    const SMALL_WINDOW: u32 = 65_535;

    /// Each answer is 16 times the stream's flow-control window, so it only
    /// arrives whole if reading it gives the stream's window back to the
    /// server as it goes: h2 never sends a stream's WINDOW_UPDATE by itself.
    /// (The connection's window is not what this tests: h2 gives a finished
    /// stream's unread bytes back to it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_beyond_the_stream_window_arrive() {
        let bed = Testbed::create(None, FEDERATION, "127.0.0.1:0", PARTNERS, &[], "").unwrap();
        let tls_files = bed.settings().unwrap().gateway.tls;
        let echo = EchoServer::start(TlsFiles {
            ca: &tls_files.ca,
            cert: &tls_files.cert,
            key: &tls_files.key,
        })
        .await
        .unwrap();
        let send = handshake(
            tls(&bed.client_pki(PARTNERS[0])).unwrap(),
            echo.addr,
            SMALL_WINDOW,
        )
        .await
        .unwrap();
        let mut client = EchoServiceClient::new(Conn { send });
        let reply_bytes = 16 * SMALL_WINDOW;
        assert!(
            reply_bytes as usize <= MAX_REPLY_BYTES,
            "the echo caps its answers"
        );
        for _ in 0..3 {
            let ask = EchoRequest {
                payload: vec![7],
                reply_bytes,
            };
            let answer = tokio::time::timeout(Duration::from_secs(20), client.echo(ask))
                .await
                .expect("no answer in 20 s: the stream's window was not given back")
                .unwrap()
                .into_inner();
            assert_eq!(answer.payload.len(), reply_bytes as usize);
            assert!(answer.payload.iter().all(|b| *b == 7));
        }
        echo.stop().await.unwrap();
    }
}
