//! What `crossflow verify` and `crossflow ledger fsck` do, as functions that
//! return the line to print or the reason for failing, so the binary only
//! parses arguments.
//!
//! The ledger commands read the store `[gateway.store]` names ([`StoreAt`]):
//! the embedded SQLite file opened directly (read-only, or one IMMEDIATE
//! transaction for a close), so they work beside a serving gateway that
//! holds the store's lock; or PostgreSQL, which allows concurrent sessions,
//! through a connection of their own. Either way the same functions run on
//! the store's neutral `Conn`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crossflow_store::{Postgres, pg::PgConn, pg_schema, sql::Conn};

use crate::{
    fsck::{Report, fsck},
    note::{Checkpoint, Verifier},
    receipt::{Receipt, verify_receipt},
};

/// Name of the database file inside `gateway.data_dir` (as `crossflow-store`
/// creates it).
const DB_FILE: &str = "crossflow.db";

/// Where the ledger commands find the store: `[gateway.store]`.
#[derive(Debug, Clone, Copy)]
pub enum StoreAt<'a> {
    /// The embedded SQLite store in `gateway.data_dir`.
    Sqlite { data_dir: &'a Path },
    /// PostgreSQL at `url` (which may hold a password: messages name only
    /// the server, as the store's errors do).
    Postgres { url: &'a str },
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read(path)?).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// A verifier key given as its text (`name+keyid+base64`) or as a file
/// holding that text.
pub fn load_verifier(key: &str) -> Result<Verifier, String> {
    if let Ok(v) = Verifier::parse(key.trim()) {
        return Ok(v);
    }
    let path = Path::new(key);
    if !path.exists() {
        // Report the parse error: the argument was meant as key text.
        return Verifier::parse(key.trim())
            .map_err(|e| format!("--vkey is neither a verifier key nor a file: {e}"));
    }
    let text = read_text(path)?;
    Verifier::parse(text.trim()).map_err(|e| format!("--vkey file {}: {e}", path.display()))
}

/// Verifies a signed checkpoint note; returns a one-line summary.
pub fn verify_checkpoint(vkey: &str, file: &Path) -> Result<String, String> {
    let verifier = load_verifier(vkey)?;
    let note = read_text(file)?;
    let body = verifier
        .verify_note(&note)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let c = Checkpoint::parse_body(body).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!(
        "checkpoint OK: origin {}, size {}, root {}, signed by {}",
        c.origin,
        c.size,
        base64_hash(&c.root),
        verifier.name()
    ))
}

/// Verifies that the entry in `entry_file` is in the log, by the receipt in
/// `receipt_file`. The origin must be `origin` if given; otherwise the
/// checkpoint's own origin is reported.
pub fn verify_receipt_files(
    vkey: &str,
    entry_file: &Path,
    receipt_file: &Path,
    origin: Option<&str>,
) -> Result<String, String> {
    let verifier = load_verifier(vkey)?;
    let text = read_text(receipt_file)?;
    let entry = read(entry_file)?;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", receipt_file.display());
    let receipt = Receipt::parse(&text).map_err(|e| at(&e))?;
    let body = verifier
        .verify_note(&receipt.checkpoint_note)
        .map_err(|e| at(&e))?;
    let own_origin = Checkpoint::parse_body(body).map_err(|e| at(&e))?.origin;
    let origin = origin.unwrap_or(&own_origin);
    // An entry saved with a trailing newline (as `echo` or a line-oriented
    // export writes it) is tried without it too; only the exact bytes that
    // were logged can match the leaf hash, so this cannot accept a wrong one.
    let trimmed = entry.strip_suffix(b"\n");
    let c = match verify_receipt(&text, &entry, &verifier, origin) {
        Ok(c) => c,
        Err(first) => match trimmed.map(|t| verify_receipt(&text, t, &verifier, origin)) {
            Some(Ok(c)) => c,
            _ => return Err(at(&first)),
        },
    };
    Ok(format!(
        "receipt OK: entry {} is in {} at size {} (root {})",
        receipt.index,
        c.origin,
        c.size,
        base64_hash(&c.root)
    ))
}

/// The store's database file in `data_dir`, which must exist (the commands
/// below never create a store).
fn db_path(data_dir: &Path) -> Result<std::path::PathBuf, String> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    Ok(path)
}

/// A read-only connection to the store in `data_dir`, inside one read
/// transaction: a consistent snapshot while the gateway writes (it never
/// takes the writer's lock).
fn open_snapshot(data_dir: &Path) -> Result<Connection, String> {
    let path = db_path(data_dir)?;
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    conn.execute_batch("PRAGMA busy_timeout=5000; BEGIN")
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Runs `f` on a consistent read-only snapshot of the store: SQLite's
/// read transaction on a connection of its own (safe beside a running
/// gateway: it never takes the writer's lock), or a REPEATABLE READ, READ
/// ONLY transaction on PostgreSQL.
fn with_snapshot<R>(
    at: StoreAt<'_>,
    f: impl FnOnce(&dyn Conn) -> Result<R, String>,
) -> Result<R, String> {
    match at {
        StoreAt::Sqlite { data_dir } => f(&open_snapshot(data_dir)?),
        StoreAt::Postgres { url } => with_postgres(url, |conn| {
            conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            let out = f(conn);
            // Read only: nothing to keep.
            let _ = conn.batch("ROLLBACK");
            out
        }),
    }
}

/// Connects to PostgreSQL at `url` (applying the schema, as a gateway
/// replica would) and runs `f` on a session of its own.
fn with_postgres<R>(url: &str, f: impl FnOnce(&PgConn) -> Result<R, String>) -> Result<R, String> {
    let store =
        Postgres::connect(url, pg_schema::MIGRATIONS).map_err(|e| format!("PostgreSQL: {e}"))?;
    let out = store
        .dedicated()
        .map_err(|e| format!("PostgreSQL: {e}"))
        .and_then(|conn| f(&conn));
    store.close();
    out
}

/// Runs fsck read-only on the store (safe beside a running gateway).
pub fn fsck_store(
    at: StoreAt<'_>,
    verifier: Option<&Verifier>,
    origin: Option<&str>,
) -> Result<Report, String> {
    with_snapshot(at, |conn| {
        fsck(conn, verifier, origin).map_err(|e| e.to_string())
    })
}

/// The summary fsck prints; `Err` when anything is wrong.
pub fn fsck_summary(report: &Report) -> Result<String, String> {
    let summary = format!(
        "{} entries, tree size {}, {} nodes and {} checkpoints checked",
        report.entries, report.tree_size, report.nodes_checked, report.checkpoints_checked
    );
    if report.ok() {
        return Ok(format!("ledger OK: {summary}"));
    }
    let mut msg = format!(
        "ledger has {} problem(s) ({summary}):",
        report.problem_count
    );
    for p in &report.problems {
        msg.push_str("\n  ");
        msg.push_str(p);
    }
    Err(msg)
}

/// `crossflow ledger close`: records the close of `period` (a month in
/// `tz`) in the store. Works with the gateway stopped and while it serves:
/// closing only inserts one row, in a write transaction of its own
/// (IMMEDIATE on SQLite, beside the gateway's writer; on PostgreSQL
/// serialised with other closes by `period::close`), and never signs.
pub fn close_store(at: StoreAt<'_>, period: &str, tz: &str, now_ms: i64) -> Result<String, String> {
    let close = |conn: &dyn Conn| {
        crate::period::close(conn, period, tz, now_ms)
            .map(|c| c.summary())
            .map_err(|e| e.to_string())
    };
    match at {
        StoreAt::Sqlite { data_dir } => close_sqlite(data_dir, close),
        StoreAt::Postgres { url } => with_postgres(url, |conn| {
            let pg = |e: crossflow_store::StoreError| format!("PostgreSQL: {e}");
            conn.batch("BEGIN").map_err(pg)?;
            match close(conn) {
                Ok(line) => {
                    conn.batch("COMMIT").map_err(pg)?;
                    Ok(line)
                }
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    Err(e)
                }
            }
        }),
    }
}

/// `close` in one IMMEDIATE transaction on a connection of its own to the
/// SQLite store in `data_dir`.
fn close_sqlite(
    data_dir: &Path,
    close: impl FnOnce(&dyn Conn) -> Result<String, String>,
) -> Result<String, String> {
    let path = db_path(data_dir)?;
    // With the gateway stopped, opening the store applies any migration this
    // binary has and the data directory lacks (the periods table); while it
    // serves, the running gateway has applied them.
    match crossflow_store::Sqlite::open(data_dir) {
        Ok(store) => drop(store),
        Err(crossflow_store::StoreError::Locked(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let conn = Connection::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    conn.execute_batch("PRAGMA busy_timeout=10000; BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    let result = close(&conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(|e| e.to_string())?;
    result
}

/// `crossflow ledger export`: writes the export of closed `period` from the
/// store into `out`, read-only and from one read transaction (safe while
/// the gateway runs).
pub fn export_store(
    at: StoreAt<'_>,
    period: &str,
    partner: Option<&str>,
    out: &Path,
) -> Result<crate::export::ExportSummary, String> {
    let view = match partner {
        None => crate::export::View::Federation,
        Some(p) => crate::export::View::Partner(p.to_owned()),
    };
    with_snapshot(at, |conn| {
        crate::export::export(conn, period, view, out).map_err(|e| e.to_string())
    })
}

/// `crossflow ledger verify DIR --vkey KEY`: the verdict line; `Err` holds
/// the `export FAILED: file:line: reason` line.
pub fn verify_export_dir(dir: &Path, vkey: &str) -> Result<String, String> {
    let verifier = load_verifier(vkey)?;
    crate::verify_export::verify(dir, &verifier).map_err(|f| format!("export FAILED: {f}"))
}

/// A tree hash as checkpoints and the commands print it: standard base64.
pub fn base64_hash(h: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}
