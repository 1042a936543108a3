//! The end-to-end harness: a real crossflow gateway on 127.0.0.1 with a
//! generated dev PKI and keys, called over mTLS with real tonic clients, as
//! partner platforms would.
//!
//! Two ways to run the gateway, both on [`Testbed`] (the same layout the demo
//! and `serve` use):
//!
//! - [`TestGateway`]: in this process, via `crossflow_gateway::server::start`
//!   on `127.0.0.1:0`. Fast; can be restarted on the same directory.
//! - [`ServeProcess`]: the real `crossflow serve --config` binary as a child
//!   process, its stdout and stderr captured to a file. For what only the
//!   binary shows (its logs, the CLI).
//!
//! ```no_run
//! # async fn demo() {
//! use crossflow_tests::{ALPHA, BETA, TestGateway, create_req, redeem_req};
//! let gw = TestGateway::builder().start().await; // alpha<->beta<->gamma
//! let made = gw
//!     .referrals(ALPHA)
//!     .await
//!     .create_referral(create_req("user-1", BETA, "room-1"))
//!     .await
//!     .unwrap()
//!     .into_inner();
//! gw.referrals(BETA)
//!     .await
//!     .redeem_referral(redeem_req(&made.token, "b-user-1"))
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! Helpers panic with a readable message on failure: they are for tests.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

pub use crossflow_api::clock::OffsetClock;
use crossflow_api::clock::{Clock, SharedClock};
pub use crossflow_gateway::testbed::TestbedError;
use crossflow_gateway::{
    server::{self, Running},
    testbed::{self, Testbed},
};
use crossflow_identity::KeyRing;
use crossflow_proto::v1::{
    CreateReferralRequest, GetReferralRequest, RedeemReferralRequest,
    referral_service_client::ReferralServiceClient,
};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use tonic_types::StatusExt;

pub mod replicas;

// === the default federation ===

/// SPIFFE trust domain of every test federation.
pub const FEDERATION: &str = "crossflow.test";
pub const ALPHA: &str = "alpha";
pub const BETA: &str = "beta";
pub const GAMMA: &str = "gamma";
/// Partners of the default federation; certificates are always issued for
/// them, whatever the body.
pub const DEFAULT_PARTNERS: [&str; 3] = [ALPHA, BETA, GAMMA];
/// Agreement ids of the default federation.
pub const ALPHA_BETA: &str = "alpha-beta";
pub const BETA_GAMMA: &str = "beta-gamma";

/// Longest time any harness wait (readiness, shutdown) may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `[[partners]]` table for `id`.
pub fn partner_toml(id: &str, enabled: bool) -> String {
    format!("\n[[partners]]\nid = \"{id}\"\nname = \"{id} live\"\nenabled = {enabled}\n")
}

/// `[[agreements]]` table `id` between `a` and `b` with a flow in each
/// direction.
pub fn agreement_toml(id: &str, a: &str, b: &str, max_hops: u32, token_ttl_secs: u64) -> String {
    format!(
        r#"
[[agreements]]
id = "{id}"
between = ["{a}", "{b}"]
max_hops = {max_hops}
token_ttl_secs = {token_ttl_secs}

[[agreements.flows]]
from = "{a}"
to = "{b}"
commission = {{ default_bps = 500 }}

[[agreements.flows]]
from = "{b}"
to = "{a}"
commission = {{ default_bps = 400 }}
"#
    )
}

/// A federation body built table by table, for suites whose federation is
/// not [`default_body`]'s. Each `extra` is TOML that goes inside the table
/// just opened: its keys, then any sub-tables (`[partners.quotas.referrals]`).
///
/// ```text
/// Federation::partners(&[ALPHA, BETA, GAMMA])
///     .agreement(ALPHA_BETA, ALPHA, BETA, "max_hops = 3")
///     .flow(ALPHA, BETA, r#"tag_scopes = ["room-style"]"#)
///     .flow(BETA, ALPHA, "")
///     .both_ways(BETA_GAMMA, BETA, GAMMA)
/// ```
#[derive(Debug, Clone, Default)]
pub struct Federation(String);

// === impl Federation ===

impl Federation {
    /// A `[[partners]]` table holding only the id, for each of `ids`.
    pub fn partners(ids: &[&str]) -> Federation {
        ids.iter()
            .fold(Federation::default(), |f, id| f.partner(id, ""))
    }

    /// One more `[[partners]]` table.
    pub fn partner(self, id: &str, extra: &str) -> Federation {
        self.table("[[partners]]", &format!("id = \"{id}\""), extra)
    }

    /// An `[[agreements]]` table between `a` and `b`; its flows are the
    /// [`Federation::flow`]s that follow.
    pub fn agreement(self, id: &str, a: &str, b: &str, extra: &str) -> Federation {
        let keys = format!("id = \"{id}\"\nbetween = [\"{a}\", \"{b}\"]");
        self.table("[[agreements]]", &keys, extra)
    }

    /// An `[[agreements.flows]]` table of the agreement opened last.
    pub fn flow(self, from: &str, to: &str, extra: &str) -> Federation {
        let keys = format!("from = \"{from}\"\nto = \"{to}\"");
        self.table("[[agreements.flows]]", &keys, extra)
    }

    /// An agreement between `a` and `b` with a flow each way, no more.
    pub fn both_ways(self, id: &str, a: &str, b: &str) -> Federation {
        self.agreement(id, a, b, "").flow(a, b, "").flow(b, a, "")
    }

    /// Top-level TOML after the federation (`[tags]`, `[ledger]`, ...).
    pub fn then(mut self, toml: &str) -> Federation {
        self.0.push('\n');
        self.0.push_str(toml);
        self
    }

    fn table(mut self, header: &str, keys: &str, extra: &str) -> Federation {
        self.0.push_str(&format!("\n{header}\n{keys}\n"));
        if !extra.is_empty() {
            self.0.push_str(extra);
            self.0.push('\n');
        }
        self
    }
}

impl From<Federation> for String {
    fn from(f: Federation) -> String {
        f.0
    }
}

/// The default federation with its agreements' `max_hops` and
/// `token_ttl_secs` chosen: partners alpha, beta, gamma; agreements
/// alpha<->beta and beta<->gamma, none between alpha and gamma.
pub fn default_body_with(max_hops: u32, token_ttl_secs: u64) -> String {
    let mut s = String::new();
    for p in DEFAULT_PARTNERS {
        s.push_str(&partner_toml(p, true));
    }
    s.push_str(&agreement_toml(
        ALPHA_BETA,
        ALPHA,
        BETA,
        max_hops,
        token_ttl_secs,
    ));
    s.push_str(&agreement_toml(
        BETA_GAMMA,
        BETA,
        GAMMA,
        max_hops,
        token_ttl_secs,
    ));
    s
}

/// The default federation: [`default_body_with`] `max_hops = 2`,
/// `token_ttl_secs = 900`. Append more `[[partners]]` / `[[agreements]]`
/// tables to it freely.
pub fn default_body() -> String {
    default_body_with(2, 900)
}

/// A gateway on [`default_body`] that signs ledger checkpoints every 50 ms,
/// with `operator` holding an operator certificate.
pub async fn ledger_gateway(operator: &str) -> TestGateway {
    TestGateway::builder()
        .operator(operator)
        .body(format!(
            "{}\n[ledger]\ncheckpoint_interval_ms = 50\n",
            default_body()
        ))
        .start()
        .await
}

// === requests ===

pub fn create_req(subject: &str, to: &str, target: &str) -> CreateReferralRequest {
    CreateReferralRequest {
        subject: subject.to_owned(),
        to_partner: to.to_owned(),
        target: target.to_owned(),
        parent_referral_id: String::new(),
        request_id: String::new(),
    }
}

/// An onward hop extending `parent`.
pub fn onward_req(subject: &str, to: &str, target: &str, parent: &str) -> CreateReferralRequest {
    CreateReferralRequest {
        parent_referral_id: parent.to_owned(),
        ..create_req(subject, to, target)
    }
}

pub fn redeem_req(token: &str, subject: &str) -> RedeemReferralRequest {
    RedeemReferralRequest {
        token: token.to_owned(),
        subject: subject.to_owned(),
    }
}

pub fn get_req(referral_id: &str) -> GetReferralRequest {
    GetReferralRequest {
        referral_id: referral_id.to_owned(),
    }
}

// === refusals ===

/// What a refused call told its caller, read from the rich status details.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.reason` ("" when the status has no ErrorInfo).
    pub reason: String,
    /// `ErrorInfo.domain`.
    pub domain: String,
    /// `ErrorInfo.metadata`.
    pub metadata: HashMap<String, String>,
    /// `BadRequest.field_violations[].field`, in order.
    pub fields: Vec<String>,
    /// `BadRequest.field_violations[].description`, in the same order.
    pub descriptions: Vec<String>,
}

impl Refusal {
    pub fn from_status(status: &Status) -> Refusal {
        let info = status.get_details_error_info();
        let bad = status.get_details_bad_request();
        let (fields, descriptions) = bad
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .unzip()
            })
            .unwrap_or_default();
        Refusal {
            code: status.code(),
            message: status.message().to_owned(),
            reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
            domain: info.as_ref().map(|i| i.domain.clone()).unwrap_or_default(),
            metadata: info.map(|i| i.metadata).unwrap_or_default(),
            fields,
            descriptions,
        }
    }

    /// Asserts the code and reason; returns self for more checks.
    #[track_caller]
    pub fn expect(self, code: Code, reason: &str) -> Refusal {
        assert_eq!(
            (self.code, self.reason.as_str()),
            (code, reason),
            "unexpected refusal: {self:?}"
        );
        assert_eq!(self.domain, "crossflow.v1", "ErrorInfo.domain of {self:?}");
        self
    }

    /// Asserts the listed fields are exactly the field violations (any order).
    #[track_caller]
    pub fn expect_fields(self, fields: &[&str]) -> Refusal {
        let mut got: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        let mut want = fields.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "field violations of {self:?}");
        self
    }
}

/// The refusal of a call that must have been refused.
#[track_caller]
pub fn refusal<T: std::fmt::Debug>(r: Result<T, Status>) -> Refusal {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => Refusal::from_status(&s),
    }
}

/// Asserts that `r` was refused with `code` and `ErrorInfo.reason`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Refusal {
    refusal(r).expect(code, reason)
}

// === mTLS clients ===

/// Connects over mTLS to `addr` as `pki/<name>` (a partner id, or
/// `operator-<name>`) of `bed`.
pub async fn channel_as(bed: &Testbed, addr: SocketAddr, name: &str) -> Channel {
    bed.channel(addr, name)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} as {name}: {e}"))
}

/// A TLS client that trusts the gateway's CA and presents `identity` (PEM
/// cert, key), or no certificate at all. Either the handshake or the first
/// call fails when the gateway refuses the client certificate (TLS 1.3
/// reports a refused client certificate after the client's handshake ends).
pub async fn connect_with(
    ca: &Path,
    addr: SocketAddr,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A health check as `name`.
pub async fn health_check(channel: Channel, service: &str) -> Result<ServingStatus, Status> {
    let r: HealthCheckResponse = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown))
}

/// Services listed by server reflection v1.
pub async fn reflection_services(channel: Channel) -> Result<Vec<String>, Status> {
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(a) = answers.message().await? {
        match a.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                names.extend(l.service.into_iter().map(|s| s.name));
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    Ok(names)
}

/// Polls the gRPC health check of `addr` as `name` until it says SERVING.
/// Panics after [`DEADLINE`].
pub async fn wait_serving(bed: &Testbed, addr: SocketAddr, name: &str) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < DEADLINE {
        match bed.channel(addr, name).await {
            Ok(ch) => match health_check(ch, "").await {
                Ok(ServingStatus::Serving) => return,
                Ok(s) => last = format!("{s:?}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gateway at {addr} not SERVING within {DEADLINE:?}: {last}");
}

// === the in-process gateway ===

/// Lays out a federation: [`Testbed`] with certificates for the default
/// partners plus every `.partner()`, and `.operator()`s.
#[derive(Debug, Default)]
pub struct Builder {
    partners: Vec<String>,
    operators: Vec<String>,
    body: Option<String>,
    dir: Option<PathBuf>,
    clock: Option<SharedClock>,
}

impl Builder {
    /// The wall clock the gateway's services read (the system clock if never
    /// called); an [`OffsetClock`] lets a test live through a month-end.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Builder {
        self.clock = Some(SharedClock(clock));
        self
    }

    /// Issues a partner certificate for `id` (in addition to alpha, beta and
    /// gamma). Whether it is a configured partner is up to the body.
    pub fn partner(mut self, id: &str) -> Builder {
        self.partners.push(id.to_owned());
        self
    }

    /// Issues an operator certificate `operator-<name>`.
    pub fn operator(mut self, name: &str) -> Builder {
        self.operators.push(name.to_owned());
        self
    }

    /// Partners and agreements TOML (everything after `[gateway]`);
    /// [`default_body`] if never called.
    pub fn body(mut self, toml: impl Into<String>) -> Builder {
        self.body = Some(toml.into());
        self
    }

    /// Lays the federation out in `dir` instead of a new temporary directory.
    pub fn dir(mut self, dir: &Path) -> Builder {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Writes the PKI, keys and `crossflow.toml` (listening on
    /// `127.0.0.1:0`) without starting anything.
    pub fn layout(self) -> Testbed {
        let mut partners: Vec<&str> = DEFAULT_PARTNERS.to_vec();
        for p in &self.partners {
            if !partners.contains(&p.as_str()) {
                partners.push(p);
            }
        }
        let operators: Vec<&str> = self.operators.iter().map(String::as_str).collect();
        let body = self.body.unwrap_or_else(default_body);
        Testbed::create(
            self.dir.as_deref(),
            FEDERATION,
            "127.0.0.1:0",
            &partners,
            &operators,
            &body,
        )
        .unwrap_or_else(|e| panic!("laying out the test federation: {e}"))
    }

    /// Starts the gateway in this process on `127.0.0.1:0`.
    pub async fn start(mut self) -> TestGateway {
        let clock = self.clock.take();
        let bed = self.layout();
        let mut gw = TestGateway {
            bed,
            clock: clock.unwrap_or_default(),
            running: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        gw.start_again().await;
        gw
    }

    /// Starts the real `crossflow serve` binary on this federation.
    pub async fn spawn(self, envs: &[(&str, &str)]) -> ServeProcess {
        ServeProcess::start(self.layout(), envs).await
    }
}

/// A gateway served in this process, on a federation in its own directory.
#[derive(Debug)]
pub struct TestGateway {
    bed: Testbed,
    clock: SharedClock,
    running: Option<Running>,
    addr: SocketAddr,
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Where it listens. A restart picks a new port: make new channels.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The federation directory: `crossflow.toml`, `pki/`, `keys/`, `data/`.
    pub fn dir(&self) -> &Path {
        &self.bed.dir
    }

    pub fn bed(&self) -> &Testbed {
        &self.bed
    }

    pub fn key_dir(&self) -> PathBuf {
        self.bed.dir.join("keys")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.bed.dir.join("data")
    }

    /// An mTLS channel as partner `name`, or as `operator-<name>`.
    pub async fn channel(&self, name: &str) -> Channel {
        channel_as(&self.bed, self.addr, name).await
    }

    /// A ReferralService client as `name`.
    pub async fn referrals(&self, name: &str) -> ReferralServiceClient<Channel> {
        ReferralServiceClient::new(self.channel(name).await)
    }

    /// Stops it (in-flight calls finish, the store closes after its last
    /// commit). The directory stays.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown()
                .await
                .unwrap_or_else(|e| panic!("gateway shutdown: {e}"));
        }
    }

    /// Shuts down, then serves the same directory again (re-reading the
    /// config and the key dir) on a new port.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.start_again().await;
    }

    /// `KeyRing::rotate` on the key dir; the running gateway sees the new
    /// keys only after [`TestGateway::restart`].
    pub fn rotate_keys(&self) -> crossflow_identity::RotationReport {
        KeyRing::rotate(&self.key_dir(), now_ms()).unwrap()
    }

    async fn start_again(&mut self) {
        let settings = self.bed.settings().unwrap_or_else(|e| panic!("{e}"));
        let running = server::start_with_clock(
            settings,
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            self.clock.0.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("starting the gateway: {e}"));
        self.addr = running.addr;
        self.running = Some(running);
    }
}

// === the real binary ===

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit in i64")
}

/// `ms` since the Unix epoch as a protobuf timestamp (before 1970 too).
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).expect("below 1e9"),
    }
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `crossflow` binary of this build, built (once per test process) with
/// the same cargo and profile as the running test: a no-op after
/// `cargo test --workspace` unless the binary is missing or stale.
/// `CROSSFLOW_BIN` overrides (nothing is built then).
pub fn crossflow_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CROSSFLOW_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test>-<hash>  ->  target/<profile>/crossflow
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join(format!("crossflow{}", std::env::consts::EXE_SUFFIX));
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let profile = if profile == "debug" { "dev" } else { profile };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        // Always build: a no-op when fresh, and never a stale binary.
        let out = Command::new(&cargo)
            .current_dir(workspace_dir())
            // --workspace: the features `cargo test --workspace` unified,
            // so the libraries it built are reused rather than rebuilt.
            .args(["build", "--quiet", "--workspace", "--bin", "crossflow"])
            .args(["--profile", profile])
            .output()
            .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
        assert!(
            out.status.success(),
            "building crossflow failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// `crossflow ARGS` to completion.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_cli(args: &[&str]) -> CliOutput {
    let out = Command::new(crossflow_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running crossflow");
    CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `crossflow serve --config DIR/crossflow.toml` running as a child process,
/// stdout and stderr appended to [`ServeProcess::log_path`]. Killed on drop.
#[derive(Debug)]
pub struct ServeProcess {
    bed: Testbed,
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    // Holds the log outside the federation directory.
    _log_dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts the binary on `bed` (whose config listens on port 0), with
    /// extra environment (e.g. `RUST_LOG`), and waits until its health check
    /// says SERVING. The bound port is read from its startup log line.
    pub async fn start(bed: Testbed, envs: &[(&str, &str)]) -> ServeProcess {
        let log_dir = tempfile::Builder::new()
            .prefix("crossflow-log-")
            .tempdir()
            .unwrap();
        let log = log_dir.path().join("crossflow.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(crossflow_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(bed.config_path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning crossflow serve");
        let mut p = ServeProcess {
            bed,
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _log_dir: log_dir,
        };
        p.addr = p.wait_for_addr().await;
        wait_serving(&p.bed, p.addr, ALPHA).await;
        p
    }

    async fn wait_for_addr(&mut self) -> SocketAddr {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            let text = self.log_text();
            if let Some(addr) = serving_addr(&text) {
                return addr;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("crossflow serve exited with {status}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "crossflow serve did not log its address within {DEADLINE:?}:\n{}",
            self.log_text()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bed(&self) -> &Testbed {
        &self.bed
    }

    pub fn dir(&self) -> &Path {
        &self.bed.dir
    }

    /// The captured stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub async fn channel(&self, name: &str) -> Channel {
        channel_as(&self.bed, self.addr, name).await
    }

    pub async fn referrals(&self, name: &str) -> ReferralServiceClient<Channel> {
        ReferralServiceClient::new(self.channel(name).await)
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns its status.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("still running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !killed {
            let _ = child.kill();
        }
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("crossflow serve did not stop within {DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The address in the gateway's "crossflow gateway serving" log line, in
/// text (`addr=127.0.0.1:1234`) or JSON (`"addr":"127.0.0.1:1234"`) format.
fn serving_addr(log: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains("crossflow gateway serving"))?;
    let line = strip_ansi(line);
    let start = line
        .find("addr=")
        .map(|i| i + "addr=".len())
        .or_else(|| line.find("\"addr\":\"").map(|i| i + "\"addr\":\"".len()))?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// === files ===

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Whether `needle` occurs anywhere in the bytes of `file`.
pub fn file_contains(file: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
}

/// Asks for the consistency proof from tree `old` to tree `new` (size,
/// root) and checks it with the verifier partners use; the proof
/// response, for further checks.
pub async fn assert_consistent(
    ledger: &mut crossflow_proto::v1::ledger_service_client::LedgerServiceClient<Channel>,
    old: (u64, &[u8]),
    new: (u64, &[u8]),
) -> crossflow_proto::v1::GetConsistencyProofResponse {
    let proof = ledger
        .get_consistency_proof(crossflow_proto::v1::GetConsistencyProofRequest {
            from_size: old.0,
            to_size: new.0,
        })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<crossflow_ledger::merkle::Hash> = proof
        .proof
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    crossflow_ledger::merkle::verify_consistency(old.0, new.0, &hashes, old.1, new.1).unwrap();
    proof
}

/// Re-exported for tests that lay out their own federation.
pub use testbed::gateway_section;
