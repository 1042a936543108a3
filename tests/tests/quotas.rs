//! Quotas end to end: rate and daily limits per partner and class, the
//! per-agreement daily cap and reciprocity limit, shadow mode,
//! `QuotaService/GetQuotaStatus`, and live reload of the config file (a
//! raised quota, a broken file, a refused restart-only change, a partner
//! disabled mid-stream).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crossflow_proto::v1::{
    GetQuotaStatusRequest, GetQuotaStatusResponse, QuotaKind, QuotaStatus,
    quota_service_client::QuotaServiceClient,
};
use crossflow_tests::{
    ALPHA, ALPHA_BETA, BETA, BETA_GAMMA, DEADLINE, FEDERATION, Federation, GAMMA, TestGateway,
    assert_refused, create_req, gateway_section, health_check,
};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

const OPS: &str = "ops";

/// alpha, beta and gamma; `alpha_quotas` goes right after alpha's table;
/// agreement alpha-beta with `agreement_extra` and `flow_extra` on the
/// alpha -> beta flow; beta-gamma without limits.
fn body(
    alpha_quotas: &str,
    agreement_extra: &str,
    flow_extra: &str,
    alpha_enabled: bool,
) -> String {
    let alpha = format!("enabled = {alpha_enabled}\n{alpha_quotas}");
    Federation::default()
        .partner(ALPHA, &alpha)
        .partner(BETA, "")
        .partner(GAMMA, "")
        .agreement(ALPHA_BETA, ALPHA, BETA, agreement_extra)
        .flow(ALPHA, BETA, flow_extra)
        .flow(BETA, ALPHA, "")
        .both_ways(BETA_GAMMA, BETA, GAMMA)
        .into()
}

fn rate(rate_per_sec: u32, burst: u32, extra: &str) -> String {
    format!(
        "[partners.quotas.referrals]\nrate_per_sec = {rate_per_sec}\nburst = {burst}\n{extra}\n"
    )
}

async fn start(body: String) -> TestGateway {
    TestGateway::builder()
        .operator(OPS)
        .body(body)
        .start()
        .await
}

/// Rewrites the config file the gateway watches.
fn rewrite(gw: &TestGateway, body: &str) {
    let text = format!("{}\n{body}", gateway_section(FEDERATION, "127.0.0.1:0"));
    std::fs::write(gw.bed().config_path(), text).unwrap();
}

async fn status(ch: Channel, partner: &str) -> GetQuotaStatusResponse {
    QuotaServiceClient::new(ch)
        .get_quota_status(GetQuotaStatusRequest {
            partner: partner.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn find<'a>(r: &'a GetQuotaStatusResponse, quota: &str) -> &'a QuotaStatus {
    r.quotas
        .iter()
        .find(|q| q.quota == quota)
        .unwrap_or_else(|| panic!("no quota {quota} in {r:#?}"))
}

/// Polls the operator's view until `done` holds; returns how long it took.
async fn until(gw: &TestGateway, done: impl Fn(&GetQuotaStatusResponse) -> bool) -> Duration {
    let ops = gw.channel(&format!("operator-{OPS}")).await;
    let start = Instant::now();
    loop {
        let s = status(ops.clone(), ALPHA).await;
        if done(&s) {
            return start.elapsed();
        }
        assert!(start.elapsed() < DEADLINE, "never reached: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn subjects_and_retry(s: &Status) -> (Vec<String>, Duration) {
    let q = s.get_details_quota_failure().expect("QuotaFailure detail");
    let r = s.get_details_retry_info().expect("RetryInfo detail");
    (
        q.violations.into_iter().map(|v| v.subject).collect(),
        r.retry_delay.expect("retry_delay"),
    )
}

#[tokio::test]
async fn a_partner_over_its_rate_gets_resource_exhausted_with_quota_failure_and_an_exact_retry() {
    let gw = start(body(&rate(2, 2, ""), "", "", true)).await;
    let mut alpha = gw.referrals(ALPHA).await;
    alpha
        .create_referral(create_req("u1", BETA, "r"))
        .await
        .unwrap();
    alpha
        .create_referral(create_req("u2", BETA, "r"))
        .await
        .unwrap();
    let err = alpha
        .create_referral(create_req("u3", BETA, "r"))
        .await
        .unwrap_err();
    assert_refused(
        Err::<(), _>(err.clone()),
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
    let (subjects, retry) = subjects_and_retry(&err);
    assert_eq!(subjects, vec!["partner:alpha/referrals/rate".to_owned()]);
    // 2/s: the next call conforms at most 500 ms after the burst.
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{retry:?}"
    );
    let q = err.get_details_quota_failure().unwrap();
    assert!(q.violations[0].description.starts_with("limit 2:"), "{q:?}");

    // Waiting out the hint is enough.
    tokio::time::sleep(retry).await;
    alpha
        .create_referral(create_req("u4", BETA, "r"))
        .await
        .unwrap();

    // beta has no quota and is never held up by alpha's.
    let mut beta = gw.referrals(BETA).await;
    for i in 0..20 {
        beta.create_referral(create_req(&format!("b{i}"), GAMMA, "r"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn daily_caps_hold_across_a_restart_and_retry_at_local_midnight() {
    let mut gw = start(body(&rate(1000, 1000, "daily_cap = 3"), "", "", true)).await;
    let mut alpha = gw.referrals(ALPHA).await;
    for i in 0..3 {
        alpha
            .create_referral(create_req(&format!("u{i}"), BETA, "r"))
            .await
            .unwrap();
    }
    let err = alpha
        .create_referral(create_req("u9", BETA, "r"))
        .await
        .unwrap_err();
    assert_refused(
        Err::<(), _>(err.clone()),
        Code::ResourceExhausted,
        "DAILY_CAP_REACHED",
    );
    let (subjects, retry) = subjects_and_retry(&err);
    assert_eq!(
        subjects,
        vec!["partner:alpha/referrals/daily_cap".to_owned()]
    );
    // Asia/Shanghai has no DST: the next midnight is at most a day away and
    // matches the reset time GetQuotaStatus gives.
    assert!(retry <= Duration::from_secs(86_400), "{retry:?}");
    let s = status(gw.channel(ALPHA).await, "").await;
    let cap = find(&s, "partner:alpha/referrals/daily_cap");
    assert_eq!((cap.limit, cap.used, cap.remaining), (3, 3, 0));
    let reset = cap.reset_time.unwrap().seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (reset - now - retry.as_secs() as i64).abs() <= 2,
        "reset {reset}, now {now}, retry {retry:?}"
    );
    assert_eq!(
        reset.rem_euclid(86_400),
        16 * 3600,
        "local midnight is 16:00 UTC"
    );

    gw.restart().await;
    let mut alpha = gw.referrals(ALPHA).await;
    let err = alpha.create_referral(create_req("u10", BETA, "r")).await;
    assert_refused(err, Code::ResourceExhausted, "DAILY_CAP_REACHED");
    let s = status(gw.channel(ALPHA).await, "").await;
    assert_eq!(find(&s, "partner:alpha/referrals/daily_cap").used, 3);
}

#[tokio::test]
async fn referrals_per_day_and_reciprocity_limit_each_direction() {
    let gw = start(body(
        "",
        "max_daily_imbalance = 2",
        "referrals_per_day = 4",
        true,
    ))
    .await;
    let mut alpha = gw.referrals(ALPHA).await;
    let mut beta = gw.referrals(BETA).await;
    for i in 0..2 {
        alpha
            .create_referral(create_req(&format!("a{i}"), BETA, "r"))
            .await
            .unwrap();
    }
    let err = alpha
        .create_referral(create_req("a2", BETA, "r"))
        .await
        .unwrap_err();
    assert_refused(
        Err::<(), _>(err.clone()),
        Code::ResourceExhausted,
        "RECIPROCITY_LIMIT_REACHED",
    );
    assert_eq!(
        subjects_and_retry(&err).0,
        vec!["agreement:alpha-beta/alpha->beta/reciprocity".to_owned()]
    );
    // beta sends two back; alpha may send two more, then its daily cap of 4.
    for i in 0..2 {
        beta.create_referral(create_req(&format!("b{i}"), ALPHA, "r"))
            .await
            .unwrap();
    }
    for i in 2..4 {
        alpha
            .create_referral(create_req(&format!("a{i}"), BETA, "r"))
            .await
            .unwrap();
    }
    let s = status(gw.channel(ALPHA).await, "").await;
    let per_day = find(&s, "agreement:alpha-beta/alpha->beta/referrals_per_day");
    assert_eq!(
        (
            per_day.kind(),
            per_day.limit,
            per_day.used,
            per_day.remaining
        ),
        (QuotaKind::ReferralsPerDay, 4, 4, 0)
    );
    let recip = find(&s, "agreement:alpha-beta/alpha->beta/reciprocity");
    assert_eq!((recip.limit, recip.used, recip.remaining), (2, 2, 0));
    let err = alpha.create_referral(create_req("a9", BETA, "r")).await;
    assert_refused(err, Code::ResourceExhausted, "REFERRALS_PER_DAY_REACHED");
}

#[tokio::test]
async fn shadow_quotas_count_and_report_but_never_refuse() {
    let gw = start(body(
        &rate(1, 1, "daily_cap = 2\nshadow = true"),
        "max_daily_imbalance = 1",
        "referrals_per_day = 1\nquota_shadow = true",
        true,
    ))
    .await;
    let mut alpha = gw.referrals(ALPHA).await;
    for i in 0..6 {
        alpha
            .create_referral(create_req(&format!("u{i}"), BETA, "r"))
            .await
            .unwrap();
    }
    let s = status(gw.channel(ALPHA).await, "").await;
    let cap = find(&s, "partner:alpha/referrals/daily_cap");
    assert_eq!((cap.used, cap.remaining, cap.shadow), (6, 0, true));
    let per_day = find(&s, "agreement:alpha-beta/alpha->beta/referrals_per_day");
    assert_eq!((per_day.used, per_day.shadow), (6, true));
}

#[tokio::test]
async fn only_operators_see_other_partners_and_the_reload_status() {
    let gw = start(body(&rate(5, 10, ""), "", "", true)).await;
    let mine = status(gw.channel(ALPHA).await, "").await;
    assert_eq!(mine.partner, ALPHA);
    assert_eq!(mine.timezone, "Asia/Shanghai");
    assert!(mine.config.is_none());
    let r = find(&mine, "partner:alpha/referrals/rate");
    assert_eq!(
        (r.kind(), r.limit, r.remaining, r.rate_per_sec),
        (QuotaKind::Rate, 10, 10, 5)
    );
    let other = QuotaServiceClient::new(gw.channel(BETA).await)
        .get_quota_status(GetQuotaStatusRequest {
            partner: ALPHA.to_owned(),
        })
        .await;
    assert_refused(other, Code::PermissionDenied, "OTHER_PARTNER");
    let ops = status(gw.channel(&format!("operator-{OPS}")).await, ALPHA).await;
    let limits = |r: &GetQuotaStatusResponse| {
        r.quotas
            .iter()
            .map(|q| (q.quota.clone(), q.limit, q.remaining))
            .collect::<Vec<_>>()
    };
    assert_eq!(limits(&ops), limits(&mine));
    let cfg = ops.config.unwrap();
    assert_eq!((cfg.generation, cfg.last_errors.len()), (1, 0));
}

#[tokio::test]
async fn a_raised_quota_applies_within_a_second_without_a_reconnect() {
    let gw = start(body(&rate(1000, 1000, "daily_cap = 2"), "", "", true)).await;
    let mut alpha = gw.referrals(ALPHA).await;
    alpha
        .create_referral(create_req("u1", BETA, "r"))
        .await
        .unwrap();
    alpha
        .create_referral(create_req("u2", BETA, "r"))
        .await
        .unwrap();
    let err = alpha.create_referral(create_req("u3", BETA, "r")).await;
    assert_refused(err, Code::ResourceExhausted, "DAILY_CAP_REACHED");

    rewrite(&gw, &body(&rate(1000, 1000, "daily_cap = 5"), "", "", true));
    let took = until(&gw, |s| {
        s.config.as_ref().is_some_and(|c| c.generation == 2)
    })
    .await;
    assert!(took < Duration::from_secs(1), "applied after {took:?}");
    // Same channel; the count of 2 was kept: 3 more, then refused.
    for i in 3..6 {
        alpha
            .create_referral(create_req(&format!("u{i}"), BETA, "r"))
            .await
            .unwrap();
    }
    let err = alpha.create_referral(create_req("u9", BETA, "r")).await;
    assert_refused(err, Code::ResourceExhausted, "DAILY_CAP_REACHED");
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_config_serving_and_reports_every_error() {
    let gw = start(body(&rate(1000, 1000, "daily_cap = 2"), "", "", true)).await;
    let good = body(&rate(1000, 1000, "daily_cap = 2"), "", "", true);
    // Two validation errors at once.
    let broken = good
        .replace("rate_per_sec = 1000", "rate_per_sec = 0")
        .replace("burst = 1000", "burst = 0");
    rewrite(&gw, &broken);
    until(&gw, |s| {
        s.config.as_ref().is_some_and(|c| !c.last_errors.is_empty())
    })
    .await;
    let ops = gw.channel(&format!("operator-{OPS}")).await;
    let cfg = status(ops.clone(), ALPHA).await.config.unwrap();
    assert_eq!(cfg.generation, 1);
    assert_eq!(cfg.last_errors.len(), 2, "{:?}", cfg.last_errors);
    assert!(cfg.last_errors[0].contains("partners[0].quotas.referrals.rate_per_sec"));
    assert!(cfg.last_errors[1].contains("partners[0].quotas.referrals.burst"));
    assert_eq!(
        health_check(ops.clone(), "crossflow.config").await.unwrap(),
        ServingStatus::NotServing
    );
    // Still serving, still the old quota.
    let mut alpha = gw.referrals(ALPHA).await;
    alpha
        .create_referral(create_req("u1", BETA, "r"))
        .await
        .unwrap();
    alpha
        .create_referral(create_req("u2", BETA, "r"))
        .await
        .unwrap();
    let err = alpha.create_referral(create_req("u3", BETA, "r")).await;
    assert_refused(err, Code::ResourceExhausted, "DAILY_CAP_REACHED");

    // Fixing the file (same content as running) clears the report.
    rewrite(&gw, &good);
    until(&gw, |s| {
        s.config.as_ref().is_some_and(|c| c.last_errors.is_empty())
    })
    .await;
    assert_eq!(
        health_check(ops, "crossflow.config").await.unwrap(),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_refused_with_a_message() {
    let gw = start(body("", "", "", true)).await;
    let text = format!(
        "{}\n{}",
        gateway_section(FEDERATION, "127.0.0.1:9"),
        body(&rate(1, 1, ""), "", "", true)
    );
    std::fs::write(gw.bed().config_path(), text).unwrap();
    until(&gw, |s| {
        s.config.as_ref().is_some_and(|c| !c.last_errors.is_empty())
    })
    .await;
    let ops = gw.channel(&format!("operator-{OPS}")).await;
    let cfg = status(ops, ALPHA).await.config.unwrap();
    assert_eq!(cfg.last_errors.len(), 1, "{:?}", cfg.last_errors);
    assert!(
        cfg.last_errors[0]
            .starts_with("gateway.listen changed from \"127.0.0.1:0\" to \"127.0.0.1:9\""),
        "{:?}",
        cfg.last_errors
    );
    // The quota in the same file was not applied either: refused whole.
    let mut alpha = gw.referrals(ALPHA).await;
    for i in 0..5 {
        alpha
            .create_referral(create_req(&format!("u{i}"), BETA, "r"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn disabling_a_partner_mid_stream_refuses_its_next_call() {
    let gw = start(body("", "", "", true)).await;
    let mut alpha = gw.referrals(ALPHA).await;
    let mut beta = gw.referrals(BETA).await;
    alpha
        .create_referral(create_req("u0", BETA, "r"))
        .await
        .unwrap();

    rewrite(&gw, &body("", "", "", false));
    // alpha keeps calling on its open channel until refused.
    let start = Instant::now();
    let mut calls = 0;
    let refused = loop {
        calls += 1;
        match alpha.create_referral(create_req("u1", BETA, "r")).await {
            Ok(_) => {
                assert!(start.elapsed() < DEADLINE, "alpha never refused");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => break s,
        }
    };
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        start.elapsed()
    );
    assert!(calls >= 1);
    assert_refused(
        Err::<(), _>(refused),
        Code::PermissionDenied,
        "PARTNER_DISABLED",
    );
    // Every later call too; beta's open channel was not disturbed.
    let again = alpha.create_referral(create_req("u2", BETA, "r")).await;
    assert_refused(again, Code::PermissionDenied, "PARTNER_DISABLED");
    beta.create_referral(create_req("b1", GAMMA, "r"))
        .await
        .unwrap();
}
