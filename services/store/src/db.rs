//! The database handle: one writer thread that group-commits, and a small
//! pool of readers.
//!
//! Every write is a closure run in a shared transaction: the writer takes
//! whatever is queued (up to [`MAX_BATCH`]), runs it and commits once. One
//! failing write rolls back alone while its neighbours commit: when a write
//! fails, the writer rolls the batch back and runs it again, the writes
//! before the failed one as they were and each write from it on inside its
//! own SAVEPOINT. Batches without a failure (nearly all) pay for no
//! savepoints, which copy every page a write touches into a journal first:
//! a tenth of the writer's CPU for a ReportConversion. So a write's closure
//! may run twice (it is `Fn`); it must change nothing outside the database
//! that a second run does not make good.
//!
//! An answer means "durable" (the one exception, [`Durability::Committed`],
//! is for data rebuilt from durable data), and the fsync that makes it so
//! is pipelined:
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
//! them: after a commit that leaves 1 000 frames uncopied (the writer's WAL
//! hook counts them) the writer asks for one, and the checkpointer copies
//! them (`PASSIVE`: it waits for no reader and holds up no commit) while the
//! writer goes on. Inside the writer a checkpoint stalled every caller
//! queued behind it for its two fsyncs. The writer checkpoints itself only
//! past 8 000 frames, which bounds the `-wal` file (see
//! `WRITER_CHECKPOINT_FRAMES`).

use std::{
    cell::Cell,
    fs::File,
    os::raw::c_int,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, PoisonError, mpsc},
    thread,
    time::Instant,
};

use rusqlite::{Connection, OpenFlags, hooks::Wal};
use tokio::sync::oneshot;

use crate::{StoreError, ledger::Handoff};

/// Most writes folded into one commit.
const MAX_BATCH: usize = 2048;
/// Most idle read connections kept.
const MAX_IDLE_READERS: usize = 16;
/// Uncopied WAL frames past which the writer asks the checkpointer to copy
/// them into the database file (SQLite's automatic checkpoint runs past
/// 1 000 frames in the log).
const CHECKPOINT_FRAMES: i64 = 1000;
/// Frames in the WAL past which the writer checkpoints itself, once the
/// batch it just committed is on its way to the syncer. The log restarts
/// from its beginning only when a write transaction begins with every frame
/// copied, and under back-to-back commits the checkpointer, which copies
/// the log as it was when it started, may never get there; the writer's
/// checkpoint (after the checkpointer's running one, see
/// `CheckpointState::running`) copies the rest, and the next transaction
/// restarts the log. With no reader holding an old snapshot, this bounds
/// the `-wal` file to this many frames plus one batch's.
const WRITER_CHECKPOINT_FRAMES: i64 = 8000;

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

pub(crate) type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job = Box<dyn WriteJob<Connection>>;

/// A queued write on a connection of type `C`: run (perhaps twice, see the
/// module docs), then answered.
pub(crate) trait WriteJob<C: ?Sized>: Send {
    /// Runs the write, keeping its result; true if it failed.
    fn run(&mut self, conn: &C) -> bool;
    /// Whether its last run failed with an error `which` picks.
    fn failed_with(&self, which: &dyn Fn(&StoreError) -> bool) -> bool;
    /// Makes its last run's result `e` (its writes did not reach the
    /// database after all).
    fn fail(&mut self, e: StoreError);
    /// The answer to its caller, with the result of its last run.
    fn answer(self: Box<Self>) -> Answer;
}

/// A [`WriteJob`] of [`Db::write_as`] (and of the PostgreSQL writer's).
pub(crate) struct Write<F, R> {
    f: F,
    out: Option<Result<R, StoreError>>,
    tx: oneshot::Sender<Result<R, StoreError>>,
    durability: Durability,
}

impl<F, R> Write<F, R> {
    pub(crate) fn new(
        f: F,
        tx: oneshot::Sender<Result<R, StoreError>>,
        durability: Durability,
    ) -> Write<F, R> {
        Write {
            f,
            out: None,
            tx,
            durability,
        }
    }
}

impl<C, F, R> WriteJob<C> for Write<F, R>
where
    C: ?Sized,
    F: Fn(&C) -> Result<R, StoreError> + Send,
    R: Send + 'static,
{
    fn run(&mut self, conn: &C) -> bool {
        let out = (self.f)(conn);
        let failed = out.is_err();
        self.out = Some(out);
        failed
    }

    fn failed_with(&self, which: &dyn Fn(&StoreError) -> bool) -> bool {
        matches!(&self.out, Some(Err(e)) if which(e))
    }

    fn fail(&mut self, e: StoreError) {
        self.out = Some(Err(e));
    }

    fn answer(self: Box<Self>) -> Answer {
        let Write {
            out,
            tx,
            durability,
            ..
        } = *self;
        let done: Completion = Box::new(move |commit_err| {
            let out = match (commit_err, out) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(out)) => out,
                // Not run: only after a failed commit, handled above.
                (None, None) => Err(StoreError::Closed),
            };
            let _ = tx.send(out);
        });
        match durability {
            Durability::Fsynced => Answer::Durable(done),
            Durability::Committed => Answer::Committed(done),
        }
    }
}

/// The queue of a writer thread (SQLite's or PostgreSQL's): callers submit
/// write jobs on connection type `C`, the writer takes them in batches.
pub(crate) struct Queue<C: ?Sized>(Mutex<Option<mpsc::Sender<Box<dyn WriteJob<C>>>>>);

/// The writer's end of a [`Queue`].
pub(crate) type Jobs<C> = mpsc::Receiver<Box<dyn WriteJob<C>>>;

impl<C: ?Sized + 'static> Queue<C> {
    pub(crate) fn new() -> (Queue<C>, Jobs<C>) {
        let (tx, rx) = mpsc::channel();
        (Queue(Mutex::new(Some(tx))), rx)
    }

    /// Queues `f` and waits for its answer.
    pub(crate) async fn submit<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&C) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn WriteJob<C>> = Box::new(Write::new(f, tx, durability));
        {
            let jobs = self.0.lock().map_err(|_| StoreError::Closed)?;
            jobs.as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Takes no more jobs; the writer ends once it has answered the queued.
    pub(crate) fn close(&self) {
        if let Ok(mut jobs) = self.0.lock() {
            jobs.take();
        }
    }
}

impl<C: ?Sized> std::fmt::Debug for Queue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

/// Waits for the next job, then takes whatever else is queued, up to `max`
/// in all, into `batch`; false once the queue is closed and empty.
pub(crate) fn next_batch<J>(rx: &mpsc::Receiver<J>, batch: &mut Vec<J>, max: usize) -> bool {
    let Ok(first) = rx.recv() else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    true
}

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
pub(crate) enum Answer {
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
    /// WAL checkpoints run by the checkpointer thread.
    pub checkpoints: u64,
    /// WAL checkpoints the writer ran itself (past 8 000 frames).
    pub writer_checkpoints: u64,
}

/// A handle to the embedded database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    jobs: Queue<Connection>,
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

/// The writer's line to the checkpointer.
struct Checkpoints {
    /// Asks for a checkpoint (holds at most one request).
    ask: mpsc::SyncSender<()>,
    state: Arc<CheckpointState>,
}

/// What the writer, the checkpointer and the handle share about checkpoints.
#[derive(Debug)]
struct CheckpointState {
    /// Held around every checkpoint. SQLite runs one at a time and refuses
    /// a second at once (`SQLITE_BUSY`, no busy handler), so the writer's
    /// own checkpoint waits here for the checkpointer's to end instead.
    running: Mutex<()>,
    /// (frames in the log, frames copied) as of the last checkpoint.
    last: Mutex<(i64, i64)>,
    /// Checkpoints asked of the checkpointer and not yet done.
    pending: Mutex<u64>,
    idle: Condvar,
    /// The writer's statistics, where checkpoints are counted.
    stats: Arc<Mutex<WriterStats>>,
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
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let checkpoint_state = Arc::new(CheckpointState::new(stats.clone()));
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

        let (jobs, rx) = Queue::new();
        let (sync_tx, sync_rx) = mpsc::channel::<Committed>();
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
                jobs,
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

    /// Blocks the calling thread until the checkpointer has done every
    /// checkpoint asked of it so far (a write is answered after its batch
    /// asked for one, if it did). For benchmarks that time two stores in
    /// turn, so that neither store's background checkpoint runs in the
    /// other's timed part; off an async runtime's worker, or in
    /// `block_in_place`.
    pub fn wait_for_checkpoints(&self) {
        self.inner.checkpoint_state.wait_idle();
    }

    pub fn stats(&self) -> WriterStats {
        self.inner.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Runs `f` in the writer's next batch and returns its result once the
    /// batch is durably committed. If `f` fails, its changes are rolled back
    /// and the error returned; the rest of the batch is unaffected.
    ///
    /// `f` runs once, or twice when a write of its batch fails (the batch is
    /// rolled back and run again, see the module docs). Its effects outside
    /// the database must survive that: the ledger's hand-off, for one,
    /// drops what a rolled-back append left.
    pub async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_as(Durability::Fsynced, f).await
    }

    /// [`Db::write`], answered when `durability` says.
    pub async fn write_as<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.inner.jobs.submit(durability, f).await
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
        self.jobs.close();
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

// === impl Checkpoints ===

impl Checkpoints {
    /// After a commit, before its callers are answered: asks the
    /// checkpointer for a checkpoint once `CHECKPOINT_FRAMES` frames are
    /// uncopied (so a caller answered after this knows it was asked).
    /// Returns whether the writer should rather checkpoint itself, which it
    /// does once the batch is on its way.
    fn after_commit(&self) -> bool {
        let frames = i64::from(WAL_FRAMES.get());
        if frames >= WRITER_CHECKPOINT_FRAMES {
            return true;
        }
        if self.state.uncopied(frames) >= CHECKPOINT_FRAMES {
            // Counted before it is sent, so the checkpointer never finds
            // nothing to count down; not sent if one is already waiting.
            self.state.add_pending(1);
            if self.ask.try_send(()).is_err() {
                self.state.add_pending(-1);
            }
        }
        false
    }
}

// === impl CheckpointState ===

impl CheckpointState {
    fn new(stats: Arc<Mutex<WriterStats>>) -> CheckpointState {
        CheckpointState {
            running: Mutex::new(()),
            last: Mutex::new((0, 0)),
            pending: Mutex::new(0),
            idle: Condvar::new(),
            stats,
        }
    }

    /// A `PASSIVE` checkpoint on `conn`, after any other one ends: copies
    /// the frames no reader still needs (the rest next time) and waits for
    /// no reader or writer. Counted as the writer's or the checkpointer's.
    fn checkpoint(&self, conn: &Connection, by_writer: bool) {
        let _running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let done = conn
            .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
            .and_then(|mut st| {
                st.query_row([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
            });
        match done {
            // Not busy, and in WAL mode (else -1s).
            Ok((0, log, copied)) if log >= 0 && copied >= 0 => {
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = (log, copied);
                let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
                if by_writer {
                    s.writer_checkpoints += 1;
                } else {
                    s.checkpoints += 1;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "store checkpoint failed"),
        }
    }

    /// Frames not copied of the `frames` now in the log.
    fn uncopied(&self, frames: i64) -> i64 {
        let (log, copied) = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        // Fewer frames than the log had: it restarted since, from frame 0.
        if frames < log {
            frames
        } else {
            frames - copied
        }
    }

    fn add_pending(&self, n: i64) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *p = p.saturating_add_signed(n);
        if *p == 0 {
            self.idle.notify_all();
        }
    }

    /// The checkpointer has ended: nothing asked of it will be done.
    fn release_waiters(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = 0;
        self.idle.notify_all();
    }

    fn wait_idle(&self) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while *p > 0 {
            p = self.idle.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
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

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The writer connection's WAL hook, run on the writer thread after each
/// commit: notes the log's size for `Checkpoints`. Installing it turns
/// SQLite's automatic checkpoint off (that is a WAL hook too). It never
/// fails: the commit has happened, and an error here would be reported as
/// the COMMIT's.
fn wal_committed(_wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// Copies the WAL into the database file when the writer asks. However
/// the thread ends, nobody waits for it any more.
fn checkpointer_loop(conn: Connection, asks: mpsc::Receiver<()>, state: &CheckpointState) {
    struct Gone<'a>(&'a CheckpointState);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.release_waiters();
        }
    }
    let _gone = Gone(state);
    while asks.recv().is_ok() {
        state.checkpoint(&conn, false);
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
    while next_batch(&rx, &mut batch, MAX_BATCH) {
        let writes = batch.len() as u64;
        let mut done = Vec::with_capacity(batch.len());
        let mut unsynced = Vec::new();
        let result = run_batch(&conn, &mut batch, &mut done, &mut unsynced);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes, "store commit failed");
        }
        let checkpoint_here = checkpoints.after_commit();
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
        if checkpoint_here {
            checkpoints.state.checkpoint(&conn, true);
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
/// Every write is answered, with the batch's error if it did not commit.
fn run_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    durable: &mut Vec<Completion>,
    committed: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let result = commit_batch(conn, batch);
    for job in batch.drain(..) {
        match job.answer() {
            Answer::Durable(d) => durable.push(d),
            Answer::Committed(d) => committed.push(d),
        }
    }
    result
}

/// Runs `batch` in one transaction and commits it. The writes before
/// `plain` run without savepoints, the rest each in its own; `plain` starts
/// past the end. When a write without a savepoint fails, the transaction
/// is rolled back and run again with `plain` at that write: those before it
/// (which succeeded) run again as they were, and from it on a failure rolls
/// back alone. `plain` only shrinks, so this ends.
fn commit_batch(conn: &Connection, batch: &mut [Job]) -> Result<(), StoreError> {
    // Prepared once per connection: BEGIN and COMMIT run for every batch,
    // the savepoint statements for every write on the savepoint path.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
    let abort = |e: rusqlite::Error| {
        rollback(conn);
        StoreError::from(e)
    };
    // A transaction left open by a failure nothing could roll back would
    // make every BEGIN fail; start clean.
    rollback(conn);
    let mut plain = batch.len();
    loop {
        exec("BEGIN IMMEDIATE")?;
        match batch[..plain].iter_mut().position(|job| job.run(conn)) {
            Some(failed) => {
                // The failed write's error may have ended the transaction
                // already (SQLite rolls back on some I/O errors).
                rollback(conn);
                plain = failed;
            }
            None => break,
        }
    }
    for job in &mut batch[plain..] {
        exec("SAVEPOINT w").map_err(abort)?;
        let end = if job.run(conn) {
            exec("ROLLBACK TO w").and_then(|_| exec("RELEASE w"))
        } else {
            exec("RELEASE w")
        };
        end.map_err(abort)?;
    }
    exec("COMMIT").map_err(abort)?;
    Ok(())
}

/// Rolls back the open transaction, if any. A failure leaves nothing more
/// to do here: the next batch tries again before it begins.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "store rollback failed");
    }
}
