use super::*;

fn open() -> (tempfile::TempDir, Sqlite) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    (dir, s)
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
    let failed = s
        .db()
        .write(|c| {
            sequence(c, b"doomed", &["a"], 2)?;
            Err::<(), _>(StoreError::Corrupt("domain check failed".into()))
        })
        .await;
    assert!(failed.is_err());
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
    assert_eq!(leaves[3].parties, vec!["all", "odd"]);
    assert_eq!(s.leaves(n - 2, 10).await.unwrap().len(), 2);

    // Nodes as a frontier would emit them (values are arbitrary here): more
    // than a full multi-row chunk, plus a remainder, plus a level-0 node
    // that must be skipped.
    let nodes: Vec<(u8, u64, Hash)> = (0..2 * CHUNK as u64 + 3)
        .map(|i| (1 + (i % 3) as u8, i, [i as u8; 32]))
        .chain([(0, 0, [0xee; 32])])
        .collect();
    let parties = leaves
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.parties.iter().map(move |p| (p.clone(), i as u64)))
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

    // One query answers a mix of leaves (level 0, from the entries) and
    // stored nodes, in the order asked.
    let ids = vec![(2, 1), (0, 7), (1, 0), (3, 2 * CHUNK as u64), (0, 0)];
    let got = s.nodes(ids).await.unwrap();
    assert_eq!(
        got,
        vec![
            [1; 32],
            leaf_hash(b"entry 7"),
            [0; 32],
            [(2 * CHUNK) as u8; 32],
            leaf_hash(b"entry 0"),
        ]
    );
    let missing = s.nodes(vec![(5, 0)]).await;
    assert!(
        matches!(missing, Err(StoreError::Corrupt(_))),
        "{missing:?}"
    );

    let odd = s.entries(Some("odd".into()), 0, 3).await.unwrap();
    let idx: Vec<u64> = odd.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![1, 3, 5]);
    let idx: Vec<u64> = s
        .entries(Some("even".into()), 5, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(idx, vec![6, 8]);
    assert_eq!(
        s.entries(Some("all".into()), 0, 1000).await.unwrap().len() as u64,
        n
    );
    assert!(
        s.entries(Some("none".into()), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.entries(None, n - 1, 10).await.unwrap().len(), 1);
}
