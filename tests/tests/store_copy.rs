//! End-to-end: `crossflow store copy` moves a federation that served on the
//! embedded SQLite store to PostgreSQL. A gateway serves some traffic
//! (landings, tags and their disclosures, an opt-out, conversions and their
//! updates, daily quota counts, a closed period), stops, and the real binary
//! copies its store into a fresh database; then `ledger fsck` passes on the
//! copy, every checkpoint has the same root on both sides, a period's
//! export is the same bytes from both, and a gateway serving the copy
//! carries on where the SQLite one stopped.
//!
//! Needs a PostgreSQL server (`CROSSFLOW_TEST_POSTGRES_URL`); skipped,
//! with a line saying so, without one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use crossflow_api::clock::{Clock, OffsetClock};
use crossflow_ledger::{
    export::StoreNodes,
    merkle,
    period::{Month, span},
};
use crossflow_proto::v1::{
    ConversionStatus, GetCheckpointRequest, GetReferredUserTagsRequest, OptOutRequest,
    PublishTagsRequest, ReportConversionRequest, Tag, UpdateConversionRequest,
    conversion_service_client::ConversionServiceClient, ledger_service_client::LedgerServiceClient,
    referral_service_client::ReferralServiceClient, tag_service_client::TagServiceClient,
};
use crossflow_settings::Settings;
use crossflow_store::{
    Database, Postgres, Sqlite, ledger, pg_schema,
    sql::{Conn, ConnExt},
};
use crossflow_tests::{
    ALPHA, ALPHA_BETA, BETA, Federation, TestGateway, channel_as, create_req, redeem_req,
    replicas::{database, postgres_store_toml},
    run_cli,
};
use tonic::transport::Channel;

const DAY: i64 = 86_400_000;
/// The federation's time zone (the testbed's `gateway.timezone`).
const TZ: &str = "Asia/Shanghai";
/// Tags live a year (the longest TTL allowed): the tag service purges
/// expired ones by the wall clock, and the traffic is a month back.
const TAG_TTL_SECS: i64 = 365 * 86_400;

/// Every table the copy carries, for the row-count comparison.
const TABLES: &[&str] = &[
    "landings",
    "ledger_entries",
    "ledger_nodes",
    "ledger_checkpoints",
    "ledger_party_blocks",
    "ledger_periods",
    "quota_counters",
    "conversions",
    "conversion_updates",
    "tags",
    "tag_requests",
    "tag_opt_outs",
    "tag_disclosures",
];

fn body() -> String {
    Federation::default()
        .partner(
            ALPHA,
            "[partners.quotas.referrals]\nrate_per_sec = 1000\nburst = 1000\ndaily_cap = 100000",
        )
        .partner(BETA, "")
        .agreement(ALPHA_BETA, ALPHA, BETA, "lock_period_days = 0")
        .flow(
            ALPHA,
            BETA,
            "commission = { default_bps = 500 }\ntag_scopes = [\"room-style\"]",
        )
        .flow(BETA, ALPHA, "commission = { default_bps = 400 }")
        .then(
            r#"
[tags]
max_ttl_secs = 31536000
[[tags.namespaces]]
name = "room-style"
pattern = "[a-z]+"

[ledger]
checkpoint_interval_ms = 50
"#,
        )
        .into()
}

/// mTLS channels of alpha and beta to one gateway.
struct Partners {
    alpha: Channel,
    beta: Channel,
}

impl Partners {
    async fn of(bed: &crossflow_gateway::testbed::Testbed, addr: SocketAddr) -> Partners {
        Partners {
            alpha: channel_as(bed, addr, ALPHA).await,
            beta: channel_as(bed, addr, BETA).await,
        }
    }
}

/// Viewer `i` of alpha (with a room-style tag) lands at beta, which reads
/// the tag, reports an order and confirms even ones; the index of the
/// last ledger entry.
async fn traffic(p: &Partners, clock: &dyn Clock, i: u32) -> u64 {
    let subject = format!("a-user-{i}");
    TagServiceClient::new(p.alpha.clone())
        .publish_tags(PublishTagsRequest {
            subject: subject.clone(),
            tags: vec![Tag {
                namespace: "room-style".into(),
                value: "scandinavian".into(),
                ttl: Some(prost_types::Duration {
                    seconds: TAG_TTL_SECS,
                    nanos: 0,
                }),
            }],
            request_id: format!("tags-{i}"),
        })
        .await
        .unwrap();
    let made = ReferralServiceClient::new(p.alpha.clone())
        .create_referral(create_req(&subject, BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let redeemed = ReferralServiceClient::new(p.beta.clone())
        .redeem_referral(redeem_req(&made.token, &format!("b-user-{i}")))
        .await
        .unwrap()
        .into_inner();
    let read = TagServiceClient::new(p.beta.clone())
        .get_referred_user_tags(GetReferredUserTagsRequest {
            referral_id: redeemed.referral.unwrap().referral_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.tags.len(), 1);
    let mut beta = ConversionServiceClient::new(p.beta.clone());
    let order = format!("order-{i}");
    let reported = beta
        .report_conversion(ReportConversionRequest {
            order_id: order.clone(),
            subject: format!("b-user-{i}"),
            amount_minor: 10_000 + i64::from(i),
            currency: "CNY".into(),
            category: "toys".into(),
            occurred_at: Some(crossflow_tests::timestamp(clock.now_ms())),
            referral_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = reported.entry.unwrap().index;
    if i.is_multiple_of(2) {
        let updated = beta
            .update_conversion(UpdateConversionRequest {
                order_id: order,
                status: ConversionStatus::Confirmed as i32,
                refund_minor: 0,
                request_id: format!("confirm-{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        last = updated.entry.unwrap().index;
    }
    last
}

/// Waits until a checkpoint covers entry `last`.
async fn checkpointed(channel: Channel, last: u64) {
    let mut ledger = LedgerServiceClient::new(channel);
    for _ in 0..400 {
        let c = ledger
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .checkpoint
            .unwrap();
        if c.size > last {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint covered entry {last} in 20 s");
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Row counts of [`TABLES`], every checkpoint and the root the stored
/// tree gives at its size, and the entry count.
type Picture = (Vec<(String, i64)>, Vec<(u64, Vec<u8>, String)>, u64);

fn picture(conn: &dyn Conn) -> Picture {
    let counts = TABLES
        .iter()
        .map(|t| {
            let n = conn
                .query_int(&format!("SELECT COUNT(*) FROM {t}"), &[])
                .unwrap();
            ((*t).to_owned(), n)
        })
        .collect();
    let checkpoints = ledger::checkpoints(conn)
        .unwrap()
        .into_iter()
        .map(|c| {
            let root = merkle::root(c.size, &StoreNodes(conn)).unwrap();
            assert_eq!(root, c.root, "root at size {}", c.size);
            (c.size, root.to_vec(), c.note)
        })
        .collect();
    (counts, checkpoints, ledger::sequenced_size(conn).unwrap())
}

/// The newest calendar month that has ended on the wall clock, and the
/// traffic's time: its 20th, at noon. `ledger close` closes it.
fn last_month() -> (String, i64) {
    let now = crossflow_tests::now_ms();
    let mut m = Month::parse("2026-01").unwrap();
    loop {
        let next = m.next();
        if span(&next.to_string(), TZ).unwrap().end_ms > now {
            let start = span(&m.to_string(), TZ).unwrap().start_ms;
            return (m.to_string(), start + 19 * DAY + DAY / 2);
        }
        m = next;
    }
}

#[tokio::test]
async fn a_federation_moves_from_sqlite_to_postgres() {
    let Some(url) = database("store_copy") else {
        return;
    };
    let (month, at) = last_month();
    let clock = Arc::new(OffsetClock::starting_at(at));
    let mut gw = TestGateway::builder()
        .clock(clock.clone())
        .body(body())
        .start()
        .await;
    let from = gw.bed().config_path();
    let to = gw.dir().join("crossflow-postgres.toml");
    let sqlite_toml = std::fs::read_to_string(&from).unwrap();
    std::fs::write(&to, format!("{sqlite_toml}\n{}", postgres_store_toml(&url))).unwrap();
    let (from_arg, to_arg) = (from.to_str().unwrap(), to.to_str().unwrap());

    let p = Partners::of(gw.bed(), gw.addr()).await;
    let mut last = 0;
    for i in 0..40 {
        last = traffic(&p, clock.as_ref(), i).await;
    }
    TagServiceClient::new(p.alpha.clone())
        .opt_out(OptOutRequest {
            subject: "a-user-39".into(),
        })
        .await
        .unwrap();
    checkpointed(p.alpha.clone(), last).await;

    // Never beside a running gateway.
    let busy = run_cli(&["store", "copy", "--from", from_arg, "--to", to_arg]);
    assert!(!busy.status.success(), "{busy:?}");
    assert!(
        busy.stderr.contains("in use by a running gateway"),
        "{busy:?}"
    );
    drop(p);
    gw.shutdown().await;

    // The month has ended (on the wall clock): close it, and export it.
    let closed = run_cli(&["ledger", "close", "--period", &month, "--config", from_arg]);
    assert!(closed.status.success(), "{closed:?}");
    let exports = tempfile::tempdir().unwrap();
    let export = |config: &str, dir: &str| {
        let out = exports.path().join(dir);
        let args = [
            "ledger", "export", "--period", &month, "--config", config, "--out",
        ];
        let mut args: Vec<&str> = args.to_vec();
        args.push(out.to_str().unwrap());
        let r = run_cli(&args);
        assert!(r.status.success(), "{r:?}");
        files(&out)
    };
    let sqlite_export = export(from_arg, "sqlite");

    let copied = run_cli(&["store", "copy", "--from", from_arg, "--to", to_arg]);
    assert!(copied.status.success(), "{copied:?}");
    println!("{}", copied.stdout);
    assert!(copied.stdout.contains("in one transaction"), "{copied:?}");
    assert!(
        copied.stdout.contains("fsck of the copy: ledger OK"),
        "{copied:?}"
    );
    // The URL is never printed, only its host.
    assert!(!copied.stdout.contains(&url), "{copied:?}");

    let fsck = run_cli(&["ledger", "fsck", "--config", to_arg]);
    assert!(fsck.status.success(), "{fsck:?}");
    assert!(fsck.stdout.starts_with("ledger OK"), "{fsck:?}");
    assert_eq!(export(to_arg, "postgres"), sqlite_export);

    // Every row, and the same root at every checkpoint size on both sides.
    let data_dir = gw.data_dir();
    let lite = Sqlite::open(&data_dir).unwrap();
    let on_lite = lite.read_blocking(|c| Ok(picture(c))).unwrap();
    lite.db().close();
    drop(lite);
    let pg = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Postgres::connect(&url, pg_schema::MIGRATIONS).unwrap()
    })
    .await
    .unwrap();
    let on_pg = pg.read(|c| Ok(picture(c))).await.unwrap();
    assert_eq!(on_pg, on_lite);
    let (counts, checkpoints, entries) = &on_pg;
    assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    assert!(checkpoints.len() > 1 && *entries > 40, "{on_pg:?}");

    // Only into an empty database.
    let again = run_cli(&["store", "copy", "--from", from_arg, "--to", to_arg]);
    assert!(!again.status.success(), "{again:?}");
    assert!(again.stderr.contains("not empty"), "{again:?}");

    // A gateway on the copy carries on: the next entry follows the last
    // copied one, and a new disclosure gets a fresh id.
    let settings = Settings::load(&to).unwrap();
    let running = crossflow_gateway::server::start_with_clock(
        settings,
        Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        clock.clone(),
    )
    .await
    .unwrap();
    clock.jump_to(at + DAY);
    let p = Partners::of(gw.bed(), running.addr).await;
    let next = traffic(&p, clock.as_ref(), 41).await;
    assert!(
        next >= *entries,
        "entry {next} after {entries} copied entries"
    );
    checkpointed(p.alpha.clone(), next).await;
    drop(p);
    running.shutdown().await.unwrap();
    let fsck = run_cli(&["ledger", "fsck", "--config", to_arg]);
    assert!(fsck.status.success(), "{fsck:?}");
    let grown = pg.read(|c| Ok(picture(c))).await.unwrap();
    // What was signed before the copy is still there, unchanged.
    assert_eq!(&grown.1[..checkpoints.len()], &checkpoints[..]);
    pg.close();
}
