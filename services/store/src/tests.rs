use rusqlite::Connection;

use super::*;
use crate::sql::{blob, opt_blob};

pub(crate) fn landing(id: u8, dest: u8) -> Landing {
    Landing {
        referral_id: [id; 16],
        agreement_id: "ab".into(),
        from: "a".into(),
        to: "b".into(),
        chain: vec!["a".into()],
        hop: 1,
        parent: None,
        target: "room-1".into(),
        origin: "a".into(),
        origin_uid: [7; 32],
        dest_uid: [dest; 32],
        issued_at_ms: 1,
        expires_at_ms: 2,
        redeemed_at_ms: 3,
        tag_access: true,
    }
}

#[tokio::test]
async fn redeem_once_then_existing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    let l = landing(1, 9);
    assert_eq!(s.redeem(l.clone()).await.unwrap(), Redeemed::New(l.clone()));
    let other = landing(1, 8);
    assert_eq!(
        s.redeem(other).await.unwrap(),
        Redeemed::Existing(l.clone())
    );
    assert_eq!(s.landing([1; 16]).await.unwrap(), Some(l));
    assert_eq!(s.landing([2; 16]).await.unwrap(), None);
}

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = landing(3, 4);
    l.chain = vec!["a".into(), "b".into()];
    l.parent = Some([5; 16]);
    {
        let s = Sqlite::open(dir.path()).unwrap();
        s.redeem(l.clone()).await.unwrap();
        s.db().close();
    }
    let s = Sqlite::open(dir.path()).unwrap();
    assert_eq!(s.landing([3; 16]).await.unwrap(), Some(l));
}

#[tokio::test]
async fn second_open_of_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Sqlite::open(dir.path()).unwrap();
    let err = Sqlite::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[tokio::test]
async fn concurrent_writes_group_commit_and_a_failure_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    s.db()
        .write(|c| {
            c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for k in 0..500i64 {
        let db = s.db().clone();
        tasks.push(tokio::spawn(async move {
            db.write(move |c| {
                c.execute("INSERT INTO t (k) VALUES (?1)", [k])?;
                if k % 50 == 0 {
                    // Written, then failed: must leave no trace.
                    return Err(StoreError::Corrupt(format!("fail {k}")));
                }
                Ok(k)
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 490);
    let (n, failed): (i64, i64) = s
        .db()
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE k % 50 = 0) FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!((n, failed), (490, 0));
    let stats = s.db().stats();
    assert!(stats.commits < 500, "writes were not grouped: {stats:?}");
}

#[tokio::test]
async fn unsynced_writes_are_visible_at_once_and_wait_for_no_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        &[Migration {
            name: "t",
            sql: "CREATE TABLE t (n INTEGER NOT NULL) STRICT;",
        }],
    )
    .unwrap();
    let before = db.stats();
    for n in 0..3 {
        db.write_as(Durability::Committed, move |c| {
            Ok(c.execute("INSERT INTO t (n) VALUES (?1)", [n])?)
        })
        .await
        .unwrap();
        let seen: i64 = db
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(seen, n + 1);
    }
    // A failing unsynced write rolls back alone, like any write.
    let failed = db
        .write_as(Durability::Committed, |c| {
            c.execute("INSERT INTO t (n) VALUES (99)", [])?;
            Err::<(), _>(StoreError::Corrupt("no".into()))
        })
        .await;
    assert!(failed.is_err());
    db.write(|c| Ok(c.execute("INSERT INTO t (n) VALUES (3)", [])?))
        .await
        .unwrap();
    let after = db.stats();
    // Five commits, and only the durable write's batch waited for an fsync.
    assert_eq!(after.commits - before.commits, 5);
    assert_eq!(after.syncs - before.syncs, 1);
    let all: Vec<i64> = db
        .read(|c| {
            let mut st = c.prepare("SELECT n FROM t ORDER BY n")?;
            let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(v)
        })
        .await
        .unwrap();
    assert_eq!(all, vec![0, 1, 2, 3]);
    db.close();
}

/// The bundled SQLite is built as `.cargo/config.toml` asks: no page cache
/// shared by all connections and no allocation statistics, each a
/// process-wide mutex that the writer took on every page it touched. A
/// `LIBSQLITE3_FLAGS` set in the environment replaces the file's, and this
/// says so.
#[test]
fn sqlite_is_built_without_its_global_mutexes() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut st = conn.prepare("PRAGMA compile_options").unwrap();
    let opts = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert!(opts.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{opts:?}");
    assert!(
        !opts.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{opts:?}"
    );
}

/// Blobs of ~15 pages each, for the checkpoint tests.
const BLOBS: Migration = Migration {
    name: "test_blobs",
    sql: "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL) STRICT;",
};
const BLOB_BYTES: usize = 60_000;
/// A WAL frame: its 24-byte header and a 4 KiB page.
const FRAME_BYTES: u64 = 24 + 4096;

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

async fn write_blob(db: &Db) {
    db.write(|c| {
        c.execute("INSERT INTO blobs (b) VALUES (?1)", [vec![7u8; BLOB_BYTES]])?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_wal_is_copied_into_the_database_off_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), &[BLOBS]).unwrap();
    // ~1 500 frames: past the checkpointer's threshold (1 000 uncopied),
    // far below the writer's own (8 000). The writer's WAL hook turns
    // SQLite's automatic checkpoint off, so without the checkpointer
    // nothing would reach the database file before close.
    for _ in 0..100 {
        write_blob(&db).await;
    }
    // Every write was answered after its batch asked for what it needed.
    db.wait_for_checkpoints();
    let stats = db.stats();
    assert!(stats.checkpoints >= 1, "{stats:?}");
    assert_eq!(stats.writer_checkpoints, 0, "{stats:?}");
    // The first checkpoint copied the first ~1 000 frames (fewer pages:
    // some were written more than once); the file held one page before.
    let main = dir.path().join("crossflow.db");
    assert!(
        file_len(&main) >= 2_000_000,
        "the database file holds {} bytes of the ~6 MB written",
        file_len(&main)
    );
    db.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_back_to_back_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), &[BLOBS]).unwrap();
    // 8 writers at once, ~12 000 frames in all, 1.5x the writer's own
    // checkpoint threshold. Whether the checkpointer alone would have let
    // the log restart (it can, when one of its runs ends while the writer
    // waits for an fsync) depends on the disk: on this project's VM it did
    // not (12 400-12 525 frames with the writer's checkpoint taken out). The bound
    // must hold either way.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    write_blob(&db).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wal = dir.path().join("crossflow.db-wal");
    // Past 8 000 frames the writer checkpoints after the checkpointer's
    // running checkpoint, and the next transaction restarts the log: at
    // most one batch (8 writes, ~130 frames) beyond, with no reader holding
    // an old snapshot.
    let frames = file_len(&wal) / FRAME_BYTES;
    assert!(frames <= 8_500, "the WAL grew to {frames} frames");
    let stats = db.stats();
    assert!(
        stats.checkpoints + stats.writer_checkpoints >= 1,
        "{stats:?}"
    );
    let rows: i64 = db
        .read_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(rows, 800);
    db.close();
}

/// Queues `n` writes into one batch (the writer is held by a write of its
/// own until all are queued) and returns their answers and how often each
/// closure ran. Write `k` runs `body(conn, k, run)` (`run` counts from 1)
/// and answers `k`.
async fn one_batch(
    db: &Db,
    n: i64,
    body: impl Fn(&Connection, i64, usize) -> Result<(), StoreError> + Send + Sync + 'static,
) -> (Vec<Result<i64, StoreError>>, Vec<usize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let body = Arc::new(body);
    let mut writes: Vec<_> = (0..n)
        .map(|k| {
            let (runs, body) = (runs.clone(), body.clone());
            Box::pin(db.write(move |c| {
                let run = runs[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
                body(c, k, run)?;
                Ok(k)
            }))
        })
        .collect();
    // One poll each queues every write while the writer is held.
    for w in &mut writes {
        std::future::poll_fn(|cx| {
            let _ = w.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
    let commits = db.stats().commits;
    release_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await);
    }
    // The holder's batch, then one batch of all `n`.
    assert_eq!(
        db.stats().commits,
        commits + 2,
        "the writes were not one batch"
    );
    let runs = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    (answers, runs)
}

/// A [`one_batch`] body: inserts `offset + k` into `blobs`, then fails if
/// `fails(k, run)`.
fn insert_then(
    offset: i64,
    fails: impl Fn(i64, usize) -> bool + Send + Sync + 'static,
) -> impl Fn(&Connection, i64, usize) -> Result<(), StoreError> + Send + Sync + 'static {
    move |c, k, run| {
        c.execute("INSERT INTO blobs (id, b) VALUES (?1, X'00')", [offset + k])?;
        if fails(k, run) {
            return Err(StoreError::Corrupt(format!("write {k} fails")));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_each_write_once_and_again_in_savepoints_only_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), &[BLOBS]).unwrap();
    let count = |lo: i64, hi: i64| {
        db.read_blocking(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM blobs WHERE id BETWEEN ?1 AND ?2",
                [lo, hi],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap()
    };
    let ok = |answers: &[Result<i64, StoreError>], refused: &[usize]| {
        for (k, a) in answers.iter().enumerate() {
            match a {
                Err(StoreError::Corrupt(m)) if refused.contains(&k) => {
                    assert_eq!(m, &format!("write {k} fails"));
                }
                a => assert_eq!(a.as_ref().ok(), Some(&(k as i64)), "write {k}"),
            }
        }
    };

    // No failure: no write runs twice.
    let (answers, runs) = one_batch(&db, 20, insert_then(0, |_, _| false)).await;
    ok(&answers, &[]);
    assert_eq!(runs, vec![1; 20]);
    assert_eq!(count(0, 19), 20);

    // Write 7 fails: the batch is rolled back and runs again, writes 0-6
    // without savepoints (they ran twice), 7 on in their own savepoints
    // (7 twice, the rest once). Write 7 alone is refused and leaves nothing.
    let (answers, runs) = one_batch(&db, 20, insert_then(1000, |k, _| k == 7)).await;
    ok(&answers, &[7]);
    let want: Vec<usize> = (0..20).map(|k| if k <= 7 { 2 } else { 1 }).collect();
    assert_eq!(runs, want);
    assert_eq!(count(1000, 1019), 19);
    assert_eq!(count(1007, 1007), 0);

    // Write 7 fails on its first run only, write 3 on its second only: the
    // rerun without savepoints shrinks to writes 0-2 and everything from 3
    // on gets a savepoint; all 20 commit.
    let (answers, runs) = one_batch(
        &db,
        20,
        insert_then(2000, |k, run| (k, run) == (7, 1) || (k, run) == (3, 2)),
    )
    .await;
    ok(&answers, &[]);
    let want: Vec<usize> = (0..20)
        .map(|k| match k {
            0..=3 => 3,
            4..=7 => 2,
            _ => 1,
        })
        .collect();
    assert_eq!(runs, want);
    assert_eq!(count(2000, 2019), 20);
    db.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_batch_hands_the_integrator_only_committed_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(dir.path()).unwrap();
    let bytes = |k: i64| format!("entry {k}").into_bytes();
    // Every write appends an entry. Write 2 then fails on its first run
    // only, which makes the batch run again (0-1 as they were, 2 on in
    // savepoints); write 6 always fails and is refused. The appends rolled
    // back leave leaves in the writer's in-memory hand-off at indexes that
    // later appends reuse.
    let (answers, _) = one_batch(s.db(), 10, move |c, k, run| {
        ledger::append(c, &ledger::Prepared::new(bytes(k), &["a"])?, 0)?;
        if k == 6 || (k, run) == (2, 1) {
            return Err(StoreError::Corrupt(format!("write {k} fails")));
        }
        Ok(())
    })
    .await;
    let refused: Vec<usize> = (0..10).filter(|&k| answers[k].is_err()).collect();
    assert_eq!(refused, vec![6]);
    let committed: Vec<i64> = (0..10).filter(|&k| k != 6).collect();
    // The store holds the nine, densely from index 0.
    let stored = s.db().read_blocking(|c| ledger::leaves(c, 0, 100)).unwrap();
    let want: Vec<_> = committed
        .iter()
        .map(|&k| ledger::leaf_hash(&bytes(k)))
        .collect();
    assert_eq!(stored.iter().map(|l| l.hash).collect::<Vec<_>>(), want);
    // What the integrator is handed (from memory) is what was committed.
    assert_eq!(s.leaves(0, 100).await.unwrap(), stored);
    s.db().close();
}

#[test]
fn fixed_size_blobs_are_read_in_place_and_checked() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.query_row("SELECT X'0102', NULL, 'text'", [], |r| {
        assert_eq!(blob::<2>(r, 0, "a").unwrap(), [1, 2]);
        let short = blob::<3>(r, 0, "a").unwrap_err().to_string();
        assert!(short.contains("a has 2 bytes, want 3"), "{short}");
        assert_eq!(opt_blob::<2>(r, 0, "a").unwrap(), Some([1, 2]));
        assert_eq!(opt_blob::<2>(r, 1, "b").unwrap(), None);
        let null = blob::<2>(r, 1, "b").unwrap_err().to_string();
        assert!(null.ends_with("b is NULL"), "{null}");
        let text = blob::<4>(r, 2, "c").unwrap_err().to_string();
        assert!(text.starts_with("stored data is corrupt: c:"), "{text}");
        Ok(())
    })
    .unwrap();
}
