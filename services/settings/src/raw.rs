//! The TOML schema as written by operations. Every table denies unknown
//! fields, so a misspelt key is an error rather than a silently ignored one.
//! Defaults are named functions shared by serde and `Default`.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub partners: Vec<Partner>,
    #[serde(default)]
    pub agreements: Vec<Agreement>,
    #[serde(default)]
    pub fraud: Fraud,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub ledger: Ledger,
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// `[telemetry]`: OpenTelemetry export. Without `otlp_endpoint` nothing is
/// exported (spans still go to the log). Changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// OTLP/gRPC collector address, e.g. `http://127.0.0.1:4317`. Traces
    /// and metrics are exported there when set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of everything exported.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// How often metrics are exported, in milliseconds.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
}

fn default_service_name() -> String {
    "crossflow".to_owned()
}

fn default_export_interval_ms() -> u64 {
    10_000
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            service_name: default_service_name(),
            export_interval_ms: default_export_interval_ms(),
        }
    }
}

/// `[ledger]`: how the signed Merkle ledger issues checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// Longest time, in milliseconds, between signed checkpoints while the
    /// log grows. Receipts are issued against the latest checkpoint, so this
    /// is also the longest wait for a fresh entry's receipt.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
}

fn default_checkpoint_interval_ms() -> u64 {
    1000
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
        }
    }
}

/// `[fraud]`: rules that hold a conversion (recorded, but kept out of
/// settlement until an operator releases it). Every rule is off when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fraud {
    /// Hold a conversion placed sooner than this many seconds after the
    /// buyer's most recent landing at the reporter.
    #[serde(default)]
    pub min_seconds_after_landing: Option<u64>,
    /// Hold a conversion whose buyer landed at the reporter more than this
    /// many times in the hour before the order.
    #[serde(default)]
    pub max_landings_per_uid_per_hour: Option<u32>,
    /// Hold a conversion over this amount, in minor units of its currency,
    /// for currencies without their own cap below.
    #[serde(default)]
    pub max_amount_minor: Option<u64>,
    /// Per-currency caps in minor units, keyed by ISO 4217 code
    /// (`CNY = 5000000`); they take precedence over `max_amount_minor`.
    #[serde(default)]
    pub max_amount_minor_by_currency: BTreeMap<String, u64>,
}

/// `[gateway]`: process-wide settings. Changing `listen`, `data_dir` or
/// `key_dir` needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// SPIFFE trust domain of the federation, e.g. `crossflow.example`.
    /// Partner certificates carry `spiffe://<federation>/partner/<id>`.
    pub federation: String,
    /// Address to serve gRPC on, e.g. `0.0.0.0:7443`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the embedded store (created if missing).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Directory of keys made by `crossflow keys generate`.
    #[serde(default = "default_key_dir")]
    pub key_dir: PathBuf,
    /// IANA time zone that defines days (daily quotas) and settlement months.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub tls: TlsConfig,
    /// Where durable state lives (default: the embedded SQLite store).
    #[serde(default)]
    pub store: StoreConfig,
    /// Where quota state lives (default: this process's memory).
    #[serde(default)]
    pub quotas: QuotasConfig,
}

/// `[gateway.store]`. Needs a restart to change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (default: the embedded store in `data_dir`) or `postgres`.
    #[serde(default = "default_store_backend")]
    pub backend: String,
    /// PostgreSQL connection URL, `postgresql://user@host:port/db`.
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the URL instead (so the
    /// password need not be in this file).
    #[serde(default)]
    pub url_env: Option<String>,
}

/// `[gateway.quotas]`. Needs a restart to change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// `local` (default: this process's memory) or `redis`.
    #[serde(default = "default_quota_backend")]
    pub backend: String,
    /// Redis URL, `redis://host:port/db` (or `rediss://` for TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the URL instead.
    #[serde(default)]
    pub url_env: Option<String>,
    /// What a replica does when Redis cannot be reached (redis only).
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

/// What a replica does with a rate-limited call while Redis is out of
/// reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Falls back to this replica's own limiter (and says so in health and
    /// metrics).
    #[default]
    Allow,
    /// Refuses the call with `UNAVAILABLE` and a retry hint.
    Deny,
}

/// `[gateway.tls]`: PEM files; relative paths resolve against the config
/// file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA that signs partner (and operator) client certificates.
    pub ca: PathBuf,
    /// The gateway's server certificate chain.
    pub cert: PathBuf,
    /// The gateway's private key.
    pub key: PathBuf,
}

/// `[[partners]]`: one platform of the federation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    /// Slug used in certificates, agreements and APIs.
    pub id: String,
    /// Human name, for reports.
    #[serde(default)]
    pub name: String,
    /// A disabled partner is refused with PERMISSION_DENIED on its next call.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Attribution model for conversions this partner reports.
    #[serde(default)]
    pub attribution_model: AttributionModel,
    /// Half-life for the `time_decay` model, in seconds.
    #[serde(default = "default_half_life_secs")]
    pub time_decay_half_life_secs: u64,
    /// Per-RPC-class limits for this partner's calls, keyed by class.
    #[serde(default)]
    pub quotas: BTreeMap<QuotaClass, RateQuota>,
}

/// How a conversion's commission is weighted across the buyer's touches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionModel {
    /// All weight to the most recent landing.
    #[default]
    LastTouch,
    /// All weight to the earliest landing in the window.
    FirstTouch,
    /// Equal weight to every landing.
    Linear,
    /// 40 % first, 40 % last, 20 % shared by the ones between.
    PositionBased,
    /// Weight halves every `time_decay_half_life_secs` before the order.
    TimeDecay,
}

/// RPC classes that quotas apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaClass {
    Referrals,
    Tags,
    Conversions,
    LedgerReads,
}

/// `[partners.quotas.<class>]`: a GCRA rate with burst plus a daily cap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateQuota {
    /// Sustained calls per second.
    pub rate_per_sec: u32,
    /// Calls allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Calls per day in the gateway's time zone (none if absent).
    #[serde(default)]
    pub daily_cap: Option<u64>,
    /// Count and report, never reject.
    #[serde(default)]
    pub shadow: bool,
}

/// `[[agreements]]`: a bilateral contract between two partners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agreement {
    /// Slug naming the contract in the ledger and reports.
    pub id: String,
    /// The two partners bound by it.
    pub between: Vec<String>,
    /// Longest chain (in hops) a referral minted under this agreement may
    /// complete: 1 allows only direct hops, 2 one onward hop (A->B->C), ...
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
    /// How long a minted token can be redeemed, in seconds.
    #[serde(default = "default_token_ttl_secs")]
    pub token_ttl_secs: u64,
    /// How long after a landing a conversion is attributed to it, in seconds.
    #[serde(default = "default_attribution_window_secs")]
    pub attribution_window_secs: u64,
    /// Share of each commission passed to the upstream hops of a chain, in
    /// basis points of the commission (the direct referrer keeps the rest).
    #[serde(default)]
    pub upstream_share_bps: u32,
    /// Days after confirmation before a conversion becomes payable.
    #[serde(default = "default_lock_period_days")]
    pub lock_period_days: u32,
    /// Reciprocity: the most by which one side's hops to the other may exceed
    /// the reverse in one day (none if absent).
    #[serde(default)]
    pub max_daily_imbalance: Option<u64>,
    /// The directions referrals may go; a direction absent here is refused.
    #[serde(default)]
    pub flows: Vec<Flow>,
}

/// `[[agreements.flows]]`: one direction of an agreement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Partner that sends viewers (and earns commission).
    pub from: String,
    /// Partner that receives viewers (and pays commission).
    pub to: String,
    /// Tag namespaces `to` may read about users received from `from`.
    #[serde(default)]
    pub tag_scopes: Vec<String>,
    /// Hops per day in this direction (none if absent).
    #[serde(default)]
    pub referrals_per_day: Option<u64>,
    /// Count `referrals_per_day` and the reciprocity limit without rejecting.
    #[serde(default)]
    pub quota_shadow: bool,
    /// What `to` pays `from` on referred conversions.
    #[serde(default)]
    pub commission: Commission,
}

/// `[agreements.flows.commission]`: rates in basis points of the order amount.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commission {
    /// Rate for categories not listed below.
    #[serde(default)]
    pub default_bps: u32,
    /// Rate per product category.
    #[serde(default)]
    pub categories: BTreeMap<String, u32>,
    /// Time-boxed extra rates, e.g. for a live event.
    #[serde(default)]
    pub boosts: Vec<Boost>,
}

/// `[[agreements.flows.commission.boosts]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boost {
    /// Shown in the ledger entry's attribution.
    pub name: String,
    /// RFC 3339 start (inclusive) of the window the order must fall in.
    pub starts_at: String,
    /// RFC 3339 end (exclusive).
    pub ends_at: String,
    /// Added to the category's rate.
    pub extra_bps: u32,
    /// Categories it applies to; all if empty.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// `[tags]`: the tag vocabulary partners may publish, how long tags live,
/// and what is never disclosed. Absent: only `iab-audience` is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// Longest time to live a published tag may have, in seconds; a tag
    /// published without a TTL gets this one.
    #[serde(default = "default_max_tag_ttl_secs")]
    pub max_ttl_secs: u64,
    /// After `keys rotate`, how long the pseudonyms of the previous epoch
    /// still resolve (are listed beside the current one), in days.
    #[serde(default = "default_pseudonym_overlap_days")]
    pub pseudonym_overlap_days: u32,
    /// Never disclosed, whatever an agreement's `tag_scopes` say: a whole
    /// namespace (`health`), one value (`life-stage/expecting`), or, in a
    /// taxonomy namespace, a node and its whole subtree (`iab-audience/381`).
    /// Publishing a sensitive tag is refused.
    #[serde(default)]
    pub sensitive: Vec<String>,
    /// The namespaces partners may publish and agreements may scope.
    #[serde(default = "default_tag_namespaces")]
    pub namespaces: Vec<TagNamespace>,
}

/// `[[tags.namespaces]]`: one allowed namespace and the values it takes:
/// exactly one of `values`, `pattern` or `taxonomy`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagNamespace {
    /// The namespace, e.g. `life-stage`: 1-64 of a-z, 0-9 and '-'.
    pub name: String,
    /// The values allowed, listed (1-128 printable ASCII each, no '/').
    #[serde(default)]
    pub values: Vec<String>,
    /// A regular expression (Rust `regex` syntax) a whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A built-in taxonomy whose ids are the values: `iab-audience-1.1`.
    #[serde(default)]
    pub taxonomy: Option<String>,
}

impl Default for Tags {
    fn default() -> Tags {
        Tags {
            max_ttl_secs: default_max_tag_ttl_secs(),
            pseudonym_overlap_days: default_pseudonym_overlap_days(),
            sensitive: Vec::new(),
            namespaces: default_tag_namespaces(),
        }
    }
}

fn default_max_tag_ttl_secs() -> u64 {
    30 * 86_400
}
fn default_pseudonym_overlap_days() -> u32 {
    90
}
fn default_tag_namespaces() -> Vec<TagNamespace> {
    vec![TagNamespace {
        name: "iab-audience".to_owned(),
        values: Vec::new(),
        pattern: None,
        taxonomy: Some("iab-audience-1.1".to_owned()),
    }]
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: default_store_backend(),
            url: None,
            url_env: None,
        }
    }
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig {
            backend: default_quota_backend(),
            url: None,
            url_env: None,
            on_unavailable: None,
        }
    }
}

pub fn default_store_backend() -> String {
    "sqlite".into()
}
pub fn default_quota_backend() -> String {
    "local".into()
}
fn default_listen() -> String {
    "127.0.0.1:7443".to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_key_dir() -> PathBuf {
    PathBuf::from("keys")
}
fn default_timezone() -> String {
    "Asia/Shanghai".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_half_life_secs() -> u64 {
    2 * 86_400
}
fn default_burst() -> u32 {
    1
}
fn default_max_hops() -> u32 {
    2
}
fn default_token_ttl_secs() -> u64 {
    900
}
fn default_attribution_window_secs() -> u64 {
    7 * 86_400
}
/// `lock_period_days` when an agreement does not set it.
pub const DEFAULT_LOCK_PERIOD_DAYS: u32 = 14;

fn default_lock_period_days() -> u32 {
    DEFAULT_LOCK_PERIOD_DAYS
}
