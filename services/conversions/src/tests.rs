use std::collections::BTreeMap;

use std::cell::Cell;

use crossflow_store::{ConversionStore, Database, LandingStore, Sqlite, Store};
use serde_json::Value;

use super::*;

const NOW: i64 = 1_800_000_000_000;

struct Fixed;
impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        NOW
    }
}

thread_local! {
    /// The test whose fixture runs on PostgreSQL (see `on_both!`); SQLite
    /// when `None`.
    static ON_POSTGRES: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs each named case twice, as `<case>::sqlite` and `<case>::postgres`
/// (skipped, with a printed line, without a PostgreSQL test server).
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                super::$case().await;
            }

            #[tokio::test]
            async fn postgres() {
                let name = concat!("conversions_", stringify!($case));
                if crossflow_store::testing::postgres_admin_url(name).is_none() {
                    return;
                }
                super::ON_POSTGRES.set(Some(name));
                super::$case().await;
            }
        }
    )*};
}

on_both!(
    linear_attribution_across_two_origins,
    three_hop_chain_pays_upstream_hops,
    category_rates_and_boosts,
    retries_are_idempotent_and_conflicts_name_fields,
    unattributed_orders_post_nothing,
    refunds_reverse_proportionally_then_completely,
    cancel_reverses_and_blocks_later_changes,
    held_conversions_post_only_when_released,
    velocity_rule_counts_landings_in_the_hour,
    a_given_referral_must_be_this_buyers_landing,
    every_bad_field_is_named,
);

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    keys: Arc<KeyRing>,
    svc: Conversions,
}

fn body(model: &str, fraud: &str) -> String {
    format!(
        r#"
[gateway]
federation = "crossflow.test"
[gateway.tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"

[[partners]]
id = "alpha"
[[partners]]
id = "beta"
attribution_model = "{model}"
time_decay_half_life_secs = 3600
[[partners]]
id = "gamma"

[[agreements]]
id = "alpha-beta"
between = ["alpha", "beta"]
upstream_share_bps = 2000
attribution_window_secs = 86400
[[agreements.flows]]
from = "alpha"
to = "beta"
commission = {{ default_bps = 500, categories = {{ skincare = 800 }}, boosts = [{{ name = "live-gala", starts_at = "2027-01-15T00:00:00Z", ends_at = "2027-01-16T00:00:00Z", extra_bps = 200, categories = ["skincare"] }}] }}
[[agreements.flows]]
from = "beta"
to = "alpha"
commission = {{ default_bps = 400 }}

[[agreements]]
id = "beta-gamma"
between = ["beta", "gamma"]
upstream_share_bps = 2500
lock_period_days = 30
[[agreements.flows]]
from = "gamma"
to = "beta"
commission = {{ default_bps = 300 }}
[[agreements.flows]]
from = "beta"
to = "gamma"
commission = {{ default_bps = 1000 }}
{fraud}
"#
    )
}

fn fx(model: &str, fraud: &str) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let cfg = dir.path().join("crossflow.toml");
    let settings = Settings::from_toml(&body(model, fraud), &cfg).unwrap();
    let key_dir = dir.path().join("keys");
    KeyRing::generate(&key_dir).unwrap();
    let keys = Arc::new(KeyRing::load(&key_dir).unwrap());
    let store = match ON_POSTGRES.get() {
        Some(name) => Store::Postgres(crossflow_store::testing::postgres(name).unwrap()),
        None => Store::Sqlite(Sqlite::open(&dir.path().join("data")).unwrap()),
    };
    let svc = Conversions::new(
        store.clone(),
        keys.clone(),
        SettingsHandle::new(settings),
        Arc::new(Fixed),
    );
    Fx {
        _dir: dir,
        store,
        keys,
        svc,
    }
}

impl Fx {
    /// A landing of `subject` at `to`, through `chain` (ending with the
    /// sender), `ago_ms` before NOW.
    async fn land(&self, id: u8, chain: &[&str], to: &str, subject: &str, ago_ms: i64) -> String {
        let from = chain[chain.len() - 1];
        let agreement = if [from, to].contains(&"alpha") {
            "alpha-beta"
        } else {
            "beta-gamma"
        };
        let l = Landing {
            referral_id: [id; 16],
            agreement_id: agreement.into(),
            from: from.into(),
            to: to.into(),
            chain: chain.iter().map(|s| s.to_string()).collect(),
            hop: chain.len() as u32,
            parent: None,
            target: "room".into(),
            origin: chain[0].into(),
            origin_uid: [1; 32],
            dest_uid: self.keys.uid(to, subject).0,
            issued_at_ms: NOW - ago_ms - 1,
            expires_at_ms: NOW,
            redeemed_at_ms: NOW - ago_ms,
            tag_access: true,
        };
        self.store.redeem(l).await.unwrap();
        ReferralId([id; 16]).to_string()
    }
}

fn order(id: &str, subject: &str, amount: i64) -> ReportRequest {
    ReportRequest {
        order_id: id.into(),
        subject: subject.into(),
        amount_minor: amount,
        currency: "CNY".into(),
        category: "toys".into(),
        occurred_at_ms: Some(NOW - 1000),
        referral_id: String::new(),
    }
}

fn json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.entry.bytes).unwrap()
}

/// account -> sum of postings over the given entries.
fn balances(entries: &[&Recorded]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in entries {
        for p in json(r)["postings"].as_array().unwrap() {
            *out.entry(p["account"].as_str().unwrap().to_owned())
                .or_default() += p["amount_minor"].as_i64().unwrap();
        }
    }
    out.retain(|_, v| *v != 0);
    out
}

fn update(order: &str, status: Status, refund: i64, request_id: &str) -> UpdateRequest {
    UpdateRequest {
        order_id: order.into(),
        status: Some(status),
        refund_minor: refund,
        request_id: request_id.into(),
    }
}

async fn linear_attribution_across_two_origins() {
    let f = fx("linear", "");
    f.land(1, &["alpha"], "beta", "buyer", 3_600_000).await;
    f.land(2, &["gamma"], "beta", "buyer", 60_000).await;
    // Another buyer's landing and a landing outside alpha-beta's 1-day window.
    f.land(3, &["alpha"], "beta", "someone-else", 60_000).await;
    f.land(4, &["alpha"], "beta", "buyer", 2 * 86_400_000).await;
    let r = f
        .svc
        .report("beta", order("o-1", "buyer", 100_001))
        .await
        .unwrap();
    // Half of 100001 at 5 % = 2500.025; half at 3 % = 1500.015 -> 4000 total.
    assert_eq!(r.conversion.commission_minor, 4000);
    assert_eq!(r.conversion.touches, 2);
    let e = json(&r);
    assert_eq!(e["attribution"]["model"], "linear");
    let touches = e["attribution"]["touches"].as_array().unwrap();
    let per: Vec<i64> = touches
        .iter()
        .map(|t| t["commission_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(per, [2500, 1500]);
    assert_eq!(touches[0]["from"], "alpha");
    assert_eq!(e["v"], 1);
    assert!(e.get("subject").is_none() && e.get("buyer_uid").is_none());
    assert_eq!(
        balances(&[&r]),
        BTreeMap::from([
            ("partner:alpha:receivable".into(), 2500),
            ("partner:beta:payable".into(), -4000),
            ("partner:gamma:receivable".into(), 1500),
        ])
    );
    let index = r.entry.index;
    let parties = f
        .store
        .read(move |c| ledger::parties(c, index))
        .await
        .unwrap();
    assert_eq!(parties, ["alpha", "beta", "gamma"]);
}

async fn three_hop_chain_pays_upstream_hops() {
    let f = fx("last_touch", "");
    // alpha -> beta -> gamma: the landing at gamma came from beta.
    f.land(1, &["alpha", "beta"], "gamma", "g-buyer", 60_000)
        .await;
    let r = f
        .svc
        .report("gamma", order("g-1", "g-buyer", 10_001))
        .await
        .unwrap();
    // beta -> gamma? No: gamma reports, the flow is beta -> gamma at 10 %.
    assert_eq!(r.conversion.commission_minor, 1000);
    // 25 % upstream to alpha, the rest to beta.
    assert_eq!(
        balances(&[&r]),
        BTreeMap::from([
            ("partner:alpha:receivable".into(), 250),
            ("partner:beta:receivable".into(), 750),
            ("partner:gamma:payable".into(), -1000),
        ])
    );
    let shares = &json(&r)["attribution"]["touches"][0]["shares"];
    assert_eq!(shares[0]["role"], "upstream");
    assert_eq!(shares[1]["role"], "direct");
}

async fn category_rates_and_boosts() {
    let f = fx("last_touch", "");
    f.land(1, &["alpha"], "beta", "buyer", 60_000).await;
    let mut o = order("o-1", "buyer", 10_000);
    o.category = "skincare".into();
    let r = f.svc.report("beta", o).await.unwrap();
    // NOW is 2027-01-15T08:00:00Z, inside the live-gala boost: 8 % + 2 %.
    assert_eq!(r.conversion.commission_minor, 1000);
    let t = &json(&r)["attribution"]["touches"][0];
    assert_eq!(t["rate_bps"], 1000);
    assert_eq!(t["boosts"][0], "live-gala");
    // Other categories are not boosted; outside the window neither is skincare.
    let r = f
        .svc
        .report("beta", order("o-2", "buyer", 10_000))
        .await
        .unwrap();
    assert_eq!(r.conversion.commission_minor, 500);
    let mut early = order("o-3", "buyer", 10_000);
    early.category = "skincare".into();
    early.occurred_at_ms = Some(NOW - 9 * 3_600_000);
    f.land(2, &["alpha"], "beta", "buyer", 10 * 3_600_000).await;
    let r = f.svc.report("beta", early).await.unwrap();
    assert_eq!(r.conversion.commission_minor, 800);
}

async fn retries_are_idempotent_and_conflicts_name_fields() {
    let f = fx("last_touch", "");
    f.land(1, &["alpha"], "beta", "buyer", 60_000).await;
    let a = f
        .svc
        .report("beta", order("o-1", "buyer", 5000))
        .await
        .unwrap();
    let b = f
        .svc
        .report("beta", order("o-1", "buyer", 5000))
        .await
        .unwrap();
    assert!(!a.replayed && b.replayed);
    assert_eq!(a.entry, b.entry);
    let mut other = order("o-1", "other-buyer", 5001);
    other.category = "books".into();
    let e = f.svc.report("beta", other).await.unwrap_err();
    match &e {
        ConversionError::Conflict { fields, .. } => {
            assert_eq!(fields, &["amount_minor", "category", "subject"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.problem().kind, Kind::AlreadyExists);
    // The same order id from another reporter is another order.
    let c = f
        .svc
        .report("alpha", order("o-1", "buyer", 5000))
        .await
        .unwrap();
    assert!(!c.replayed);
    assert_ne!(c.conversion.conversion_id, a.conversion.conversion_id);
}

async fn unattributed_orders_post_nothing() {
    let f = fx("last_touch", "");
    let r = f
        .svc
        .report("beta", order("o-1", "nobody", 5000))
        .await
        .unwrap();
    assert_eq!(
        (r.conversion.touches, r.conversion.commission_minor),
        (0, 0)
    );
    assert!(json(&r)["postings"].as_array().unwrap().is_empty());
}

async fn refunds_reverse_proportionally_then_completely() {
    let f = fx("linear", "");
    f.land(1, &["alpha"], "beta", "buyer", 3_600_000).await;
    f.land(2, &["gamma"], "beta", "buyer", 60_000).await;
    let r = f
        .svc
        .report("beta", order("o-1", "buyer", 99_999))
        .await
        .unwrap();
    let p1 = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 33_333, "rf-1"))
        .await
        .unwrap();
    assert_eq!(p1.conversion.refunded_minor, 33_333);
    assert_eq!(p1.conversion.status, "pending");
    // A retry with the same request id does not refund twice.
    let again = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 33_333, "rf-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.entry, p1.entry);
    let e = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 1, "rf-1"))
        .await
        .unwrap_err();
    assert!(matches!(e, ConversionError::RequestIdReused(_)));
    let e = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 70_000, ""))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        ConversionError::RefundExceeds {
            remaining: 66_666,
            ..
        }
    ));
    let c = f
        .svc
        .update("beta", update("o-1", Status::Confirmed, 0, ""))
        .await
        .unwrap();
    assert_eq!(c.conversion.status, "confirmed");
    // Payable after the longest lock of the touches' agreements: alpha-beta
    // has the default 14 days, beta-gamma 30.
    let confirmed = json(&c);
    assert_eq!(
        confirmed["payable_at_ms"].as_i64().unwrap(),
        confirmed["recorded_at_ms"].as_i64().unwrap() + 30 * 86_400_000
    );
    assert!(json(&p1).get("payable_at_ms").is_none());
    let full = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 0, ""))
        .await
        .unwrap();
    assert_eq!(full.conversion.status, "refunded");
    assert_eq!(json(&full)["refunded_total_minor"], 99_999);
    // Everything posted is reversed, exactly.
    assert!(balances(&[&r, &p1, &c, &full]).is_empty());
    let partial = balances(&[&r, &p1]);
    let before = balances(&[&r]);
    for (acct, v) in &before {
        let left = partial.get(acct).copied().unwrap_or(0);
        // Two thirds remain, floor-rounded per payee.
        assert!((left - (v - v / 3)).abs() <= 1, "{acct}: {v} -> {left}");
    }
    let e = f
        .svc
        .update("beta", update("o-1", Status::Confirmed, 0, ""))
        .await
        .unwrap_err();
    let p = e.problem();
    assert_eq!(p.kind, Kind::FailedPrecondition);
    assert!(
        p.metadata
            .contains(&("from_status".into(), "refunded".into()))
    );
    assert!(
        p.metadata
            .contains(&("to_status".into(), "confirmed".into()))
    );
    assert_eq!(
        f.store
            .latest_conversion_entry("beta", "o-1")
            .await
            .unwrap(),
        Some(full.entry.index)
    );
}

async fn cancel_reverses_and_blocks_later_changes() {
    let f = fx("last_touch", "");
    f.land(1, &["alpha"], "beta", "buyer", 60_000).await;
    let r = f
        .svc
        .report("beta", order("o-1", "buyer", 12_345))
        .await
        .unwrap();
    let c = f
        .svc
        .update("beta", update("o-1", Status::Cancelled, 0, ""))
        .await
        .unwrap();
    assert!(balances(&[&r, &c]).is_empty());
    let again = f
        .svc
        .update("beta", update("o-1", Status::Cancelled, 0, ""))
        .await
        .unwrap();
    assert!(again.replayed);
    let e = f
        .svc
        .update("beta", update("o-1", Status::Confirmed, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "a cancelled conversion cannot become confirmed"
    );
    let e = f
        .svc
        .update("beta", update("nope", Status::Confirmed, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(e.problem().kind, Kind::NotFound);
}

async fn held_conversions_post_only_when_released() {
    let f = fx(
        "last_touch",
        "[fraud]\nmin_seconds_after_landing = 30\nmax_amount_minor = 1000000\n",
    );
    f.land(1, &["alpha"], "beta", "buyer", 10_000).await;
    let r = f
        .svc
        .report("beta", order("o-1", "buyer", 2_000_000))
        .await
        .unwrap();
    assert!(r.conversion.held);
    assert_eq!(
        r.conversion.hold_reason,
        "TOO_SOON_AFTER_LANDING,AMOUNT_OVER_CAP"
    );
    assert!(balances(&[&r]).is_empty());
    assert_eq!(
        json(&r)["hold"]["reason"],
        r.conversion.hold_reason.as_str()
    );
    // A partial refund while held posts nothing; the release posts the rest.
    let p = f
        .svc
        .update("beta", update("o-1", Status::Refunded, 500_000, ""))
        .await
        .unwrap();
    let id = hex::encode(r.conversion.conversion_id);
    let rel = f
        .svc
        .release(Releaser::Operator("ops"), &id, "checked")
        .await
        .unwrap();
    assert!(!rel.conversion.held);
    assert_eq!(json(&rel)["released_by"], "operator/ops");
    // 5 % of 2,000,000 = 100,000, three quarters remain.
    assert_eq!(
        balances(&[&r, &p, &rel]),
        BTreeMap::from([
            ("partner:alpha:receivable".into(), 75_000),
            ("partner:beta:payable".into(), -75_000),
        ])
    );
    let e = f.svc.release(Releaser::Cli, &id, "").await.unwrap_err();
    assert!(matches!(e, ConversionError::NotHeld(_)));
    let e = f
        .svc
        .release(Releaser::Cli, &"0".repeat(32), "")
        .await
        .unwrap_err();
    assert!(matches!(e, ConversionError::NotFound(_)));
}

async fn velocity_rule_counts_landings_in_the_hour() {
    let f = fx("last_touch", "[fraud]\nmax_landings_per_uid_per_hour = 2\n");
    for i in 0..3 {
        f.land(
            i + 1,
            &["alpha"],
            "beta",
            "buyer",
            60_000 * (i64::from(i) + 1),
        )
        .await;
    }
    let r = f
        .svc
        .report("beta", order("o-1", "buyer", 100))
        .await
        .unwrap();
    assert_eq!(r.conversion.hold_reason, "LANDING_VELOCITY");
}

async fn a_given_referral_must_be_this_buyers_landing() {
    let f = fx("linear", "");
    let mine = f.land(1, &["alpha"], "beta", "buyer", 60_000).await;
    let theirs = f.land(2, &["gamma"], "beta", "other", 60_000).await;
    f.land(3, &["gamma"], "beta", "buyer", 30_000).await;
    let mut o = order("o-1", "buyer", 10_000);
    o.referral_id = mine;
    let r = f.svc.report("beta", o).await.unwrap();
    // Only the given referral counts, though another landing is in the window.
    assert_eq!(
        (r.conversion.touches, r.conversion.commission_minor),
        (1, 500)
    );
    let mut o = order("o-2", "buyer", 10_000);
    o.referral_id = theirs;
    let e = f.svc.report("beta", o).await.unwrap_err();
    assert_eq!(e.problem().reason, "REFERRAL_NOT_A_TOUCH");
}

async fn every_bad_field_is_named() {
    let f = fx("last_touch", "");
    let bad = ReportRequest {
        order_id: "has space".into(),
        subject: String::new(),
        amount_minor: 0,
        currency: "cny".into(),
        category: "Toys!".into(),
        occurred_at_ms: Some(NOW + 3_600_000),
        referral_id: "xyz".into(),
    };
    let p = f.svc.report("beta", bad).await.unwrap_err().problem();
    let fields: Vec<&str> = p.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "order_id",
            "subject",
            "amount_minor",
            "currency",
            "category",
            "occurred_at",
            "referral_id"
        ]
    );
    let mut old = order("o", "s", 1);
    old.occurred_at_ms = Some(NOW - MAX_AGE_MS - 1);
    let p = f.svc.report("beta", old).await.unwrap_err().problem();
    assert_eq!(p.violations[0].field, "occurred_at");
    let mut none = order("o", "s", money::MAX_AMOUNT_MINOR + 1);
    none.occurred_at_ms = None;
    let p = f.svc.report("beta", none).await.unwrap_err().problem();
    assert_eq!(p.violations.len(), 2);
    let p = f
        .svc
        .update("beta", update("o", Status::Confirmed, 5, ""))
        .await
        .unwrap_err()
        .problem();
    assert_eq!(p.violations[0].field, "refund_minor");
    let p = f
        .svc
        .update(
            "beta",
            UpdateRequest {
                order_id: "o".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err()
        .problem();
    assert_eq!(p.violations[0].field, "status");
}

#[test]
fn conversion_ids_are_stable_distinct_and_ordered_by_time() {
    assert_eq!(conversion_id("a", "o", 5), conversion_id("a", "o", 5));
    assert_ne!(conversion_id("a", "o", 5), conversion_id("b", "o", 5));
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert_ne!(conversion_id("ab", "c", 5), conversion_id("a", "bc", 5));
    // Later ids sort after earlier ones, whatever the order.
    let t = 1_795_000_000_000;
    assert!(conversion_id("z", "z", t) < conversion_id("a", "a", t + 1));
    assert_eq!(conversion_id("a", "o", t)[..6], t.to_be_bytes()[2..]);
}

#[test]
fn fraud_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let fraud = "[fraud]\nmax_amount_minor = 0\nmax_landings_per_uid_per_hour = 0\n\
                 [fraud.max_amount_minor_by_currency]\ncny = 0\n";
    let e =
        Settings::from_toml(&body("last_touch", fraud), &dir.path().join("c.toml")).unwrap_err();
    let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "fraud.max_landings_per_uid_per_hour",
            "fraud.max_amount_minor",
            "fraud.max_amount_minor_by_currency.cny",
            "fraud.max_amount_minor_by_currency.cny",
        ]
    );
}
