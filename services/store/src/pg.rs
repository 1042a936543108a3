//! The PostgreSQL backend: the same statements as SQLite (see [`crate::sql`])
//! on a shared database, for several gateway replicas.
//!
//! Each replica has one writer thread with its own connection that folds
//! whatever writes are queued into one transaction, as the SQLite writer
//! does (one COMMIT, one WAL flush, for up to [`MAX_BATCH`] writes), and a
//! small pool of reader connections. The client is the synchronous
//! `postgres` crate: the store's writes are closures run inside a
//! transaction on a dedicated thread, exactly as they run on SQLite's
//! writer, so the services' SQL is the same code on both backends; an async
//! client would need every write closure to be async.
//!
//! What differs from SQLite is that other replicas write the same tables at
//! the same time:
//!
//! - A write that loses a race (a unique key another replica just committed,
//!   a serialisation failure or a deadlock) fails inside the batch; the
//!   batch is rolled back and run again with that write in its own
//!   savepoint, where it runs once more against the now committed row (a
//!   redemption finds the landing already there, a report the order
//!   already reported). See [`retryable`].
//! - Ledger indexes come from one row (`ledger_head`), updated in the
//!   transaction that inserts the entry: the row lock is the serialisation
//!   point, so indexes are gapless and assigned in commit order.
//! - A replica that cannot reach PostgreSQL answers [`StoreError::Unavailable`]
//!   (gRPC `UNAVAILABLE` with a retry hint); nothing is half-written, since
//!   each batch is one transaction.

use std::{
    cell::RefCell,
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use postgres::{
    Client, NoTls, Statement,
    error::SqlState,
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::{
    Durability, Migration, StoreError, WriterStats,
    db::{Answer, Jobs, Queue, WriteJob, next_batch},
    sql::{Conn, Dialect, Row, Value},
};

/// Most held-back ledger rows inserted by one statement (5 parameters
/// each; PostgreSQL takes up to 65 535).
const FLUSH_ROWS: usize = 256;
/// Most writes folded into one transaction.
const MAX_BATCH: usize = 2048;
/// Most read connections of a replica, busy or idle: reads beyond it wait
/// for one (PostgreSQL's `max_connections` is shared by every replica).
const MAX_READERS: usize = 16;
/// How many times a batch is run again after a retryable failure of the
/// whole transaction (a serialisation failure or deadlock at COMMIT).
const MAX_BATCH_TRIES: usize = 5;
/// How many times one write is run again in its savepoint after it lost a
/// race with another replica.
const MAX_WRITE_TRIES: usize = 3;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Advisory lock key (per database) that serialises schema migrations
/// across replicas starting together: "crossflow-migrate" in ASCII.
const MIGRATION_LOCK: i64 = 0x6366_6d69_6772_6174;

type PgJob = Box<dyn WriteJob<PgConn>>;

/// A PostgreSQL connection as the store's [`Conn`]. Prepared statements
/// are cached per connection, keyed by the statement's SQLite text.
pub struct PgConn {
    /// `None` only once dropped (see the `Drop` impl).
    client: RefCell<Option<Client>>,
    statements: RefCell<HashMap<String, Statement>>,
    /// In a writer's transaction: the next ledger index, once the first
    /// append has read (and locked) `ledger_head`. Written back before
    /// COMMIT, so a batch of appends updates that row once instead of once
    /// per entry (each update of one row in one transaction adds a version
    /// the next must step over).
    ledger_next: std::cell::Cell<Option<i64>>,
    /// Whether this connection runs a writer's transactions (only those
    /// may append).
    writer: bool,
    /// Ledger entry rows appended and not yet inserted: inserted many to a
    /// statement before this connection's next statement (a round trip to
    /// PostgreSQL costs more than the insert of a row), dropped when the
    /// transaction or savepoint they belong to rolls back.
    pending: RefCell<Vec<PendingEntry>>,
}

/// A held-back `ledger_entries` row.
#[derive(Debug)]
struct PendingEntry {
    index: i64,
    bytes: Vec<u8>,
    leaf_hash: [u8; 32],
    parties: String,
    recorded_at_ms: i64,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").finish_non_exhaustive()
    }
}

/// The PostgreSQL implementation of every storage trait (through
/// [`crate::Database`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Postgres {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: postgres::Config,
    /// `host:port` of the server, for messages (never the password).
    host: String,
    jobs: Queue<PgConn>,
    readers: Mutex<Vec<PgConn>>,
    /// One permit per read connection ([`MAX_READERS`]).
    reading: tokio::sync::Semaphore,
    stats: Arc<Mutex<WriterStats>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

// === impl PgConn ===

impl PgConn {
    fn open(config: &postgres::Config) -> Result<PgConn, StoreError> {
        let client = config.connect(NoTls).map_err(StoreError::from)?;
        Ok(PgConn {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
            ledger_next: std::cell::Cell::new(None),
            writer: false,
            pending: RefCell::new(Vec::new()),
        })
    }

    /// Runs statements with the simple query protocol (no parameters): one
    /// round trip, for transaction control and migrations.
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.flush()?;
        self.with_client(|c| c.batch_execute(sql))
    }

    /// Inserts the held-back ledger rows, [`FLUSH_ROWS`] (or fewer, by
    /// powers of four, so few statements are prepared) to a statement.
    fn flush(&self) -> Result<(), StoreError> {
        let rows = std::mem::take(&mut *self.pending.borrow_mut());
        let mut rest = &rows[..];
        while !rest.is_empty() {
            let mut n = FLUSH_ROWS;
            while n > rest.len() {
                n /= 4;
            }
            let (chunk, tail) = rest.split_at(n.max(1));
            rest = tail;
            let mut values = Vec::with_capacity(5 * chunk.len());
            for r in chunk {
                values.extend([
                    Value::Int(r.index),
                    Value::Blob(&r.bytes),
                    Value::Blob(&r.leaf_hash),
                    Value::Text(&r.parties),
                    Value::Int(r.recorded_at_ms),
                ]);
            }
            let sql = format!(
                "INSERT INTO ledger_entries (idx, bytes, leaf_hash, parties, recorded_at_ms) VALUES {}",
                vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            self.run(&sql, &values)?;
        }
        Ok(())
    }

    /// Runs a statement as it is (no flush first).
    fn run(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.with_client(|c| c.execute(&stmt, &params))
    }

    /// Rolls the open savepoint `w` back, with the ledger rows and indexes
    /// taken since it was set (`mark`: the next index then).
    fn rollback_to_savepoint(&self, mark: Option<i64>) -> Result<(), StoreError> {
        self.pending.borrow_mut().clear();
        self.ledger_next.set(mark);
        self.with_client(|c| c.batch_execute("ROLLBACK TO w; RELEASE w"))
    }

    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut client = self.client.borrow_mut();
        let c = client.as_mut().ok_or(StoreError::Closed)?;
        Ok(f(c)?)
    }

    /// BEGIN, forgetting any ledger index of an earlier transaction.
    fn begin(&self) -> Result<(), StoreError> {
        self.ledger_next.set(None);
        self.pending.borrow_mut().clear();
        self.batch("BEGIN")
    }

    fn rollback(&self) {
        self.ledger_next.set(None);
        self.pending.borrow_mut().clear();
        let _ = self.with_client(|c| c.batch_execute("ROLLBACK"));
    }

    /// Writes the ledger's count back, then COMMIT.
    fn commit(&self) -> Result<(), StoreError> {
        if let Some(next) = self.ledger_next.take() {
            self.execute(
                "UPDATE ledger_head SET next = ?1 WHERE id = 0",
                &[Value::Int(next)],
            )?;
        }
        self.batch("COMMIT")
    }

    fn is_closed(&self) -> bool {
        self.client.borrow().as_ref().is_none_or(Client::is_closed)
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.with_client(|c| c.prepare(&numbered(sql)))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

impl Drop for PgConn {
    /// Closing a `postgres::Client` blocks on the client's own runtime,
    /// which panics on a thread that drives an async runtime (a handle
    /// dropped in async code): there the client is closed on a thread of
    /// its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = thread::Builder::new()
                .name("crossflow-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        self.flush()?;
        self.run(sql, params)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.flush()?;
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.with_client(|c| c.query(&stmt, &params))?;
        for r in &rows {
            if !each(r)? {
                break;
            }
        }
        Ok(())
    }

    fn next_ledger_index(&self) -> Result<Option<u64>, StoreError> {
        if !self.writer {
            return Err(StoreError::Corrupt(
                "ledger entries are appended by the store's writer only".into(),
            ));
        }
        let next = match self.ledger_next.get() {
            Some(n) => n,
            None => crate::sql::ConnExt::query_int(
                self,
                "SELECT next FROM ledger_head WHERE id = 0 FOR UPDATE",
                &[],
            )?,
        };
        self.ledger_next.set(Some(next + 1));
        u64::try_from(next)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("ledger_head.next is {next}")))
    }

    fn insert_ledger_entry(&self, row: crate::sql::LedgerRow<'_>) -> Result<(), StoreError> {
        self.pending.borrow_mut().push(PendingEntry {
            index: row.index,
            bytes: row.bytes.to_vec(),
            leaf_hash: *row.leaf_hash,
            parties: row.parties.to_owned(),
            recorded_at_ms: row.recorded_at_ms,
        });
        Ok(())
    }
}

/// `sql` with SQLite's placeholders (`?N`, or a bare `?` for the next one)
/// as PostgreSQL's `$N`. Quoted literals are copied as they are.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1u32;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

// === impl Value (PostgreSQL) ===

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            // The store's integers are 64-bit, but PostgreSQL may infer a
            // narrower type for a parameter (compared with a literal, say).
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::BOOL
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::BYTEA
                | Type::UNKNOWN
        )
    }

    to_sql_checked!();
}

// === impl Row (PostgreSQL) ===

impl Row for postgres::Row {
    fn opt_int(&self, idx: usize) -> Result<Option<i64>, StoreError> {
        let ty = self
            .columns()
            .get(idx)
            .map(|c| c.type_().clone())
            .ok_or_else(|| StoreError::Corrupt(format!("no column {idx}")))?;
        let v = match ty {
            Type::INT2 => self.try_get::<_, Option<i16>>(idx)?.map(i64::from),
            Type::INT4 => self.try_get::<_, Option<i32>>(idx)?.map(i64::from),
            Type::BOOL => self.try_get::<_, Option<bool>>(idx)?.map(i64::from),
            _ => self.try_get::<_, Option<i64>>(idx)?,
        };
        Ok(v)
    }

    fn opt_text(&self, idx: usize) -> Result<Option<&str>, StoreError> {
        Ok(self.try_get::<_, Option<&str>>(idx)?)
    }

    fn opt_bytes(&self, idx: usize) -> Result<Option<&[u8]>, StoreError> {
        Ok(self.try_get::<_, Option<&[u8]>>(idx)?)
    }
}

// === errors ===

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        let lost = e.is_closed()
            || match e.code() {
                // 08: connection exceptions; 57P0x: the server is shutting
                // down, crashed or starting; 53: out of resources.
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                }
                // No SQLSTATE: the failure was on the client's side of the
                // socket (I/O, a timeout), not an answer from the server.
                None => !is_conversion_error(&e),
            };
        if lost {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Postgres(Arc::new(e))
        }
    }
}

/// A failure converting a value to or from its column type: a bug or
/// corruption, not a lost connection.
fn is_conversion_error(e: &postgres::Error) -> bool {
    let text = e.to_string();
    text.starts_with("error serializing") || text.starts_with("error deserializing")
}

/// Whether a failed write lost a race with another replica, so that
/// running it again (in a fresh savepoint, or the whole batch) sees the
/// other's committed rows and answers from them.
fn retryable(e: &StoreError) -> bool {
    let StoreError::Postgres(e) = e else {
        return false;
    };
    e.code().is_some_and(|c| {
        *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

// === impl Postgres ===

impl Postgres {
    /// Connects to the database at `url`, applies `migrations` not yet
    /// applied (serialised with the other replicas by an advisory lock),
    /// and starts the writer. Blocks: call it off the async runtime.
    pub fn connect(url: &str, migrations: &[Migration]) -> Result<Postgres, StoreError> {
        off_runtime(|| Postgres::connect_here(url, migrations))
    }

    fn connect_here(url: &str, migrations: &[Migration]) -> Result<Postgres, StoreError> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("crossflow")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let host = host_of(&config);
        let mut conn = PgConn::open(&config).map_err(|e| e.at(&host))?;
        migrate(&conn, migrations).map_err(|e| e.at(&host))?;
        conn.writer = true;

        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let (jobs, rx) = Queue::new();
        let writer_config = config.clone();
        let writer_stats = stats.clone();
        let writer = thread::Builder::new()
            .name("crossflow-pg-writer".into())
            .spawn(move || writer_loop(Some(conn), &writer_config, &rx, &writer_stats))
            .map_err(|e| StoreError::Io {
                path: host.clone(),
                message: e.to_string(),
            })?;
        Ok(Postgres {
            inner: Arc::new(Inner {
                config,
                host,
                jobs,
                readers: Mutex::new(Vec::new()),
                reading: tokio::sync::Semaphore::new(MAX_READERS),
                stats,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// `host:port` of the server.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    pub fn stats(&self) -> WriterStats {
        self.inner.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Runs `f` in the writer's next transaction; answered once it has
    /// committed (PostgreSQL flushes its WAL at COMMIT, so a committed
    /// write is durable: both [`Durability`]s are answered then). `f` may
    /// run more than once, as on SQLite.
    pub async fn write_as<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&PgConn) -> Result<R, StoreError> + Send + 'static,
    {
        self.inner.jobs.submit(durability, f).await
    }

    /// Runs `f` on a pooled connection off the async runtime, outside any
    /// transaction (each statement sees every committed write).
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&PgConn) -> Result<R, StoreError> + Send + 'static,
    {
        let _permit = self
            .inner
            .reading
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Synchronous read, for CLI tools and tests that are not on a runtime.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&PgConn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner.with_reader(f)
    }

    /// A connection of its own, outside the pool (the ledger leader's
    /// session, which holds an advisory lock for as long as it lives).
    pub fn dedicated(&self) -> Result<PgConn, StoreError> {
        off_runtime(|| PgConn::open(&self.inner.config).map_err(|e| e.at(&self.inner.host)))
    }

    /// Stops the writer after everything queued so far is committed and
    /// answered.
    pub fn close(&self) {
        self.inner.jobs.close();
        if let Ok(mut h) = self.inner.writer.lock()
            && let Some(handle) = h.take()
        {
            let _ = handle.join();
        }
        if let Ok(mut r) = self.inner.readers.lock() {
            r.clear();
        }
    }
}

impl Inner {
    fn with_reader<R>(
        &self,
        f: impl FnOnce(&PgConn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => PgConn::open(&self.config)?,
        };
        let out = f(&conn);
        if !conn.is_closed()
            && let Ok(mut r) = self.readers.lock()
            && r.len() < MAX_READERS
        {
            r.push(conn);
        }
        out
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.close();
        if let Ok(mut h) = self.writer.lock()
            && let Some(handle) = h.take()
        {
            let _ = handle.join();
        }
    }
}

/// Runs `f` here, or on a thread of its own when this thread drives an
/// async runtime: the `postgres` client blocks on a runtime of its own,
/// which cannot start inside another.
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// `host:port` (or the socket directory) a config connects to.
fn host_of(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn migrate(conn: &PgConn, migrations: &[Migration]) -> Result<(), StoreError> {
    // Session-level: held across the migrations' own transactions, and
    // released when this connection ends even if this replica dies.
    conn.batch(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
    let result = (|| {
        conn.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                name          TEXT PRIMARY KEY,
                applied_at_ms BIGINT NOT NULL
            )",
        )?;
        for m in migrations {
            conn.batch("BEGIN")?;
            let step = (|| {
                let done = crate::sql::ConnExt::query_opt(
                    conn,
                    "SELECT 1 FROM schema_migrations WHERE name = ?1",
                    &[Value::Text(m.name)],
                    |_| Ok(()),
                )?;
                if done.is_none() {
                    conn.batch(m.sql)?;
                    conn.execute(
                        "INSERT INTO schema_migrations (name, applied_at_ms) VALUES (?1, ?2)",
                        &[Value::Text(m.name), Value::Int(crate::db::now_ms())],
                    )?;
                }
                Ok::<_, StoreError>(())
            })();
            match step {
                Ok(()) => conn.batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        Ok(())
    })();
    let unlock = conn.batch(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    result.and(unlock)
}

fn writer_loop(
    mut conn: Option<PgConn>,
    config: &postgres::Config,
    rx: &Jobs<PgConn>,
    stats: &Mutex<WriterStats>,
) {
    let mut batch: Vec<PgJob> = Vec::with_capacity(MAX_BATCH);
    while next_batch(rx, &mut batch, MAX_BATCH) {
        let started = Instant::now();
        let writes = batch.len() as u64;
        if conn.as_ref().is_none_or(PgConn::is_closed) {
            conn = PgConn::open(config)
                .inspect_err(|e| tracing::warn!(error = %e, "store: PostgreSQL unreachable"))
                .ok()
                .map(|mut c| {
                    c.writer = true;
                    c
                });
        }
        let result = match &conn {
            Some(c) => commit_with_retries(c, &mut batch),
            None => Err(StoreError::Unavailable(
                "cannot connect to PostgreSQL".into(),
            )),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, writes, "store commit failed");
        }
        if let Ok(mut s) = stats.lock() {
            s.commits += 1;
            s.writes += writes;
            s.syncs += u64::from(result.is_ok());
            s.last_commit_micros = started.elapsed().as_micros() as u64;
        }
        for job in batch.drain(..) {
            let (Answer::Durable(done) | Answer::Committed(done)) = job.answer();
            done(result.as_ref().err());
        }
    }
}

/// [`commit_batch`], run again from the start when the transaction as a
/// whole lost a race (a serialisation failure or deadlock at COMMIT).
fn commit_with_retries(conn: &PgConn, batch: &mut [PgJob]) -> Result<(), StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match commit_batch(conn, batch) {
            Err(e) if retryable(&e) && tries < MAX_BATCH_TRIES => continue,
            r => return r,
        }
    }
}

/// Runs `batch` in one transaction and commits it, as the SQLite writer
/// does: without savepoints until a write fails, then again with a
/// savepoint for each write from the failed one on. A write that failed
/// because it lost a race with another replica runs again in a fresh
/// savepoint (up to [`MAX_WRITE_TRIES`] times), now seeing the rows the
/// other committed.
fn commit_batch(conn: &PgConn, batch: &mut [PgJob]) -> Result<(), StoreError> {
    let abort = |e: StoreError| {
        conn.rollback();
        e
    };
    conn.rollback();
    let mut plain = batch.len();
    loop {
        conn.begin()?;
        match batch[..plain].iter_mut().position(|job| job.run(conn)) {
            Some(failed) => {
                conn.rollback();
                plain = failed;
            }
            None => break,
        }
    }
    for job in &mut batch[plain..] {
        for attempt in 1..=MAX_WRITE_TRIES {
            // A rolled-back write gives its ledger indexes back.
            let mark = conn.ledger_next.get();
            conn.batch("SAVEPOINT w").map_err(abort)?;
            // The write's held-back rows go in inside its savepoint, so a
            // failure to insert them is the write's own.
            let failed = job.run(conn)
                || match conn.flush() {
                    Ok(()) => false,
                    Err(e) => {
                        job.fail(e);
                        true
                    }
                };
            if !failed {
                conn.batch("RELEASE w").map_err(abort)?;
                break;
            }
            conn.rollback_to_savepoint(mark).map_err(abort)?;
            if !job.failed_with(&retryable) || attempt == MAX_WRITE_TRIES {
                break;
            }
        }
    }
    conn.commit().map_err(abort)?;
    Ok(())
}

// === impl StoreError ===

impl StoreError {
    /// The same failure, naming the server it happened at.
    fn at(self, host: &str) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("{host}: {m}")),
            StoreError::Postgres(e) => StoreError::Unavailable(format!("{host}: {e}")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(numbered("a = ?1 AND b = ?12"), "a = $1 AND b = $12");
        assert_eq!(numbered("(?,?),(?,?)"), "($1,$2),($3,$4)");
        assert_eq!(numbered("x = '?1' AND y = ?2"), "x = '?1' AND y = $2");
    }
}
