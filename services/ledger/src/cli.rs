//! What `crossflow verify` and `crossflow ledger fsck` do, as functions that
//! return the line to print or the reason for failing, so the binary only
//! parses arguments.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{
    fsck::{Report, fsck},
    note::{Checkpoint, Verifier},
    receipt::{Receipt, verify_receipt},
};

/// Name of the database file inside `gateway.data_dir` (as `crossflow-store`
/// creates it).
const DB_FILE: &str = "crossflow.db";

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

/// Runs fsck read-only on the store in `data_dir` (safe beside a running
/// gateway: it never takes the writer's lock).
pub fn fsck_data_dir(
    data_dir: &Path,
    verifier: Option<&Verifier>,
    origin: Option<&str>,
) -> Result<Report, String> {
    let conn = open_snapshot(data_dir)?;
    fsck(&conn, verifier, origin).map_err(|e| e.to_string())
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
/// `tz`) in the store of `data_dir`. Works with the gateway stopped and while
/// it serves: closing only inserts one row (in an IMMEDIATE transaction on
/// a connection of its own), and never signs.
pub fn close_data_dir(
    data_dir: &Path,
    period: &str,
    tz: &str,
    now_ms: i64,
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
    conn.execute_batch("PRAGMA busy_timeout=10000")
        .map_err(|e| e.to_string())?;
    let close = crate::period::close(&conn, period, tz, now_ms).map_err(|e| e.to_string())?;
    Ok(close.summary())
}

/// `crossflow ledger export`: writes the export of closed `period` from the
/// store of `data_dir` into `out`, read-only and from one read transaction
/// (safe while the gateway runs).
pub fn export_data_dir(
    data_dir: &Path,
    period: &str,
    partner: Option<&str>,
    out: &Path,
) -> Result<crate::export::ExportSummary, String> {
    let conn = open_snapshot(data_dir)?;
    let view = match partner {
        None => crate::export::View::Federation,
        Some(p) => crate::export::View::Partner(p.to_owned()),
    };
    crate::export::export(&conn, period, view, out).map_err(|e| e.to_string())
}

/// `crossflow ledger verify DIR --vkey KEY`: the verdict line; `Err` holds
/// the `export FAILED: file:line: reason` line.
pub fn verify_export_dir(dir: &Path, vkey: &str) -> Result<String, String> {
    let verifier = load_verifier(vkey)?;
    crate::verify_export::verify(dir, &verifier).map_err(|f| format!("export FAILED: {f}"))
}

fn base64_hash(h: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}
