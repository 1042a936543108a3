#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crossflow_api::{Kind, Problem};
use crossflow_settings::{QuotaClass, Settings, SettingsHandle};
use crossflow_store::Sqlite;

use super::*;

/// 2026-03-10 15:00:00 UTC = 23:00 in Asia/Shanghai: one hour before the
/// local midnight.
const T0_MS: i64 = 1_773_154_800_000;

pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "gw.crt", "gw.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        Fixture { dir }
    }

    pub(crate) fn settings(&self, body: &str) -> Settings {
        let text = format!(
            r#"[gateway]
federation = "crossflow.test"
timezone = "Asia/Shanghai"
[gateway.tls]
ca = "ca.crt"
cert = "gw.crt"
key = "gw.key"
{body}"#
        );
        Settings::from_toml(&text, &self.dir.path().join("c.toml")).unwrap()
    }
}

pub(crate) fn body(
    rate: u32,
    burst: u32,
    cap: &str,
    shadow: bool,
    flow: &str,
    imbalance: &str,
) -> String {
    format!(
        r#"
[[partners]]
id = "alpha"
[partners.quotas.referrals]
rate_per_sec = {rate}
burst = {burst}
{cap}
shadow = {shadow}

[[partners]]
id = "beta"

[[agreements]]
id = "alpha-beta"
between = ["alpha", "beta"]
{imbalance}
[[agreements.flows]]
from = "alpha"
to = "beta"
{flow}
[[agreements.flows]]
from = "beta"
to = "alpha"
"#
    )
}

fn exhausted(p: &Problem) -> (String, Duration) {
    assert_eq!(p.kind, Kind::ResourceExhausted, "{p}");
    (p.quota[0].subject.clone(), p.retry_after.unwrap())
}

#[test]
fn gcra_admits_a_burst_then_the_rate_with_an_exact_retry_hint() {
    let fx = Fixture::new();
    let q = Quotas::new(SettingsHandle::new(
        fx.settings(&body(10, 3, "", false, "", "")),
    ));
    let t = Instant::now();
    for _ in 0..3 {
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .unwrap();
    }
    let p = q
        .admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap_err();
    let (subject, retry) = exhausted(&p);
    assert_eq!(subject, "partner:alpha/referrals/rate");
    assert_eq!(retry, Duration::from_millis(100));
    assert!(
        p.quota[0].description.starts_with("limit 3:"),
        "{:?}",
        p.quota
    );
    // Just before the hint it is still refused; at the hint it passes.
    let early = t + Duration::from_millis(99);
    assert!(
        q.admit_at("alpha", QuotaClass::Referrals, early, T0_MS)
            .is_err()
    );
    q.admit_at("alpha", QuotaClass::Referrals, t + retry, T0_MS)
        .unwrap();
    // Other classes and other partners are not limited.
    q.admit_at("alpha", QuotaClass::Tags, t, T0_MS).unwrap();
    for _ in 0..100 {
        q.admit_at("beta", QuotaClass::Referrals, t, T0_MS).unwrap();
    }
}

#[test]
fn daily_cap_refuses_until_local_midnight_and_a_new_day_starts_from_zero() {
    let fx = Fixture::new();
    let q = Quotas::new(SettingsHandle::new(fx.settings(&body(
        1000,
        1000,
        "daily_cap = 2",
        false,
        "",
        "",
    ))));
    let t = Instant::now();
    q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap();
    q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap();
    let p = q
        .admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap_err();
    let (subject, retry) = exhausted(&p);
    assert_eq!(subject, "partner:alpha/referrals/daily_cap");
    assert_eq!(p.reason, "DAILY_CAP_REACHED");
    assert_eq!(retry, Duration::from_secs(3600));
    let r = q.report_at("alpha", t, T0_MS);
    assert_eq!(r.day, "2026-03-10");
    let cap = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::DailyCap)
        .unwrap();
    assert_eq!((cap.limit, cap.used, cap.remaining), (2, 2, 0));
    assert_eq!(cap.reset_at_ms, T0_MS + 3_600_000);
    // The next local day.
    let next = T0_MS + 3_600_000;
    q.admit_at("alpha", QuotaClass::Referrals, t, next).unwrap();
    assert_eq!(q.report_at("alpha", t, next).day, "2026-03-11");
}

#[test]
fn shadow_quotas_count_but_never_refuse() {
    let fx = Fixture::new();
    let q = Quotas::new(SettingsHandle::new(fx.settings(&body(
        1,
        1,
        "daily_cap = 1",
        true,
        "referrals_per_day = 1\nquota_shadow = true",
        "max_daily_imbalance = 1",
    ))));
    let t = Instant::now();
    for _ in 0..5 {
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .unwrap();
    }
    let s = fx.settings(&body(
        1,
        1,
        "",
        true,
        "referrals_per_day = 1\nquota_shadow = true",
        "max_daily_imbalance = 1",
    ));
    let flow = s.flow("alpha", "beta").unwrap();
    for _ in 0..3 {
        q.admit_hop_at(flow.agreement, flow.flow, T0_MS).unwrap();
    }
    let r = q.report_at("alpha", t, T0_MS);
    let cap = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::DailyCap)
        .unwrap();
    assert_eq!(cap.used, 5);
    let per_day = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::ReferralsPerDay)
        .unwrap();
    assert_eq!(
        (per_day.used, per_day.remaining, per_day.shadow),
        (3, 0, true)
    );
}

#[test]
fn referrals_per_day_and_reciprocity() {
    let fx = Fixture::new();
    let s = fx.settings(&body(
        1,
        1,
        "",
        false,
        "referrals_per_day = 5",
        "max_daily_imbalance = 2",
    ));
    let q = Quotas::new(SettingsHandle::new(s.clone()));
    let ab = s.flow("alpha", "beta").unwrap();
    let ba = s.flow("beta", "alpha").unwrap();
    q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap();
    q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap();
    // alpha is 2 ahead: a third hop would make it 3 > 2.
    let p = q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap_err();
    let (subject, retry) = exhausted(&p);
    assert_eq!(subject, "agreement:alpha-beta/alpha->beta/reciprocity");
    assert_eq!(p.reason, "RECIPROCITY_LIMIT_REACHED");
    assert_eq!(retry, Duration::from_secs(3600));
    // beta sends one back: alpha may send one more.
    q.admit_hop_at(ba.agreement, ba.flow, T0_MS).unwrap();
    q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap();
    assert!(q.admit_hop_at(ab.agreement, ab.flow, T0_MS).is_err());
    for _ in 0..3 {
        q.admit_hop_at(ba.agreement, ba.flow, T0_MS).unwrap();
    }
    q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap();
    q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap();
    // 5 hops alpha->beta today: the daily cap.
    let p = q.admit_hop_at(ab.agreement, ab.flow, T0_MS).unwrap_err();
    assert_eq!(
        exhausted(&p).0,
        "agreement:alpha-beta/alpha->beta/referrals_per_day"
    );
}

#[test]
fn a_reload_applies_to_the_next_call_and_keeps_the_state() {
    let fx = Fixture::new();
    let handle = SettingsHandle::new(fx.settings(&body(1, 2, "daily_cap = 3", false, "", "")));
    let q = Quotas::new(handle.clone());
    let t = Instant::now();
    q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap();
    q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap();
    assert!(
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .is_err()
    );
    handle.replace(fx.settings(&body(1, 3, "daily_cap = 3", false, "", "")));
    q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap();
    // The day's count survived the reload: 3 of 3 used.
    let p = q
        .admit_at(
            "alpha",
            QuotaClass::Referrals,
            t + Duration::from_secs(10),
            T0_MS,
        )
        .unwrap_err();
    assert_eq!(exhausted(&p).0, "partner:alpha/referrals/daily_cap");
}

#[tokio::test]
async fn counters_are_written_behind_and_restored() {
    let fx = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    let handle =
        SettingsHandle::new(fx.settings(&body(1000, 1000, "daily_cap = 10", false, "", "")));
    {
        let store = Sqlite::open(data.path()).unwrap();
        let q = Quotas::new(handle.clone());
        q.restore(&store).await.unwrap();
        for _ in 0..4 {
            q.admit("alpha", QuotaClass::Referrals).unwrap();
        }
        q.flush(&store).await.unwrap();
        q.admit("alpha", QuotaClass::Referrals).unwrap();
        q.flush(&store).await.unwrap();
        // Nothing new: no write.
        let before = store.db().stats().writes;
        q.flush(&store).await.unwrap();
        assert_eq!(store.db().stats().writes, before);
        store.db().close();
    }
    let store = Sqlite::open(data.path()).unwrap();
    let q = Quotas::new(handle);
    q.restore(&store).await.unwrap();
    let r = q.report("alpha");
    let cap = r
        .quotas
        .iter()
        .find(|s| s.kind == QuotaKind::DailyCap)
        .unwrap();
    assert_eq!(cap.used, 5);
}

#[test]
fn method_paths_map_to_classes() {
    assert_eq!(
        class_of("/crossflow.v1.ReferralService/CreateReferral"),
        Some(QuotaClass::Referrals)
    );
    assert_eq!(
        class_of("/crossflow.v1.TagService/PutTags"),
        Some(QuotaClass::Tags)
    );
    assert_eq!(
        class_of("/crossflow.v1.ConversionService/ReportConversion"),
        Some(QuotaClass::Conversions)
    );
    assert_eq!(
        class_of("/crossflow.v1.LedgerService/GetReceipt"),
        Some(QuotaClass::LedgerReads)
    );
    assert_eq!(class_of("/crossflow.v1.QuotaService/GetQuotaStatus"), None);
    assert_eq!(class_of("/grpc.health.v1.Health/Check"), None);
}

#[test]
fn a_changed_rate_rescales_the_debt_to_the_same_number_of_calls() {
    let fx = Fixture::new();
    let handle = SettingsHandle::new(fx.settings(&body(2, 3, "", false, "", "")));
    let q = Quotas::new(handle.clone());
    let t = Instant::now();
    for _ in 0..3 {
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .unwrap();
    }
    // 3 calls at 2/s left 1.5 s of debt: more than 50/s allows (burst 20 =
    // 0.4 s), but only 3 of its 20 calls. Raising the limit must not refuse.
    handle.replace(fx.settings(&body(50, 20, "", false, "", "")));
    for i in 0..17 {
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .unwrap_or_else(|p| panic!("call {i} after raising: {p}"));
    }
    assert!(
        q.admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
            .is_err()
    );
    // Lowering it again keeps those 20 calls owed: no fresh credit. 20 calls
    // at 2/s are 10 s of debt; with a burst of 3 (1.5 s) the next call
    // conforms after 10 + 0.5 - 1.5 = 9 s.
    handle.replace(fx.settings(&body(2, 3, "", false, "", "")));
    let p = q
        .admit_at("alpha", QuotaClass::Referrals, t, T0_MS)
        .unwrap_err();
    assert_eq!(p.retry_after, Some(Duration::from_secs(9)));
}
