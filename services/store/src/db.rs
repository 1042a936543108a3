//! The database handle: one writer thread that group-commits, and a small
//! pool of readers.
//!
//! Every write is a closure run inside its own SAVEPOINT of a shared
//! transaction, so one failing write rolls back alone while its neighbours
//! commit. The writer takes whatever is queued (up to [`MAX_BATCH`]), runs it,
//! commits once (one fsync for the batch with `synchronous=FULL`), and only
//! then answers each caller: an answer always means "durable".

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Instant,
};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::StoreError;

/// Most writes folded into one commit.
const MAX_BATCH: usize = 2048;
/// Most idle read connections kept.
const MAX_IDLE_READERS: usize = 16;

/// A schema step: applied once, in order, recorded in `schema_migrations`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// Statistics of the writer, for telemetry and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub commits: u64,
    pub writes: u64,
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
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;",
        )?;
        migrate(&mut conn, migrations)?;

        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let writer_stats = stats.clone();
        let writer = thread::Builder::new()
            .name("crossflow-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_stats))
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Db {
            inner: Arc::new(Inner {
                path,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                stats,
                writer: Mutex::new(Some(writer)),
                _lock: lock,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
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
            (failed, done)
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

    /// Stops the writer after it has committed everything queued so far.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut w) = self.inner.writer.lock()
            && let Some(handle) = w.take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut w) = self.writer.lock()
            && let Some(handle) = w.take()
        {
            let _ = handle.join();
        }
    }
}

// === impl Inner ===

impl Inner {
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

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, stats: Arc<Mutex<WriterStats>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut done: Vec<Completion> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = batch.len() as u64;
        let result = run_batch(&conn, &mut batch, &mut done);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = n, "store commit failed");
        }
        for d in done.drain(..) {
            d(result.as_ref().err());
        }
        if let Ok(mut s) = stats.lock() {
            s.commits += 1;
            s.writes += n;
            s.last_commit_micros = started.elapsed().as_micros() as u64;
        }
    }
}

fn run_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    done: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let begun = conn.execute_batch("BEGIN IMMEDIATE");
    if let Err(e) = begun {
        // Nothing ran; dropping the jobs answers their callers `Closed`.
        batch.clear();
        return Err(e.into());
    }
    for job in batch.drain(..) {
        let sp = conn.execute_batch("SAVEPOINT w");
        if let Err(e) = sp {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        let (failed, completion) = job(conn);
        done.push(completion);
        let end = if failed {
            conn.execute_batch("ROLLBACK TO w; RELEASE w")
        } else {
            conn.execute_batch("RELEASE w")
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
