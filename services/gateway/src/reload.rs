//! Live reload: the configuration file is watched (its content hashed every
//! [`POLL_EVERY`]) and re-read on SIGHUP. A changed file is parsed,
//! validated and compared with the running one:
//!
//! - valid, with only live-appliable changes: swapped in with
//!   [`SettingsHandle::replace`]; every later request sees it, connections
//!   stay up, quota counters keep counting;
//! - valid, but changing what is only read at start (listen address, data
//!   and key dirs, federation, time zone, TLS files, telemetry): refused
//!   whole, with one message per such key;
//! - invalid: refused, with every error.
//!
//! Each attempt is logged, counted (`crossflow.config.reloads{outcome}`),
//! shown on the health service name [`HEALTH_SERVICE`] (NOT_SERVING after a
//! refused file, SERVING again after a good one) and in [`ReloadStatus`]
//! (which operators read through `QuotaService/GetQuotaStatus`).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crossflow_quota::grpc::ReloadStatus;
use crossflow_settings::{Settings, SettingsHandle};
use tonic_health::{ServingStatus, server::HealthReporter};

/// How often the file is checked for changes.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// gRPC health service name that reports the last reload.
pub const HEALTH_SERVICE: &str = "crossflow.config";

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new file is running; what changed, by section.
    Applied(Vec<String>),
    /// The file parses to the running configuration.
    Unchanged,
    /// The file has errors; the running configuration stays.
    Invalid(Vec<String>),
    /// The file changes settings that need a restart; the running
    /// configuration stays.
    Refused(Vec<String>),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid(_) => "invalid",
            Outcome::Refused(_) => "refused",
        }
    }
}

/// Reloads the configuration of a running gateway.
#[derive(Debug, Clone)]
pub struct Reloader {
    settings: SettingsHandle,
    status: ReloadStatus,
    health: HealthReporter,
}

// === impl Reloader ===

impl Reloader {
    pub fn new(settings: SettingsHandle, status: ReloadStatus, health: HealthReporter) -> Self {
        Reloader {
            settings,
            status,
            health,
        }
    }

    /// Marks the starting configuration as applied (generation 1).
    pub async fn started(&self) {
        let file = self.settings.get().file.display().to_string();
        self.status.applied(&file, crossflow_api::clock::now_ms());
        self.health
            .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
            .await;
    }

    /// Watches the file and SIGHUP until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        // Hashed now, not when the task first runs: a file written right
        // after start must count as a change.
        let last = content_hash(&self.settings.get().file);
        tokio::spawn(async move { self.watch(last).await })
    }

    async fn watch(self, mut last: Option<u64>) {
        let path = self.settings.get().file.clone();
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let forced = match hup.as_mut() {
                Some(h) => tokio::select! {
                    _ = tick.tick() => false,
                    _ = h.recv() => true,
                },
                None => {
                    tick.tick().await;
                    false
                }
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            let now = content_hash(&path);
            if forced || now != last {
                last = now;
                if forced {
                    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
                }
                self.reload().await;
            }
        }
    }

    /// Reads the file once and applies it if it can be.
    pub async fn reload(&self) -> Outcome {
        let running = self.settings.get();
        let file = running.file.clone();
        let outcome = match Settings::load(&file) {
            Err(errs) => Outcome::Invalid(errs.errors.iter().map(|e| e.to_string()).collect()),
            Ok(next) => {
                let refused = needs_restart(&running, &next);
                if !refused.is_empty() {
                    Outcome::Refused(refused)
                } else if format!("{running:?}") == format!("{next:?}") {
                    Outcome::Unchanged
                } else {
                    let mut changes = changes(&running, &next);
                    if changes.is_empty() {
                        changes.push("other settings changed".to_owned());
                    }
                    self.settings.replace(next);
                    Outcome::Applied(changes)
                }
            }
        };
        self.report(&file, &outcome).await;
        outcome
    }

    async fn report(&self, file: &Path, outcome: &Outcome) {
        let f = file.display().to_string();
        crossflow_api::metrics::get().config_reload(outcome.label());
        let serving = match outcome {
            Outcome::Applied(changes) => {
                tracing::info!(file = %f, changes = %changes.join("; "), "config reloaded");
                self.status.applied(&f, crossflow_api::clock::now_ms());
                true
            }
            Outcome::Unchanged => {
                tracing::info!(file = %f, "config file rewritten without changes");
                self.status.unchanged();
                true
            }
            Outcome::Invalid(errors) => {
                for e in errors {
                    tracing::error!(file = %f, error = %e, "config reload refused: invalid file; the running configuration stays");
                }
                self.status
                    .failed(errors.clone(), crossflow_api::clock::now_ms());
                false
            }
            Outcome::Refused(why) => {
                for e in why {
                    tracing::error!(file = %f, error = %e, "config reload refused: needs a restart; the running configuration stays");
                }
                self.status
                    .failed(why.clone(), crossflow_api::clock::now_ms());
                false
            }
        };
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(HEALTH_SERVICE, status).await;
    }
}

/// Keys that differ between `old` and `new` but are only read at start.
pub fn needs_restart(old: &Settings, new: &Settings) -> Vec<String> {
    let (o, n) = (&old.gateway, &new.gateway);
    let mut out = Vec::new();
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!(
                "{key} changed from {a:?} to {b:?}: this needs a restart"
            ));
        }
    };
    check(
        "gateway.federation",
        o.federation.clone(),
        n.federation.clone(),
    );
    check("gateway.listen", o.listen.to_string(), n.listen.to_string());
    check("gateway.data_dir", show(&o.data_dir), show(&n.data_dir));
    check("gateway.key_dir", show(&o.key_dir), show(&n.key_dir));
    check("gateway.timezone", o.timezone.clone(), n.timezone.clone());
    check("gateway.tls.ca", show(&o.tls.ca), show(&n.tls.ca));
    check("gateway.tls.cert", show(&o.tls.cert), show(&n.tls.cert));
    check("gateway.tls.key", show(&o.tls.key), show(&n.tls.key));
    // Debug output redacts passwords.
    check(
        "gateway.store",
        format!("{:?}", o.store),
        format!("{:?}", n.store),
    );
    check(
        "gateway.quotas",
        format!("{:?}", o.quotas),
        format!("{:?}", n.quotas),
    );
    check(
        "telemetry",
        format!("{:?}", old.telemetry),
        format!("{:?}", new.telemetry),
    );
    out
}

/// What differs, by section, for the log: `partners: +new ~changed -gone`.
pub fn changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let by_id = |m: Vec<(String, String)>| m.into_iter().collect::<BTreeMap<_, _>>();
    let partners = |s: &Settings| {
        by_id(
            s.partners
                .iter()
                .map(|(k, v)| (k.clone(), format!("{v:?}")))
                .collect(),
        )
    };
    let agreements = |s: &Settings| {
        by_id(
            s.agreements
                .iter()
                .map(|a| (a.id.clone(), format!("{a:?}")))
                .collect(),
        )
    };
    diff("partners", &partners(old), &partners(new), &mut out);
    diff("agreements", &agreements(old), &agreements(new), &mut out);
    for (name, a, b) in [
        (
            "fraud",
            format!("{:?}", old.fraud),
            format!("{:?}", new.fraud),
        ),
        ("tags", format!("{:?}", old.tags), format!("{:?}", new.tags)),
        (
            "ledger",
            format!("{:?}", old.ledger),
            format!("{:?}", new.ledger),
        ),
    ] {
        if a != b {
            out.push(format!("{name} changed"));
        }
    }
    out
}

fn diff(
    section: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    let mut parts = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => parts.push(format!("+{k}")),
            Some(o) if o != v => parts.push(format!("~{k}")),
            Some(_) => {}
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        parts.push(format!("-{k}"));
    }
    if !parts.is_empty() {
        out.push(format!("{section}: {}", parts.join(" ")));
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// A hash of the file's bytes (None if it cannot be read: a reload then
/// reports the read error once, when the file comes back or changes).
fn content_hash(path: &PathBuf) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
