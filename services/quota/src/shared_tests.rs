//! The Redis backend against a real Redis-protocol server: the one
//! `CROSSFLOW_TEST_REDIS_URL` names (skipped when unset, unless
//! `CROSSFLOW_REQUIRE_SERVICES=1`), and private `redis-server` processes
//! the outage tests start and SIGKILL themselves when the binary is on PATH.
//! Every test has its own key prefix, so tests sharing one server never see
//! each other's counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crossflow_api::{Caller, Kind, Problem};
use crossflow_settings::{FlowRef, OnUnavailable, QuotaClass, Settings, SettingsHandle};
use tonic_types::StatusExt;
use tower::{Layer, Service};

use super::*;
use crate::tests::{Fixture, body};

/// The shared server, or `None` (after saying so) when the test should
/// skip.
fn redis_url() -> Option<String> {
    match std::env::var("CROSSFLOW_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CROSSFLOW_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("CROSSFLOW_REQUIRE_SERVICES=1 but CROSSFLOW_TEST_REDIS_URL is not set")
        }
        _ => {
            println!("skipped: CROSSFLOW_TEST_REDIS_URL not set");
            None
        }
    }
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    Shared::prefix_for(&format!("{test}.{}.{nanos}.{n}.test", std::process::id()))
}

/// One "replica": its own settings handle and in-memory state, sharing
/// `url` under `prefix`.
async fn replica(
    settings: Settings,
    url: &str,
    prefix: &str,
    on_unavailable: OnUnavailable,
) -> (Arc<Quotas>, SettingsHandle) {
    let handle = SettingsHandle::new(settings);
    let q = Quotas::connect_redis(
        handle.clone(),
        url,
        on_unavailable,
        prefix.to_owned(),
        Duration::from_millis(150),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    (Arc::new(q), handle)
}

fn kind_of(r: &Result<(), Problem>) -> Option<(Kind, &'static str)> {
    r.as_ref().err().map(|p| (p.kind, p.reason))
}

/// Polls `cond` every 10 ms for up to 5 s (a state change made by the
/// backend's probe task, not a fixed sleep).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_flooding_one_partner_share_one_rate() {
    let Some(url) = redis_url() else { return };
    let fx = Fixture::new();
    let prefix = unique_prefix("flood");
    let (rate, burst) = (200u32, 50u32);
    let text = body(rate, burst, "", false, "", "");
    let (a, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    let (b, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    assert_eq!(a.backend_state(), BackendState::Redis);

    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for q in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let (q, admitted, refused) = (q.clone(), admitted.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run_for {
                    match q.admit_async("alpha", QuotaClass::Referrals).await {
                        Ok(()) => admitted.fetch_add(1, Ordering::Relaxed),
                        Err(p) => {
                            assert_eq!(p.reason, "RATE_LIMITED", "{p}");
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let allowed = f64::from(rate) * elapsed + f64::from(burst);
    println!(
        "admitted {admitted} of {} calls in {elapsed:.3} s; rate x time + burst = {allowed:.0}",
        admitted as u64 + refused.load(Ordering::Relaxed)
    );
    assert!(admitted <= allowed * 1.02, "{admitted} > {allowed} + 2 %");
    assert!(admitted >= allowed * 0.90, "{admitted} < 90 % of {allowed}");
    // Decided by Redis throughout, not by either replica alone.
    assert_eq!(a.backend_state(), BackendState::Redis);
    assert_eq!(b.backend_state(), BackendState::Redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_raising_a_limit_applies_to_both_replicas_and_keeps_the_state() {
    let Some(url) = redis_url() else { return };
    let fx = Fixture::new();
    let prefix = unique_prefix("reload");
    let slow = body(1, 2, "daily_cap = 1000", false, "", "");
    let (a, ha) = replica(fx.settings(&slow), &url, &prefix, OnUnavailable::Allow).await;
    let (b, hb) = replica(fx.settings(&slow), &url, &prefix, OnUnavailable::Allow).await;

    a.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    a.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    // B sees A's burst: refused, with the exact wait of 1/s (less the few
    // ms since A's calls).
    let p = b
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap_err();
    assert_eq!(p.reason, "RATE_LIMITED");
    let retry = p.retry_after.unwrap();
    assert!(
        retry > Duration::from_millis(800) && retry <= Duration::from_secs(1),
        "{retry:?}"
    );

    // Each replica reloads its own file: 100/s with a burst of 10.
    let fast = body(100, 10, "daily_cap = 1000", false, "", "");
    ha.replace(fx.settings(&fast));
    hb.replace(fx.settings(&fast));
    let t0 = Instant::now();
    b.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    a.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    let mut admitted = 2;
    for q in [&a, &b].iter().cycle().take(40) {
        if q.admit_async("alpha", QuotaClass::Referrals).await.is_ok() {
            admitted += 1;
        }
    }
    // The two calls still owed under 1/s are owed under 100/s too (10 ms
    // each): 8 of the burst of 10 were left, plus what refilled meanwhile.
    let refilled = (t0.elapsed().as_secs_f64() * 100.0).ceil() as u64;
    assert!(
        (8..=8 + refilled + 1).contains(&admitted),
        "{admitted} admitted, {refilled} refilled"
    );
    // The day's counter carried across the reload.
    let r = b.report_async("alpha").await;
    let cap = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::DailyCap)
        .unwrap();
    assert_eq!(cap.used, 2 + admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_caps_and_hop_limits_are_shared_by_replicas() {
    let Some(url) = redis_url() else { return };
    let fx = Fixture::new();
    let prefix = unique_prefix("daily");
    let text = body(
        1000,
        1000,
        "daily_cap = 5",
        false,
        "referrals_per_day = 4",
        "max_daily_imbalance = 2",
    );
    let (a, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    let (b, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;

    // The daily cap: 3 through A, 2 through B, then neither.
    for q in [&a, &a, &a, &b, &b] {
        q.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    }
    for q in [&a, &b] {
        let p = q
            .admit_async("alpha", QuotaClass::Referrals)
            .await
            .unwrap_err();
        assert_eq!(p.reason, "DAILY_CAP_REACHED", "{p}");
        assert_eq!(p.quota[0].subject, "partner:alpha/referrals/daily_cap");
        // Until the local midnight (Asia/Shanghai) as the local engine says.
        let mut clock = DayClock::new("Asia/Shanghai");
        let now = crossflow_api::clock::now_ms();
        clock.advance("Asia/Shanghai", now);
        let want = clock.until_next_day(now);
        let got = p.retry_after.unwrap();
        assert!(
            want.abs_diff(got) < Duration::from_secs(2),
            "{got:?} vs {want:?}"
        );
    }

    // Hops: reciprocity 2, referrals_per_day 4 for alpha -> beta.
    let s = fx.settings(&text);
    let ab = s.flow("alpha", "beta").unwrap();
    let ba = s.flow("beta", "alpha").unwrap();
    let hop = |q: &Arc<Quotas>, f: FlowRef<'_>| {
        let (q, ag, fl) = (q.clone(), f.agreement.clone(), f.flow.clone());
        async move { q.admit_hop_async(&ag, &fl).await }
    };
    hop(&a, ab).await.unwrap();
    hop(&b, ab).await.unwrap();
    // A third alpha -> beta hop would put alpha 3 ahead: refused on both.
    for q in [&a, &b] {
        let r = hop(q, ab).await;
        assert_eq!(
            kind_of(&r),
            Some((Kind::ResourceExhausted, "RECIPROCITY_LIMIT_REACHED"))
        );
    }
    // beta's hops back lift it; through the HopGuard as the referral
    // service calls it.
    for _ in 0..2 {
        crossflow_referrals::HopGuard::admit_hop(b.as_ref(), ba.agreement, ba.flow)
            .await
            .unwrap();
    }
    hop(&a, ab).await.unwrap();
    hop(&b, ab).await.unwrap();
    // 4 hops alpha -> beta today: referrals_per_day is reached.
    let r = hop(&a, ab).await;
    assert_eq!(
        kind_of(&r),
        Some((Kind::ResourceExhausted, "REFERRALS_PER_DAY_REACHED"))
    );

    // GetQuotaStatus reads the shared counters, from either replica.
    let report = a.report_async("alpha").await;
    let used = |kind| {
        report
            .quotas
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| (s.used, s.remaining))
            .unwrap()
    };
    assert_eq!(used(QuotaKind::DailyCap), (5, 0));
    assert_eq!(used(QuotaKind::ReferralsPerDay), (4, 0));
    // alpha 4 vs beta 2: 2 ahead, at the limit of 2.
    assert_eq!(used(QuotaKind::Reciprocity), (2, 0));
    let rate = used(QuotaKind::Rate);
    assert!(rate.1 >= 990, "{rate:?}");

    // Another federation (prefix) on the same server shares nothing.
    let (other, _) = replica(
        fx.settings(&text),
        &url,
        &unique_prefix("daily-other"),
        OnUnavailable::Allow,
    )
    .await;
    other
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_falls_back_or_denies_as_configured() {
    // No server needed: nothing listens on this port.
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let fx = Fixture::new();
    let text = body(1, 2, "", false, "referrals_per_day = 1", "");
    let prefix = unique_prefix("closed");

    let (allow, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    assert_eq!(
        allow.backend_state(),
        BackendState::RedisUnavailableFallback
    );
    assert!(allow.backend_state().is_degraded());
    // The replica's own limiter decides: a burst of 2, then its refusal
    // with its own exact hint; no call waits on the dead server.
    let t0 = Instant::now();
    allow
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
    allow
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
    let p = allow
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap_err();
    assert_eq!(p.reason, "RATE_LIMITED");
    assert!(p.retry_after.unwrap() > Duration::from_millis(900));
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    let s = fx.settings(&text);
    let ab = s.flow("alpha", "beta").unwrap();
    allow.admit_hop_async(ab.agreement, ab.flow).await.unwrap();
    assert_eq!(
        kind_of(&allow.admit_hop_async(ab.agreement, ab.flow).await),
        Some((Kind::ResourceExhausted, "REFERRALS_PER_DAY_REACHED"))
    );
    // The report is the local engine's.
    let r = allow.report_async("alpha").await;
    assert!(
        r.quotas
            .iter()
            .any(|s| s.kind == QuotaKind::ReferralsPerDay && s.used == 1)
    );

    let (deny, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Deny).await;
    assert_eq!(deny.backend_state(), BackendState::RedisUnavailableDenying);
    for r in [
        deny.admit_async("alpha", QuotaClass::Referrals).await,
        deny.admit_hop_async(ab.agreement, ab.flow).await,
    ] {
        let p = r.unwrap_err();
        assert_eq!(
            (p.kind, p.reason),
            (Kind::Unavailable, "QUOTA_BACKEND_UNAVAILABLE")
        );
        let status = p.into_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(UNAVAILABLE_RETRY));
    }
    // A partner without quotas is not limited, so nothing is refused.
    deny.admit_async("beta", QuotaClass::Referrals)
        .await
        .unwrap();
}

/// A `redis-server` of this test's own on `port`, killed on drop.
struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    /// `None` (after saying so) when `redis-server` is not on PATH.
    async fn start(port: u16) -> Option<PrivateRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            println!("skipped the SIGKILL part: redis-server is not on PATH");
            return None;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some(PrivateRedis { child })
    }

    /// SIGKILL: the server is gone at once, mid-connection.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_mid_test_falls_back_and_recovers() {
    let port = free_port();
    let Some(server) = PrivateRedis::start(port).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let fx = Fixture::new();
    let text = body(1000, 1000, "daily_cap = 1000", false, "", "");
    let prefix = unique_prefix("killed");
    let (allow, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    let (deny, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Deny).await;
    for q in [&allow, &deny] {
        assert_eq!(q.backend_state(), BackendState::Redis);
        q.admit_async("alpha", QuotaClass::Referrals).await.unwrap();
    }

    server.kill();
    // The first call after the kill finds out (and is decided by policy);
    // from then on the state says so.
    allow
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
    assert_eq!(
        allow.backend_state(),
        BackendState::RedisUnavailableFallback
    );
    for _ in 0..2 {
        allow
            .admit_async("alpha", QuotaClass::Referrals)
            .await
            .unwrap();
    }
    let p = deny
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap_err();
    assert_eq!(p.kind, Kind::Unavailable, "{p}");
    assert_eq!(deny.backend_state(), BackendState::RedisUnavailableDenying);

    // Back on the same port (empty: it kept nothing).
    let _server = PrivateRedis::start(port).await.unwrap();
    eventually("the allow replica to recover", || {
        allow.backend_state() == BackendState::Redis
    })
    .await;
    eventually("the deny replica to recover", || {
        deny.backend_state() == BackendState::Redis
    })
    .await;
    deny.admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
    // The allow replica's first call after recovery adds the 3 calls it
    // admitted alone to the shared counter, then counts its own.
    allow
        .admit_async("alpha", QuotaClass::Referrals)
        .await
        .unwrap();
    let r = deny.report_async("alpha").await;
    let cap = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::DailyCap)
        .unwrap();
    assert_eq!(cap.used, 1 + 3 + 1, "{r:?}");
}

/// The inner service of the layer test: answers OK and counts calls.
#[derive(Clone, Default)]
struct Ok200(Arc<AtomicU64>);

impl Service<http::Request<()>> for Ok200 {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_asks_redis_before_the_handler_runs() {
    let Some(url) = redis_url() else { return };
    let fx = Fixture::new();
    let prefix = unique_prefix("layer");
    let text = body(1, 1, "", false, "", "");
    let (a, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    let (b, _) = replica(fx.settings(&text), &url, &prefix, OnUnavailable::Allow).await;
    let inner = Ok200::default();
    let request = || {
        let mut req = http::Request::builder()
            .uri("/crossflow.v1.ReferralService/CreateReferral")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(Caller::Partner("alpha".to_owned()));
        req
    };
    let mut gate_a = QuotaLayer::new(a).layer(inner.clone());
    let mut gate_b = QuotaLayer::new(b).layer(inner.clone());
    std::future::poll_fn(|cx| gate_a.poll_ready(cx))
        .await
        .unwrap();
    let ok = gate_a.call(request()).await.unwrap();
    assert_eq!(ok.headers().get("grpc-status"), None);
    std::future::poll_fn(|cx| gate_b.poll_ready(cx))
        .await
        .unwrap();
    let refused = gate_b.call(request()).await.unwrap();
    let status = tonic::Status::from_header_map(refused.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // The refused call never reached the handler.
    assert_eq!(inner.0.load(Ordering::Relaxed), 1);
}
