//! The database handle: one writer thread that group-commits, and a small
//! pool of readers.
//!
//! Every write is a closure run inside its own SAVEPOINT of a shared
//! transaction, so one failing write rolls back alone while its neighbours
//! commit. The writer takes whatever is queued (up to [`MAX_BATCH`]), runs it
//! and commits once. An answer means "durable" (the one exception,
//! [`Durability::Committed`], is for data rebuilt from durable data), and the
//! fsync that makes it so is pipelined:
//!
//! - the connection runs with `synchronous=NORMAL` in WAL mode, so COMMIT
//!   appends the batch's frames to the `-wal` file without an fsync (SQLite
//!   still syncs the WAL before every checkpoint into the main file);
//! - a syncer thread then fsyncs the `-wal` file (one fsync covers every
//!   batch committed before it) and only after that answers the callers
//!   (a [`Durability::Committed`] write is answered at the commit).
//!
//! While batch N waits for its fsync, the writer already runs batch N+1: the
//! commit cycle is the longer of "run the batch" and "fsync", not their sum,
//! and every fsync carries all the batches committed since the last one. A
//! crash loses only unanswered and unsynced writes; WAL recovery drops frames
//! after the last synced commit. Readers can see a committed batch a few milliseconds
//! before it is durable; anything derived from it that must be durable (a
//! signed checkpoint, say) is published only after its own write is answered,
//! which, being later in the WAL, implies the earlier batch is durable too.
//!
//! Checkpoints (copying the WAL's frames into the database file, with an
//! fsync of each file) run on a checkpointer thread with its own connection,
//! not inside the writer's commits, where SQLite's automatic checkpoint puts
//! them: the writer's WAL hook asks for one once 1 000 frames are uncopied,
//! and the checkpointer copies them (`PASSIVE`, blocking no one) while the
//! writer goes on. Inside the writer a checkpoint stalled every caller
//! queued behind it for its two fsyncs. The writer checkpoints itself only
//! past 8 000 frames, which bounds the `-wal` file (see
//! `WRITER_CHECKPOINT_FRAMES`).

use std::{
    cell::Cell,
    fs::File,
    os::raw::c_int,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
    thread,
    time::Instant,
};

use rusqlite::{
    Connection, OpenFlags,
    hooks::{CheckpointMode, Wal},
};
use tokio::sync::oneshot;

use crate::{StoreError, ledger::Handoff};

/// Most writes folded into one commit.
const MAX_BATCH: usize = 2048;
/// Most idle read connections kept.
const MAX_IDLE_READERS: usize = 16;
/// WAL frames not yet copied into the database file past which the
/// checkpointer thread is asked to copy them (SQLite's own automatic
/// checkpoint threshold).
const CHECKPOINT_FRAMES: i64 = 1000;
/// WAL frames past which the writer checkpoints itself after a commit, as
/// SQLite's automatic checkpoint would: the log only restarts from its
/// beginning when a write transaction begins with every frame copied, which
/// under a steady stream of commits the checkpointer, always a commit
/// behind, never achieves; the writer's own checkpoint copies what the
/// checkpointer has not (little) and lets the next transaction restart the
/// log. This bounds the `-wal` file to about this many pages.
const WRITER_CHECKPOINT_FRAMES: c_int = 8000;

thread_local! {
    /// Frames in the WAL after the writer's last commit (its WAL hook).
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

/// A schema step: applied once, in order, recorded in `schema_migrations`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Answer) + Send>;

/// When [`Db::write_as`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once the write is durable: after the fsync that covers its batch.
    Fsynced,
    /// As soon as its batch commits, before the fsync: the write is visible
    /// to readers at once and becomes durable with the next fsync (any later
    /// fsynced write waits for one). A crash before that loses it, atomically
    /// with everything after it. Only for data that can be rebuilt from
    /// durable data, such as the ledger's tree nodes, which the integrator
    /// recomputes from the entries after a restart.
    Committed,
}

/// A write's completion, filed by when it is answered.
enum Answer {
    /// After the fsync that makes the write durable.
    Durable(Completion),
    /// As soon as its batch commits ([`Durability::Committed`]).
    Committed(Completion),
}

/// A committed batch on its way to the syncer.
struct Committed {
    done: Vec<Completion>,
    result: Result<(), StoreError>,
    writes: u64,
}

/// Statistics of the writer, for telemetry and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    /// Batches committed.
    pub commits: u64,
    /// Writes answered.
    pub writes: u64,
    /// fsyncs of the WAL (each covers one or more commits).
    pub syncs: u64,
    /// Time from the syncer taking a batch to its callers being answered,
    /// last fsynced batch.
    pub last_commit_micros: u64,
}

/// A handle to the embedded database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    stats: Arc<Mutex<WriterStats>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    syncer: Mutex<Option<thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<thread::JoinHandle<()>>>,
    checkpoint_state: Arc<CheckpointState>,
    /// What the writer appended to the ledger, for the integrator.
    handoff: Arc<Handoff>,
    // Held for the life of the handle: two gateways on one data dir would
    // break the single-writer rule.
    _lock: File,
}

// === impl Db ===

impl Db {
    /// Opens (creating if needed) `dir/crossflow.db`, takes an exclusive lock
    /// on the directory, and applies `migrations` not yet applied.
    pub fn open(dir: &Path, migrations: &[Migration]) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| StoreError::io(&lock_path, e))?;
        lock.try_lock()
            .map_err(|_| StoreError::Locked(dir.to_path_buf()))?;

        let path = dir.join("crossflow.db");
        let mut conn = Connection::open(&path)?;
        // NORMAL: COMMIT does not fsync; the syncer thread does (see above).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;",
        )?;
        migrate(&mut conn, migrations)?;
        // Migrations may have committed without an fsync too.
        sync_wal(&path)?;

        // Checkpoints (copying WAL frames into the database file, with an
        // fsync of each) run on their own thread and connection rather than
        // inside the writer's commits; see `WRITER_CHECKPOINT_FRAMES` for
        // the writer's own.
        let checkpointer_conn = Connection::open(&path)?;
        // Replaces SQLite's automatic checkpoint, which is a WAL hook too.
        conn.wal_hook(Some(wal_committed));
        let checkpoint_state = Arc::new(CheckpointState::default());
        let (ckpt_tx, ckpt_rx) = mpsc::sync_channel::<()>(1);
        let checkpointer_state = checkpoint_state.clone();
        let checkpointer = thread::Builder::new()
            .name("crossflow-ckpt".into())
            .spawn(move || checkpointer_loop(checkpointer_conn, ckpt_rx, &checkpointer_state))
            .map_err(|e| StoreError::io(&path, e))?;
        let checkpoints = Checkpoints {
            ask: ckpt_tx,
            state: checkpoint_state.clone(),
        };

        let (tx, rx) = mpsc::channel::<Job>();
        let (sync_tx, sync_rx) = mpsc::channel::<Committed>();
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let syncer_stats = stats.clone();
        let sync_path = path.clone();
        let syncer = thread::Builder::new()
            .name("crossflow-syncer".into())
            .spawn(move || syncer_loop(&sync_path, sync_rx, syncer_stats))
            .map_err(|e| StoreError::io(&path, e))?;
        let handoff = Arc::new(Handoff::default());
        let writer_handoff = handoff.clone();
        let writer = thread::Builder::new()
            .name("crossflow-writer".into())
            .spawn(move || {
                Handoff::install(writer_handoff);
                writer_loop(conn, rx, sync_tx, checkpoints)
            })
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Db {
            inner: Arc::new(Inner {
                path,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                stats,
                writer: Mutex::new(Some(writer)),
                syncer: Mutex::new(Some(syncer)),
                checkpointer: Mutex::new(Some(checkpointer)),
                checkpoint_state,
                handoff,
                _lock: lock,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn handoff(&self) -> &Arc<Handoff> {
        &self.inner.handoff
    }

    /// Blocks until the checkpointer has done every checkpoint asked of it
    /// so far. For benchmarks that time two stores in turn, so that neither
    /// store's background checkpoint runs in the other's timed part.
    pub fn wait_for_checkpoints(&self) {
        self.inner.checkpoint_state.wait_idle();
    }

    pub fn stats(&self) -> WriterStats {
        self.inner.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Runs `f` in the writer's next batch and returns its result once the
    /// batch is durably committed. If `f` fails, its changes are rolled back
    /// and the error returned; the rest of the batch is unaffected.
    pub async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_as(Durability::Fsynced, f).await
    }

    /// [`Db::write`], answered when `durability` says.
    pub async fn write_as<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let out = f(conn);
            let failed = out.is_err();
            let done: Completion = Box::new(move |commit_err| {
                let out = match commit_err {
                    Some(e) => Err(e.clone()),
                    None => out,
                };
                let _ = tx.send(out);
            });
            let answer = match durability {
                Durability::Fsynced => Answer::Durable(done),
                Durability::Committed => Answer::Committed(done),
            };
            (failed, answer)
        });
        {
            let jobs = self.inner.jobs.lock().map_err(|_| StoreError::Closed)?;
            jobs.as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read-only connection off the async runtime. Reads see
    /// every write that has been answered.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Synchronous read, for CLI tools and tests that are not on a runtime.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner.with_reader(f)
    }

    /// Stops the writer after everything queued so far is committed, synced
    /// and answered (unsynced writes included: the syncer's last act is an
    /// fsync).
    pub fn close(&self) {
        self.inner.stop();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

// === impl Inner ===

impl Inner {
    fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        // The writer ends when its queue closes, which closes the syncer's
        // and the checkpointer's.
        for slot in [&self.writer, &self.syncer, &self.checkpointer] {
            if let Ok(mut h) = slot.lock()
                && let Some(handle) = h.take()
            {
                let _ = handle.join();
            }
        }
    }

    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA busy_timeout=5000;")?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut r) = self.readers.lock()
            && r.len() < MAX_IDLE_READERS
        {
            r.push(conn);
        }
        out
    }
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            name TEXT PRIMARY KEY,
            applied_at_ms INTEGER NOT NULL
        ) STRICT;",
    )?;
    for m in migrations {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
            [m.name],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at_ms) VALUES (?1, ?2)",
                rusqlite::params![m.name, now_ms()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The writer's line to the checkpointer.
struct Checkpoints {
    /// Asks for a checkpoint (holds at most one request).
    ask: mpsc::SyncSender<()>,
    state: Arc<CheckpointState>,
}

/// What the checkpointer has done, shared with the writer and the handle.
#[derive(Debug, Default)]
struct CheckpointState {
    /// WAL frames copied, as of the last checkpoint.
    copied: AtomicI64,
    /// Checkpoints asked for and not yet done.
    pending: Mutex<u64>,
    idle: Condvar,
}

// === impl CheckpointState ===

impl CheckpointState {
    fn add_pending(&self, n: i64) {
        if let Ok(mut p) = self.pending.lock() {
            *p = p.saturating_add_signed(n);
            if *p == 0 {
                self.idle.notify_all();
            }
        }
    }

    fn wait_idle(&self) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        while *p > 0 {
            match self.idle.wait(p) {
                Ok(next) => p = next,
                Err(_) => return,
            }
        }
    }
}

// === impl Checkpoints ===

impl Checkpoints {
    /// After a commit: asks for a checkpoint once `CHECKPOINT_FRAMES`
    /// frames have not been copied.
    fn after_commit(&self) {
        let frames = i64::from(WAL_FRAMES.get());
        let copied = self.state.copied.load(Ordering::Relaxed);
        // Fewer frames than were copied: the log restarted since.
        let copied = if frames < copied { 0 } else { copied };
        if frames - copied >= CHECKPOINT_FRAMES {
            // Counted before it is sent, so the checkpointer never finds
            // nothing to count down; not sent if one is already waiting.
            self.state.add_pending(1);
            if self.ask.try_send(()).is_err() {
                self.state.add_pending(-1);
            }
        }
    }
}

/// The writer connection's WAL hook, run after each commit on the writer
/// thread: notes the log's size, and checkpoints past
/// `WRITER_CHECKPOINT_FRAMES`. It never fails the commit, which has
/// happened (an error here would be reported as the COMMIT's).
fn wal_committed(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    if frames >= WRITER_CHECKPOINT_FRAMES
        && let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE)
    {
        tracing::warn!(error = %e, frames, "store checkpoint failed");
    }
    Ok(())
}

/// Copies the WAL into the database file when the writer asks.
/// `PASSIVE`: it never waits for, or blocks, the writer or a reader; what
/// a reader still needs is copied next time.
fn checkpointer_loop(conn: Connection, asks: mpsc::Receiver<()>, state: &CheckpointState) {
    while asks.recv().is_ok() {
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(2));
        match done {
            Ok(n) => state.copied.store(n, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "store checkpoint failed"),
        }
        state.add_pending(-1);
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    synced: mpsc::Sender<Committed>,
    checkpoints: Checkpoints,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let writes = batch.len() as u64;
        let mut done = Vec::with_capacity(batch.len());
        let mut unsynced = Vec::new();
        let result = run_batch(&conn, &mut batch, &mut done, &mut unsynced);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes, "store commit failed");
        }
        checkpoints.after_commit();
        for d in unsynced {
            d(result.as_ref().err());
        }
        if synced
            .send(Committed {
                done,
                result,
                writes,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Makes committed batches durable, then answers their callers. One fsync
/// serves every batch that committed while the previous one ran.
fn syncer_loop(path: &Path, rx: mpsc::Receiver<Committed>, stats: Arc<Mutex<WriterStats>>) {
    let mut pending: Vec<Committed> = Vec::new();
    // Commits of unsynced writes since the last fsync.
    let mut unsynced = false;
    while let Ok(first) = rx.recv() {
        let started = Instant::now();
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        // Batches of unsynced writes only wait for the next fsync.
        let sync = pending
            .iter()
            .any(|c| c.result.is_ok() && !c.done.is_empty());
        let synced = if sync {
            let r = sync_wal(path);
            if let Err(e) = &r {
                tracing::error!(error = %e, "store fsync failed");
            }
            r.err()
        } else {
            None
        };
        let synced_ok = sync && synced.is_none();
        unsynced = !synced_ok && (unsynced || pending.iter().any(|c| c.result.is_ok()));
        // Counted before answering, so a caller answered after its fsync
        // sees its commit counted (unsynced writes are answered earlier).
        if let Ok(mut s) = stats.lock() {
            s.commits += pending.len() as u64;
            s.writes += pending.iter().map(|c| c.writes).sum::<u64>();
            s.syncs += u64::from(sync);
            if sync {
                s.last_commit_micros = started.elapsed().as_micros() as u64;
            }
        }
        for c in pending.drain(..) {
            let err = c.result.err().or_else(|| synced.clone());
            for d in c.done {
                d(err.as_ref());
            }
        }
    }
    // Closing: unsynced writes become durable too.
    if unsynced && let Err(e) = sync_wal(path) {
        tracing::error!(error = %e, "store fsync failed");
    }
}

/// fsyncs the database's write-ahead log (and, if SQLite removed it, the
/// main file, which then holds everything).
fn sync_wal(db: &Path) -> Result<(), StoreError> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let file = match File::open(&wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            File::open(db).map_err(|e| StoreError::io(db, e))?
        }
        Err(e) => return Err(StoreError::io(&wal, e)),
    };
    file.sync_data().map_err(|e| StoreError::io(&wal, e))
}

/// Runs and commits `batch`, filing each write's answer under `durable`
/// (answered after the fsync) or `committed` (answered after the commit).
fn run_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    durable: &mut Vec<Completion>,
    committed: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let begun = conn.execute_batch("BEGIN IMMEDIATE");
    if let Err(e) = begun {
        // Nothing ran; dropping the jobs answers their callers `Closed`.
        batch.clear();
        return Err(e.into());
    }
    // Prepared once per connection: these run twice per write.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
    for job in batch.drain(..) {
        if let Err(e) = exec("SAVEPOINT w") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        let (failed, answer) = job(conn);
        match answer {
            Answer::Durable(d) => durable.push(d),
            Answer::Committed(d) => committed.push(d),
        }
        let end = if failed {
            exec("ROLLBACK TO w").and_then(|_| exec("RELEASE w"))
        } else {
            exec("RELEASE w")
        };
        if let Err(e) = end {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}
