use std::time::Duration;

use crossflow_store::{Sqlite, ledger::sequence};

use super::*;
use crate::{fsck::fsck, merkle::leaf_hash, receipt::verify_receipt};

const ORIGIN: &str = "crossflow.test/ledger";
const NEVER: Duration = Duration::from_secs(3600);

fn signer() -> Signer {
    Signer::from_seed("crossflow-ledger", &[7; 32]).unwrap()
}

fn entry_bytes(i: u64) -> Vec<u8> {
    format!(r#"{{"salt":"{i:016x}","kind":"test","i":{i}}}"#).into_bytes()
}

/// Sequences entries `from..to`; even ones have party a, odd ones b, and
/// every third also c.
async fn append(s: &Sqlite, from: u64, to: u64) {
    s.db()
        .write(move |c| {
            for i in from..to {
                let mut parties = vec![if i % 2 == 0 { "a" } else { "b" }];
                if i % 3 == 0 {
                    parties.push("c");
                }
                let seq = sequence(c, &entry_bytes(i), &parties, 1_000 + i as i64)?;
                assert_eq!(seq.index, i);
                assert_eq!(seq.leaf_hash, leaf_hash(&entry_bytes(i)));
            }
            Ok(())
        })
        .await
        .unwrap();
}

/// The frontier of entries `0..n` computed from their bytes alone.
fn recomputed(n: u64) -> Frontier {
    let mut f = Frontier::new();
    for i in 0..n {
        f.append(leaf_hash(&entry_bytes(i)));
    }
    f
}

/// The store in `dir` and its integrator, as the gateway opens them.
async fn open_log(dir: &std::path::Path) -> (Sqlite, Integrator<Sqlite>) {
    let s = Sqlite::open(dir).unwrap();
    let integ = Integrator::open(s.clone(), signer(), ORIGIN.into())
        .await
        .unwrap();
    (s, integ)
}

async fn drain(i: &mut Integrator<Sqlite>, interval: Duration) {
    while i.step(interval).await.unwrap() > 0 {}
}

#[tokio::test]
async fn tree_after_reopen_equals_tree_from_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    // The empty log already has a signed checkpoint.
    assert_eq!(integ.ledger().checkpoint().unwrap().size, 0);

    let mut sizes = Vec::new();
    for (from, to) in [(0, 1), (1, 2), (2, 7), (7, 1000), (1000, 20_000)] {
        append(&s, from, to).await;
        drain(&mut integ, Duration::ZERO).await;
        sizes.push(to);
    }
    assert_eq!(integ.size(), 20_000);
    assert_eq!(integ.root(), recomputed(20_000).root());
    drop(integ);
    s.db().close();
    drop(s);

    let (s, mut integ) = open_log(dir.path()).await;
    assert_eq!(integ.size(), 20_000);
    assert_eq!(integ.root(), recomputed(20_000).root());
    append(&s, 20_000, 20_003).await;
    drain(&mut integ, Duration::ZERO).await;
    sizes.push(20_003);
    assert_eq!(integ.root(), recomputed(20_003).root());

    // Every signed checkpoint is kept, and each is consistent with the next.
    let stored = s.checkpoints().await.unwrap();
    let got: Vec<u64> = stored.iter().map(|c| c.size).collect();
    // With a zero interval every step signs: each append, and each full
    // integration batch of the large one.
    let mut want = vec![0];
    want.extend(&sizes);
    want.insert(5, 1000 + INTEGRATION_BATCH as u64);
    assert_eq!(got, want);
    let ledger = integ.ledger();
    let verifier = signer().verifier();
    for pair in stored.windows(2).skip(1) {
        let (old, new) = (&pair[0], &pair[1]);
        verifier.verify_note(&new.note).unwrap();
        let c = ledger.consistency(old.size, new.size).await.unwrap();
        merkle::verify_consistency(old.size, new.size, &c.proof, &old.root, &new.root).unwrap();
        assert_eq!(c.from.unwrap().note, old.note);
    }

    let report = s
        .db()
        .read_blocking(|c| fsck(c, Some(&verifier), Some(ORIGIN)))
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.entries, 20_003);
    assert_eq!(report.checkpoints_checked, 8);
    // Stored rows (levels 3, 7, 11) plus the right edge read through
    // `ledger::nodes`; every (partner, entry) pair of the party index.
    let rows: u64 = [3, 7, 11].iter().map(|l| 20_003u64 >> l).sum();
    assert_eq!(report.nodes_checked, rows + 20_003u64.count_ones() as u64);
    assert_eq!(report.parties_checked, 20_003 + 20_003u64.div_ceil(3));
}

/// Steps that sign no checkpoint are not fsynced; a power loss can take
/// them (whole, and everything after them). What it leaves behind is
/// recovered from the entries.
#[tokio::test]
async fn steps_lost_after_the_last_checkpoint_are_redone_from_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 100).await;
    drain(&mut integ, Duration::ZERO).await;
    append(&s, 100, 300).await;
    drain(&mut integ, NEVER).await;
    assert_eq!(integ.size(), 300);
    assert_eq!(integ.ledger().checkpoint().unwrap().size, 100);
    drop(integ);
    // The state a loss of the unsynced steps leaves: their nodes, party
    // blocks and tree size gone, the entries and the checkpoint kept.
    s.db()
        .write(|c| {
            c.execute_batch(
                "DELETE FROM ledger_nodes WHERE ((idx + 1) << level) > 100;
                 DELETE FROM ledger_party_blocks WHERE first_idx >= 100;
                 UPDATE ledger_tree SET size = 100 WHERE id = 0;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    s.db().close();
    drop(s);

    let (s, mut integ) = open_log(dir.path()).await;
    assert_eq!(integ.size(), 100);
    drain(&mut integ, Duration::ZERO).await;
    assert_eq!(integ.size(), 300);
    assert_eq!(integ.root(), recomputed(300).root());
    let verifier = signer().verifier();
    let report = s
        .db()
        .read_blocking(|c| fsck(c, Some(&verifier), Some(ORIGIN)))
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.parties_checked, 300 + 300u64.div_ceil(3));
}

#[tokio::test]
async fn receipts_verify_for_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 37).await;
    drain(&mut integ, Duration::ZERO).await;
    let ledger = integ.ledger();
    let op = Caller::Operator("ops".into());
    let verifier = signer().verifier();
    for i in 0..37 {
        let r = ledger.receipt(&op, i, Duration::ZERO).await.unwrap();
        assert_eq!(r.entry.bytes, entry_bytes(i));
        let c = verify_receipt(&r.text, &entry_bytes(i), &verifier, ORIGIN).unwrap();
        assert_eq!(c.size, 37);
        // The receipt does not prove a different entry.
        assert!(verify_receipt(&r.text, &entry_bytes(i + 1), &verifier, ORIGIN).is_err());
    }
}

#[tokio::test]
async fn checkpoints_follow_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    let ledger = integ.ledger();
    // Nothing new: no checkpoint, however small the interval.
    assert_eq!(integ.step(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(s.checkpoints().await.unwrap().len(), 1);
    // Opening signed the empty tree, so growth waits for the interval...
    append(&s, 0, 5).await;
    assert_eq!(integ.step(NEVER).await.unwrap(), 5);
    assert_eq!(ledger.checkpoint().unwrap().size, 0);
    assert_eq!(integ.step(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(ledger.checkpoint().unwrap().size, 5);
    // ...and is integrated meanwhile.
    append(&s, 5, 9).await;
    assert_eq!(integ.step(NEVER).await.unwrap(), 4);
    assert_eq!(integ.size(), 9);
    assert_eq!(ledger.checkpoint().unwrap().size, 5);
    let pending = ledger
        .receipt(&Caller::Partner("a".into()), 6, Duration::from_millis(20))
        .await;
    assert!(
        matches!(
            pending,
            Err(LedgerError::NotYetCheckpointed { index: 6, .. })
        ),
        "{pending:?}"
    );
    // Once due, a step with no new entries still signs the grown tree.
    assert_eq!(integ.step(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(ledger.checkpoint().unwrap().size, 9);
    assert_eq!(s.checkpoints().await.unwrap().len(), 3);
}

#[tokio::test]
async fn listing_stops_at_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    let ledger = integ.ledger();
    let (a, ops) = (Caller::Partner("a".into()), Caller::Operator("ops".into()));
    let listed = |caller: &Caller| {
        let (ledger, caller) = (ledger.clone(), caller.clone());
        async move {
            let page = ledger.list(&caller, 0, 0).await.unwrap();
            let idx: Vec<u64> = page.entries.iter().map(|e| e.index).collect();
            (idx, page.next)
        }
    };
    // Sequenced and integrated, but only the empty tree is signed.
    append(&s, 0, 5).await;
    assert_eq!(integ.step(NEVER).await.unwrap(), 5);
    assert_eq!(listed(&ops).await, (vec![], None));
    assert_eq!(listed(&a).await, (vec![], None));
    assert_eq!(integ.step(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(listed(&ops).await, (vec![0, 1, 2, 3, 4], None));
    assert_eq!(listed(&a).await, (vec![0, 2, 4], None));
    // Newer entries wait for the checkpoint that covers them.
    append(&s, 5, 9).await;
    assert_eq!(integ.step(NEVER).await.unwrap(), 4);
    assert_eq!(listed(&ops).await.0.len(), 5);
    assert_eq!(listed(&a).await, (vec![0, 2, 4], None));
    let page = ledger.list(&a, 5, 0).await.unwrap();
    assert!(page.entries.is_empty() && page.next.is_none(), "{page:?}");
    assert_eq!(integ.step(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(listed(&a).await, (vec![0, 2, 4, 6, 8], None));
    // Every listed entry has a receipt at once.
    for e in ledger.list(&ops, 0, 0).await.unwrap().entries {
        let r = ledger.receipt(&ops, e.index, Duration::ZERO).await.unwrap();
        verify_receipt(&r.text, &e.bytes, &signer().verifier(), ORIGIN).unwrap();
    }
}

#[tokio::test]
async fn receipt_waits_for_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (s, integ) = open_log(dir.path()).await;
    let ledger = integ.ledger();
    let handle = integ.spawn(|| Duration::from_millis(20));
    append(&s, 0, 3).await;
    let r = ledger
        .receipt(&Caller::Partner("b".into()), 1, Duration::from_secs(5))
        .await
        .unwrap();
    verify_receipt(&r.text, &entry_bytes(1), &signer().verifier(), ORIGIN).unwrap();
    handle.stop().await;
}

#[tokio::test]
async fn parties_see_only_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 10).await;
    drain(&mut integ, Duration::ZERO).await;
    let ledger = integ.ledger();
    let (a, c) = (Caller::Partner("a".into()), Caller::Partner("c".into()));

    let page = ledger.list(&a, 0, 3).await.unwrap();
    let idx: Vec<u64> = page.entries.iter().map(|e| e.index).collect();
    assert_eq!((idx, page.next), (vec![0, 2, 4], Some(5)));
    let page = ledger.list(&a, 5, 3).await.unwrap();
    let idx: Vec<u64> = page.entries.iter().map(|e| e.index).collect();
    assert_eq!((idx, page.next), (vec![6, 8], None));
    let idx: Vec<u64> = ledger
        .list(&c, 0, 0)
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(idx, vec![0, 3, 6, 9]);
    let all = ledger
        .list(&Caller::Operator("ops".into()), 0, 0)
        .await
        .unwrap();
    assert_eq!(all.entries.len(), 10);
    assert_eq!(all.entries[7].bytes, entry_bytes(7));
    let nobody = ledger
        .list(&Caller::Partner("z".into()), 0, 0)
        .await
        .unwrap();
    assert!(nobody.entries.is_empty());

    assert!(ledger.receipt(&c, 3, Duration::ZERO).await.is_ok());
    let denied = ledger.receipt(&c, 1, Duration::ZERO).await;
    assert!(
        matches!(denied, Err(LedgerError::NotParty(1))),
        "{denied:?}"
    );
    let missing = ledger.receipt(&a, 10, Duration::ZERO).await;
    assert!(
        matches!(missing, Err(LedgerError::NoSuchEntry(10))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 4).await;
    drain(&mut integ, Duration::ZERO).await;
    let ledger = integ.ledger();
    let a = Caller::Partner("a".into());
    let field = |e: LedgerError| match e {
        LedgerError::InvalidField { field, .. } => field,
        LedgerError::NoSuchCheckpoint { field, .. } => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(ledger.list(&a, 0, 1001).await.unwrap_err()),
        "page_size"
    );
    assert_eq!(
        field(ledger.list(&a, u64::MAX, 1).await.unwrap_err()),
        "since_index"
    );
    assert_eq!(
        field(ledger.consistency(0, 4).await.unwrap_err()),
        "from_size"
    );
    assert_eq!(
        field(ledger.consistency(5, 0).await.unwrap_err()),
        "from_size"
    );
    assert_eq!(
        field(ledger.consistency(1, 3).await.unwrap_err()),
        "to_size"
    );
    assert_eq!(
        field(
            ledger
                .receipt(&a, u64::MAX, Duration::ZERO)
                .await
                .unwrap_err()
        ),
        "index"
    );
    assert!(matches!(
        ledger.resolve(&a, "order-1").await,
        Err(LedgerError::OrderLookupUnavailable)
    ));
    let p = LedgerError::OrderLookupUnavailable.problem();
    assert_eq!(p.kind, Kind::FailedPrecondition);
}

#[tokio::test]
async fn refuses_to_sign_over_a_tampered_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 8).await;
    drain(&mut integ, Duration::ZERO).await;
    drop(integ);
    s.db()
        .write(|c| {
            c.execute(
                "UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 3 AND idx = 0",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let verifier = signer().verifier();
    let report = s
        .db()
        .read_blocking(|c| fsck(c, Some(&verifier), Some(ORIGIN)))
        .unwrap();
    assert!(!report.ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("level 3, index 0")),
        "{report:?}"
    );

    let reopened = Integrator::open(s.clone(), signer(), ORIGIN.into()).await;
    assert!(
        matches!(reopened, Err(LedgerError::Inconsistent { size: 8, .. })),
        "{reopened:?}"
    );
    // Another key's checkpoints are not ours to extend either.
    let other = Signer::from_seed("crossflow-ledger", &[8; 32]).unwrap();
    assert!(
        Integrator::open(s.clone(), other, ORIGIN.into())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn fsck_finds_rewritten_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 5).await;
    drain(&mut integ, Duration::ZERO).await;
    s.db()
        .write(|c| {
            c.execute(
                "UPDATE ledger_entries SET bytes = x'7b7d' WHERE idx = 2",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let report = s.db().read_blocking(|c| fsck(c, None, None)).unwrap();
    assert!(!report.ok());
    assert!(report.problems[0].contains("entry 2"), "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("checkpoint of size 5")),
        "{report:?}"
    );
}

#[tokio::test]
async fn fsck_checks_the_party_index() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut integ) = open_log(dir.path()).await;
    append(&s, 0, 10).await;
    drain(&mut integ, Duration::ZERO).await;
    append(&s, 10, 20).await;
    drain(&mut integ, Duration::ZERO).await;
    drop(integ);
    let check = || s.db().read_blocking(|c| fsck(c, None, None)).unwrap();
    let clean = check();
    assert!(clean.ok(), "{clean:?}");
    // a: even entries, b: odd, c: multiples of 3.
    assert_eq!(clean.parties_checked, 20 + 7);
    // Drop c's second block (entries 12, 15, 18) and garble a's first.
    s.db()
        .write(|c| {
            c.execute(
                "DELETE FROM ledger_party_blocks WHERE partner = 'c' AND first_idx = 12",
                [],
            )?;
            c.execute(
                "UPDATE ledger_party_blocks SET gaps = x'0280' WHERE partner = 'a' AND first_idx = 0",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let report = check();
    assert!(!report.ok());
    let text = report.problems.join("\n");
    assert!(
        text.contains("entry 12: the party index lists [\"a\"], the entry names [\"a\", \"c\"]"),
        "{text}"
    );
    assert!(text.contains("party index of \"a\""), "{text}");
    assert!(
        text.contains("entry 0: the party index lists [\"c\"], the entry names [\"a\", \"c\"]"),
        "{text}"
    );
}
