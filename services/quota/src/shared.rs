//! Quota state in a Redis-protocol server shared by every replica
//! (`[gateway.quotas] backend = "redis"`).
//!
//! - Every decision is one Lua script call (EVALSHA; the script is loaded
//!   on NOSCRIPT), so it is atomic across replicas and costs one round trip:
//!   `admit.lua` checks a class's daily cap and GCRA rate and counts the call
//!   only if both pass; `hop.lua` does the same for a flow's
//!   `referrals_per_day` and the agreement's `max_daily_imbalance`.
//! - The limits travel as arguments on every call, never stored: a reload
//!   changes them on every replica at once while the keys keep their state.
//! - GCRA runs on the server's clock (`TIME`), so replicas whose clocks
//!   disagree still share one rate. Days are the replica's own
//!   (`gateway.timezone`, [`crate::DayClock`]): a few ms of skew at midnight
//!   only moves a call to the neighbouring day.
//! - Only standard commands (GET, INCR, HMGET, HSET, PEXPIRE, TIME, EVALSHA,
//!   SCRIPT LOAD, PING), so Redis and Valkey both work. Every key of a
//!   federation shares the hash tag `{<federation>}`, so a script's keys are
//!   always in one slot.
//!
//! Outages: each call has a short timeout ([`CALL_TIMEOUT`]). A connection
//! failure or timeout marks the backend down (one WARN); while down no call
//! waits on Redis at all, and a background probe PINGs it every
//! [`PROBE_EVERY`] until it answers (one INFO). The caller decides what a
//! call does meanwhile (`on_unavailable`).

use std::{
    fmt,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use crossflow_settings::{OnUnavailable, RateQuota};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, ObservableGauge},
};
use redis::{
    ErrorKind, RedisError, Script, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// Longest wait for one Redis call: past it the call is decided without
/// Redis, so a dead or stalled server never stalls an RPC for long.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a down backend is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Day counters expire this long after their last increment: past the end
/// of their day in any zone, with a day to spare for `GetQuotaStatus` and
/// replicas whose day is late.
const DAY_TTL_MS: u64 = 2 * 86_400_000;
/// Unexpected (non-outage) errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a quota backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The URL is not one the Redis client can use (settings checked its
    /// shape; this is what only the client knows, e.g. a bad database
    /// number or TLS options).
    #[error("gateway.quotas.url {url}: {source}")]
    Url {
        /// The URL with its password as `***`.
        url: String,
        source: RedisError,
    },
}

/// Where quota state is kept right now, for health and `GetQuotaStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// `backend = "local"`: this process's memory.
    Local,
    /// Redis, reachable.
    Redis,
    /// Redis unreachable, `on_unavailable = "allow"`: this replica's own
    /// limiter decides until it is back.
    RedisUnavailableFallback,
    /// Redis unreachable, `on_unavailable = "deny"`: limited calls are
    /// refused with `UNAVAILABLE` until it is back.
    RedisUnavailableDenying,
}

// === impl BackendState ===

impl BackendState {
    /// Stable name for logs, health details and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Local => "local",
            BackendState::Redis => "redis",
            BackendState::RedisUnavailableFallback => "redis_unavailable_fallback",
            BackendState::RedisUnavailableDenying => "redis_unavailable_denying",
        }
    }

    /// True while quotas are not enforced federation-wide as configured.
    pub fn is_degraded(self) -> bool {
        matches!(
            self,
            BackendState::RedisUnavailableFallback | BackendState::RedisUnavailableDenying
        )
    }
}

/// A call Redis could not decide (down, timed out, or an error); the
/// caller applies `on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable;

/// Redis's answer for one class call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Counted; `count` is the day's calls including this one. `over_cap` /
    /// `over_rate`: let through in shadow mode although over.
    Admitted {
        count: u64,
        over_cap: bool,
        over_rate: bool,
    },
    OverCap {
        used: u64,
    },
    OverRate {
        retry: Duration,
    },
}

/// Redis's answer for one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    pub admitted: bool,
    pub over_per_day: bool,
    pub over_imbalance: bool,
    /// Hops from -> to today, before this one.
    pub out: u64,
    /// Hops to -> from today.
    pub inn: u64,
}

/// Rate state of one class as read for a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateState {
    /// Outstanding debt in µs under `t`, at the server's now.
    pub debt_us: u64,
    /// The emission interval the debt was computed under (0: none).
    pub t_us: u64,
}

/// The connection and the outage state.
pub(crate) struct Shared {
    conn: ConnectionManager,
    /// `crossflow:{<federation>}:`, in front of every key.
    prefix: String,
    on_unavailable: OnUnavailable,
    /// `host:port`, for logs (never the password).
    host: String,
    timeout: Duration,
    probe_every: Duration,
    down: Arc<AtomicBool>,
    probing: AtomicBool,
    /// Set on recovery: counts made locally during the outage are to be
    /// added to Redis (see `Quotas::replay`).
    recovered: AtomicBool,
    last_error_log: Mutex<Option<Instant>>,
    admit: Script,
    hop: Script,
    report: Script,
    metrics: ArcSwapOption<Instruments>,
    /// For the probe task (calls may come from threads outside the runtime
    /// through `block_in_place`).
    runtime: tokio::runtime::Handle,
    this: Weak<Shared>,
}

/// The quota crate's own instruments, built from the current meter.
struct Instruments {
    /// The handle they were built from: rebuilt when the gateway installs a
    /// new meter.
    source: Arc<crossflow_api::metrics::Metrics>,
    fallback: Counter<u64>,
    _unavailable: ObservableGauge<u64>,
}

// === impl Shared ===

impl Shared {
    /// A backend for `url` under `prefix`. Does not wait for the server: a
    /// replica starts while Redis is down and probes it (`connect` pings
    /// once to learn the initial state). Needs a tokio runtime.
    pub(crate) fn new(
        url: &str,
        prefix: String,
        on_unavailable: OnUnavailable,
        timeout: Duration,
        probe_every: Duration,
    ) -> Result<Arc<Shared>, QuotaError> {
        let bad = |source| QuotaError::Url {
            url: crossflow_settings::redact_url(url),
            source,
        };
        let client = redis::Client::open(url).map_err(bad)?;
        // One quick attempt per (re)connection: our own probe retries, and a
        // call never waits on a backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?;
        let runtime = tokio::runtime::Handle::current();
        Ok(Arc::new_cyclic(|this| Shared {
            conn,
            prefix,
            on_unavailable,
            host: crossflow_settings::url_host(url),
            timeout,
            probe_every,
            down: Arc::new(AtomicBool::new(false)),
            probing: AtomicBool::new(false),
            recovered: AtomicBool::new(false),
            last_error_log: Mutex::new(None),
            admit: Script::new(include_str!("lua/admit.lua")),
            hop: Script::new(include_str!("lua/hop.lua")),
            report: Script::new(include_str!("lua/report.lua")),
            metrics: ArcSwapOption::empty(),
            runtime,
            this: this.clone(),
        }))
    }

    /// The key prefix of a federation. The braces are a Redis Cluster hash
    /// tag: every key of the federation lands in one slot.
    pub(crate) fn prefix_for(federation: &str) -> String {
        format!("crossflow:{{{federation}}}:")
    }

    pub(crate) fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    pub(crate) fn state(&self) -> BackendState {
        match (self.down.load(Ordering::Relaxed), self.on_unavailable) {
            (false, _) => BackendState::Redis,
            (true, OnUnavailable::Allow) => BackendState::RedisUnavailableFallback,
            (true, OnUnavailable::Deny) => BackendState::RedisUnavailableDenying,
        }
    }

    /// Learns the initial state: one PING within the timeout.
    pub(crate) async fn ping(&self) -> Result<(), Unavailable> {
        let mut conn = self.conn.clone();
        self.run(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(drop)
    }

    /// One class call: `t_us`/`tau_us` from the quota, the day's counter key.
    pub(crate) async fn admit(
        &self,
        partner: &str,
        class: &str,
        q: &RateQuota,
        day: &str,
    ) -> Result<Admit, Unavailable> {
        let (t, tau) = params_us(q);
        let mut inv = self.admit.key(self.rate_key(partner, class));
        inv.key(self.day_key(day, &format!("partner/{partner}/{class}")))
            .arg(t)
            .arg(tau)
            .arg(q.daily_cap.unwrap_or(0))
            .arg(u8::from(q.shadow))
            .arg(DAY_TTL_MS);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self
            .run(async move { inv.invoke_async(&mut conn).await })
            .await?;
        let at = |i: usize| r.get(i).copied().map_or(0, nonneg);
        match r.first() {
            Some(0) => Ok(Admit::Admitted {
                count: at(1),
                over_cap: at(2) & 1 != 0,
                over_rate: at(2) & 2 != 0,
            }),
            Some(1) => Ok(Admit::OverCap { used: at(1) }),
            Some(2) => Ok(Admit::OverRate {
                retry: Duration::from_micros(at(1)),
            }),
            _ => Err(self.unexpected(&format!("admit script returned {r:?}"))),
        }
    }

    /// One hop `from -> to`.
    pub(crate) async fn hop(
        &self,
        from: &str,
        to: &str,
        per_day: Option<u64>,
        max_imbalance: Option<u64>,
        shadow: bool,
        day: &str,
    ) -> Result<Hop, Unavailable> {
        let mut inv = self
            .hop
            .key(self.day_key(day, &format!("flow/{from}/{to}")));
        inv.key(self.day_key(day, &format!("flow/{to}/{from}")))
            .arg(per_day.unwrap_or(0))
            .arg(max_imbalance.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX)))
            .arg(u8::from(shadow))
            .arg(DAY_TTL_MS);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self
            .run(async move { inv.invoke_async(&mut conn).await })
            .await?;
        if r.len() != 4 {
            return Err(self.unexpected(&format!("hop script returned {r:?}")));
        }
        Ok(Hop {
            admitted: r[0] == 1,
            over_per_day: r[1] & 1 != 0,
            over_imbalance: r[1] & 2 != 0,
            out: nonneg(r[2]),
            inn: nonneg(r[3]),
        })
    }

    /// The rate state of `classes` of `partner` and the day's `counters`
    /// (keys as in the local engine, e.g. `flow/a/b`), in one call.
    pub(crate) async fn read(
        &self,
        partner: &str,
        classes: &[&str],
        day: &str,
        counters: &[String],
    ) -> Result<(Vec<RateState>, Vec<u64>), Unavailable> {
        let mut inv = self.report.prepare_invoke();
        for c in classes {
            inv.key(self.rate_key(partner, c));
        }
        for k in counters {
            inv.key(self.day_key(day, k));
        }
        inv.arg(classes.len());
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self
            .run(async move { inv.invoke_async(&mut conn).await })
            .await?;
        if r.len() != 1 + 2 * classes.len() + counters.len() {
            return Err(self.unexpected(&format!("report script returned {} values", r.len())));
        }
        let now = r[0];
        let rates = r[1..1 + 2 * classes.len()]
            .chunks(2)
            .map(|c| RateState {
                debt_us: nonneg(c[0].saturating_sub(now)),
                t_us: nonneg(c[1]),
            })
            .collect();
        let counts = r[1 + 2 * classes.len()..]
            .iter()
            .map(|&n| nonneg(n))
            .collect();
        Ok((rates, counts))
    }

    /// Adds counts made elsewhere (this replica's limiter during an
    /// outage) to the day counters, in one pipelined round trip.
    pub(crate) async fn add_counts(
        &self,
        counts: &[(String, String, u64)],
    ) -> Result<(), Unavailable> {
        let mut pipe = redis::pipe();
        for (day, key, n) in counts {
            let k = self.day_key(day, key);
            pipe.cmd("INCRBY").arg(&k).arg(*n).ignore();
            pipe.cmd("PEXPIRE").arg(&k).arg(DAY_TTL_MS).ignore();
        }
        let mut conn = self.conn.clone();
        self.run(async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// True once after the backend came back (the caller replays its
    /// outage counts).
    pub(crate) fn take_recovered(&self) -> bool {
        self.recovered.load(Ordering::Relaxed) && self.recovered.swap(false, Ordering::Relaxed)
    }

    /// Counts one decision made without Redis (`allowed`, `refused` by the
    /// local limiter, or `denied` by policy) of `check` (`call`, `hop`).
    pub(crate) fn fallback_decision(&self, check: &'static str, decision: &'static str) {
        self.instruments().fallback.add(
            1,
            &[
                KeyValue::new("check", check),
                KeyValue::new("decision", decision),
            ],
        );
    }

    /// Keeps the instruments registered with the current meter (the gateway
    /// may install one after the quotas were built). One atomic load and a
    /// pointer comparison per call.
    fn instruments(&self) -> Arc<Instruments> {
        let current = crossflow_api::metrics::get();
        if let Some(i) = self.metrics.load_full()
            && Arc::ptr_eq(&i.source, &current)
        {
            return i;
        }
        let down = self.down.clone();
        let meter = current.meter();
        let built = Arc::new(Instruments {
            fallback: meter
                .u64_counter("crossflow.quota.fallback_decisions")
                .with_unit("{call}")
                .with_description(
                    "Quota decisions taken without Redis while it was unavailable, by check (call, hop) and decision (allowed, refused: by this replica's limiter; denied: on_unavailable = deny)",
                )
                .build(),
            _unavailable: meter
                .u64_observable_gauge("crossflow.quota.backend_unavailable")
                .with_unit("1")
                .with_description(
                    "1 while the shared quota backend (Redis) cannot be reached, else 0",
                )
                .with_callback(move |o| {
                    o.observe(
                        u64::from(down.load(Ordering::Relaxed)),
                        &[KeyValue::new("backend", "redis")],
                    );
                })
                .build(),
            source: current,
        });
        self.metrics.store(Some(built.clone()));
        built
    }

    /// Runs one Redis call within the timeout; any failure is
    /// [`Unavailable`], and an outage marks the backend down. While down,
    /// nothing is sent: the probe finds out when it is back.
    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Unavailable> {
        self.instruments();
        if self.down.load(Ordering::Relaxed) {
            return Err(Unavailable);
        }
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_outage(&e) => Err(self.mark_down(&e)),
            Ok(Err(e)) => Err(self.unexpected(&e)),
            Err(_) => Err(self.mark_down(&format!("no answer within {:?}", self.timeout))),
        }
    }

    fn mark_down(&self, why: &dyn fmt::Display) -> Unavailable {
        if !self.down.swap(true, Ordering::Relaxed) {
            let (policy, then) = match self.on_unavailable {
                OnUnavailable::Allow => ("allow", "this replica's own limiter decides"),
                OnUnavailable::Deny => ("deny", "limited calls are refused with UNAVAILABLE"),
            };
            tracing::warn!(
                redis = %self.host,
                error = %why,
                on_unavailable = policy,
                "quota backend unavailable: {then} until it is back"
            );
            self.instruments();
            self.spawn_probe();
        }
        Unavailable
    }

    /// A server or protocol error that is not an outage (a script bug, a
    /// permission): this call is undecided, the backend stays up. Logged at
    /// most every [`ERROR_LOG_EVERY`].
    fn unexpected(&self, e: &dyn fmt::Display) -> Unavailable {
        let now = Instant::now();
        if let Ok(mut last) = self.last_error_log.lock()
            && last.is_none_or(|at| now.duration_since(at) >= ERROR_LOG_EVERY)
        {
            *last = Some(now);
            tracing::error!(redis = %self.host, error = %e, "quota backend error; the call is decided as if it were unavailable");
        }
        Unavailable
    }

    fn spawn_probe(&self) {
        if self.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let this = self.this.clone();
        let every = self.probe_every;
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Gone: the gateway dropped its quotas.
                let Some(shared) = this.upgrade() else { return };
                let mut conn = shared.conn.clone();
                let pong = tokio::time::timeout(
                    shared.timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                if matches!(pong, Ok(Ok(_))) {
                    shared.probing.store(false, Ordering::Relaxed);
                    shared.recovered.store(true, Ordering::Relaxed);
                    shared.down.store(false, Ordering::Relaxed);
                    tracing::info!(redis = %shared.host, "quota backend reachable again: quotas are shared by every replica");
                    return;
                }
            }
        });
    }

    fn rate_key(&self, partner: &str, class: &str) -> String {
        format!("{}rate:{partner}:{class}", self.prefix)
    }

    fn day_key(&self, day: &str, key: &str) -> String {
        format!("{}day:{day}:{key}", self.prefix)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("redis", &self.host)
            .field("prefix", &self.prefix)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The emission interval `t` (µs per call) and tolerance `tau` (a burst of
/// `t`) of `q`, as `Gcra::params` in ns. At least 1 µs per call: rates above
/// a million calls a second are treated as a million.
pub(crate) fn params_us(q: &RateQuota) -> (u64, u64) {
    let t = (1_000_000 / u64::from(q.rate_per_sec.max(1))).max(1);
    (t, t.saturating_mul(u64::from(q.burst.max(1))))
}

fn nonneg(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Errors that mean the server is out of reach or not serving, as opposed
/// to an answer we did not expect.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
}
