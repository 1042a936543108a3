//! Server assembly: TLS, the identity edge, health, reflection and the
//! crossflow services, on one listener.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crossflow_api::clock::{Clock, SharedClock, SystemClock};
use crossflow_conversions::Conversions;
use crossflow_identity::KeyRing;
use crossflow_ledger::{Integrator, Ledger, NoteError, Signer, leader::MakeSigner};
use crossflow_proto::v1::conversion_service_server::ConversionServiceServer;
use crossflow_proto::v1::quota_service_server::QuotaServiceServer;
use crossflow_proto::v1::tag_service_server::TagServiceServer;
use crossflow_proto::v1::{
    FILE_DESCRIPTOR_SET, ledger_service_server::LedgerServiceServer,
    referral_service_server::ReferralServiceServer,
};
use crossflow_quota::{
    QuotaLayer, Quotas,
    grpc::{QuotaApi, ReloadStatus},
};
use crossflow_referrals::Referrals;
use crossflow_settings::{Settings, SettingsHandle};
use crossflow_store::{ConversionStore, Database, Store, leader::Candidate};
use crossflow_tags::Tags;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{
    coalesce::Coalesced, edge::IdentityLayer, oversize::OversizeLayer, reload::Reloader,
    telemetry::RpcTelemetryLayer,
};

/// How often daily quota counters are written behind (a crash loses at most
/// this much counting).
const QUOTA_FLUSH_EVERY: Duration = Duration::from_secs(1);

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
    #[error("ledger: {0}")]
    Ledger(#[from] crossflow_ledger::LedgerError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    TagSettings(String),
    #[error(transparent)]
    Quota(#[from] crossflow_quota::QuotaError),
}

/// A gateway serving in the background.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub settings: SettingsHandle,
    pub store: Store,
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
        self.store.close();
        res
    }

    /// Serves until `signal` completes, then stops as [`Running::shutdown`]
    /// does (so the last quota counts and commits are written).
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        tokio::select! {
            r = &mut task => {
                self.store.close();
                r.unwrap_or(Ok(()))
            }
            () = signal => {
                tracing::info!("shutting down");
                self.task = Some(task);
                self.stop().await
            }
        }
    }

    async fn stop(&mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let res = match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.store.close();
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

/// The health service name that says where quota decisions are made:
/// SERVING while the configured backend answers (always, for `local`),
/// NOT_SERVING while Redis is out of reach and this replica falls back to
/// its own limiter or refuses.
pub const QUOTA_HEALTH_SERVICE: &str = "crossflow.quota.backend";

/// Keeps [`QUOTA_HEALTH_SERVICE`] in step with the quota backend.
fn watch_quota_backend(
    quotas: Arc<Quotas>,
    health: tonic_health::server::HealthReporter,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let up = matches!(
                quotas.backend_state(),
                crossflow_quota::BackendState::Local | crossflow_quota::BackendState::Redis
            );
            if last != Some(up) {
                last = Some(up);
                let status = if up {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health
                    .set_service_status(QUOTA_HEALTH_SERVICE, status)
                    .await;
            }
        }
    })
}

/// How this replica names itself as the ledger's leader (`ledger_leader`
/// holder): host name and process id, for operators.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}

/// The store `[gateway.store]` names: the embedded SQLite in `data_dir`, or
/// PostgreSQL (connected, its schema migrated, off the async runtime).
pub async fn open_store(settings: &Settings) -> Result<Store, ServeError> {
    match &settings.gateway.store {
        crossflow_settings::StoreBackend::Sqlite => Ok(Store::sqlite(&settings.gateway.data_dir)?),
        crossflow_settings::StoreBackend::Postgres { url } => {
            let url = url.clone();
            let store = tokio::task::spawn_blocking(move || Store::postgres(&url))
                .await
                .map_err(|e| crossflow_store::StoreError::Unavailable(e.to_string()))?;
            Ok(store?)
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
/// then data would otherwise wait out the peer's delayed ACK (~40 ms). The
/// writes of each are [`Coalesced`]: answers ready together leave together.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(Coalesced::new(s))
    })
}

/// Starts the gateway described by `settings` on `settings.gateway.listen`
/// (or on `listen_override`, e.g. `127.0.0.1:0` in tests).
pub async fn start(
    settings: Settings,
    listen_override: Option<SocketAddr>,
) -> Result<Running, ServeError> {
    start_with_clock(settings, listen_override, Arc::new(SystemClock)).await
}

/// [`start`] with the wall clock every service (and the ledger's checkpoint
/// signer) reads; the demo passes an [`crossflow_api::clock::OffsetClock`]
/// to live through a month-end.
pub async fn start_with_clock(
    settings: Settings,
    listen_override: Option<SocketAddr>,
    clock: Arc<dyn Clock>,
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
    let tag_problems = crossflow_tags::check_settings(&settings);
    if !tag_problems.is_empty() {
        return Err(ServeError::TagSettings(tag_problems.join("; ")));
    }
    let store = open_store(&settings).await?;
    let handle = SettingsHandle::new(settings);
    // Today's daily quota counters come back before the first call.
    let quotas = Arc::new(Quotas::connect(handle.clone()).await?);
    quotas.restore(&store).await?;

    let referrals = Referrals::new(store.clone(), keys.clone(), handle.clone(), clock.clone())
        .with_guard(quotas.clone());
    let tags = Tags::new(store.clone(), keys.clone(), handle.clone(), clock.clone());
    let conversions = Conversions::new(store.clone(), keys.clone(), handle.clone(), clock.clone());

    // Storage never holds the key: the integrator gets a signer.
    let make_signer: MakeSigner = {
        let keys = keys.clone();
        Arc::new(move || {
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(keys.ledger_signing_key_pkcs8())
                .map_err(|_| {
                    NoteError::MalformedPrivateKey("ledger-ed25519.pk8 is not Ed25519 PKCS#8 v2")
                })?;
            Ok(Signer::new(keys.ledger_key_name(), pair)?)
        })
    };
    let origin = crossflow_ledger::origin(&handle.get().gateway.federation);
    let interval = {
        let handle = handle.clone();
        move || Duration::from_millis(handle.get().ledger.checkpoint_interval_ms)
    };
    // A fresh entry's receipt waits for the next checkpoint: two intervals
    // and some slack, well inside the request timeout.
    let receipt_wait = {
        let interval = interval.clone();
        move || (2 * interval() + Duration::from_millis(500)).min(REQUEST_TIMEOUT / 2)
    };
    // On the embedded store this process is the log's only writer; with
    // replicas on PostgreSQL it integrates and signs only while it leads.
    let (ledger, integrator) = match &store {
        Store::Sqlite(_) => {
            let integrator = Integrator::open_with_clock(
                store.clone(),
                make_signer()?,
                origin,
                SharedClock(clock.clone()),
            )
            .await?;
            let ledger = integrator.ledger();
            (ledger, integrator.spawn(interval))
        }
        Store::Postgres(pg) => {
            crossflow_ledger::leader::spawn_replica(
                store.clone(),
                Candidate::new(pg.clone(), replica_name()),
                make_signer,
                origin,
                SharedClock(clock.clone()),
                interval,
            )
            .await?
        }
    };
    // Receipts by order id: order ids are unique per reporting partner, so
    // only a partner can name one (an operator asks by index).
    let orders = store.clone();
    let ledger: Ledger<Store> = ledger
        .with_receipt_wait(receipt_wait)
        .with_order_lookup(Arc::new(move |caller, order_id| {
            let orders = orders.clone();
            Box::pin(async move {
                match caller {
                    crossflow_api::Caller::Partner(p) => {
                        orders.latest_conversion_entry(&p, &order_id).await
                    }
                    crossflow_api::Caller::Operator(_) => Ok(None),
                }
            })
        }));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LedgerServiceServer<Ledger<Store>>>()
        .await;
    health_reporter
        .set_serving::<ReferralServiceServer<Referrals<Store>>>()
        .await;
    health_reporter
        .set_serving::<ConversionServiceServer<Conversions>>()
        .await;
    health_reporter
        .set_serving::<TagServiceServer<Tags<Store>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reload_status = ReloadStatus::default();
    let reloader = Reloader::new(
        handle.clone(),
        reload_status.clone(),
        health_reporter.clone(),
    );
    reloader.started().await;
    let background = [
        crossflow_quota::spawn_flusher(quotas.clone(), store.clone(), QUOTA_FLUSH_EVERY),
        crate::telemetry::watch_store(store.clone()),
        reloader.spawn(),
        crossflow_tags::spawn_purger(store.clone(), crossflow_tags::PURGE_EVERY),
        watch_quota_backend(quotas.clone(), health_reporter.clone()),
    ];

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
        .layer(RpcTelemetryLayer::new())
        .layer(IdentityLayer::new(handle.clone()))
        .layer(QuotaLayer::new(quotas.clone()))
        // Innermost, so telemetry records the rewritten code.
        .layer(OversizeLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(QuotaServiceServer::new(QuotaApi::new(
            quotas.clone(),
            reload_status,
        )))
        .add_service(ReferralServiceServer::new(referrals))
        .add_service(TagServiceServer::new(tags))
        .add_service(ConversionServiceServer::new(conversions))
        .add_service(LedgerServiceServer::new(ledger));

    let (tx, rx) = oneshot::channel::<()>();
    let store_for_task = store.clone();
    let task = tokio::spawn(async move {
        let served = router
            .serve_with_incoming_shutdown(incoming(listener), async {
                let _ = rx.await;
            })
            .await
            .map_err(ServeError::from);
        for t in &background {
            t.abort();
        }
        // The last second of quota counts (a crash would lose it).
        if let Err(e) = quotas.flush(&store_for_task).await {
            tracing::error!(error = %e, "writing quota counters at shutdown failed");
        }
        // The integrator holds the store; it must be gone before the store
        // closes, or a restart on the same data dir would find it locked.
        integrator.stop().await;
        served
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
