//! The validation pass: walks the raw config once, collects every error, and
//! only then builds [`Settings`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    ConfigError, Gateway, QuotaBackend, Settings, StoreBackend, Tls, backends, is_valid_slug, raw,
};

/// Upper bound for every rate: 10000 bps is 100 %.
const MAX_BPS: u32 = 10_000;
/// Longest chain any agreement may allow; tokens and landings stay small.
const MAX_HOPS_LIMIT: u32 = 8;
/// Longest token lifetime: one week.
const MAX_TOKEN_TTL_SECS: u64 = 7 * 86_400;

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn bps(&mut self, key: impl Into<String>, v: u32) {
        if v > MAX_BPS {
            self.push(key, format!("must be ≤ {MAX_BPS} bps, got {v}"));
        }
    }

    fn slug(&mut self, key: impl Into<String>, v: &str) {
        if !is_valid_slug(v) {
            self.push(
                key,
                format!(
                    "must be 1-63 lowercase letters, digits or '-', starting with a letter, got {}",
                    quoted(v)
                ),
            );
        }
    }
}

fn quoted(v: impl Display) -> String {
    format!("{:?}", v.to_string())
}

pub(crate) fn validate(
    raw: raw::Config,
    file: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, Vec<ConfigError>> {
    let mut e = Errors::default();
    let gateway = gateway(&raw.gateway, base, env, &mut e);

    let mut partners = BTreeMap::new();
    for (i, p) in raw.partners.iter().enumerate() {
        let key = format!("partners[{i}]");
        e.slug(format!("{key}.id"), &p.id);
        if p.time_decay_half_life_secs == 0 {
            e.push(
                format!("{key}.time_decay_half_life_secs"),
                "must be > 0, got 0",
            );
        }
        for (class, q) in &p.quotas {
            let qk = format!("{key}.quotas.{}", class_name(*class));
            if q.rate_per_sec == 0 {
                e.push(format!("{qk}.rate_per_sec"), "must be > 0, got 0");
            }
            if q.burst == 0 {
                e.push(format!("{qk}.burst"), "must be > 0, got 0");
            }
            if q.daily_cap == Some(0) {
                e.push(format!("{qk}.daily_cap"), "must be > 0 when set, got 0");
            }
        }
        if partners.insert(p.id.clone(), p.clone()).is_some() {
            e.push(
                format!("{key}.id"),
                format!("duplicates an earlier partner id {}", quoted(&p.id)),
            );
        }
    }

    let mut agreement_ids = BTreeSet::new();
    let mut pairs: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut flows = BTreeMap::new();
    for (i, a) in raw.agreements.iter().enumerate() {
        let key = format!("agreements[{i}]");
        e.slug(format!("{key}.id"), &a.id);
        if !agreement_ids.insert(a.id.clone()) {
            e.push(
                format!("{key}.id"),
                format!("duplicates an earlier agreement id {}", quoted(&a.id)),
            );
        }
        if a.between.len() != 2 {
            e.push(
                format!("{key}.between"),
                format!("must name exactly two partners, got {}", a.between.len()),
            );
        }
        for (j, p) in a.between.iter().enumerate() {
            if !partners.contains_key(p) {
                e.push(
                    format!("{key}.between[{j}]"),
                    format!("names an unknown partner {}", quoted(p)),
                );
            }
        }
        if let [x, y] = a.between.as_slice() {
            if x == y {
                e.push(
                    format!("{key}.between"),
                    format!("names {} twice; an agreement binds two partners", quoted(x)),
                );
            } else {
                let pair = if x < y {
                    (x.clone(), y.clone())
                } else {
                    (y.clone(), x.clone())
                };
                if let Some(prev) = pairs.insert(pair, a.id.clone()) {
                    e.push(
                        format!("{key}.between"),
                        format!(
                            "{} and {} already have agreement {}; one agreement per pair",
                            quoted(x),
                            quoted(y),
                            quoted(prev)
                        ),
                    );
                }
            }
        }
        if a.max_hops == 0 || a.max_hops > MAX_HOPS_LIMIT {
            e.push(
                format!("{key}.max_hops"),
                format!("must be 1-{MAX_HOPS_LIMIT}, got {}", a.max_hops),
            );
        }
        if a.token_ttl_secs == 0 || a.token_ttl_secs > MAX_TOKEN_TTL_SECS {
            e.push(
                format!("{key}.token_ttl_secs"),
                format!(
                    "must be 1-{MAX_TOKEN_TTL_SECS} seconds, got {}",
                    a.token_ttl_secs
                ),
            );
        }
        if a.attribution_window_secs == 0 {
            e.push(
                format!("{key}.attribution_window_secs"),
                "must be > 0, got 0",
            );
        }
        e.bps(format!("{key}.upstream_share_bps"), a.upstream_share_bps);
        if a.max_daily_imbalance == Some(0) {
            // 0 would refuse the first hop of every day in either direction.
            e.push(
                format!("{key}.max_daily_imbalance"),
                "must be > 0 when set, got 0 (remove it for no reciprocity limit)",
            );
        }
        if a.flows.is_empty() {
            e.push(
                format!("{key}.flows"),
                "is empty: the agreement allows no direction",
            );
        }
        let mut directions = BTreeSet::new();
        for (j, f) in a.flows.iter().enumerate() {
            let fk = format!("{key}.flows[{j}]");
            for (field, p) in [("from", &f.from), ("to", &f.to)] {
                if !a.between.contains(p) {
                    e.push(
                        format!("{fk}.{field}"),
                        format!(
                            "must be one of the agreement's partners {:?}, got {}",
                            a.between,
                            quoted(p)
                        ),
                    );
                }
            }
            if f.from == f.to {
                e.push(
                    format!("{fk}.to"),
                    format!(
                        "equals from {}: self-referral is not a flow",
                        quoted(&f.from)
                    ),
                );
            }
            if !directions.insert((f.from.clone(), f.to.clone())) {
                e.push(
                    fk.clone(),
                    format!("repeats the direction {} -> {}", f.from, f.to),
                );
            }
            if f.referrals_per_day == Some(0) {
                e.push(
                    format!("{fk}.referrals_per_day"),
                    "must be > 0 when set, got 0 (remove the flow to forbid the direction)",
                );
            }
            let mut scopes = BTreeSet::new();
            for (k, s) in f.tag_scopes.iter().enumerate() {
                if s.is_empty()
                    || s.len() > 64
                    || !s.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '/'
                    })
                {
                    e.push(
                        format!("{fk}.tag_scopes[{k}]"),
                        format!(
                            "must be a namespace of lowercase letters, digits, '-' or '/', got {}",
                            quoted(s)
                        ),
                    );
                }
                if !scopes.insert(s) {
                    e.push(
                        format!("{fk}.tag_scopes[{k}]"),
                        format!("repeats {}", quoted(s)),
                    );
                }
            }
            commission(&f.commission, &format!("{fk}.commission"), &mut e);
            if e.0.is_empty() {
                flows.insert((f.from.clone(), f.to.clone()), (i, j));
            }
        }
    }

    fraud(&raw.fraud, &mut e);
    ledger(&raw.ledger, &mut e);
    telemetry(&raw.telemetry, &mut e);
    let tags = crate::tags::validate(&raw, &mut e.0);

    match gateway {
        Some(gateway) if e.0.is_empty() => Ok(Settings {
            file: file.to_path_buf(),
            gateway,
            partners,
            agreements: raw.agreements,
            fraud: raw.fraud,
            ledger: raw.ledger,
            telemetry: raw.telemetry,
            tags,
            flows,
        }),
        _ => Err(e.0),
    }
}

fn commission(c: &raw::Commission, key: &str, e: &mut Errors) {
    e.bps(format!("{key}.default_bps"), c.default_bps);
    for (cat, bps) in &c.categories {
        if !valid_category(cat) {
            e.push(
                format!("{key}.categories"),
                format!("has an invalid category name {}", quoted(cat)),
            );
        }
        e.bps(format!("{key}.categories.{cat}"), *bps);
    }
    for (k, b) in c.boosts.iter().enumerate() {
        let bk = format!("{key}.boosts[{k}]");
        let start = timestamp(&b.starts_at, &format!("{bk}.starts_at"), e);
        let end = timestamp(&b.ends_at, &format!("{bk}.ends_at"), e);
        if let (Some(s), Some(t)) = (start, end)
            && s >= t
        {
            e.push(
                format!("{bk}.ends_at"),
                format!(
                    "must be after starts_at {}, got {}",
                    quoted(&b.starts_at),
                    quoted(&b.ends_at)
                ),
            );
        }
        // A boost adds to the rate of each category it covers (a category
        // without its own rate uses default_bps); only those rates matter.
        let max_rate = if b.categories.is_empty() {
            c.categories
                .values()
                .copied()
                .chain([c.default_bps])
                .max()
                .unwrap_or(0)
        } else {
            b.categories
                .iter()
                .map(|cat| c.categories.get(cat).copied().unwrap_or(c.default_bps))
                .max()
                .unwrap_or(0)
        };
        if max_rate.saturating_add(b.extra_bps) > MAX_BPS {
            e.push(
                format!("{bk}.extra_bps"),
                format!(
                    "would lift a {max_rate} bps rate above {MAX_BPS} bps, got {}",
                    b.extra_bps
                ),
            );
        }
        for (m, cat) in b.categories.iter().enumerate() {
            if !valid_category(cat) {
                e.push(
                    format!("{bk}.categories[{m}]"),
                    format!("is not a valid category name, got {}", quoted(cat)),
                );
            }
        }
    }
}

/// Bounds of `ledger.checkpoint_interval_ms`: below 10 ms signing would
/// dominate integration; above an hour receipts would wait too long.
pub const CHECKPOINT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;

fn ledger(l: &raw::Ledger, e: &mut Errors) {
    if !CHECKPOINT_INTERVAL_MS.contains(&l.checkpoint_interval_ms) {
        e.push(
            "ledger.checkpoint_interval_ms",
            format!(
                "must be between {} and {} milliseconds, got {}",
                CHECKPOINT_INTERVAL_MS.start(),
                CHECKPOINT_INTERVAL_MS.end(),
                l.checkpoint_interval_ms
            ),
        );
    }
}

fn fraud(f: &raw::Fraud, e: &mut Errors) {
    // 0 would hold every conversion; remove the key to turn a rule off.
    if f.max_landings_per_uid_per_hour == Some(0) {
        e.push(
            "fraud.max_landings_per_uid_per_hour",
            "must be > 0 when set, got 0 (remove it to turn the rule off)",
        );
    }
    if f.max_amount_minor == Some(0) {
        e.push(
            "fraud.max_amount_minor",
            "must be > 0 when set, got 0 (remove it to turn the rule off)",
        );
    }
    for (code, cap) in &f.max_amount_minor_by_currency {
        let key = format!("fraud.max_amount_minor_by_currency.{code}");
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_uppercase()) {
            e.push(
                key.clone(),
                format!(
                    "must be keyed by an ISO 4217 code like CNY, got {}",
                    quoted(code)
                ),
            );
        }
        if *cap == 0 {
            e.push(
                key,
                "must be > 0, got 0 (remove it to use max_amount_minor)",
            );
        }
    }
}

/// Product categories: 1-64 of lowercase letters, digits, '-' and '_'.
pub fn valid_category(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
}

fn timestamp(v: &str, key: &str, e: &mut Errors) -> Option<jiff::Timestamp> {
    match v.parse::<jiff::Timestamp>() {
        Ok(t) => Some(t),
        Err(_) => {
            e.push(
                key,
                format!(
                    "must be an RFC 3339 time like 2026-11-11T20:00:00+08:00, got {}",
                    quoted(v)
                ),
            );
            None
        }
    }
}

fn telemetry(t: &raw::Telemetry, e: &mut Errors) {
    if let Some(ep) = &t.otlp_endpoint
        && !(ep.starts_with("http://") || ep.starts_with("https://"))
    {
        e.push(
            "telemetry.otlp_endpoint",
            format!(
                "must be an http:// or https:// URL like http://127.0.0.1:4317, got {}",
                quoted(ep)
            ),
        );
    }
    if t.service_name.is_empty() {
        e.push("telemetry.service_name", "must not be empty");
    }
    if !(100..=3_600_000).contains(&t.export_interval_ms) {
        e.push(
            "telemetry.export_interval_ms",
            format!("must be 100-3600000 ms, got {}", t.export_interval_ms),
        );
    }
}

fn class_name(c: raw::QuotaClass) -> &'static str {
    match c {
        raw::QuotaClass::Referrals => "referrals",
        raw::QuotaClass::Tags => "tags",
        raw::QuotaClass::Conversions => "conversions",
        raw::QuotaClass::LedgerReads => "ledger_reads",
    }
}

/// The URL a backend's `url` or `url_env` gives, checked against
/// `schemes`; `None` after pushing the problem.
fn backend_url(
    key: &str,
    url: Option<&String>,
    url_env: Option<&String>,
    schemes: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
    e: &mut Errors,
) -> Option<String> {
    let (url, url_key) = match (url, url_env) {
        (Some(_), Some(_)) => {
            e.push(format!("{key}.url"), "give url or url_env, not both");
            return None;
        }
        (None, None) => {
            e.push(
                format!("{key}.url"),
                "must be set (or url_env, naming an environment variable that holds it)",
            );
            return None;
        }
        (Some(url), None) => (url.clone(), format!("{key}.url")),
        // Read at load time, so a reload check sees a changed variable and
        // the secret never has to be in the file.
        (None, Some(var)) => match env(var) {
            Some(url) if !url.is_empty() => (url, format!("{key}.url_env")),
            found => {
                let why = if found.is_some() {
                    "is empty"
                } else {
                    "is not set"
                };
                e.push(
                    format!("{key}.url_env"),
                    format!("names the environment variable {var:?}, which {why}"),
                );
                return None;
            }
        },
    };
    match backends::check_url(&url, schemes) {
        Some(problem) => {
            e.push(url_key, problem);
            None
        }
        None => Some(url),
    }
}

fn store(
    s: &raw::StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
    e: &mut Errors,
) -> Option<StoreBackend> {
    match s.backend.as_str() {
        "sqlite" => {
            for (k, set) in [("url", s.url.is_some()), ("url_env", s.url_env.is_some())] {
                if set {
                    e.push(
                        format!("gateway.store.{k}"),
                        "is for backend = \"postgres\"; the sqlite store lives in gateway.data_dir",
                    );
                }
            }
            Some(StoreBackend::Sqlite)
        }
        "postgres" => backend_url(
            "gateway.store",
            s.url.as_ref(),
            s.url_env.as_ref(),
            &["postgresql", "postgres"],
            env,
            e,
        )
        .map(|url| StoreBackend::Postgres { url }),
        other => {
            e.push(
                "gateway.store.backend",
                format!("must be \"sqlite\" or \"postgres\", got {}", quoted(other)),
            );
            None
        }
    }
}

fn quotas(
    q: &raw::QuotasConfig,
    env: &dyn Fn(&str) -> Option<String>,
    e: &mut Errors,
) -> Option<QuotaBackend> {
    match q.backend.as_str() {
        "local" => {
            for (k, set) in [
                ("url", q.url.is_some()),
                ("url_env", q.url_env.is_some()),
                ("on_unavailable", q.on_unavailable.is_some()),
            ] {
                if set {
                    e.push(format!("gateway.quotas.{k}"), "is for backend = \"redis\"");
                }
            }
            Some(QuotaBackend::Local)
        }
        "redis" => backend_url(
            "gateway.quotas",
            q.url.as_ref(),
            q.url_env.as_ref(),
            &["redis", "rediss", "valkey", "valkeys"],
            env,
            e,
        )
        .map(|url| QuotaBackend::Redis {
            url,
            on_unavailable: q.on_unavailable.unwrap_or_default(),
        }),
        other => {
            e.push(
                "gateway.quotas.backend",
                format!("must be \"local\" or \"redis\", got {}", quoted(other)),
            );
            None
        }
    }
}

fn gateway(
    g: &raw::GatewayConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    e: &mut Errors,
) -> Option<Gateway> {
    let before = e.0.len();
    let fed_ok = !g.federation.is_empty()
        && g.federation.len() <= 253
        && g.federation.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if !fed_ok {
        e.push(
            "gateway.federation",
            format!(
                "must be a lowercase DNS-style trust domain like crossflow.example, got {}",
                quoted(&g.federation)
            ),
        );
    }
    let listen = match g.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(
                "gateway.listen",
                format!(
                    "must be an address like 127.0.0.1:7443, got {}",
                    quoted(&g.listen)
                ),
            );
            None
        }
    };
    if jiff::tz::TimeZone::get(&g.timezone).is_err() {
        e.push(
            "gateway.timezone",
            format!(
                "must be an IANA time zone like Asia/Shanghai, got {}",
                quoted(&g.timezone)
            ),
        );
    }
    let mut file = |key: &str, p: &Path| -> PathBuf {
        let full = base.join(p);
        if !full.is_file() {
            e.push(
                key,
                format!(
                    "names a file that does not exist: {}",
                    quoted(full.display())
                ),
            );
        }
        full
    };
    let tls = Tls {
        ca: file("gateway.tls.ca", &g.tls.ca),
        cert: file("gateway.tls.cert", &g.tls.cert),
        key: file("gateway.tls.key", &g.tls.key),
    };
    // After [gateway.tls], as the tables come in a file (errors are in file
    // order).
    let store = store(&g.store, env, e);
    let quotas = quotas(&g.quotas, env, e);
    if e.0.len() != before {
        return None;
    }
    Some(Gateway {
        federation: g.federation.clone(),
        listen: listen?,
        data_dir: base.join(&g.data_dir),
        key_dir: base.join(&g.key_dir),
        timezone: g.timezone.clone(),
        tls,
        store: store?,
        quotas: quotas?,
    })
}
