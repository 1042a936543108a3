//! End-to-end: several gateway replicas on one PostgreSQL database, called
//! over real mTLS as partners would, each replica a full gateway. A hop
//! minted at one is redeemed at another exactly once; a conversion reported
//! at one has a receipt from another that verifies offline; when the
//! ledger's leader is SIGKILLed, another replica signs the next checkpoint
//! within 5 s, consistent with every earlier one.
//!
//! Skipped (with a printed line) without `CROSSFLOW_TEST_POSTGRES_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crossflow_ledger::{Verifier, note::Checkpoint, receipt::verify_receipt};
use crossflow_proto::v1::{
    GetCheckpointRequest, GetLogKeyRequest, GetReceiptRequest, ReportConversionRequest,
    conversion_service_client::ConversionServiceClient, get_receipt_request,
    ledger_service_client::LedgerServiceClient, referral_service_client::ReferralServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, DEFAULT_PARTNERS, FEDERATION, ServeProcess, assert_refused, create_req,
    default_body, now_ms, redeem_req,
    replicas::{Replicas, database, postgres_store_toml},
    timestamp,
};
use tonic::{Code, transport::Channel};

fn ledger_body() -> String {
    format!(
        "{}\n[ledger]\ncheckpoint_interval_ms = 50\n",
        default_body()
    )
}

/// An order placed now (after the buyer's landing); a retry resends the
/// same request.
fn order(id: &str, subject: &str, amount_minor: i64) -> ReportConversionRequest {
    let placed = now_ms();
    ReportConversionRequest {
        order_id: id.into(),
        subject: subject.into(),
        amount_minor,
        currency: "CNY".into(),
        category: "toys".into(),
        occurred_at: Some(timestamp(placed)),
        referral_id: String::new(),
    }
}

async fn land(from: Channel, to: Channel, subject: &str) -> String {
    let made = ReferralServiceClient::new(from)
        .create_referral(create_req("a-user", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    ReferralServiceClient::new(to)
        .redeem_referral(redeem_req(&made.token, subject))
        .await
        .unwrap();
    made.token
}

#[tokio::test]
async fn a_hop_minted_at_one_replica_redeems_once_across_replicas() {
    let Some(r) = Replicas::start("hop_across_replicas", 2, &[], &default_body()).await else {
        return;
    };
    let made = ReferralServiceClient::new(r.channel(0, ALPHA).await)
        .create_referral(create_req("a-user", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let at_b = ReferralServiceClient::new(r.channel(1, BETA).await)
        .redeem_referral(redeem_req(&made.token, "b-user"))
        .await
        .unwrap()
        .into_inner();
    let mut beta_at_a = ReferralServiceClient::new(r.channel(0, BETA).await);
    // Another subject at the other replica: the token is spent everywhere.
    assert_refused(
        beta_at_a
            .redeem_referral(redeem_req(&made.token, "b-other"))
            .await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
    // The same subject again is the same landing, at either replica.
    let again = beta_at_a
        .redeem_referral(redeem_req(&made.token, "b-user"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.referral, at_b.referral);
    assert_eq!(again.pseudonym, at_b.pseudonym);
}

#[tokio::test]
async fn a_conversion_reported_at_one_replica_has_a_receipt_from_the_other() {
    let Some(r) = Replicas::start("receipt_across_replicas", 2, &[], &ledger_body()).await else {
        return;
    };
    land(
        r.channel(0, ALPHA).await,
        r.channel(1, BETA).await,
        "b-user",
    )
    .await;
    let o1 = order("o-1", "b-user", 10_000);
    let reported = ConversionServiceClient::new(r.channel(1, BETA).await)
        .report_conversion(o1.clone())
        .await
        .unwrap()
        .into_inner();
    let entry = reported.entry.unwrap();

    // The order id is an idempotency key at every replica.
    let mut beta_at_a = ConversionServiceClient::new(r.channel(0, BETA).await);
    let replayed = beta_at_a
        .report_conversion(o1.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.entry.unwrap().index, entry.index);
    assert_refused(
        beta_at_a
            .report_conversion(ReportConversionRequest {
                amount_minor: 20_000,
                ..o1
            })
            .await,
        Code::AlreadyExists,
        "ORDER_ID_CONFLICT",
    );

    // The referrer asks the other replica for its receipt, and checks it
    // offline against the log's key.
    let mut alpha_at_a = LedgerServiceClient::new(r.channel(0, ALPHA).await);
    let key = alpha_at_a
        .get_log_key(GetLogKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier = Verifier::parse(&key.verifier_key).unwrap();
    let receipt = alpha_at_a
        .get_receipt(GetReceiptRequest {
            entry: Some(get_receipt_request::Entry::Index(entry.index)),
        })
        .await
        .unwrap()
        .into_inner();
    let c = verify_receipt(&receipt.receipt, &entry.entry, &verifier, &key.origin).unwrap();
    assert!(c.size > entry.index);
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_five_seconds() {
    let Some(url) = database("leader_failover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n{}\n[ledger]\ncheckpoint_interval_ms = 100\n",
        postgres_store_toml(&url),
        default_body()
    );
    crossflow_gateway::testbed::Testbed::create(
        Some(dir.path()),
        FEDERATION,
        "127.0.0.1:0",
        &DEFAULT_PARTNERS,
        &[],
        &body,
    )
    .unwrap();
    let mut a = ServeProcess::start(Replicas::bed_at(dir.path()), &[]).await;
    let mut b = ServeProcess::start(Replicas::bed_at(dir.path()), &[]).await;
    // The first to start leads; the other follows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leads = |p: &ServeProcess| p.log_text().contains("this replica leads");
    while !leads(&a) && !leads(&b) {
        assert!(Instant::now() < deadline, "no replica leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!(leads(&a) && leads(&b)), "two leaders");
    let (leader, follower) = if leads(&a) {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };

    land(
        follower.channel(ALPHA).await,
        follower.channel(BETA).await,
        "b-user",
    )
    .await;
    let mut reports = ConversionServiceClient::new(follower.channel(BETA).await);
    let first = reports
        .report_conversion(order("o-1", "b-user", 10_000))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    let mut ledger = LedgerServiceClient::new(follower.channel(ALPHA).await);
    let before = wait_for_checkpoint(&mut ledger, first.index + 1, Duration::from_secs(5)).await;

    leader.kill();
    let killed = Instant::now();
    let second = reports
        .report_conversion(order("o-2", "b-user", 10_000))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    let after = wait_for_checkpoint(&mut ledger, second.index + 1, Duration::from_secs(5)).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(follower.log_text().contains("this replica leads"));
    println!(
        "the follower signed checkpoint {} {took:?} after the leader's SIGKILL",
        after.size
    );

    // The new leader's checkpoint extends the old one's.
    crossflow_tests::assert_consistent(
        &mut ledger,
        (before.size, &before.root),
        (after.size, &after.root),
    )
    .await;
}

/// Polls GetCheckpoint until it covers `size` entries, for at most `within`.
async fn wait_for_checkpoint(
    ledger: &mut LedgerServiceClient<Channel>,
    size: u64,
    within: Duration,
) -> Checkpoint {
    let start = Instant::now();
    loop {
        let note = ledger
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .checkpoint
            .unwrap()
            .note;
        let key = ledger
            .get_log_key(GetLogKeyRequest {})
            .await
            .unwrap()
            .into_inner();
        let body = Verifier::parse(&key.verifier_key)
            .unwrap()
            .verify_note(&note)
            .unwrap();
        let c = Checkpoint::parse_body(body).unwrap();
        if c.size >= size {
            return c;
        }
        assert!(
            start.elapsed() < within,
            "no checkpoint of {size} entries within {within:?} (latest {})",
            c.size
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_replica_that_cannot_reach_postgres_exits_naming_the_host_only() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://crossflow:hunter2@127.0.0.1:{port}/federation");
    let bed = crossflow_gateway::testbed::Testbed::create(
        None,
        FEDERATION,
        "127.0.0.1:0",
        &DEFAULT_PARTNERS,
        &[],
        &format!("{}\n{}", postgres_store_toml(&url), default_body()),
    )
    .unwrap();
    let out = crossflow_tests::run_cli(&["serve", "--config", bed.config_path().to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

/// The Redis test server (`.ci/services start` runs one), or `None` after
/// printing why; CI requires it.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("CROSSFLOW_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CROSSFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{test}: CROSSFLOW_TEST_REDIS_URL is not set but CROSSFLOW_REQUIRE_SERVICES=1"
            );
            println!("skipped: {test}: CROSSFLOW_TEST_REDIS_URL not set");
            None
        }
    }
}

#[tokio::test]
async fn a_flood_split_over_two_replicas_is_limited_once() {
    let Some(redis) = redis_url("flood_over_replicas") else {
        return;
    };
    // Database 7 of the server, for this test alone.
    let redis = format!("{}/7", redis.trim_end_matches('/'));
    const RATE: u32 = 40;
    const BURST: u32 = 10;
    let body = crossflow_tests::Federation::default()
        .partner(
            ALPHA,
            &format!("[partners.quotas.referrals]\nrate_per_sec = {RATE}\nburst = {BURST}\n"),
        )
        .partner(BETA, "")
        .partner(crossflow_tests::GAMMA, "")
        .both_ways(crossflow_tests::ALPHA_BETA, ALPHA, BETA)
        .both_ways(crossflow_tests::BETA_GAMMA, BETA, crossflow_tests::GAMMA);
    let body: String = body.into();
    let body = format!("[gateway.quotas]\nbackend = \"redis\"\nurl = \"{redis}\"\n\n{body}");
    let Some(r) = Replicas::start("flood_over_replicas", 2, &[], &body).await else {
        return;
    };
    let flood = Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for replica in 0..2 {
        for w in 0..8 {
            let mut client = ReferralServiceClient::new(r.channel(replica, ALPHA).await);
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited) = (0u64, 0u64);
                let mut i = 0u64;
                while start.elapsed() < flood {
                    i += 1;
                    let subject = format!("flood-{replica}-{w}-{i}");
                    match client
                        .create_referral(create_req(&subject, BETA, "room"))
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => limited += 1,
                        Err(s) => panic!("unexpected refusal: {s:?}"),
                    }
                }
                (ok, limited)
            }));
        }
    }
    let (mut ok, mut limited) = (0u64, 0u64);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    let secs = start.elapsed().as_secs_f64();
    let allowed = f64::from(RATE) * secs + f64::from(BURST);
    println!(
        "admitted {ok} of {} in {secs:.2} s; the limit allows {allowed:.0}",
        ok + limited
    );
    assert!(limited > 0, "the flood never reached the limit");
    assert!(
        (ok as f64) <= allowed * 1.02,
        "two replicas admitted {ok}, more than rate x time + burst = {allowed:.0} (+2 %)"
    );
    assert!(
        (ok as f64) >= allowed * 0.9,
        "two replicas admitted only {ok} of the {allowed:.0} allowed"
    );
}
