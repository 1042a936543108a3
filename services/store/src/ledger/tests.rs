use rusqlite::{Connection, params};

use super::*;
use crate::Sqlite;

fn open() -> (tempfile::TempDir, Sqlite) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    (dir, s)
}

/// Runs `f` in a domain write that then fails, so all it did rolls back.
async fn rolled_back<R>(
    s: &Sqlite,
    f: impl Fn(&Connection) -> Result<R, StoreError> + Send + 'static,
) {
    let failed = s
        .db()
        .write(move |c| {
            f(c)?;
            Err::<(), _>(StoreError::Corrupt("domain check failed".into()))
        })
        .await;
    assert!(failed.is_err());
}

#[tokio::test]
async fn indexes_are_dense_and_a_rollback_frees_its_index() {
    let (_dir, s) = open();
    let a = s
        .db()
        .write(|c| sequence(c, b"first", &["a"], 1))
        .await
        .unwrap();
    assert_eq!(a.index, 0);
    assert_eq!(a.leaf_hash, leaf_hash(b"first"));
    // A domain write that fails after sequencing takes its entry with it.
    rolled_back(&s, |c| sequence(c, b"doomed", &["a"], 2)).await;
    let b = s
        .db()
        .write(|c| sequence(c, b"second", &["b", "a", "b"], 3))
        .await
        .unwrap();
    assert_eq!(b.index, 1);
    let e = s.entry(1).await.unwrap().unwrap();
    assert_eq!((e.bytes.as_slice(), e.recorded_at_ms), (&b"second"[..], 3));
    assert_eq!(s.parties(1).await.unwrap(), vec!["a", "b"]);
    assert_eq!(s.sequenced_size().await.unwrap(), 2);
    assert!(s.entry(2).await.unwrap().is_none());
    assert!(s.parties(2).await.unwrap().is_empty());
    let bad = s.db().write(|c| sequence(c, b"x", &["a,b"], 4)).await;
    assert!(matches!(bad, Err(StoreError::Corrupt(_))), "{bad:?}");
}

#[tokio::test]
async fn the_log_starts_at_zero_even_after_a_rolled_back_first_entry() {
    let (_dir, s) = open();
    rolled_back(&s, |c| {
        let first = sequence(c, b"doomed", &["a"], 1)?;
        assert_eq!(first.index, 0);
        Ok(())
    })
    .await;
    let p = Prepared::new(b"first".to_vec(), &["a", "b"]).unwrap();
    assert_eq!(p.leaf_hash(), leaf_hash(b"first"));
    let seq = s
        .db()
        .write(move |c| Ok((append(c, &p, 2)?, append(c, &p, 3)?)))
        .await
        .unwrap();
    assert_eq!((seq.0.index, seq.1.index), (0, 1));
    assert_eq!(s.sequenced_size().await.unwrap(), 2);
    assert_eq!(s.entry(0).await.unwrap().unwrap().bytes, b"first");
}

#[tokio::test]
async fn the_integrator_gets_appended_leaves_in_memory_but_never_a_rolled_back_one() {
    let (_dir, s) = open();
    s.db()
        .write(|c| sequence(c, b"a", &["x", "y"], 1))
        .await
        .unwrap();
    // A rolled-back append leaves its leaf behind in memory, at index 1.
    rolled_back(&s, |c| sequence(c, b"phantom", &["x"], 2)).await;
    // Served from memory: the stored hash is made wrong behind its back.
    s.db()
        .write(|c| Ok(c.execute("UPDATE ledger_entries SET leaf_hash = zeroblob(32)", [])?))
        .await
        .unwrap();
    let got = s.leaves(0, 10).await.unwrap();
    assert_eq!(
        got,
        vec![Leaf {
            hash: leaf_hash(b"a"),
            parties: ["x".to_owned(), "y".to_owned()].into(),
        }]
    );
    // Index 1 is reused, and the integrator gets the committed entry.
    s.db()
        .write(|c| sequence(c, b"b", &["z"], 3))
        .await
        .unwrap();
    let got = s.leaves(1, 10).await.unwrap();
    assert_eq!(
        got,
        vec![Leaf {
            hash: leaf_hash(b"b"),
            parties: ["z".to_owned()].into(),
        }]
    );
    // Asked again (a failed integration step), it reads the store.
    let again = s.leaves(1, 10).await.unwrap();
    assert_eq!(*again[0].parties, ["z"]);
}

#[tokio::test]
async fn integration_persists_nodes_parties_and_checkpoints() {
    let (_dir, s) = open();
    let n = 3 * CHUNK as u64 + 5;
    s.db()
        .write(move |c| {
            for i in 0..n {
                let who = if i % 2 == 0 { "even" } else { "odd" };
                sequence(c, format!("entry {i}").as_bytes(), &[who, "all"], 0)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let leaves = s.leaves(0, 1000).await.unwrap();
    assert_eq!(leaves.len() as u64, n);
    assert_eq!(*leaves[3].parties, ["all", "odd"]);
    assert_eq!(s.leaves(n - 2, 10).await.unwrap().len(), 2);

    // Every complete subtree of the real tree, as a frontier would emit
    // them (levels that are not kept are dropped by `integrate`), plus a
    // level-0 node that must be skipped too.
    let nodes: Vec<(u8, u64, Hash)> = tree(&leaves.iter().map(|l| l.hash).collect::<Vec<_>>())
        .into_iter()
        .filter(|n| n.0 > 0)
        .chain([(0, 0, [0xee; 32])])
        .collect();
    let parties = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64, l.parties.clone()))
        .collect();
    let checkpoint = StoredCheckpoint {
        size: n,
        root: [9; 32],
        note: "note\n".into(),
        signed_at_ms: 5,
    };
    s.integrate(Integration {
        size: n,
        nodes: nodes.clone(),
        parties,
        checkpoint: Some(checkpoint.clone()),
        epoch: None,
    })
    .await
    .unwrap();
    assert_eq!(s.tree_size().await.unwrap(), n);
    assert_eq!(
        s.latest_checkpoint().await.unwrap(),
        Some(checkpoint.clone())
    );
    assert_eq!(s.checkpoint(n).await.unwrap(), Some(checkpoint.clone()));
    assert_eq!(s.checkpoint(n + 1).await.unwrap(), None);
    assert_eq!(s.checkpoints().await.unwrap(), vec![checkpoint]);

    // Only levels 3, 7, ... are rows; any complete subtree is answered, in
    // the order asked, leaves (level 0) included.
    let stored: i64 = s
        .db()
        .read_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM ledger_nodes", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(stored as u64, (n >> 3) + (n >> 7), "{n} entries");
    let all: Vec<(u8, u64, Hash)> = nodes.iter().filter(|x| x.0 > 0).copied().collect();
    let ids: Vec<(u8, u64)> = all.iter().map(|x| (x.0, x.1)).rev().collect();
    let want: Vec<Hash> = all.iter().map(|x| x.2).rev().collect();
    assert_eq!(s.nodes(ids).await.unwrap(), want);
    let ids = vec![(2, 1), (0, 7), (1, 0), (3, 2 * CHUNK as u64 / 8), (0, 0)];
    let got = s.nodes(ids.clone()).await.unwrap();
    let find = |id: (u8, u64)| all.iter().find(|x| (x.0, x.1) == id).unwrap().2;
    assert_eq!(
        got,
        vec![
            find((2, 1)),
            leaf_hash(b"entry 7"),
            find((1, 0)),
            find((3, 2 * CHUNK as u64 / 8)),
            leaf_hash(b"entry 0"),
        ]
    );
    // Beyond the stored tree (node (7, 1) needs level-3 nodes 16..32; there
    // are n >> 3 = 24) and past 2^63 leaves: corrupt, not a panic.
    for id in [
        (7, 1),
        (8, 0),
        (62, 2),
        (63, 0),
        (5, u64::MAX),
        (2, i64::MAX as u64 / 4),
        (0, i64::MAX as u64 + 1),
    ] {
        let missing = s.nodes(vec![id]).await;
        assert!(
            matches!(missing, Err(StoreError::Corrupt(_))),
            "{id:?}: {missing:?}"
        );
    }
    let odd = s.entries(Some("odd".into()), 0..u64::MAX, 3).await.unwrap();
    let idx: Vec<u64> = odd.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![1, 3, 5]);
    let idx: Vec<u64> = s
        .entries(Some("even".into()), 5..u64::MAX, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(idx, vec![6, 8]);
    assert_eq!(
        s.entries(Some("all".into()), 0..u64::MAX, 1000)
            .await
            .unwrap()
            .len() as u64,
        n
    );
    assert!(
        s.entries(Some("none".into()), 0..u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.entries(None, n - 1..u64::MAX, 10).await.unwrap().len(), 1);
    // The end of the range is exclusive, for a party and for all.
    let below = |party: Option<&str>, range: std::ops::Range<u64>| {
        let s = s.clone();
        let party = party.map(str::to_owned);
        async move {
            s.entries(party, range, 100)
                .await
                .unwrap()
                .iter()
                .map(|e| e.index)
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(below(Some("odd"), 0..5).await, vec![1, 3]);
    assert_eq!(below(Some("odd"), 0..6).await, vec![1, 3, 5]);
    assert_eq!(below(None, 2..5).await, vec![2, 3, 4]);
    assert!(below(Some("all"), 4..4).await.is_empty());
    assert!(below(None, 4..4).await.is_empty());
}

/// Every complete subtree of the tree over `leaves`, as `(level, index,
/// hash)`, computed the slow way.
fn tree(leaves: &[Hash]) -> Vec<(u8, u64, Hash)> {
    let mut out: Vec<(u8, u64, Hash)> = Vec::new();
    let mut row: Vec<Hash> = leaves.to_vec();
    let mut level = 0u8;
    while !row.is_empty() {
        out.extend(row.iter().enumerate().map(|(i, h)| (level, i as u64, *h)));
        row = row
            .chunks_exact(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
        level += 1;
    }
    out
}

#[test]
fn party_blocks_round_trip_and_reject_garbage() {
    for idx in [
        vec![0u64],
        vec![5, 6, 7],
        vec![1, 200, 70_000, 1 << 40, (1 << 40) + 1],
    ] {
        let gaps = encode_gaps(&idx);
        let last = *idx.last().unwrap() as i64;
        assert_eq!(decode_block(idx[0] as i64, last, &gaps).unwrap(), idx);
        // A wrong last index, a truncated varint, a zero gap: all corrupt.
        assert!(decode_block(idx[0] as i64, last + 1, &gaps).is_err());
        let mut cut = gaps.clone();
        cut.push(0x80);
        assert!(decode_block(idx[0] as i64, last, &cut).is_err());
        let mut zero = gaps.clone();
        zero.push(0);
        assert!(decode_block(idx[0] as i64, last, &zero).is_err());
    }
    assert!(decode_block(-1, -1, &[]).is_err());
    assert!(decode_block(0, 0, &[0xff; 11]).is_err());
}

#[tokio::test]
async fn compact_migration_converts_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300u64;
    let hashes: Vec<Hash> = (0..n)
        .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
        .collect();
    let all = tree(&hashes);
    {
        // The schema before 0007: every level >= 1 stored, one party row per
        // (partner, entry).
        let before: Vec<Migration> = crate::MIGRATIONS
            .iter()
            .filter(|m| m.name != MIGRATION_COMPACT.name)
            .copied()
            .collect();
        let db = crate::Db::open(dir.path(), &before).unwrap();
        let old = all.clone();
        db.write(move |c| {
            for i in 0..n {
                let who = if i % 3 == 0 { "three" } else { "other" };
                sequence(c, format!("entry {i}").as_bytes(), &[who, "all"], 0)?;
                c.execute(
                    "INSERT INTO ledger_parties VALUES (?1, ?2)",
                    params![who, i as i64],
                )?;
                c.execute("INSERT INTO ledger_parties VALUES ('all', ?1)", [i as i64])?;
            }
            for (level, idx, hash) in old.iter().filter(|x| x.0 > 0) {
                c.execute(
                    "INSERT INTO ledger_nodes VALUES (?1, ?2, ?3)",
                    params![i64::from(*level), *idx as i64, &hash[..]],
                )?;
            }
            c.execute("UPDATE ledger_tree SET size = ?1", [n as i64])?;
            Ok(())
        })
        .await
        .unwrap();
        db.close();
    }
    let s = Sqlite::open(dir.path()).unwrap();
    let ids: Vec<(u8, u64)> = all.iter().map(|x| (x.0, x.1)).collect();
    let want: Vec<Hash> = all.iter().map(|x| x.2).collect();
    assert_eq!(s.nodes(ids).await.unwrap(), want);
    let stored: i64 = s
        .db()
        .read_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM ledger_nodes", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(stored as u64, (n >> 3) + (n >> 7));
    let three: Vec<u64> = s
        .entries(Some("three".into()), 7..u64::MAX, 5)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(three, vec![9, 12, 15, 18, 21]);
    // A range that ends inside the party's blocks (one index each here).
    let three: Vec<u64> = s
        .entries(Some("three".into()), 7..16, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(three, vec![9, 12, 15]);
    assert_eq!(
        s.entries(Some("all".into()), 0..u64::MAX, 1000)
            .await
            .unwrap()
            .len() as u64,
        n
    );
    // New integrations append blocks beside the converted single-index ones.
    s.db()
        .write(move |c| sequence(c, b"entry 300", &["three"], 0))
        .await
        .unwrap();
    s.integrate(Integration {
        size: n + 1,
        nodes: Vec::new(),
        parties: vec![(n, ["three".to_owned()].into())],
        checkpoint: None,
        epoch: None,
    })
    .await
    .unwrap();
    let last = s
        .entries(Some("three".into()), 298..u64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(last.iter().map(|e| e.index).collect::<Vec<_>>(), vec![n]);
}

#[tokio::test]
async fn only_integration_steps_that_sign_a_checkpoint_wait_for_an_fsync() {
    let (_dir, s) = open();
    s.db()
        .write(|c| sequence(c, b"a", &["x"], 0))
        .await
        .unwrap();
    let before = s.db().stats();
    s.integrate(Integration {
        size: 1,
        nodes: Vec::new(),
        parties: vec![(0, ["x".to_owned()].into())],
        checkpoint: None,
        epoch: None,
    })
    .await
    .unwrap();
    // Visible at once, without an fsync.
    assert_eq!(s.tree_size().await.unwrap(), 1);
    assert_eq!(s.db().stats().syncs, before.syncs);
    s.integrate(Integration {
        size: 1,
        nodes: Vec::new(),
        parties: Vec::new(),
        checkpoint: Some(StoredCheckpoint {
            size: 1,
            root: leaf_hash(b"a"),
            note: "note\n".into(),
            signed_at_ms: 1,
        }),
        epoch: None,
    })
    .await
    .unwrap();
    assert_eq!(s.db().stats().syncs, before.syncs + 1);
}
