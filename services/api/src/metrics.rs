//! Domain metrics, one handle for every service.
//!
//! Services record through [`get`] (`crossflow_api::metrics::get().hop_minted(..)`)
//! and never see OpenTelemetry types. Until the gateway installs a meter
//! ([`install`], done by its telemetry module when `[telemetry]` names an
//! OTLP endpoint) every call is a no-op costing one atomic load.
//!
//! Names follow the OpenTelemetry conventions: dotted, lowercase, units in
//! `unit` rather than in the name, attributes for what varies (agreement,
//! currency, quota). No attribute ever carries a subject or a uid.

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicI64, Ordering},
};

use arc_swap::ArcSwap;
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _},
};

/// Instrumentation scope of every crossflow metric.
pub const SCOPE: &str = "crossflow";

static CURRENT: LazyLock<ArcSwap<Metrics>> = LazyLock::new(|| {
    let noop = opentelemetry::metrics::noop::NoopMeterProvider::new().meter(SCOPE);
    ArcSwap::from_pointee(Metrics::new(noop))
});

/// The current metrics handle. Cheap: take it per call, do not keep it (a
/// later [`install`] replaces it).
pub fn get() -> Arc<Metrics> {
    CURRENT.load_full()
}

/// Makes `meter` the one every later [`get`] records to. The checkpoint
/// time carries over, so an observed age never jumps back to "none".
pub fn install(meter: Meter) {
    let next = Metrics::new(meter);
    let prev = CURRENT.load();
    next.checkpoint_unix_ms.store(
        prev.checkpoint_unix_ms.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    CURRENT.store(Arc::new(next));
}

/// Every crossflow domain instrument, built from one meter.
#[derive(Debug)]
pub struct Metrics {
    meter: Meter,
    hops_minted: Counter<u64>,
    hops_redeemed: Counter<u64>,
    tag_disclosures: Counter<u64>,
    conversions: Counter<u64>,
    commission: Counter<u64>,
    ledger_size: Gauge<u64>,
    quota_rejections: Counter<u64>,
    quota_near_limit: Counter<u64>,
    config_reloads: Counter<u64>,
    store_commit: Histogram<f64>,
    /// Unix ms of the last signed checkpoint; 0 before the first. Read by
    /// the `crossflow.ledger.checkpoint.age` gauge the gateway registers.
    checkpoint_unix_ms: Arc<AtomicI64>,
}

// === impl Metrics ===

impl Metrics {
    fn new(meter: Meter) -> Metrics {
        let checkpoint_unix_ms = Arc::new(AtomicI64::new(0));
        let age_source = checkpoint_unix_ms.clone();
        // Observable: an age must grow between checkpoints without anyone
        // recording it.
        let _age = meter
            .f64_observable_gauge("crossflow.ledger.checkpoint.age")
            .with_unit("s")
            .with_description("Seconds since the last signed ledger checkpoint")
            .with_callback(move |o| {
                let at = age_source.load(Ordering::Relaxed);
                if at > 0 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    o.observe((now - at).max(0) as f64 / 1000.0, &[]);
                }
            })
            .build();
        Metrics {
            hops_minted: meter
                .u64_counter("crossflow.referrals.minted")
                .with_unit("{hop}")
                .with_description("Referral hops minted, by agreement")
                .build(),
            hops_redeemed: meter
                .u64_counter("crossflow.referrals.redeemed")
                .with_unit("{hop}")
                .with_description("Referral hops redeemed for the first time, by agreement")
                .build(),
            tag_disclosures: meter
                .u64_counter("crossflow.tags.disclosed")
                .with_unit("{tag}")
                .with_description("Tags disclosed to a receiving partner, by agreement")
                .build(),
            conversions: meter
                .u64_counter("crossflow.conversions")
                .with_unit("{conversion}")
                .with_description("Conversion events, by currency and state")
                .build(),
            commission: meter
                .u64_counter("crossflow.conversions.commission")
                .with_unit("{minor_unit}")
                .with_description("Commission in minor units of the currency, by currency")
                .build(),
            ledger_size: meter
                .u64_gauge("crossflow.ledger.size")
                .with_unit("{entry}")
                .with_description("Entries in the ledger")
                .build(),
            quota_rejections: meter
                .u64_counter("crossflow.quota.rejections")
                .with_unit("{call}")
                .with_description(
                    "Calls over a quota, by quota kind and class; shadow=true ones were let through",
                )
                .build(),
            quota_near_limit: meter
                .u64_counter("crossflow.quota.near_limit")
                .with_unit("{event}")
                .with_description("A daily quota passed 90 % of its limit, by quota kind")
                .build(),
            config_reloads: meter
                .u64_counter("crossflow.config.reloads")
                .with_unit("{reload}")
                .with_description("Configuration reloads, by outcome (applied, unchanged, invalid, refused)")
                .build(),
            store_commit: meter
                .f64_histogram("crossflow.store.commit.duration")
                .with_unit("s")
                .with_description("Duration of one group commit of the embedded store")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                ])
                .build(),
            checkpoint_unix_ms,
            meter,
        }
    }

    /// The meter itself, for an instrument this handle does not have yet
    /// (prefer adding a method here so names stay in one place).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// One referral hop minted under `agreement`.
    pub fn hop_minted(&self, agreement: &str) {
        self.hops_minted
            .add(1, &[KeyValue::new("agreement", agreement.to_owned())]);
    }

    /// One referral hop redeemed (first redemption only) under `agreement`.
    pub fn hop_redeemed(&self, agreement: &str) {
        self.hops_redeemed
            .add(1, &[KeyValue::new("agreement", agreement.to_owned())]);
    }

    /// `n` tags disclosed to a receiver under `agreement`.
    pub fn tags_disclosed(&self, agreement: &str, n: u64) {
        self.tag_disclosures
            .add(n, &[KeyValue::new("agreement", agreement.to_owned())]);
    }

    /// A conversion event (`state` e.g. `pending`, `confirmed`, `refunded`)
    /// carrying `commission_minor` minor units of commission in `currency`
    /// (ISO 4217). Pass 0 for events that move no commission.
    pub fn conversion(&self, currency: &str, state: &str, commission_minor: u64) {
        self.conversions.add(
            1,
            &[
                KeyValue::new("currency", currency.to_owned()),
                KeyValue::new("state", state.to_owned()),
            ],
        );
        if commission_minor > 0 {
            self.commission.add(
                commission_minor,
                &[KeyValue::new("currency", currency.to_owned())],
            );
        }
    }

    /// The ledger now holds `entries` entries.
    pub fn ledger_size(&self, entries: u64) {
        self.ledger_size.record(entries, &[]);
    }

    /// A checkpoint was signed at `unix_ms`; the age gauge counts from it.
    pub fn checkpoint_signed(&self, unix_ms: i64) {
        self.checkpoint_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// A call over quota `kind` (`rate`, `daily_cap`, `referrals_per_day`,
    /// `reciprocity`) of `class`; `shadow` when it was let through.
    pub fn quota_rejected(&self, kind: &'static str, class: &'static str, shadow: bool) {
        self.quota_rejections.add(
            1,
            &[
                KeyValue::new("quota", kind),
                KeyValue::new("class", class),
                KeyValue::new("shadow", shadow),
            ],
        );
    }

    /// A daily quota passed 90 % of its limit (once per quota per day).
    pub fn quota_near_limit(&self, kind: &'static str, class: &'static str) {
        self.quota_near_limit.add(
            1,
            &[KeyValue::new("quota", kind), KeyValue::new("class", class)],
        );
    }

    /// A configuration reload ended with `outcome`.
    pub fn config_reload(&self, outcome: &'static str) {
        self.config_reloads
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// One store group commit took `secs`.
    pub fn store_commit(&self, secs: f64) {
        self.store_commit.record(secs, &[]);
    }
}
