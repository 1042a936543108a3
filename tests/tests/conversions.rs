//! End-to-end: `crossflow.v1.ConversionService` over real mTLS on 127.0.0.1.
//! Viewers land through real referral hops, the destination reports orders,
//! and every answer's ledger entry is read back and checked: attribution,
//! exact shares, balanced postings, reversals, holds and releases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, time::SystemTime};

use crossflow_proto::v1::{
    ConversionStatus, GetConversionRequest, ReleaseConversionRequest, ReportConversionRequest,
    ReportConversionResponse, UpdateConversionRequest, UpdateConversionResponse,
    conversion_service_client::ConversionServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, GAMMA, TestGateway, assert_refused, create_req, onward_req, redeem_req, refusal,
    run_cli,
};
use serde_json::Value;
use tonic::{Code, transport::Channel};

const OPERATOR: &str = "ops";

/// alpha <-> beta <-> gamma; beta attributes linearly; JPY orders over
/// 100000 are held.
const BODY: &str = r#"
[[partners]]
id = "alpha"
[[partners]]
id = "beta"
attribution_model = "linear"
[[partners]]
id = "gamma"

[[agreements]]
id = "alpha-beta"
between = ["alpha", "beta"]
max_hops = 3
upstream_share_bps = 2000
[[agreements.flows]]
from = "alpha"
to = "beta"
commission = { default_bps = 500, categories = { skincare = 800 } }
[[agreements.flows]]
from = "beta"
to = "alpha"
commission = { default_bps = 400 }

[[agreements]]
id = "beta-gamma"
between = ["beta", "gamma"]
max_hops = 3
upstream_share_bps = 2500
[[agreements.flows]]
from = "beta"
to = "gamma"
commission = { default_bps = 1000 }
[[agreements.flows]]
from = "gamma"
to = "beta"
commission = { default_bps = 300 }

[fraud]
max_amount_minor_by_currency = { JPY = 100000 }
"#;

async fn gateway() -> TestGateway {
    TestGateway::builder()
        .operator(OPERATOR)
        .body(BODY)
        .start()
        .await
}

async fn client(gw: &TestGateway, name: &str) -> ConversionServiceClient<Channel> {
    ConversionServiceClient::new(gw.channel(name).await)
}

async fn operator(gw: &TestGateway) -> ConversionServiceClient<Channel> {
    client(gw, &format!("operator-{OPERATOR}")).await
}

/// A hop `from` -> `to` (onward from `parent` if not empty), redeemed by
/// `to` for `to_subject`. Returns the referral id.
async fn land(
    gw: &TestGateway,
    from: &str,
    from_subject: &str,
    to: &str,
    to_subject: &str,
    parent: &str,
) -> String {
    let req = if parent.is_empty() {
        create_req(from_subject, to, "room-1")
    } else {
        onward_req(from_subject, to, "room-1", parent)
    };
    let made = gw
        .referrals(from)
        .await
        .create_referral(req)
        .await
        .unwrap()
        .into_inner();
    gw.referrals(to)
        .await
        .redeem_referral(redeem_req(&made.token, to_subject))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap()
        .referral_id
}

fn now() -> prost_types::Timestamp {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn order(id: &str, subject: &str, amount: i64, currency: &str) -> ReportConversionRequest {
    ReportConversionRequest {
        order_id: id.into(),
        subject: subject.into(),
        amount_minor: amount,
        currency: currency.into(),
        category: "toys".into(),
        occurred_at: Some(now()),
        referral_id: String::new(),
    }
}

fn update(
    id: &str,
    status: ConversionStatus,
    refund: i64,
    request_id: &str,
) -> UpdateConversionRequest {
    UpdateConversionRequest {
        order_id: id.into(),
        status: status as i32,
        refund_minor: refund,
        request_id: request_id.into(),
    }
}

async fn report(
    c: &ConversionServiceClient<Channel>,
    req: ReportConversionRequest,
) -> ReportConversionResponse {
    c.clone().report_conversion(req).await.unwrap().into_inner()
}

async fn change(
    c: &ConversionServiceClient<Channel>,
    req: UpdateConversionRequest,
) -> UpdateConversionResponse {
    c.clone().update_conversion(req).await.unwrap().into_inner()
}

/// The entry's bytes, checked against its leaf hash, parsed.
fn entry(e: &Option<crossflow_proto::v1::LedgerEntryRef>) -> Value {
    let e = e.as_ref().expect("an entry");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0]);
    ctx.update(&e.entry);
    assert_eq!(
        ctx.finish().as_ref(),
        &e.leaf_hash[..],
        "leaf hash of entry {}",
        e.index
    );
    assert!(!e.entry.contains(&b'\n'), "one line");
    serde_json::from_slice(&e.entry).unwrap()
}

/// Postings of `entries` summed per account, zero sums dropped; asserts each
/// entry balances on its own.
fn books(entries: &[&Value]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in entries {
        let mut sum = 0;
        for p in e["postings"].as_array().unwrap() {
            let a = p["amount_minor"].as_i64().unwrap();
            sum += a;
            *out.entry(p["account"].as_str().unwrap().to_owned())
                .or_default() += a;
        }
        assert_eq!(sum, 0, "unbalanced entry {e}");
    }
    out.retain(|_, v| *v != 0);
    out
}

fn accounts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(a, v)| ((*a).to_owned(), *v)).collect()
}

#[tokio::test]
async fn multi_touch_attribution_across_two_origins() {
    let gw = gateway().await;
    // One beta shopper arrives from alpha, later from gamma.
    let from_alpha = land(&gw, ALPHA, "a-1", BETA, "b-shopper", "").await;
    let from_gamma = land(&gw, GAMMA, "g-1", BETA, "b-shopper", "").await;
    land(&gw, ALPHA, "a-2", BETA, "b-other", "").await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("o-1", "b-shopper", 20_001, "CNY")).await;
    let c = r.conversion.unwrap();
    assert!(c.attributed && !c.held && !r.replayed);
    assert_eq!((c.touches, c.attribution_model.as_str()), (2, "linear"));
    assert_eq!(c.status, ConversionStatus::Pending as i32);
    // Half of 20001 at 5 % (500.025) and at 3 % (300.015): 800 in total.
    assert_eq!(c.commission_minor, 800);
    let e = entry(&r.entry);
    assert_eq!(e["event"], "reported");
    assert_eq!(e["reporter"], BETA);
    let touches = e["attribution"]["touches"].as_array().unwrap();
    assert_eq!(touches[0]["referral_id"], from_alpha.as_str());
    assert_eq!(touches[1]["referral_id"], from_gamma.as_str());
    assert_eq!(touches[0]["weight"], 1);
    assert_eq!(
        books(&[&e]),
        accounts(&[
            ("partner:alpha:receivable", 500),
            ("partner:beta:payable", -800),
            ("partner:gamma:receivable", 300),
        ])
    );
    // No raw subject in the entry.
    assert!(!String::from_utf8_lossy(&r.entry.unwrap().entry).contains("b-shopper"));
}

#[tokio::test]
async fn three_hop_chain_pays_the_upstream_hop() {
    let gw = gateway().await;
    let first = land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    land(&gw, BETA, "b-1", GAMMA, "g-1", &first).await;
    let gamma = client(&gw, GAMMA).await;
    let r = report(&gamma, order("g-order", "g-1", 10_003, "CNY")).await;
    // beta -> gamma at 10 %: 1000; 25 % of it upstream to alpha.
    let e = entry(&r.entry);
    assert_eq!(
        e["attribution"]["touches"][0]["chain"],
        serde_json::json!([ALPHA, BETA])
    );
    assert_eq!(
        books(&[&e]),
        accounts(&[
            ("partner:alpha:receivable", 250),
            ("partner:beta:receivable", 750),
            ("partner:gamma:payable", -1000),
        ])
    );
}

#[tokio::test]
async fn unattributed_orders_are_recorded_without_postings() {
    let gw = gateway().await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("walk-in", "nobody", 5_000, "CNY")).await;
    let c = r.conversion.unwrap();
    assert!(!c.attributed);
    assert_eq!(c.commission_minor, 0);
    assert!(books(&[&entry(&r.entry)]).is_empty());
}

#[tokio::test]
async fn retries_return_the_same_entry_and_conflicts_name_fields() {
    let gw = gateway().await;
    land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;
    let req = order("o-1", "b-1", 9_999, "CNY");
    let first = report(&beta, req.clone()).await;
    let again = report(&beta, req.clone()).await;
    assert!(again.replayed);
    assert_eq!(first.entry, again.entry);
    let mut other = req.clone();
    other.amount_minor = 10_000;
    other.currency = "USD".into();
    let refused = assert_refused(
        beta.clone().report_conversion(other).await,
        Code::AlreadyExists,
        "ORDER_ID_CONFLICT",
    );
    assert_eq!(
        refused.metadata["differing_fields"],
        "amount_minor,currency"
    );
    // Updates retried with their request id are answered once.
    let a = change(
        &beta,
        update("o-1", ConversionStatus::Refunded, 1_000, "rf-1"),
    )
    .await;
    let b = change(
        &beta,
        update("o-1", ConversionStatus::Refunded, 1_000, "rf-1"),
    )
    .await;
    assert!(!a.replayed && b.replayed);
    assert_eq!(a.entry, b.entry);
    assert_eq!(b.conversion.unwrap().refunded_minor, 1_000);
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Refunded, 2_000, "rf-1"))
            .await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
}

#[tokio::test]
async fn partial_then_full_refunds_reverse_exactly() {
    let gw = gateway().await;
    land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    land(&gw, GAMMA, "g-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("o-1", "b-1", 33_333, "CNY")).await;
    let reported = entry(&r.entry);
    let part = change(&beta, update("o-1", ConversionStatus::Refunded, 11_111, "")).await;
    let part_e = entry(&part.entry);
    assert_eq!(part_e["refund_minor"], 11_111);
    assert_eq!(part_e["report_index"], r.entry.as_ref().unwrap().index);
    assert_eq!(
        part.conversion.as_ref().unwrap().status,
        ConversionStatus::Pending as i32
    );
    // Payouts: alpha 833 (833.325), gamma 500 (499.995, the largest
    // remainder). A third reversed, floor per payee: 277 and 166.
    assert_eq!(
        books(&[&reported]),
        accounts(&[
            ("partner:alpha:receivable", 833),
            ("partner:beta:payable", -1333),
            ("partner:gamma:receivable", 500),
        ])
    );
    assert_eq!(
        books(&[&part_e]),
        accounts(&[
            ("partner:alpha:receivable", -277),
            ("partner:beta:payable", 443),
            ("partner:gamma:receivable", -166),
        ])
    );
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Refunded, 22_223, ""))
            .await,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_REMAINING",
    );
    let confirmed = change(&beta, update("o-1", ConversionStatus::Confirmed, 0, "")).await;
    let full = change(&beta, update("o-1", ConversionStatus::Refunded, 0, "")).await;
    let c = full.conversion.as_ref().unwrap();
    assert_eq!(
        (c.status, c.refunded_minor),
        (ConversionStatus::Refunded as i32, 33_333)
    );
    assert!(
        books(&[
            &reported,
            &part_e,
            &entry(&confirmed.entry),
            &entry(&full.entry)
        ])
        .is_empty()
    );
    let refused = assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Confirmed, 0, ""))
            .await,
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    assert_eq!(refused.metadata["from_status"], "refunded");
    assert_eq!(refused.metadata["to_status"], "confirmed");
    let got = beta
        .clone()
        .get_conversion(GetConversionRequest {
            order_id: "o-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversion
        .unwrap();
    assert_eq!(got.latest_index, full.entry.unwrap().index);
}

#[tokio::test]
async fn cancel_reverses_everything_and_is_final() {
    let gw = gateway().await;
    land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("o-1", "b-1", 12_345, "CNY")).await;
    let c = change(&beta, update("o-1", ConversionStatus::Cancelled, 0, "")).await;
    assert!(books(&[&entry(&r.entry), &entry(&c.entry)]).is_empty());
    let refused = assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Confirmed, 0, ""))
            .await,
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    assert!(refused.message.contains("cancelled") && refused.message.contains("confirmed"));
}

#[tokio::test]
async fn held_conversion_is_released_by_an_operator_only() {
    let gw = gateway().await;
    land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("big", "b-1", 200_000, "JPY")).await;
    let c = r.conversion.clone().unwrap();
    assert!(c.held);
    assert_eq!(c.hold_reason, "AMOUNT_OVER_CAP");
    assert_eq!(c.currency_exponent, 0);
    let held = entry(&r.entry);
    assert_eq!(held["hold"]["reason"], "AMOUNT_OVER_CAP");
    assert!(books(&[&held]).is_empty(), "held: nothing posted");

    let release = ReleaseConversionRequest {
        conversion_id: c.conversion_id.clone(),
        note: "verified with the buyer".into(),
    };
    assert_refused(
        beta.clone().release_conversion(release.clone()).await,
        Code::PermissionDenied,
        "OPERATOR_ONLY",
    );
    let alpha = client(&gw, ALPHA).await;
    assert_refused(
        alpha.clone().release_conversion(release.clone()).await,
        Code::PermissionDenied,
        "OPERATOR_ONLY",
    );

    let ops = operator(&gw).await;
    let done = ops
        .clone()
        .release_conversion(release.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!done.conversion.as_ref().unwrap().held);
    let rel = entry(&done.entry);
    assert_eq!(rel["event"], "released");
    assert_eq!(rel["released_by"], format!("operator/{OPERATOR}"));
    assert_eq!(
        books(&[&held, &rel]),
        accounts(&[
            ("partner:alpha:receivable", 10_000),
            ("partner:beta:payable", -10_000)
        ])
    );
    assert_refused(
        ops.clone().release_conversion(release).await,
        Code::FailedPrecondition,
        "NOT_HELD",
    );
    // Operators report nothing themselves.
    assert_refused(
        ops.clone()
            .report_conversion(order("x", "y", 1, "CNY"))
            .await,
        Code::PermissionDenied,
        "PARTNER_ONLY",
    );
}

#[tokio::test]
async fn cli_releases_a_held_conversion_with_the_gateway_stopped() {
    let mut gw = gateway().await;
    land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;
    let r = report(&beta, order("big", "b-1", 150_000, "JPY")).await;
    let id = r.conversion.unwrap().conversion_id;
    let config = gw.dir().join("crossflow.toml");
    let config = config.to_str().unwrap();
    // While the gateway runs, the store is locked: the CLI says what to do.
    let busy = run_cli(&["conversions", "release", &id, "--config", config]);
    assert!(!busy.status.success());
    assert!(busy.stderr.contains("ReleaseConversion"), "{}", busy.stderr);
    gw.shutdown().await;
    let out = run_cli(&[
        "conversions",
        "release",
        &id,
        "--config",
        config,
        "--note",
        "cleared",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("released conversion {id}")),
        "{}",
        out.stdout
    );
    let again = run_cli(&["conversions", "release", &id, "--config", config]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("is not held"), "{}", again.stderr);
    gw.restart().await;
    let c = client(&gw, BETA)
        .await
        .get_conversion(GetConversionRequest {
            order_id: "big".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversion
        .unwrap();
    assert!(!c.held);
    assert!(c.latest_index > c.report_index);
}

#[tokio::test]
async fn every_refusal_names_its_code_and_field() {
    let gw = gateway().await;
    let mine = land(&gw, ALPHA, "a-1", BETA, "b-1", "").await;
    let beta = client(&gw, BETA).await;

    let bad = ReportConversionRequest {
        order_id: "bad order".into(),
        subject: String::new(),
        amount_minor: -5,
        currency: "XYZ".into(),
        category: "Toys".into(),
        occurred_at: None,
        referral_id: "nothex".into(),
    };
    assert_refused(
        beta.clone().report_conversion(bad).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&[
        "order_id",
        "subject",
        "amount_minor",
        "currency",
        "category",
        "occurred_at",
        "referral_id",
    ]);
    let mut future = order("f", "b-1", 1, "CNY");
    future.occurred_at = Some(prost_types::Timestamp {
        seconds: now().seconds + 3_600,
        nanos: 0,
    });
    assert_refused(
        beta.clone().report_conversion(future).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["occurred_at"]);
    let mut too_big = order("t", "b-1", 1_000_000_000_000_001, "CNY");
    too_big.category = "x".repeat(65);
    assert_refused(
        beta.clone().report_conversion(too_big).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["amount_minor", "category"]);

    // A referral that is not this buyer's landing at the caller.
    let mut theirs = order("r-1", "someone-else", 1_000, "CNY");
    theirs.referral_id = mine.clone();
    let r = refusal(beta.clone().report_conversion(theirs).await)
        .expect(Code::FailedPrecondition, "REFERRAL_NOT_A_TOUCH");
    assert_eq!(r.metadata["field"], "referral_id");
    let mut elsewhere = order("r-2", "b-1", 1_000, "CNY");
    elsewhere.referral_id = mine;
    let gamma = client(&gw, GAMMA).await;
    assert_refused(
        gamma.clone().report_conversion(elsewhere).await,
        Code::FailedPrecondition,
        "REFERRAL_NOT_A_TOUCH",
    );

    // Updates.
    assert_refused(
        beta.clone()
            .update_conversion(update("missing", ConversionStatus::Confirmed, 0, ""))
            .await,
        Code::NotFound,
        "CONVERSION_NOT_FOUND",
    );
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Unspecified, 0, ""))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["status"]);
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Pending, 0, ""))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["status"]);
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Cancelled, 10, "bad id"))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["refund_minor", "request_id"]);
    assert_refused(
        beta.clone()
            .update_conversion(update("o-1", ConversionStatus::Refunded, -1, ""))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["refund_minor"]);
    // Another partner's order is not found for the caller.
    report(&beta, order("o-1", "b-1", 1_000, "CNY")).await;
    assert_refused(
        gamma
            .clone()
            .update_conversion(update("o-1", ConversionStatus::Confirmed, 0, ""))
            .await,
        Code::NotFound,
        "CONVERSION_NOT_FOUND",
    );
    // Release needs a well-formed id, and an existing conversion.
    let ops = operator(&gw).await;
    assert_refused(
        ops.clone()
            .release_conversion(ReleaseConversionRequest {
                conversion_id: "zz".into(),
                note: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["conversion_id"]);
    assert_refused(
        ops.clone()
            .release_conversion(ReleaseConversionRequest {
                conversion_id: "0".repeat(32),
                note: String::new(),
            })
            .await,
        Code::NotFound,
        "CONVERSION_NOT_FOUND",
    );
}
