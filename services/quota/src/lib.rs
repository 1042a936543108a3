//! Quotas: per-partner rate limits and daily caps per RPC class, and per
//! agreement direction a daily referral cap and a reciprocity limit, all read
//! from the running [`Settings`] on every call so a reload applies to the
//! next call without resetting any state.
//!
//! - Rates are GCRA (generic cell rate algorithm) with one "theoretical
//!   arrival time" per partner and class. We keep our own GCRA rather than
//!   `governor`: governor's keyed limiter has one quota for all keys and no
//!   way to change it live, and rebuilding it on reload would forget every
//!   key's state. Here the quota is looked up per call, so a raised limit
//!   applies at once and the partner keeps the credit it had. The retry hint
//!   is exact: the time until the call would conform.
//! - Daily caps count calls admitted in the local day of
//!   `gateway.timezone`. Counters live in memory and are written behind to
//!   the store ([`Quotas::flush`], every second from the gateway, and at
//!   shutdown); a crash loses at most the increments of the last second,
//!   i.e. a cap may admit up to one second more traffic after a crash. A
//!   restart reads the day's counters back ([`Quotas::restore`]).
//! - Hops (CreateReferral) are checked per agreement direction through
//!   [`Quotas::admit_hop`], which the referral service calls once it knows
//!   the destination (see `crossflow_referrals::HopGuard`): the flow's
//!   `referrals_per_day`, and the agreement's `max_daily_imbalance` (the
//!   caller's hops to the other side today minus the other side's hops to
//!   the caller must stay within it). Hops count when minted.
//! - Shadow mode (`shadow = true`, or a flow's `quota_shadow`) counts and
//!   reports (metric `crossflow.quota.rejections{shadow=true}`, and one log
//!   line per quota per day) but never rejects.
//!
//! Rejections are `RESOURCE_EXHAUSTED` with `QuotaFailure` (the quota's
//! name, as in `GetQuotaStatus`, and its limit) and `RetryInfo`.
//!
//! With `[gateway.quotas] backend = "redis"` ([`Quotas::connect`]) the same
//! rules run in Redis instead, shared by every replica (see [`shared`]):
//! one script call per decision, on the server's clock, with the limits
//! passed on each call so a reload still applies at once everywhere. While
//! Redis cannot be reached, `on_unavailable = "allow"` decides with the
//! in-memory engine above (and adds its counts to Redis when it is back),
//! `"deny"` refuses limited calls with `UNAVAILABLE`; [`Quotas::backend_state`]
//! and the metric `crossflow.quota.backend_unavailable` say which.
#![forbid(unsafe_code)]

mod day;
pub mod grpc;
mod layer;
pub mod shared;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use crossflow_api::{Kind, Problem, QuotaViolation};
use crossflow_settings::{
    OnUnavailable, QuotaBackend, QuotaClass, RateQuota, Settings, SettingsHandle, raw,
};
use crossflow_store::{QuotaCounterStore, StoreError};

pub use day::DayClock;
pub use layer::{QuotaGate, QuotaLayer, class_of};
use shared::{Admit, Shared, Unavailable};
pub use shared::{BackendState, QuotaError};

/// A daily quota is "near its limit" past this fraction (per mille).
const NEAR_LIMIT_PER_MILLE: u64 = 900;
/// Days of counters kept in the store (older ones are deleted on flush).
const KEEP_DAYS: i64 = 7;
/// The retry hint of a call refused because Redis is unavailable
/// (`on_unavailable = "deny"`): about two probes of the backend.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// The name of a class as in the config file.
pub fn class_name(c: QuotaClass) -> &'static str {
    match c {
        QuotaClass::Referrals => "referrals",
        QuotaClass::Tags => "tags",
        QuotaClass::Conversions => "conversions",
        QuotaClass::LedgerReads => "ledger_reads",
    }
}

fn class_index(c: QuotaClass) -> usize {
    match c {
        QuotaClass::Referrals => 0,
        QuotaClass::Tags => 1,
        QuotaClass::Conversions => 2,
        QuotaClass::LedgerReads => 3,
    }
}

/// Kinds of quota, as named in metrics and `GetQuotaStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Rate,
    DailyCap,
    ReferralsPerDay,
    Reciprocity,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Rate => "rate",
            QuotaKind::DailyCap => "daily_cap",
            QuotaKind::ReferralsPerDay => "referrals_per_day",
            QuotaKind::Reciprocity => "reciprocity",
        }
    }
}

/// Where a partner stands against one quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Stable name, also the `QuotaFailure` subject.
    pub quota: String,
    pub kind: QuotaKind,
    pub class: Option<QuotaClass>,
    pub agreement_id: String,
    pub to_partner: String,
    pub limit: u64,
    pub remaining: u64,
    pub used: u64,
    /// Unix ms when `remaining` is back to `limit`.
    pub reset_at_ms: i64,
    pub rate_per_sec: u32,
    pub shadow: bool,
}

/// A partner's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub partner: String,
    pub day: String,
    pub timezone: String,
    pub quotas: Vec<Standing>,
}

/// GCRA state of one partner and class.
#[derive(Debug, Default, Clone, Copy)]
struct Gcra {
    /// Theoretical arrival time, in ns since `Quotas::epoch` (0 = never).
    tat: u64,
    /// Emission interval (ns per call) the `tat` was computed under.
    t: u64,
}

// === impl Gcra ===

impl Gcra {
    /// The emission interval `t` (ns per call at the quota's rate) and the
    /// tolerance `tau` (a full burst's worth of `t`) of `q`. A zero rate or
    /// burst counts as one: settings reject zero, this keeps the arithmetic
    /// total anyway.
    fn params(q: &RateQuota) -> (u64, u64) {
        let t = 1_000_000_000 / u64::from(q.rate_per_sec.max(1));
        (t, t.saturating_mul(u64::from(q.burst.max(1))))
    }

    /// The outstanding debt at `now_ns`, in ns at emission interval `t`.
    ///
    /// When a reload changes the rate, the debt is rescaled so that it stands
    /// for the same number of outstanding calls: a raised limit applies at
    /// once (2/s -> 50/s does not keep the caller waiting out 2/s debt) and a
    /// lowered one does not hand out fresh credit.
    fn debt(&self, now_ns: u64, t: u64) -> u64 {
        let debt = self.tat.saturating_sub(now_ns);
        if self.t == 0 || self.t == t {
            return debt;
        }
        let scaled = u128::from(debt) * u128::from(t) / u128::from(self.t);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// The quota engine. One per gateway; share it with `Arc`.
#[derive(Debug)]
pub struct Quotas {
    settings: SettingsHandle,
    epoch: Instant,
    /// Partner -> GCRA state per class. A lock per partner: one partner's
    /// flood never waits on another's.
    cells: RwLock<HashMap<String, Arc<Mutex<[Gcra; 4]>>>>,
    daily: Mutex<Daily>,
    /// `backend = "redis"`: the shared state. The fields above are then
    /// the fallback limiter, and `daily.dirty` holds what it counted for
    /// Redis rather than for the store.
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Daily {
    clock: DayClock,
    counts: HashMap<String, u64>,
    /// Keys already reported near their limit today.
    near: HashSet<String>,
    /// Keys whose shadow overrun was already logged today.
    shadow_logged: HashSet<String>,
    /// Not yet persisted, by day.
    dirty: BTreeMap<String, HashMap<String, u64>>,
}

/// Why a quota refused a call, before it becomes a [`Problem`].
#[derive(Debug)]
struct Over {
    kind: QuotaKind,
    class: &'static str,
    subject: String,
    description: String,
    retry_after: Duration,
    limit: u64,
}

// === impl Quotas ===

impl Quotas {
    pub fn new(settings: SettingsHandle) -> Quotas {
        let tz = settings.get().gateway.timezone.clone();
        Quotas {
            settings,
            epoch: Instant::now(),
            cells: RwLock::default(),
            daily: Mutex::new(Daily {
                clock: DayClock::new(&tz),
                counts: HashMap::new(),
                near: HashSet::new(),
                shadow_logged: HashSet::new(),
                dirty: BTreeMap::new(),
            }),
            shared: None,
        }
    }

    /// The quota engine `settings.gateway.quotas` asks for: [`Quotas::new`]
    /// for `local`; for `redis`, state shared through Redis under the keys
    /// `crossflow:{<federation>}:…`. Does not fail when Redis is down (the
    /// replica starts, applies `on_unavailable` and probes it); fails only
    /// on a URL the client cannot use.
    pub async fn connect(settings: SettingsHandle) -> Result<Quotas, QuotaError> {
        let s = settings.get();
        match &s.gateway.quotas {
            QuotaBackend::Local => Ok(Quotas::new(settings.clone())),
            QuotaBackend::Redis {
                url,
                on_unavailable,
            } => {
                Quotas::connect_redis(
                    settings.clone(),
                    url,
                    *on_unavailable,
                    Shared::prefix_for(&s.gateway.federation),
                    shared::CALL_TIMEOUT,
                    shared::PROBE_EVERY,
                )
                .await
            }
        }
    }

    /// [`Quotas::connect`] for a Redis at `url` with keys under `prefix`
    /// (tests give each their own) and the given timeouts.
    pub(crate) async fn connect_redis(
        settings: SettingsHandle,
        url: &str,
        on_unavailable: OnUnavailable,
        prefix: String,
        timeout: Duration,
        probe_every: Duration,
    ) -> Result<Quotas, QuotaError> {
        let shared = Shared::new(url, prefix, on_unavailable, timeout, probe_every)?;
        // The initial state: down already logs and starts the probe.
        if shared.ping().await.is_ok() {
            tracing::info!(
                redis = %crossflow_settings::url_host(url),
                "quotas are shared through redis"
            );
        }
        let mut quotas = Quotas::new(settings);
        quotas.shared = Some(shared);
        Ok(quotas)
    }

    /// Where quota state is kept right now (for health): local, Redis, or
    /// Redis unavailable with the policy in force.
    pub fn backend_state(&self) -> BackendState {
        self.shared
            .as_ref()
            .map_or(BackendState::Local, |s| s.state())
    }

    /// Whether decisions go to Redis (then prefer the `_async` methods).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// [`Quotas::admit`], without blocking a thread on Redis: what the
    /// tower layer calls. With the local backend it is `admit`.
    pub async fn admit_async(&self, partner: &str, class: QuotaClass) -> Result<(), Problem> {
        let now_ms = crossflow_api::clock::now_ms();
        let Some(shared) = &self.shared else {
            return self.admit_at(partner, class, Instant::now(), now_ms);
        };
        let settings = self.settings.get();
        let Some(q) = settings.partner(partner).and_then(|p| p.quotas.get(&class)) else {
            return Ok(());
        };
        let cname = class_name(class);
        let (day, until_next_day) = self.today(&settings, now_ms)?;
        self.replay(shared).await;
        match shared.admit(partner, cname, q, &day).await {
            Ok(Admit::Admitted {
                count,
                over_cap,
                over_rate,
            }) => {
                let mut daily = self.daily.lock().map_err(|_| poisoned())?;
                if over_cap && let Some(cap) = q.daily_cap {
                    daily.shadowed(&cap_over(&settings, partner, cname, cap, until_next_day));
                }
                if over_rate {
                    daily.shadowed(&rate_over(partner, cname, q, Duration::ZERO));
                }
                if let Some(cap) = q.daily_cap {
                    let key = format!("partner/{partner}/{cname}");
                    daily.near_limit(&key, count, cap, QuotaKind::DailyCap, cname);
                }
                Ok(())
            }
            Ok(Admit::OverCap { used }) => {
                let cap = q.daily_cap.unwrap_or(used);
                Err(cap_over(&settings, partner, cname, cap, until_next_day).reject())
            }
            Ok(Admit::OverRate { retry }) => Err(rate_over(partner, cname, q, retry).reject()),
            Err(Unavailable) => self.without_redis(shared, "call", || {
                self.admit_at(partner, class, Instant::now(), now_ms)
            }),
        }
    }

    /// [`Quotas::admit_hop`], without blocking a thread on Redis.
    pub async fn admit_hop_async(
        &self,
        agreement: &raw::Agreement,
        flow: &raw::Flow,
    ) -> Result<(), Problem> {
        let now_ms = crossflow_api::clock::now_ms();
        let Some(shared) = &self.shared else {
            return self.admit_hop_at(agreement, flow, now_ms);
        };
        if flow.referrals_per_day.is_none() && agreement.max_daily_imbalance.is_none() {
            return Ok(());
        }
        let settings = self.settings.get();
        let (day, until_next_day) = self.today(&settings, now_ms)?;
        self.replay(shared).await;
        let (from, to) = (&flow.from, &flow.to);
        let hop = shared
            .hop(
                from,
                to,
                flow.referrals_per_day,
                agreement.max_daily_imbalance,
                flow.quota_shadow,
                &day,
            )
            .await;
        let hop = match hop {
            Ok(h) => h,
            Err(Unavailable) => {
                return self
                    .without_redis(shared, "hop", || self.admit_hop_at(agreement, flow, now_ms));
            }
        };
        let mut overs = Vec::new();
        if hop.over_per_day
            && let Some(cap) = flow.referrals_per_day
        {
            overs.push(per_day_over(
                &settings,
                agreement,
                flow,
                cap,
                until_next_day,
            ));
        }
        if hop.over_imbalance
            && let Some(m) = agreement.max_daily_imbalance
        {
            overs.push(reciprocity_over(
                agreement,
                flow,
                m,
                hop.out,
                hop.inn,
                until_next_day,
            ));
        }
        if !hop.admitted && !overs.is_empty() {
            return Err(reject_all(overs));
        }
        let mut daily = self.daily.lock().map_err(|_| poisoned())?;
        for o in &overs {
            daily.shadowed(o);
        }
        if let Some(cap) = flow.referrals_per_day {
            let key = format!("flow/{from}/{to}");
            daily.near_limit(
                &key,
                hop.out + 1,
                cap,
                QuotaKind::ReferralsPerDay,
                "referrals",
            );
        }
        Ok(())
    }

    /// [`Quotas::report`], read from Redis with the Redis backend (this
    /// replica's own counts while it is unavailable).
    pub async fn report_async(&self, partner: &str) -> Report {
        let now_ms = crossflow_api::clock::now_ms();
        let Some(shared) = &self.shared else {
            return self.report_at(partner, Instant::now(), now_ms);
        };
        let settings = self.settings.get();
        let Ok((day, until_next_day)) = self.today(&settings, now_ms) else {
            return self.report_at(partner, Instant::now(), now_ms);
        };
        let classes: Vec<(QuotaClass, &RateQuota)> = settings
            .partner(partner)
            .map(|p| p.quotas.iter().map(|(c, q)| (*c, q)).collect())
            .unwrap_or_default();
        let names: Vec<&str> = classes.iter().map(|(c, _)| class_name(*c)).collect();
        let mut keys: Vec<String> = names
            .iter()
            .map(|c| format!("partner/{partner}/{c}"))
            .collect();
        for ag in &settings.agreements {
            for f in ag.flows.iter().filter(|f| f.from == partner) {
                keys.push(format!("flow/{partner}/{}", f.to));
                keys.push(format!("flow/{}/{partner}", f.to));
            }
        }
        let Ok((rates, counts)) = shared.read(partner, &names, &day, &keys).await else {
            return self.report_at(partner, Instant::now(), now_ms);
        };
        let counts: HashMap<&str, u64> = keys.iter().map(String::as_str).zip(counts).collect();
        let rate = |class: QuotaClass, q: &RateQuota| {
            let i = classes.iter().position(|(c, _)| *c == class);
            let st = i.and_then(|i| rates.get(i)).copied().unwrap_or_default();
            let (t, tau) = shared::params_us(q);
            let debt = if st.t_us == 0 || st.t_us == t {
                st.debt_us
            } else {
                let scaled = u128::from(st.debt_us) * u128::from(t) / u128::from(st.t_us);
                u64::try_from(scaled).unwrap_or(u64::MAX)
            };
            (tau.saturating_sub(debt) / t, debt / 1000)
        };
        let count = |key: &str| counts.get(key).copied().unwrap_or(0);
        build_report(
            &settings,
            partner,
            &day,
            now_ms,
            until_next_day,
            rate,
            count,
        )
    }

    /// Admits or refuses one call of `class` by `partner`, now, on this
    /// process's own engine (what [`Quotas::admit_async`] does without
    /// Redis, at no cost of a future).
    pub fn admit(&self, partner: &str, class: QuotaClass) -> Result<(), Problem> {
        self.admit_at(
            partner,
            class,
            Instant::now(),
            crossflow_api::clock::now_ms(),
        )
    }

    /// [`Quotas::admit`] at a given instant (monotonic, for the rate) and
    /// Unix ms (for the day), for tests.
    pub fn admit_at(
        &self,
        partner: &str,
        class: QuotaClass,
        now: Instant,
        now_ms: i64,
    ) -> Result<(), Problem> {
        let settings = self.settings.get();
        let Some(q) = settings.partner(partner).and_then(|p| p.quotas.get(&class)) else {
            return Ok(());
        };
        let cname = class_name(class);
        let now_ns = self.ns(now);
        let cell = self.cell(partner);
        let mut cells = cell.lock().map_err(|_| poisoned())?;
        let gcra = &mut cells[class_index(class)];

        // Daily first: a call refused for the day must not use rate credit.
        let key = format!("partner/{partner}/{cname}");
        let mut daily = self.daily.lock().map_err(|_| poisoned())?;
        daily.roll(&settings, now_ms);
        let used = daily.count(&key);
        if let Some(cap) = q.daily_cap
            && used >= cap
        {
            let over = cap_over(
                &settings,
                partner,
                cname,
                cap,
                daily.clock.until_next_day(now_ms),
            );
            if !q.shadow {
                return Err(over.reject());
            }
            daily.shadowed(&over);
        }

        // GCRA: conforming iff the new arrival time is within burst * T.
        let (t, tau) = Gcra::params(q);
        let new_tat = now_ns
            .saturating_add(gcra.debt(now_ns, t))
            .saturating_add(t);
        let ahead = new_tat - now_ns;
        if ahead > tau {
            let over = rate_over(partner, cname, q, Duration::from_nanos(ahead - tau));
            if !q.shadow {
                return Err(over.reject());
            }
            daily.shadowed(&over);
            // Let it through, but keep no more debt than a full burst: a
            // limit switched from shadow to enforced starts fair.
            *gcra = Gcra {
                tat: new_tat.min(now_ns.saturating_add(tau)),
                t,
            };
        } else {
            *gcra = Gcra { tat: new_tat, t };
        }
        let n = daily.add(&key);
        if let Some(cap) = q.daily_cap {
            daily.near_limit(&key, n, cap, QuotaKind::DailyCap, cname);
        }
        Ok(())
    }

    /// Admits or refuses one referral hop `flow.from -> flow.to` under
    /// `agreement` on this process's own engine, counting it when admitted
    /// (the referral service goes through [`Quotas::admit_hop_async`]).
    pub fn admit_hop(&self, agreement: &raw::Agreement, flow: &raw::Flow) -> Result<(), Problem> {
        self.admit_hop_at(agreement, flow, crossflow_api::clock::now_ms())
    }

    /// [`Quotas::admit_hop`] at a given Unix ms, for tests.
    pub fn admit_hop_at(
        &self,
        agreement: &raw::Agreement,
        flow: &raw::Flow,
        now_ms: i64,
    ) -> Result<(), Problem> {
        if flow.referrals_per_day.is_none() && agreement.max_daily_imbalance.is_none() {
            return Ok(());
        }
        let settings = self.settings.get();
        let (from, to) = (&flow.from, &flow.to);
        let out_key = format!("flow/{from}/{to}");
        let in_key = format!("flow/{to}/{from}");
        let mut daily = self.daily.lock().map_err(|_| poisoned())?;
        daily.roll(&settings, now_ms);
        let out = daily.count(&out_key);
        let inn = daily.count(&in_key);
        let until_next_day = daily.clock.until_next_day(now_ms);
        let mut overs = Vec::new();
        if let Some(cap) = flow.referrals_per_day
            && out >= cap
        {
            overs.push(per_day_over(
                &settings,
                agreement,
                flow,
                cap,
                until_next_day,
            ));
        }
        if let Some(m) = agreement.max_daily_imbalance
            && out + 1 > inn.saturating_add(m)
        {
            overs.push(reciprocity_over(
                agreement,
                flow,
                m,
                out,
                inn,
                until_next_day,
            ));
        }
        if !overs.is_empty() {
            if !flow.quota_shadow {
                return Err(reject_all(overs));
            }
            for o in &overs {
                daily.shadowed(o);
            }
        }
        let n = daily.add(&out_key);
        if let Some(cap) = flow.referrals_per_day {
            daily.near_limit(&out_key, n, cap, QuotaKind::ReferralsPerDay, "referrals");
        }
        Ok(())
    }

    /// Whether `partner` is a configured partner (enabled or not).
    pub fn knows(&self, partner: &str) -> bool {
        self.settings.get().partner(partner).is_some()
    }

    /// Where `partner` stands against every quota of this process's own
    /// engine (GetQuotaStatus uses [`Quotas::report_async`]).
    pub fn report(&self, partner: &str) -> Report {
        self.report_at(partner, Instant::now(), crossflow_api::clock::now_ms())
    }

    /// The in-memory engine's report (with the Redis backend: what this
    /// replica counted on its own while Redis was unavailable).
    pub fn report_at(&self, partner: &str, now: Instant, now_ms: i64) -> Report {
        let settings = self.settings.get();
        let now_ns = self.ns(now);
        let cells = self
            .cells
            .read()
            .ok()
            .and_then(|c| c.get(partner).cloned())
            .and_then(|c| c.lock().ok().map(|t| *t))
            .unwrap_or_default();
        let mut daily = match self.daily.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        daily.roll(&settings, now_ms);
        let until_next_day = daily.clock.until_next_day(now_ms);
        let rate = |class: QuotaClass, q: &RateQuota| {
            let (t, tau) = Gcra::params(q);
            let debt = cells[class_index(class)].debt(now_ns, t);
            (tau.saturating_sub(debt) / t, debt / 1_000_000)
        };
        let day = daily.clock.day().to_owned();
        build_report(
            &settings,
            partner,
            &day,
            now_ms,
            until_next_day,
            rate,
            |key| daily.count(key),
        )
    }

    /// Reads today's counters from `store` and adds them to memory. Call
    /// once at start, before serving.
    /// With the Redis backend this does nothing: the counters live there.
    pub async fn restore<S: QuotaCounterStore>(&self, store: &S) -> Result<(), StoreError> {
        if self.shared.is_some() {
            return Ok(());
        }
        let settings = self.settings.get();
        let day = {
            let mut d = self.daily.lock().map_err(|_| StoreError::Closed)?;
            d.roll(&settings, crossflow_api::clock::now_ms());
            d.clock.day().to_owned()
        };
        let stored = store.day_counters(&day).await?;
        let mut d = self.daily.lock().map_err(|_| StoreError::Closed)?;
        if d.clock.day() == day {
            for (k, n) in stored {
                *d.counts.entry(k).or_default() += n;
            }
        }
        Ok(())
    }

    /// Writes the counted-but-unwritten increments to `store` (one write
    /// per day touched). On failure they are kept for the next flush.
    ///
    /// With the Redis backend this does nothing: what the fallback limiter
    /// counted goes to Redis when it is back, not to the store.
    pub async fn flush<S: QuotaCounterStore>(&self, store: &S) -> Result<(), StoreError> {
        if self.shared.is_some() {
            return Ok(());
        }
        let (dirty, keep_from) = {
            let mut d = self.daily.lock().map_err(|_| StoreError::Closed)?;
            (std::mem::take(&mut d.dirty), d.clock.day_minus(KEEP_DAYS))
        };
        let mut failed = None;
        for (day, deltas) in dirty {
            let list: Vec<(String, u64)> = deltas.iter().map(|(k, n)| (k.clone(), *n)).collect();
            if let Err(e) = store.add_counters(&day, list, &keep_from).await {
                if let Ok(mut d) = self.daily.lock() {
                    let slot = d.dirty.entry(day).or_default();
                    for (k, n) in deltas {
                        *slot.entry(k).or_default() += n;
                    }
                }
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn cell(&self, partner: &str) -> Arc<Mutex<[Gcra; 4]>> {
        if let Some(c) = self.cells.read().ok().and_then(|c| c.get(partner).cloned()) {
            return c;
        }
        match self.cells.write() {
            Ok(mut c) => c.entry(partner.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        // +1: 0 means "never called".
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// The local day of `now_ms` (moving the clock, and the fallback's
    /// counts, to it) and the time left in it.
    fn today(&self, settings: &Settings, now_ms: i64) -> Result<(String, Duration), Problem> {
        let mut daily = self.daily.lock().map_err(|_| poisoned())?;
        daily.roll(settings, now_ms);
        Ok((
            daily.clock.day().to_owned(),
            daily.clock.until_next_day(now_ms),
        ))
    }

    /// A decision Redis could not take: `on_unavailable` says whether the
    /// in-memory engine (`local`) takes it or the call is refused.
    fn without_redis(
        &self,
        shared: &Shared,
        check: &'static str,
        local: impl FnOnce() -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        match shared.on_unavailable() {
            OnUnavailable::Allow => {
                let r = local();
                shared.fallback_decision(check, if r.is_ok() { "allowed" } else { "refused" });
                r
            }
            OnUnavailable::Deny => {
                shared.fallback_decision(check, "denied");
                Err(Problem::new(
                    Kind::Unavailable,
                    "QUOTA_BACKEND_UNAVAILABLE",
                    "quotas cannot be checked: the shared quota store is unavailable; nothing was done, retry later",
                )
                .with("backend", "redis")
                .retry_after(UNAVAILABLE_RETRY))
            }
        }
    }

    /// Once Redis is back, adds what the fallback limiter admitted during
    /// the outage to the shared day counters, so the day's caps count
    /// those calls too (one pipelined round trip, once per recovery). On
    /// failure the counts wait for the next recovery.
    async fn replay(&self, shared: &Shared) {
        if !shared.take_recovered() {
            return;
        }
        let Ok(dirty) = self.daily.lock().map(|mut d| std::mem::take(&mut d.dirty)) else {
            return;
        };
        let counts: Vec<(String, String, u64)> = dirty
            .iter()
            .flat_map(|(day, keys)| keys.iter().map(|(k, n)| (day.clone(), k.clone(), *n)))
            .collect();
        if counts.is_empty() {
            return;
        }
        if shared.add_counts(&counts).await.is_err() {
            if let Ok(mut d) = self.daily.lock() {
                for (day, key, n) in counts {
                    *d.dirty.entry(day).or_default().entry(key).or_default() += n;
                }
            }
            return;
        }
        tracing::info!(
            keys = counts.len(),
            calls = counts.iter().map(|c| c.2).sum::<u64>(),
            "added the calls admitted during the quota backend outage to the shared counters"
        );
    }
}

/// The standings of `partner` from the rate state (`rate(class, quota)`:
/// calls left in the burst, ms until the debt is gone) and the day's
/// counters (`count(key)`, keys as in [`Daily`]) of either engine.
fn build_report(
    settings: &Settings,
    partner: &str,
    day: &str,
    now_ms: i64,
    until_next_day: Duration,
    rate: impl Fn(QuotaClass, &RateQuota) -> (u64, u64),
    count: impl Fn(&str) -> u64,
) -> Report {
    let next_day_ms = now_ms + until_next_day.as_millis() as i64;
    let mut quotas = Vec::new();
    if let Some(p) = settings.partner(partner) {
        for (class, q) in &p.quotas {
            let cname = class_name(*class);
            let burst = u64::from(q.burst.max(1));
            let (remaining, debt_ms) = rate(*class, q);
            quotas.push(Standing {
                quota: format!("partner:{partner}/{cname}/rate"),
                kind: QuotaKind::Rate,
                class: Some(*class),
                agreement_id: String::new(),
                to_partner: String::new(),
                limit: burst,
                remaining: remaining.min(burst),
                used: 0,
                reset_at_ms: now_ms + i64::try_from(debt_ms).unwrap_or(i64::MAX / 2),
                rate_per_sec: q.rate_per_sec,
                shadow: q.shadow,
            });
        }
        for (class, q) in &p.quotas {
            let Some(cap) = q.daily_cap else { continue };
            let cname = class_name(*class);
            let used = count(&format!("partner/{partner}/{cname}"));
            quotas.push(Standing {
                quota: format!("partner:{partner}/{cname}/daily_cap"),
                kind: QuotaKind::DailyCap,
                class: Some(*class),
                agreement_id: String::new(),
                to_partner: String::new(),
                limit: cap,
                remaining: cap.saturating_sub(used),
                used,
                reset_at_ms: next_day_ms,
                rate_per_sec: 0,
                shadow: q.shadow,
            });
        }
    }
    for ag in &settings.agreements {
        for f in ag.flows.iter().filter(|f| f.from == partner) {
            let to = &f.to;
            let out = count(&format!("flow/{partner}/{to}"));
            let inn = count(&format!("flow/{to}/{partner}"));
            if let Some(cap) = f.referrals_per_day {
                quotas.push(Standing {
                    quota: format!("agreement:{}/{partner}->{to}/referrals_per_day", ag.id),
                    kind: QuotaKind::ReferralsPerDay,
                    class: Some(QuotaClass::Referrals),
                    agreement_id: ag.id.clone(),
                    to_partner: to.clone(),
                    limit: cap,
                    remaining: cap.saturating_sub(out),
                    used: out,
                    reset_at_ms: next_day_ms,
                    rate_per_sec: 0,
                    shadow: f.quota_shadow,
                });
            }
            if let Some(m) = ag.max_daily_imbalance {
                let excess = out.saturating_sub(inn);
                quotas.push(Standing {
                    quota: format!("agreement:{}/{partner}->{to}/reciprocity", ag.id),
                    kind: QuotaKind::Reciprocity,
                    class: Some(QuotaClass::Referrals),
                    agreement_id: ag.id.clone(),
                    to_partner: to.clone(),
                    limit: m,
                    remaining: (inn + m).saturating_sub(out),
                    used: excess,
                    reset_at_ms: next_day_ms,
                    rate_per_sec: 0,
                    shadow: f.quota_shadow,
                });
            }
        }
    }
    Report {
        partner: partner.to_owned(),
        day: day.to_owned(),
        timezone: settings.gateway.timezone.clone(),
        quotas,
    }
}

// === quotas refused, described once for both engines ===

fn cap_over(
    settings: &Settings,
    partner: &str,
    cname: &'static str,
    cap: u64,
    retry_after: Duration,
) -> Over {
    Over {
        kind: QuotaKind::DailyCap,
        class: cname,
        subject: format!("partner:{partner}/{cname}/daily_cap"),
        description: format!(
            "{cap} {cname} calls per local day ({}) for partner {partner}",
            settings.gateway.timezone
        ),
        retry_after,
        limit: cap,
    }
}

fn rate_over(partner: &str, cname: &'static str, q: &RateQuota, retry_after: Duration) -> Over {
    Over {
        kind: QuotaKind::Rate,
        class: cname,
        subject: format!("partner:{partner}/{cname}/rate"),
        description: format!(
            "{} {cname} calls per second, at most {} at once, for partner {partner}",
            q.rate_per_sec, q.burst
        ),
        retry_after,
        limit: u64::from(q.burst),
    }
}

fn per_day_over(
    settings: &Settings,
    agreement: &raw::Agreement,
    flow: &raw::Flow,
    cap: u64,
    retry_after: Duration,
) -> Over {
    let (from, to, ag) = (&flow.from, &flow.to, &agreement.id);
    Over {
        kind: QuotaKind::ReferralsPerDay,
        class: "referrals",
        subject: format!("agreement:{ag}/{from}->{to}/referrals_per_day"),
        description: format!(
            "{cap} hops per local day ({}) from {from} to {to} under agreement {ag}",
            settings.gateway.timezone
        ),
        retry_after,
        limit: cap,
    }
}

fn reciprocity_over(
    agreement: &raw::Agreement,
    flow: &raw::Flow,
    m: u64,
    out: u64,
    inn: u64,
    retry_after: Duration,
) -> Over {
    let (from, to, ag) = (&flow.from, &flow.to, &agreement.id);
    Over {
        kind: QuotaKind::Reciprocity,
        class: "referrals",
        subject: format!("agreement:{ag}/{from}->{to}/reciprocity"),
        description: format!(
            "{from}'s hops to {to} may exceed {to}'s hops to {from} by at most {m} per local day (today {out} vs {inn})"
        ),
        retry_after,
        limit: m,
    }
}

// === impl Daily ===

impl Daily {
    /// Moves to the day of `now_ms` (in the configured zone), starting its
    /// counts from zero when the day changed.
    fn roll(&mut self, settings: &Settings, now_ms: i64) {
        if self.clock.advance(&settings.gateway.timezone, now_ms) {
            self.counts.clear();
            self.near.clear();
            self.shadow_logged.clear();
        }
    }

    fn count(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, key: &str) -> u64 {
        let n = self.counts.entry(key.to_owned()).or_default();
        *n += 1;
        let n = *n;
        let day = self.clock.day().to_owned();
        *self
            .dirty
            .entry(day)
            .or_default()
            .entry(key.to_owned())
            .or_default() += 1;
        n
    }

    fn near_limit(&mut self, key: &str, n: u64, cap: u64, kind: QuotaKind, class: &'static str) {
        if n.saturating_mul(1000) >= cap.saturating_mul(NEAR_LIMIT_PER_MILLE)
            && self.near.insert(key.to_owned())
        {
            tracing::warn!(
                quota = key,
                used = n,
                limit = cap,
                kind = kind.as_str(),
                "quota near its daily limit"
            );
            crossflow_api::metrics::get().quota_near_limit(kind.as_str(), class);
        }
    }

    fn shadowed(&mut self, over: &Over) {
        crossflow_api::metrics::get().quota_rejected(over.kind.as_str(), over.class, true);
        if self.shadow_logged.insert(over.subject.clone()) {
            tracing::warn!(
                quota = %over.subject,
                limit = over.limit,
                "quota exceeded in shadow mode: let through (logged once per quota per day)"
            );
        }
    }
}

// === impl Over ===

impl Over {
    fn reject(self) -> Problem {
        reject_all(vec![self])
    }
}

fn reject_all(overs: Vec<Over>) -> Problem {
    let reason = match overs.first().map(|o| o.kind) {
        Some(QuotaKind::Rate) => "RATE_LIMITED",
        Some(QuotaKind::DailyCap) => "DAILY_CAP_REACHED",
        Some(QuotaKind::ReferralsPerDay) => "REFERRALS_PER_DAY_REACHED",
        _ => "RECIPROCITY_LIMIT_REACHED",
    };
    let retry = overs
        .iter()
        .map(|o| o.retry_after)
        .max()
        .unwrap_or_default();
    let message = overs
        .iter()
        .map(|o| format!("quota {} exceeded: {}", o.subject, o.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut p = Problem::new(Kind::ResourceExhausted, reason, message).retry_after(retry);
    for o in overs {
        crossflow_api::metrics::get().quota_rejected(o.kind.as_str(), o.class, false);
        p = p
            .with("quota", o.subject.clone())
            .with("limit", o.limit.to_string());
        p.quota.push(QuotaViolation {
            subject: o.subject,
            description: format!("limit {}: {}", o.limit, o.description),
        });
    }
    p
}

// The referral service asks before minting a hop.
impl crossflow_referrals::HopGuard for Quotas {
    fn admit_hop<'a>(
        &'a self,
        agreement: &'a raw::Agreement,
        flow: &'a raw::Flow,
    ) -> crossflow_referrals::HopAdmission<'a> {
        Box::pin(self.admit_hop_async(agreement, flow))
    }
}

/// Writes counters behind every `every` until aborted (see [`Quotas::flush`];
/// a failed flush is logged and retried on the next tick).
pub fn spawn_flusher<S: QuotaCounterStore>(
    quotas: Arc<Quotas>,
    store: S,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = quotas.flush(&store).await {
                tracing::error!(error = %e, "writing quota counters failed; retrying");
            }
        }
    })
}

fn poisoned() -> Problem {
    Problem::internal(&"quota state lock poisoned")
}
