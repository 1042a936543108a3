//! Shared fixtures for the crossflow fuzz targets (docs/RELIABILITY.md,
//! "Hostile input: fuzzing").
//!
//! A fixture is a whole federation laid out once per fuzzing process: the
//! shipped example config (config/crossflow.toml), a dev PKI, a key
//! directory and a SQLite store. The RPC targets call the real gRPC service
//! implementations in-process, with the caller identity the mTLS edge would
//! have put into the request extensions, so the fuzzer reaches exactly the
//! validation a request over the wire reaches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossflow_api::Caller;
use crossflow_api::clock::SystemClock;
use crossflow_conversions::Conversions;
use crossflow_identity::{KeyRing, generate_dev};
use crossflow_ledger::{Integrator, IntegratorHandle, Ledger, Signer};
use crossflow_quota::Quotas;
use crossflow_quota::grpc::{QuotaApi, ReloadStatus};
use crossflow_referrals::Referrals;
use crossflow_settings::{Settings, SettingsHandle};
use crossflow_store::Sqlite;
use crossflow_tags::Tags;
use tonic::{Code, Request, Status};

/// Partners of the example config, then an operator.
pub const PARTNERS: [&str; 4] = [
    "mombaby-live",
    "homedecor-live",
    "beauty-live",
    "petcare-live",
];
pub const OPERATOR: &str = "ops";
pub const FEDERATION: &str = "crossflow.example";

/// The example config shipped in the repository.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/crossflow.toml");

/// A federation on disk.
#[derive(Debug)]
pub struct Fixture {
    pub dir: PathBuf,
    pub keys: Arc<KeyRing>,
    pub settings: Settings,
}

/// The process-wide fixture, made on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| make_fixture().unwrap_or_else(|e| panic!("fuzz fixture: {e}")))
}

fn make_fixture() -> Result<Fixture, String> {
    // tmpfs when there is one: the store fsyncs every group commit.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("crossflow-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    generate_dev(
        &dir.join("pki"),
        FEDERATION,
        &owned(&PARTNERS),
        &owned(&[OPERATOR]),
    )
    .map_err(|e| e.to_string())?;
    KeyRing::generate(&dir.join("keys")).map_err(|e| e.to_string())?;
    let keys = Arc::new(KeyRing::load(&dir.join("keys")).map_err(|e| e.to_string())?);
    let path = dir.join("crossflow.toml");
    std::fs::write(&path, EXAMPLE_CONFIG).map_err(|e| e.to_string())?;
    let settings = Settings::from_toml(EXAMPLE_CONFIG, &path).map_err(|e| e.to_string())?;
    Ok(Fixture {
        dir,
        keys,
        settings,
    })
}

/// The raw 32-byte AES-256-GCM key of the fixture's current token key, read
/// from the key directory (`token-<id>.key`), so a target can seal arbitrary
/// plaintext and reach the claim decoder behind the AEAD.
pub fn current_token_key() -> [u8; 32] {
    let f = fixture();
    let id = f.keys.current_token_key_id();
    let bytes = std::fs::read(f.dir.join("keys").join(format!("token-{id}.key")))
        .unwrap_or_else(|e| panic!("reading token key: {e}"));
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("token key is not 32 bytes"))
}

/// The in-process services, as `crossflow serve` assembles them.
pub struct Services {
    pub rt: tokio::runtime::Runtime,
    pub referrals: Referrals<Sqlite>,
    pub tags: Tags<Sqlite>,
    pub conversions: Conversions,
    pub ledger: Ledger<Sqlite>,
    pub quota: QuotaApi,
    _integrator: IntegratorHandle,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Services")
    }
}

/// The process-wide services, made on first use.
pub fn services() -> &'static Services {
    static S: OnceLock<Services> = OnceLock::new();
    S.get_or_init(|| make_services().unwrap_or_else(|e| panic!("fuzz services: {e}")))
}

fn make_services() -> Result<Services, String> {
    let f = fixture();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let store = Sqlite::open(&f.dir.join("data")).map_err(|e| e.to_string())?;
    let handle = SettingsHandle::new(f.settings.clone());
    let quotas = Arc::new(Quotas::new(handle.clone()));
    let keys = f.keys.clone();
    let referrals = Referrals::new(
        store.clone(),
        keys.clone(),
        handle.clone(),
        Arc::new(SystemClock),
    )
    .with_guard(quotas.clone());
    let tags = Tags::new(
        store.clone(),
        keys.clone(),
        handle.clone(),
        Arc::new(SystemClock),
    );
    let conversions = Conversions::new(
        store.db().clone(),
        keys.clone(),
        handle.clone(),
        Arc::new(SystemClock),
    );
    let signer = ring::signature::Ed25519KeyPair::from_pkcs8(keys.ledger_signing_key_pkcs8())
        .map_err(|_| "ledger key is not Ed25519 PKCS#8".to_owned())
        .and_then(|pair| Signer::new(keys.ledger_key_name(), pair).map_err(|e| e.to_string()))?;
    let (ledger, integrator) = rt.block_on(async {
        let integrator =
            Integrator::open(store.clone(), signer, crossflow_ledger::origin(FEDERATION))
                .await
                .map_err(|e| e.to_string())?;
        let orders = store.clone();
        // No receipt wait: a fuzzing process must not sleep on checkpoints.
        let ledger = integrator
            .ledger()
            .with_order_lookup(Arc::new(move |caller, order_id| {
                let orders = orders.clone();
                Box::pin(async move {
                    match caller {
                        Caller::Partner(p) => orders.latest_conversion_entry(&p, &order_id).await,
                        Caller::Operator(_) => Ok(None),
                    }
                })
            }));
        let handle = integrator.spawn(|| Duration::from_millis(20));
        Ok::<_, String>((ledger, handle))
    })?;
    Ok(Services {
        rt,
        referrals,
        tags,
        conversions,
        ledger,
        quota: QuotaApi::new(quotas, ReloadStatus::default()),
        _integrator: integrator,
    })
}

/// The caller chosen by a fuzz byte: one of the partners, the operator, or
/// nobody (a request that skipped the mTLS edge).
pub fn caller(b: u8) -> Option<Caller> {
    match usize::from(b) % (PARTNERS.len() + 2) {
        i if i < PARTNERS.len() => Some(Caller::Partner(PARTNERS[i].to_owned())),
        i if i == PARTNERS.len() => Some(Caller::Operator(OPERATOR.to_owned())),
        _ => None,
    }
}

/// `msg` as the edge hands it to a service.
pub fn request<T>(msg: T, who: Option<Caller>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(c) = who {
        req.extensions_mut().insert(c);
    }
    req
}

/// The oracle of the RPC targets besides "no panic": a refusal of a
/// client's request is never `INTERNAL`/`UNKNOWN` (those mean a bug or a
/// failing store, and the fixture's store does not fail), and a refusal
/// always says why.
pub fn check<T>(r: Result<T, Status>) {
    if let Err(s) = r {
        assert!(
            !matches!(s.code(), Code::Internal | Code::Unknown | Code::Ok),
            "client input produced {:?}: {}",
            s.code(),
            s.message()
        );
        assert!(!s.message().is_empty(), "refusal without a message: {s:?}");
    }
}

/// One RPC arm of a target: `body` decoded as the request type of `call`
/// and, if it decodes, sent by `who`, the answer judged by [`check`]. Bytes
/// that do not decode are skipped, as the server's codec would refuse them
/// before any service code runs.
pub async fn rpc<M, R, F, Fut>(body: &[u8], who: Option<Caller>, call: F)
where
    M: prost::Message + Default,
    F: FnOnce(Request<M>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
{
    if let Ok(m) = M::decode(body) {
        check(call(request(m, who)).await);
    }
}

/// Splits a fuzz input into a selector byte, a caller byte and the message
/// bytes.
pub fn split(data: &[u8]) -> Option<(u8, Option<Caller>, &[u8])> {
    let (&sel, rest) = data.split_first()?;
    let (&who, body) = rest.split_first()?;
    Some((sel, caller(who), body))
}
