use super::*;
use crate::{LandingStore, Sqlite, testing};

/// Runs each case on SQLite and on PostgreSQL (skipped, with a printed
/// line, without a test server).
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                let (_dir, s) = super::open();
                super::$case(s).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(s) = super::testing::postgres(concat!("tags_", stringify!($case))) {
                    super::$case(s).await;
                }
            }
        }
    )*};
}

on_both!(
    upsert_expire_and_purge,
    request_ids_replay_or_refuse,
    opt_out_deletes_and_blocks,
    disclosures_filter,
);

const HOUR: i64 = 3_600_000;

fn tag(ns: &str, v: &str, ttl_ms: i64) -> NewTag {
    NewTag {
        namespace: ns.into(),
        value: v.into(),
        ttl_ms,
    }
}

fn publication(uid: u8, tags: Vec<NewTag>, now_ms: i64) -> Publication {
    Publication {
        owner: "a".into(),
        uid: [uid; 32],
        tags,
        request: None,
        request_ttl_ms: 24 * HOUR,
        now_ms,
    }
}

fn landing(uid: u8) -> Landing {
    Landing {
        referral_id: [uid; 16],
        agreement_id: "ab".into(),
        from: "a".into(),
        to: "b".into(),
        chain: vec!["a".into()],
        hop: 1,
        parent: None,
        target: "room".into(),
        origin: "a".into(),
        origin_uid: [uid; 32],
        dest_uid: [9; 32],
        issued_at_ms: 1,
        expires_at_ms: 2,
        redeemed_at_ms: 3,
        tag_access: true,
    }
}

fn open() -> (tempfile::TempDir, Sqlite) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    (dir, s)
}

async fn upsert_expire_and_purge(s: impl Database) {
    s.redeem(landing(1)).await.unwrap();
    let p = publication(1, vec![tag("x", "1", HOUR), tag("x", "2", 2 * HOUR)], 0);
    let Published::Stored(stored) = s.publish(p).await.unwrap() else {
        panic!("not stored")
    };
    assert_eq!(stored[1].expires_at_ms, 2 * HOUR);
    // Upsert extends the first tag.
    s.publish(publication(1, vec![tag("x", "1", 3 * HOUR)], HOUR / 2))
        .await
        .unwrap();
    let at = |now| {
        let s = s.clone();
        async move {
            let u = s.referred_user([1; 16], now).await.unwrap().unwrap();
            u.tags.into_iter().map(|t| t.value).collect::<Vec<_>>()
        }
    };
    assert_eq!(at(HOUR + 1).await, ["1", "2"]);
    // Expired tags are never returned, even before they are purged.
    assert_eq!(at(2 * HOUR).await, ["1"]);
    assert_eq!(at(4 * HOUR).await, Vec::<String>::new());
    assert_eq!(s.purge_expired(2 * HOUR).await.unwrap(), 1);
    assert_eq!(s.purge_expired(2 * HOUR).await.unwrap(), 0);
    // Purge on write: another user's publication sweeps expired rows.
    s.publish(publication(2, vec![tag("x", "1", HOUR)], 5 * HOUR))
        .await
        .unwrap();
    assert_eq!(s.purge_expired(5 * HOUR).await.unwrap(), 0);
    assert!(s.referred_user([7; 16], 0).await.unwrap().is_none());
}

async fn request_ids_replay_or_refuse(s: impl Database) {
    let mut p = publication(1, vec![tag("x", "1", HOUR)], 0);
    p.request = Some(("r1".into(), [1; 32]));
    let first = s.publish(p.clone()).await.unwrap();
    p.now_ms = 10;
    // The retry answers the first expiry.
    assert_eq!(s.publish(p.clone()).await.unwrap(), first);
    p.request = Some(("r1".into(), [2; 32]));
    assert_eq!(s.publish(p).await.unwrap(), Published::RequestReused);
}

async fn opt_out_deletes_and_blocks(s: impl Database) {
    s.redeem(landing(1)).await.unwrap();
    s.publish(publication(
        1,
        vec![tag("x", "1", HOUR), tag("y", "2", HOUR)],
        0,
    ))
    .await
    .unwrap();
    s.publish(publication(2, vec![tag("x", "1", HOUR)], 0))
        .await
        .unwrap();
    let o = s.opt_out("a".into(), [1; 32], 5).await.unwrap();
    assert_eq!((o.tags_removed, o.newly_opted_out), (2, true));
    let o = s.opt_out("a".into(), [1; 32], 6).await.unwrap();
    assert_eq!((o.tags_removed, o.newly_opted_out), (0, false));
    assert!(TagStore::opted_out(&s, [1; 32]).await.unwrap());
    assert!(!OptOutLookup::opted_out(&s, [2; 32]).await.unwrap());
    let u = s.referred_user([1; 16], 1).await.unwrap().unwrap();
    assert!(u.opted_out && u.tags.is_empty());
    assert_eq!(
        s.publish(publication(1, vec![tag("x", "1", HOUR)], 7))
            .await
            .unwrap(),
        Published::OptedOut
    );
}

fn disclosure(at: i64, reader: &str, uid: u8) -> Disclosure {
    Disclosure {
        disclosed_at_ms: at,
        owner: "a".into(),
        reader: reader.into(),
        uid: [uid; 32],
        agreement_id: "ab".into(),
        referral_id: [uid; 16],
        namespaces: vec!["iab-audience".into(), "life-stage".into()],
        tag_count: 3,
        pseudonym_epoch: 1,
    }
}

fn query(reader: Option<&str>, uid: Option<u8>, since_ms: i64) -> DisclosureQuery {
    DisclosureQuery {
        owner: "a".into(),
        reader: reader.map(str::to_owned),
        uid: uid.map(|u| [u; 32]),
        since_ms,
    }
}

async fn disclosures_filter(s: impl Database) {
    let (d, q) = (disclosure, query);
    for x in [d(10, "b", 1), d(20, "c", 1), d(30, "b", 2)] {
        s.record_disclosure(x).await.unwrap();
    }
    let all = s.disclosures(q(None, None, 0)).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], d(10, "b", 1));
    let ats = |v: Vec<Disclosure>| v.iter().map(|d| d.disclosed_at_ms).collect::<Vec<_>>();
    assert_eq!(
        ats(s.disclosures(q(Some("b"), None, 0)).await.unwrap()),
        [10, 30]
    );
    assert_eq!(
        ats(s.disclosures(q(None, Some(1), 15)).await.unwrap()),
        [20]
    );
    let other_owner = DisclosureQuery {
        owner: "b".into(),
        ..q(None, None, 0)
    };
    assert!(s.disclosures(other_owner).await.unwrap().is_empty());
}

#[tokio::test]
async fn disclosures_read_without_the_lock() {
    let (dir, s) = open();
    let (d, q) = (disclosure, query);
    for x in [d(10, "b", 1), d(20, "c", 1), d(30, "b", 2)] {
        s.record_disclosure(x).await.unwrap();
    }
    let ats = |v: Vec<Disclosure>| v.iter().map(|d| d.disclosed_at_ms).collect::<Vec<_>>();
    // While the store is open (and locked) by this handle.
    assert_eq!(
        ats(read_disclosures(dir.path(), &q(None, None, 0)).unwrap()),
        [10, 20, 30]
    );
    assert!(read_disclosures(&dir.path().join("nope"), &q(None, None, 0)).is_err());
}
