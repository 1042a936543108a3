//! The PostgreSQL backend against a real server (see `testing`): the same
//! cases as on SQLite, and what only several replicas can do to each other.

use std::{collections::BTreeSet, sync::Arc};

use crate::{
    Database, LandingStore, Postgres, Redeemed, Sqlite, StoreError,
    leader::Candidate,
    ledger::{self, Integration, LedgerStore, StoredCheckpoint, sequence},
    pg_schema, testing,
    tests::landing,
};

/// A second replica on the same database as `name`'s.
fn replica(name: &str) -> Postgres {
    let url = testing::with_database(
        &testing::postgres_admin_url(name).unwrap(),
        &format!("crossflow_test_{name}"),
    );
    Postgres::connect(&url, pg_schema::MIGRATIONS).unwrap()
}

async fn redeem_once_then_existing(s: impl Database) {
    let mut l = landing(1, 9);
    // Every column round trips: a two-hop chain with its parent.
    l.chain = vec!["a".into(), "x".into()];
    l.hop = 2;
    l.parent = Some([4; 16]);
    assert_eq!(s.redeem(l.clone()).await.unwrap(), Redeemed::New(l.clone()));
    assert_eq!(
        s.redeem(landing(1, 8)).await.unwrap(),
        Redeemed::Existing(l.clone())
    );
    assert_eq!(s.landing([1; 16]).await.unwrap(), Some(l));
    assert_eq!(s.landing([2; 16]).await.unwrap(), None);
}

#[tokio::test]
async fn landings_round_trip_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    redeem_once_then_existing(Sqlite::open(dir.path()).unwrap()).await;
    let Some(pg) = testing::postgres("landings_round_trip") else {
        return;
    };
    redeem_once_then_existing(pg).await;
}

async fn entries_and_checkpoints(s: impl Database) {
    for i in 0..5u8 {
        let seq = s
            .write(move |c| sequence(c, &[b'e', i], &["p", "q"], i64::from(i)))
            .await
            .unwrap();
        assert_eq!(seq.index, u64::from(i));
    }
    assert_eq!(s.sequenced_size().await.unwrap(), 5);
    let leaves = s.leaves(0, 10).await.unwrap();
    assert_eq!(leaves.len(), 5);
    assert_eq!(leaves[3].hash, ledger::leaf_hash(&[b'e', 3]));
    let cp = StoredCheckpoint {
        size: 5,
        root: [1; 32],
        note: "n\n".into(),
        signed_at_ms: 9,
    };
    s.integrate(Integration {
        size: 5,
        nodes: Vec::new(),
        parties: leaves
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64, l.parties.clone()))
            .collect(),
        checkpoint: Some(cp.clone()),
        epoch: None,
    })
    .await
    .unwrap();
    assert_eq!(s.latest_checkpoint().await.unwrap(), Some(cp));
    let page = s.entries(Some("q".into()), 1..4, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(page[0].bytes, b"e\x01");
    // A step computed from a tree that has moved on is refused.
    let stale = s
        .integrate(Integration {
            size: 5,
            nodes: Vec::new(),
            parties: vec![(4, leaves[4].parties.clone())],
            checkpoint: None,
            epoch: None,
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Corrupt(_))), "{stale:?}");
}

#[tokio::test]
async fn the_ledger_round_trips_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    entries_and_checkpoints(Sqlite::open(dir.path()).unwrap()).await;
    let Some(pg) = testing::postgres("ledger_round_trip") else {
        return;
    };
    entries_and_checkpoints(pg).await;
}

#[tokio::test]
async fn a_referral_redeemed_at_two_replicas_at_once_lands_once() {
    let Some(a) = testing::postgres("redeem_race") else {
        return;
    };
    let b = replica("redeem_race");
    for round in 0..20u8 {
        let (x, y) = (landing(round, 1), landing(round, 2));
        let (ra, rb) = tokio::join!(a.redeem(x.clone()), b.redeem(y.clone()));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winner = match (&ra, &rb) {
            (Redeemed::New(w), Redeemed::Existing(e))
            | (Redeemed::Existing(e), Redeemed::New(w)) => {
                assert_eq!(w, e, "round {round}: the loser sees the winner's landing");
                w.clone()
            }
            other => panic!("round {round}: want one New and one Existing, got {other:?}"),
        };
        assert!(winner == x || winner == y);
        assert_eq!(b.landing([round; 16]).await.unwrap(), Some(winner));
    }
}

#[tokio::test]
async fn appends_from_two_replicas_get_gapless_indexes() {
    let Some(a) = testing::postgres("append_race") else {
        return;
    };
    let b = replica("append_race");
    let mut tasks = Vec::new();
    for (r, db) in [a.clone(), b.clone()].into_iter().enumerate() {
        for i in 0..100u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("replica {r} entry {i}");
                db.write(move |c| sequence(c, body.as_bytes(), &["p"], 0))
                    .await
                    .unwrap()
                    .index
            }));
        }
    }
    let mut indexes = BTreeSet::new();
    for t in tasks {
        assert!(indexes.insert(t.await.unwrap()), "an index was given twice");
    }
    assert_eq!(indexes, (0..200).collect::<BTreeSet<u64>>());
    assert_eq!(b.sequenced_size().await.unwrap(), 200);
    // Every index holds the entry whose hash the writer returned.
    let leaves = a.leaves(0, 500).await.unwrap();
    assert_eq!(leaves.len(), 200);
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = testing::fresh_database("migrate_race") else {
        return;
    };
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Postgres::connect(&url, pg_schema::MIGRATIONS))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let p = Postgres::connect(&url, pg_schema::MIGRATIONS).unwrap();
    let applied = Database::read(&p, |c| {
        crate::sql::ConnExt::query_int(c, "SELECT COUNT(*) FROM schema_migrations", &[])
    })
    .await
    .unwrap();
    assert_eq!(applied, pg_schema::MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn one_replica_leads_and_a_deposed_leader_cannot_write() {
    let Some(a) = testing::postgres("leader") else {
        return;
    };
    let b = replica("leader");
    let mut ca = Candidate::new(a.clone(), "a");
    let mut cb = Candidate::new(b.clone(), "b");
    let lease_a = crate::pg::off_runtime(|| ca.try_lead(1))
        .unwrap()
        .expect("the first candidate leads");
    assert!(
        crate::pg::off_runtime(|| cb.try_lead(2)).unwrap().is_none(),
        "one leader at a time"
    );
    let (lease_a, held) = crate::pg::off_runtime(move || {
        let held = lease_a.still_held();
        (lease_a, held)
    });
    assert!(held);
    let step = |epoch| Integration {
        size: 0,
        nodes: Vec::new(),
        parties: Vec::new(),
        checkpoint: None,
        epoch: Some(epoch),
    };
    a.integrate(step(lease_a.epoch())).await.unwrap();
    // The leader's session ends (as when its process dies): b takes over.
    let old = lease_a.epoch();
    drop(lease_a);
    // The session closes on a thread of its own: b may have to ask again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lease_b = loop {
        if let Some(l) = crate::pg::off_runtime(|| cb.try_lead(3)).unwrap() {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(lease_b.epoch() > old);
    let fenced = a.integrate(step(old)).await;
    assert!(
        matches!(fenced, Err(StoreError::Fenced { epoch, current }) if epoch == old && current == lease_b.epoch()),
        "{fenced:?}"
    );
    b.integrate(step(lease_b.epoch())).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_names_only_the_host() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://crossflow:s3cret@127.0.0.1:{port}/db");
    let err = Postgres::connect(&url, pg_schema::MIGRATIONS).unwrap_err();
    let text = err.to_string();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_write_after_the_server_went_away_is_unavailable_then_recovers() {
    let Some(a) = testing::postgres("server_gone") else {
        return;
    };
    a.redeem(landing(1, 1)).await.unwrap();
    // Ends every session of this database but the killer's own, the
    // writer's included, as a server restart would.
    let admin = testing::postgres_admin_url("server_gone").unwrap();
    crate::pg::off_runtime(|| {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'crossflow_test_server_gone' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    });
    let first = a.redeem(landing(2, 1)).await;
    assert!(
        matches!(&first, Err(e) if e.is_unavailable()),
        "the batch on the dead session fails as unavailable: {first:?}"
    );
    // The writer reconnects for the next batch; nothing was half-written.
    let again = a.redeem(landing(2, 1)).await.unwrap();
    assert_eq!(again, Redeemed::New(landing(2, 1)));
    let arc = Arc::new(a);
    assert_eq!(arc.landing([1; 16]).await.unwrap(), Some(landing(1, 1)));
}

async fn counters_add_up(s: impl Database) {
    use crate::QuotaCounterStore;
    s.add_counters("2026-01-01", vec![("a".into(), 5)], "2025-12-01")
        .await
        .unwrap();
    s.add_counters(
        "2026-01-02",
        vec![("a".into(), 2), ("b".into(), 1)],
        "2025-12-01",
    )
    .await
    .unwrap();
    s.add_counters("2026-01-02", vec![("a".into(), 3)], "2026-01-02")
        .await
        .unwrap();
    assert_eq!(
        s.day_counters("2026-01-02").await.unwrap(),
        vec![("a".to_owned(), 5), ("b".to_owned(), 1)]
    );
    assert!(s.day_counters("2026-01-01").await.unwrap().is_empty());
}

#[tokio::test]
async fn quota_counters_add_up_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    counters_add_up(Sqlite::open(dir.path()).unwrap()).await;
    let Some(pg) = testing::postgres("quota_counters") else {
        return;
    };
    counters_add_up(pg).await;
}

async fn periods_round_trip(s: impl Database) {
    use crate::periods::{self, PeriodClose};
    let close = |p: &str, prev: u64, size: u64| PeriodClose {
        period: p.into(),
        anchor_size: size,
        previous_anchor_size: prev,
        timezone: "Asia/Shanghai".into(),
        closed_at_ms: 7,
    };
    let (a, b) = (close("2026-10", 0, 5), close("2026-11", 5, 9));
    let (a2, b2) = (a.clone(), b.clone());
    s.write(move |c| periods::insert(c, &a2).and_then(|()| periods::insert(c, &b2)))
        .await
        .unwrap();
    let again = b.clone();
    assert!(s.write(move |c| periods::insert(c, &again)).await.is_err());
    assert_eq!(s.read(|c| periods::latest(c)).await.unwrap(), Some(b));
    assert_eq!(
        s.read(|c| periods::period(c, "2026-10")).await.unwrap(),
        Some(a)
    );
    assert_eq!(s.read(|c| periods::all(c)).await.unwrap().len(), 2);
}

#[tokio::test]
async fn period_closes_round_trip_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    periods_round_trip(Sqlite::open(dir.path()).unwrap()).await;
    let Some(pg) = testing::postgres("periods") else {
        return;
    };
    periods_round_trip(pg).await;
}
