//! Server assembly: TLS, the identity edge, health, reflection and the
//! crossflow services, on one listener.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crossflow_identity::KeyRing;
use crossflow_proto::v1::{FILE_DESCRIPTOR_SET, referral_service_server::ReferralServiceServer};
use crossflow_referrals::{Referrals, SystemClock};
use crossflow_settings::{Settings, SettingsHandle};
use crossflow_store::Sqlite;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::edge::IdentityLayer;

/// Longest any request may run before it is cancelled with DEADLINE_EXCEEDED.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("keys in {path}: {source}")]
    Keys {
        path: String,
        source: crossflow_identity::IdentityError,
    },
    #[error(transparent)]
    Store(#[from] crossflow_store::StoreError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gateway serving in the background.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub settings: SettingsHandle,
    pub store: Sqlite,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and closes the store
    /// after its last commit.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop().await
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        let res = match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.store.db().close();
        res
    }

    async fn stop(&mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let res = match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.store.db().close();
        res
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Accepted connections, with Nagle off: tonic's own `tcp_nodelay` applies
/// only to listeners it binds itself, and a gRPC answer written as headers
/// then data would otherwise wait out the peer's delayed ACK (~40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// Starts the gateway described by `settings` on `settings.gateway.listen`
/// (or on `listen_override`, e.g. `127.0.0.1:0` in tests).
pub async fn start(
    settings: Settings,
    listen_override: Option<SocketAddr>,
) -> Result<Running, ServeError> {
    let g = settings.gateway.clone();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&g.tls.cert)?, read(&g.tls.key)?))
        .client_ca_root(Certificate::from_pem(read(&g.tls.ca)?));
    let keys = Arc::new(
        KeyRing::load(&g.key_dir).map_err(|source| ServeError::Keys {
            path: g.key_dir.display().to_string(),
            source,
        })?,
    );
    let store = Sqlite::open(&g.data_dir)?;
    let handle = SettingsHandle::new(settings);

    let referrals = Referrals::new(
        store.clone(),
        keys.clone(),
        handle.clone(),
        Arc::new(SystemClock),
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ReferralServiceServer<Referrals<Sqlite>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let addr = listen_override.unwrap_or(g.listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;

    let router = Server::builder()
        .tls_config(tls)?
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .layer(IdentityLayer::new(handle.clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(ReferralServiceServer::new(referrals));

    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming(listener), async {
                let _ = rx.await;
            })
            .await
            .map_err(ServeError::from)
    });
    tracing::info!(%addr, federation = %handle.get().gateway.federation, "crossflow gateway serving");
    Ok(Running {
        addr,
        settings: handle,
        store,
        shutdown: Some(tx),
        task: Some(task),
    })
}
