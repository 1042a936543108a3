//! crossflow configuration: the TOML that operations edit.
//!
//! Two stages, as in vector: [`raw`] holds the serde types (every table denies
//! unknown fields), and [`Settings::from_toml`] validates all of it at once,
//! collecting every problem with the key that has it and the value it holds.
//! A [`Settings`] value is therefore always internally consistent: every
//! partner named by an agreement exists, every rate is within 0..=10000 bps,
//! every file exists, and the lookups below never need to re-check.
#![forbid(unsafe_code)]

mod backends;
pub mod raw;
mod tags;
mod validate;

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

pub use backends::{QuotaBackend, StoreBackend, redact_url, url_host};
pub use raw::{AttributionModel, Boost, Commission, Fraud, OnUnavailable, QuotaClass, RateQuota};
pub use tags::{TagSettings, TagValues};
pub use validate::valid_category;

// === errors ===

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `agreements[2].flows[0].commission.default_bps`.
    pub key: String,
    /// What is wrong, including the offending value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} {}", self.key, self.message)
        }
    }
}

/// Every problem found in one file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let n = self.errors.len();
        write!(f, "{file}: {n} error{}", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {file}: {e}")?;
        }
        Ok(())
    }
}

// === validated settings ===

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file this was read from (paths inside it are resolved against its
    /// directory).
    pub file: PathBuf,
    pub gateway: Gateway,
    /// Partners by id.
    pub partners: BTreeMap<String, raw::Partner>,
    /// Agreements in file order.
    pub agreements: Vec<raw::Agreement>,
    /// Fraud hold rules for conversions.
    pub fraud: raw::Fraud,
    /// Checkpoint policy of the ledger.
    pub ledger: raw::Ledger,
    /// OpenTelemetry export (read at start only).
    pub telemetry: raw::Telemetry,
    /// The tag vocabulary and disclosure guards.
    pub tags: TagSettings,
    /// (from, to) -> (agreement index, flow index).
    flows: BTreeMap<(String, String), (usize, usize)>,
}

/// Gateway settings with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub federation: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub key_dir: PathBuf,
    pub timezone: String,
    pub tls: Tls,
    /// `[gateway.store]`, its URL resolved.
    pub store: StoreBackend,
    /// `[gateway.quotas]`, its URL resolved.
    pub quotas: QuotaBackend,
}

/// TLS file paths, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One direction of an agreement, with the agreement it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct FlowRef<'a> {
    pub agreement: &'a raw::Agreement,
    pub flow: &'a raw::Flow,
}

// === impl Settings ===

impl Settings {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                key: String::new(),
                message: format!("cannot be read: {e}"),
            }],
        })?;
        Settings::from_toml(&text, path)
    }

    /// Parses and validates TOML text as if read from `path` (relative paths
    /// inside it resolve against `path`'s directory).
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigErrors> {
        Settings::from_toml_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// [`Settings::from_toml`] with `env` looking up the variables that
    /// `url_env` keys name.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_path_buf(),
            errors,
        };
        let raw: raw::Config = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("at {}", line_col(text, s.start)))
                .unwrap_or_default();
            fail(vec![ConfigError {
                key,
                message: e.message().to_string(),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate::validate(raw, path, base, env).map_err(fail)
    }

    /// The flow that allows referrals `from` -> `to`, if any agreement has one.
    pub fn flow(&self, from: &str, to: &str) -> Option<FlowRef<'_>> {
        let &(a, f) = self.flows.get(&(from.to_owned(), to.to_owned()))?;
        let agreement = self.agreements.get(a)?;
        Some(FlowRef {
            agreement,
            flow: agreement.flows.get(f)?,
        })
    }

    /// The agreement between two partners (in either order), if any. A
    /// partner has no agreement with itself.
    pub fn agreement_between(&self, a: &str, b: &str) -> Option<&raw::Agreement> {
        if a == b {
            return None;
        }
        self.agreements
            .iter()
            .find(|ag| ag.between.iter().any(|p| p == a) && ag.between.iter().any(|p| p == b))
    }

    pub fn partner(&self, id: &str) -> Option<&raw::Partner> {
        self.partners.get(id)
    }

    /// A partner that exists and is enabled.
    pub fn active_partner(&self, id: &str) -> Option<&raw::Partner> {
        self.partners.get(id).filter(|p| p.enabled)
    }
}

/// `line L, column C` (1-based) of a byte offset, for parse errors.
fn line_col(text: &str, offset: usize) -> String {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

/// A partner or agreement id: 1-63 of lowercase ASCII letters, digits and
/// '-', starting with a letter and not ending with '-'. Such ids are safe in
/// SPIFFE URIs, file names and CSV without quoting.
pub fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The running configuration, swapped whole on reload. Readers take a
/// snapshot per request ([`SettingsHandle::get`]), so one request never sees
/// half of an old file and half of a new one.
#[derive(Debug, Clone)]
pub struct SettingsHandle(std::sync::Arc<arc_swap::ArcSwap<Settings>>);

impl SettingsHandle {
    pub fn new(s: Settings) -> SettingsHandle {
        SettingsHandle(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(s)))
    }

    /// A consistent snapshot of the current configuration.
    pub fn get(&self) -> std::sync::Arc<Settings> {
        self.0.load_full()
    }

    /// Replaces the configuration for every later snapshot.
    pub fn replace(&self, s: Settings) {
        self.0.store(std::sync::Arc::new(s));
    }
}

#[cfg(test)]
mod tests;
