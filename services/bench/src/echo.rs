//! The baseline: a bare tonic echo service behind exactly the gateway's TLS
//! setup (same certificate, same required client CA, same request timeout,
//! Nagle off on accepted sockets), and nothing else.

use std::{net::SocketAddr, path::Path, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

use crate::{
    BoxError,
    pb::{
        EchoRequest, EchoResponse,
        echo_service_server::{EchoService, EchoServiceServer},
    },
};

/// The gateway's own request timeout (server.rs), so both servers carry the
/// same tower layer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer the echo will build.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// TLS files of the server under test.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// An echo server running in the background.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

#[derive(Debug, Clone, Copy)]
struct Echo;

// === impl Echo ===

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let req = req.into_inner();
        let want = (req.reply_bytes as usize).min(MAX_REPLY_BYTES);
        let mut payload = Vec::with_capacity(want);
        if req.payload.is_empty() {
            payload.resize(want, 0);
        }
        while payload.len() < want {
            let take = (want - payload.len()).min(req.payload.len());
            payload.extend_from_slice(&req.payload[..take]);
        }
        Ok(Response::new(EchoResponse { payload }))
    }
}

// === impl EchoServer ===

impl EchoServer {
    /// Serves the echo on `127.0.0.1:0` with the gateway's TLS files.
    pub async fn start(tls: TlsFiles<'_>) -> Result<EchoServer, BoxError> {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(tls.cert)?,
                std::fs::read(tls.key)?,
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(tls.ca)?));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = Server::builder()
            .tls_config(tls)?
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .add_service(EchoServiceServer::new(Echo));
        let (shutdown, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    crossflow_gateway::server::incoming(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
        });
        Ok(EchoServer {
            addr,
            shutdown,
            task,
        })
    }

    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}
