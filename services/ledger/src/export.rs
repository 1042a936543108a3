//! `crossflow ledger export`: a closed period's files for the federation or
//! one partner (docs/LEDGER.md, "Exports"), written from one read
//! transaction so it can run beside a live gateway. It reads through the
//! store's neutral [`Conn`], so the same bytes come out of SQLite and
//! PostgreSQL.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    merkle::{self, Hash, NodeReader, TreeError},
    note::{Checkpoint, ConsistencyText, MultiProofText},
    period::{self, PeriodError},
    settle::{self, LoggedEntry, SettleError, SettlementRow},
};
use crossflow_store::{StoreError, ledger, sql::Conn};

/// The `format` of `export.json`.
pub const FORMAT: &str = "crossflow-ledger-export@v1";

/// Whose export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Federation,
    Partner(String),
}

impl View {
    /// `federation` or `partner:<id>`, as `export.json` states it.
    pub fn name(&self) -> String {
        match self {
            View::Federation => "federation".to_owned(),
            View::Partner(p) => format!("partner:{p}"),
        }
    }

    pub fn parse(s: &str) -> Option<View> {
        match s {
            "federation" => Some(View::Federation),
            _ => s
                .strip_prefix("partner:")
                .filter(|p| !p.is_empty())
                .map(|p| View::Partner(p.to_owned())),
        }
    }

    pub fn partner(&self) -> Option<&str> {
        match self {
            View::Federation => None,
            View::Partner(p) => Some(p),
        }
    }
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Period(#[from] PeriodError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored log is inconsistent: {0}")]
    Log(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl From<SettleError> for ExportError {
    fn from(e: SettleError) -> Self {
        ExportError::Log(e.to_string())
    }
}

impl From<TreeError<StoreError>> for ExportError {
    fn from(e: TreeError<StoreError>) -> Self {
        match e {
            TreeError::Proof(p) => ExportError::Log(p.to_string()),
            TreeError::Store(s) => ExportError::Store(s),
        }
    }
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub period: String,
    pub view: View,
    pub previous_anchor_size: u64,
    pub anchor_size: u64,
    pub entries: usize,
    pub statement_rows: usize,
    pub payable_rows: usize,
    /// The rows of `settlement.csv`.
    pub settlement: Vec<SettlementRow>,
}

impl ExportSummary {
    /// The line `crossflow ledger export` prints.
    pub fn summary(&self) -> String {
        format!(
            "exported period {} ({}) to {}: {} entries, {} statement rows ({} payable), {} settlement rows, anchor size {}",
            self.period,
            self.view.name(),
            self.dir.display(),
            self.entries,
            self.statement_rows,
            self.payable_rows,
            self.settlement.len(),
            self.anchor_size
        )
    }
}

/// `export.json`, in the documented key order.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'a str,
    origin: &'a str,
    period: &'a str,
    timezone: &'a str,
    period_start: &'a str,
    period_start_ms: i64,
    period_end: &'a str,
    period_end_ms: i64,
    view: &'a str,
    previous_anchor_size: u64,
    anchor_size: u64,
    entries: usize,
}

/// Tree nodes read through a store connection (either backend), for the
/// proofs of `crate::merkle`.
#[derive(Clone, Copy)]
pub struct StoreNodes<'a>(pub &'a dyn Conn);

// === impl StoreNodes ===

impl std::fmt::Debug for StoreNodes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreNodes")
            .field(&self.0.dialect())
            .finish()
    }
}

impl NodeReader for StoreNodes<'_> {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let mut h = ledger::nodes(self.0, &[(level, index)])?;
        h.pop()
            .ok_or_else(|| StoreError::Corrupt(format!("node ({level}, {index}) missing")))
    }

    fn nodes(&self, ids: &[merkle::NodeId]) -> Result<Vec<Hash>, StoreError> {
        ledger::nodes(self.0, ids)
    }
}

/// Entries read per query while scanning the log.
const PAGE: usize = 1000;

/// Writes the export of closed `period` for `view` into `out` (created if
/// needed; files there are replaced). Run it inside one read transaction
/// (SQLite's read snapshot, or PostgreSQL's REPEATABLE READ) for a
/// consistent snapshot beside a live gateway.
pub fn export(
    conn: &dyn Conn,
    period: &str,
    view: View,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    let (bounds, span) = period::bounds(conn, period)?;
    let anchor = ledger::checkpoint(conn, bounds.anchor_size)?.ok_or_else(|| {
        ExportError::Log(format!(
            "the anchor checkpoint of size {} is not stored",
            bounds.anchor_size
        ))
    })?;
    let origin = note_checkpoint(&anchor.note)?.origin;

    // Every entry of the view before the anchor; settlement decides which
    // earlier ones the statement needs.
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let page = ledger::entries(conn, view.partner(), since..bounds.anchor_size, PAGE)?;
        let Some(last) = page.last() else { break };
        since = last.index + 1;
        for e in page {
            all.push(LoggedEntry::parse(e.index, &e.bytes)?);
        }
    }
    let rows = settle::statement(&bounds, &all)?;
    let with_rows: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.conversion_id.as_str()).collect();
    let exported: Vec<LoggedEntry> = all
        .iter()
        .filter(|e| {
            e.index >= bounds.previous_anchor_size
                || (e.entry.kind == "conversion"
                    && with_rows.contains(e.entry.conversion_id.as_str()))
        })
        .cloned()
        .collect();
    // What a verifier recomputes from the exported entries alone.
    let rows = settle::statement(&bounds, &exported)?;
    let settlement = settle::settlement(&bounds.name, &rows, view.partner());

    let reader = StoreNodes(conn);
    let indexes: Vec<u64> = exported.iter().map(|e| e.index).collect();
    let proof = merkle::multiproof(&indexes, bounds.anchor_size, &reader)?;
    let consistency = if bounds.previous_anchor_size == 0 {
        ConsistencyText {
            old: 0,
            new: bounds.anchor_size,
            proof: Vec::new(),
            old_note: None,
        }
    } else {
        let old = ledger::checkpoint(conn, bounds.previous_anchor_size)?.ok_or_else(|| {
            ExportError::Log(format!(
                "the previous anchor checkpoint of size {} is not stored",
                bounds.previous_anchor_size
            ))
        })?;
        ConsistencyText {
            old: bounds.previous_anchor_size,
            new: bounds.anchor_size,
            proof: merkle::consistency_proof(
                bounds.previous_anchor_size,
                bounds.anchor_size,
                &reader,
            )?,
            old_note: Some(old.note),
        }
    };

    let mut jsonl = Vec::new();
    for e in &exported {
        let stored = ledger::entry(conn, e.index)?
            .ok_or_else(|| ExportError::Log(format!("entry {} vanished", e.index)))?;
        jsonl.extend_from_slice(format!("{{\"index\":{},\"entry\":", e.index).as_bytes());
        jsonl.extend_from_slice(&stored.bytes);
        jsonl.extend_from_slice(b"}\n");
    }
    let view_name = view.name();
    let manifest = Manifest {
        format: FORMAT,
        origin: &origin,
        period: &bounds.name,
        timezone: &bounds.timezone,
        period_start: &span.start,
        period_start_ms: span.start_ms,
        period_end: &span.end,
        period_end_ms: span.end_ms,
        view: &view_name,
        previous_anchor_size: bounds.previous_anchor_size,
        anchor_size: bounds.anchor_size,
        entries: exported.len(),
    };
    let mut manifest_text =
        serde_json::to_string(&manifest).map_err(|e| ExportError::Log(e.to_string()))?;
    manifest_text.push('\n');

    let statement_text = settle::statement_csv(&rows);
    let settlement_text = settle::settlement_csv(&settlement);
    let consistency_text = consistency.to_text();
    let proof_text = MultiProofText {
        size: bounds.anchor_size,
        proof,
    }
    .to_text();
    let readme_text = readme(&bounds.name, &view_name);
    std::fs::create_dir_all(out).map_err(|e| io(out, &e))?;
    let files: [(&str, &[u8]); 8] = [
        ("export.json", manifest_text.as_bytes()),
        ("entries.jsonl", &jsonl),
        ("statement.csv", statement_text.as_bytes()),
        ("settlement.csv", settlement_text.as_bytes()),
        ("checkpoint.txt", anchor.note.as_bytes()),
        ("consistency.txt", consistency_text.as_bytes()),
        ("proof.txt", proof_text.as_bytes()),
        ("README.txt", readme_text.as_bytes()),
    ];
    for (name, bytes) in files {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| io(&path, &e))?;
    }
    Ok(ExportSummary {
        dir: out.to_path_buf(),
        period: bounds.name,
        view,
        previous_anchor_size: bounds.previous_anchor_size,
        anchor_size: bounds.anchor_size,
        entries: exported.len(),
        statement_rows: rows.len(),
        payable_rows: rows.iter().filter(|r| r.is_payable()).count(),
        settlement,
    })
}

fn io(path: &Path, e: &std::io::Error) -> ExportError {
    ExportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The checkpoint inside a stored signed note (the store only keeps notes
/// the log signed, so the signature is not re-checked here).
fn note_checkpoint(note: &str) -> Result<Checkpoint, ExportError> {
    let body = crate::note::unverified_text(note)
        .ok_or_else(|| ExportError::Log("stored checkpoint is not a signed note".into()))?;
    Checkpoint::parse_body(body).map_err(|e| ExportError::Log(e.to_string()))
}

fn readme(period: &str, view: &str) -> String {
    format!(
        "crossflow ledger export: period {period}, view {view}

Every file here can be checked offline against the log's public key: no
access to the gateway is needed. The formats are specified in
docs/LEDGER.md of crossflow (sections \"Settlement periods\", \"Exports\" and
\"Verifying an export\").

export.json      What this is: period, its time zone and bounds, the view,
                 and the anchor sizes. Entries [previous_anchor_size,
                 anchor_size) of the log belong to the period.
entries.jsonl    One exported log entry per line, ascending index, exactly
                 {{\"index\":N,\"entry\":<entry bytes>}}. The entry bytes are
                 verbatim; leaf hash = SHA-256(0x00 || bytes). Earlier
                 entries of conversions with statement rows are included.
statement.csv    One row per receivable posting of the entries that belong
                 to the period or settle in it; payable says yes or why not.
settlement.csv   The payable rows summed per ordered pair of partners and
                 currency (mirrored), then per partner; net = owed - owes.
checkpoint.txt   The period's anchor: the log's signed checkpoint
                 (c2sp.org/tlog-checkpoint, Ed25519 signed note).
consistency.txt  RFC 9162 consistency proof that the anchor extends the
                 previous period's anchor, with that anchor's signed note.
proof.txt        One multi-proof of every exported entry against the
                 anchor's root hash.

To verify (exit status 0 and a line starting \"export OK\"):

    crossflow ledger verify <this directory> --vkey <log verifier key>
    python3 examples/verify_export.py export <this directory> --vkey <key file>

Both check the signatures, every leaf hash and proof, that postings balance,
and recompute statement.csv and settlement.csv byte for byte.
"
    )
}

#[cfg(test)]
mod tests;
