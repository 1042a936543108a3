//! `crossflow store copy`: moves a federation that outgrew the embedded
//! SQLite store to PostgreSQL, with the gateway stopped.
//!
//! The source is opened as the gateway opens it (so a running gateway's
//! lock refuses the copy, and the schema is migrated to this binary's). The
//! target is connected and migrated as a replica would, and must be empty.
//! Every table is then copied in ONE target transaction, which first locks
//! every table (a replica started meanwhile waits rather than writing
//! beside the copy) and is verified before it commits: row counts, the
//! ledger fsck, the latest checkpoint, and consistency proofs from the
//! last SQLite checkpoints to the copied tree. A failed copy leaves the
//! target as empty as it found it.
//!
//! Rows are read and bound through the store's neutral `Conn` only, by the
//! column list of [`TABLES`] (which doubles as the record of what a copy
//! carries); before copying, that list is compared with the columns both
//! databases actually have, so a column or table this binary does not know
//! stops the copy instead of being left behind.

use std::{fmt::Write as _, path::Path, time::Instant};

use crossflow_ledger::{Verifier, export::StoreNodes, fsck, merkle};
use crossflow_store::{
    Postgres, Sqlite, StoreError, ledger,
    pg::PgConn,
    pg_schema,
    sql::{Conn, ConnExt, Row, RowExt, Value, to_i64},
    values,
};

use self::Ty::{Blob, Int, Text};

/// Rows per multi-row INSERT, at most (PostgreSQL binds at most 65535
/// parameters per statement; the widest table has 22 columns).
const ROWS_PER_INSERT: usize = 256;

/// A column's type, the same in both schemas: `INTEGER`/`BIGINT`,
/// `TEXT`, `BLOB`/`BYTEA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Text,
    Blob,
}

/// A table copied row by row, in primary-key order.
#[derive(Debug)]
struct Table {
    name: &'static str,
    order_by: &'static str,
    columns: &'static [(&'static str, Ty)],
}

/// Every table of the store's data, with its columns as SQLite and
/// PostgreSQL store them (nullable ones are read as NULL too).
/// `ledger_tree` (one row) is copied as an update of the target's row, and
/// PostgreSQL's own `ledger_head` (the next index) and `ledger_leader`
/// (the election epoch, left as it is) have no SQLite counterpart.
const TABLES: &[Table] = &[
    Table {
        name: "landings",
        order_by: "referral_id",
        columns: &[
            ("referral_id", Blob),
            ("agreement_id", Text),
            ("from_partner", Text),
            ("to_partner", Text),
            ("chain", Text),
            ("hop", Int),
            ("parent_id", Blob),
            ("target", Text),
            ("origin", Text),
            ("origin_uid", Blob),
            ("dest_uid", Blob),
            ("issued_at_ms", Int),
            ("expires_at_ms", Int),
            ("redeemed_at_ms", Int),
            ("tag_access", Int),
        ],
    },
    Table {
        name: "ledger_entries",
        order_by: "idx",
        columns: &[
            ("idx", Int),
            ("bytes", Blob),
            ("leaf_hash", Blob),
            ("parties", Text),
            ("recorded_at_ms", Int),
        ],
    },
    Table {
        name: "ledger_nodes",
        order_by: "level, idx",
        columns: &[("level", Int), ("idx", Int), ("hash", Blob)],
    },
    Table {
        name: "ledger_checkpoints",
        order_by: "size",
        columns: &[
            ("size", Int),
            ("root", Blob),
            ("note", Text),
            ("signed_at_ms", Int),
        ],
    },
    Table {
        name: "ledger_party_blocks",
        order_by: "partner, last_idx",
        columns: &[
            ("partner", Text),
            ("first_idx", Int),
            ("last_idx", Int),
            ("gaps", Blob),
        ],
    },
    Table {
        name: "ledger_periods",
        order_by: "period",
        columns: &[
            ("period", Text),
            ("anchor_size", Int),
            ("previous_anchor_size", Int),
            ("timezone", Text),
            ("closed_at_ms", Int),
        ],
    },
    Table {
        name: "quota_counters",
        order_by: "day, key",
        columns: &[("day", Text), ("key", Text), ("count", Int)],
    },
    Table {
        name: "conversions",
        order_by: "conversion_id",
        columns: &[
            ("conversion_id", Blob),
            ("reporter", Text),
            ("order_id", Text),
            ("buyer_uid", Blob),
            ("amount_minor", Int),
            ("currency", Text),
            ("category", Text),
            ("occurred_at_ms", Int),
            ("referral_id", Blob),
            ("recorded_at_ms", Int),
            ("status", Text),
            ("model", Text),
            ("touches", Int),
            ("commission_minor", Int),
            ("payouts", Text),
            ("refunded_minor", Int),
            ("held", Int),
            ("hold_reason", Text),
            ("confirmed_at_ms", Int),
            ("report_index", Int),
            ("report_leaf", Blob),
            ("latest_index", Int),
        ],
    },
    Table {
        name: "conversion_updates",
        order_by: "conversion_id, seq",
        columns: &[
            ("conversion_id", Blob),
            ("seq", Int),
            ("event", Text),
            ("request_id", Text),
            ("refund_minor", Int),
            ("entry_index", Int),
            ("leaf_hash", Blob),
            ("recorded_at_ms", Int),
        ],
    },
    Table {
        name: "tags",
        order_by: "owner, uid, namespace, value",
        columns: &[
            ("owner", Text),
            ("uid", Blob),
            ("namespace", Text),
            ("value", Text),
            ("published_at_ms", Int),
            ("expires_at_ms", Int),
        ],
    },
    Table {
        name: "tag_requests",
        order_by: "owner, request_id",
        columns: &[
            ("owner", Text),
            ("request_id", Text),
            ("fingerprint", Blob),
            ("published_at_ms", Int),
            ("expires_at_ms", Int),
        ],
    },
    Table {
        name: "tag_opt_outs",
        order_by: "uid",
        columns: &[("uid", Blob), ("owner", Text), ("opted_out_at_ms", Int)],
    },
    Table {
        // Ids are kept (audits cite them); the identity sequence is moved
        // past them afterwards.
        name: "tag_disclosures",
        order_by: "id",
        columns: &[
            ("id", Int),
            ("disclosed_at_ms", Int),
            ("owner", Text),
            ("reader", Text),
            ("uid", Blob),
            ("agreement_id", Text),
            ("referral_id", Blob),
            ("namespaces", Text),
            ("tag_count", Int),
            ("pseudonym_epoch", Int),
        ],
    },
];

/// Tables besides [`TABLES`] that are not data to copy: each side's
/// migration record, the one-row tree size, and PostgreSQL's own.
const NOT_COPIED: &[&str] = &[
    "schema_migrations",
    "ledger_tree",
    "ledger_head",
    "ledger_leader",
];

/// Why a copy was refused or failed (the target is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Refused(String),
    #[error("the source store: {0}")]
    Source(StoreError),
    #[error("PostgreSQL: {0}")]
    Target(StoreError),
    #[error("the copy does not verify, nothing was committed: {0}")]
    Verify(String),
}

/// What to copy, from the two configs.
#[derive(Debug)]
pub struct Plan<'a> {
    /// `gateway.data_dir` of the SQLite config.
    pub data_dir: &'a Path,
    /// The PostgreSQL URL of the target config (never printed).
    pub url: &'a str,
    /// The log's verifier key and origin, for the fsck of the copy.
    pub verifier: &'a Verifier,
    pub origin: &'a str,
}

/// What was copied.
#[derive(Debug)]
pub struct Copied {
    /// `host:port` of the target.
    pub host: String,
    /// Rows per table, in copy order.
    pub rows: Vec<(&'static str, u64)>,
    pub tree_size: u64,
    pub root: merkle::Hash,
    /// The source checkpoints (size) a consistency proof from which to the
    /// copied tree verified, latest first, with the proof's hash count.
    pub proofs: Vec<(u64, usize)>,
    pub fsck: fsck::Report,
    pub millis: u128,
}

/// One value read from the source, owned until it is bound.
#[derive(Debug)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

// === impl Cell ===

impl Cell {
    fn read(r: &dyn Row, idx: usize, ty: Ty) -> Result<Cell, StoreError> {
        Ok(match ty {
            Int => r.opt_int(idx)?.map_or(Cell::Null, Cell::Int),
            Text => r
                .opt_text(idx)?
                .map_or(Cell::Null, |t| Cell::Text(t.to_owned())),
            Blob => r
                .opt_bytes(idx)?
                .map_or(Cell::Null, |b| Cell::Blob(b.to_vec())),
        })
    }

    fn value(&self) -> Value<'_> {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::Int(*i),
            Cell::Text(t) => Value::Text(t),
            Cell::Blob(b) => Value::Blob(b),
        }
    }
}

// === impl Copied ===

impl Copied {
    /// What `crossflow store copy` prints.
    pub fn summary(&self, source: &Path) -> String {
        let mut out = format!(
            "copied {} to PostgreSQL at {} in one transaction ({} ms):\n",
            source.display(),
            self.host,
            self.millis
        );
        let width = self.rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        for (table, n) in &self.rows {
            let _ = writeln!(out, "  {table:<width$}  {n:>9} rows");
        }
        let _ = writeln!(
            out,
            "ledger: tree size {}, root {}",
            self.tree_size,
            crossflow_ledger::cli::base64_hash(&self.root)
        );
        match self.proofs.first() {
            Some((latest, _)) => {
                let from: Vec<String> = self
                    .proofs
                    .iter()
                    .map(|(size, hashes)| format!("{size} ({hashes} hashes)"))
                    .collect();
                let _ = writeln!(
                    out,
                    "checkpoint {latest} is the source's latest; consistency proofs to the copied tree of size {} verify from checkpoints {}",
                    self.tree_size,
                    from.join(", ")
                );
            }
            None => out.push_str("no checkpoint was signed yet\n"),
        }
        let _ = write!(
            out,
            "fsck of the copy: ledger OK: {} entries, tree size {}, {} nodes and {} checkpoints checked",
            self.fsck.entries,
            self.fsck.tree_size,
            self.fsck.nodes_checked,
            self.fsck.checkpoints_checked
        );
        out
    }
}

/// Copies the SQLite store of `plan.data_dir` into the empty PostgreSQL
/// database at `plan.url`. Blocking: call it off the async runtime.
pub fn copy(plan: &Plan<'_>) -> Result<Copied, CopyError> {
    let started = Instant::now();
    let file = plan.data_dir.join("crossflow.db");
    if !file.exists() {
        return Err(CopyError::Refused(format!(
            "{} does not exist: --from must name the config of the SQLite store to copy",
            file.display()
        )));
    }
    let source = Sqlite::open(plan.data_dir).map_err(|e| match e {
        StoreError::Locked(dir) => CopyError::Refused(format!(
            "{} is in use by a running gateway: stop it first (a copy needs the store at rest)",
            dir.display()
        )),
        other => CopyError::Source(other),
    })?;
    let target = Postgres::connect(plan.url, pg_schema::MIGRATIONS).map_err(CopyError::Target);
    let result = target.and_then(|target| {
        let host = target.host().to_owned();
        let copied = target
            .dedicated()
            .map_err(CopyError::Target)
            .and_then(|conn| {
                source
                    .db()
                    .read_blocking(|src| Ok(copy_into(src, &conn, plan)))
                    .map_err(CopyError::Source)?
            });
        target.close();
        copied.map(|mut c| {
            c.host = host;
            c.millis = started.elapsed().as_millis();
            c
        })
    });
    source.db().close();
    result
}

/// The copy proper: one transaction on `dst`, rolled back unless every
/// check passes.
fn copy_into(src: &dyn Conn, dst: &PgConn, plan: &Plan<'_>) -> Result<Copied, CopyError> {
    let pg = CopyError::Target;
    dst.batch("BEGIN").map_err(pg)?;
    let result = (|| {
        // Nothing writes beside the copy (readers may read).
        let all: Vec<&str> = TABLES
            .iter()
            .map(|t| t.name)
            .chain(["ledger_tree", "ledger_head", "ledger_leader"])
            .collect();
        dst.batch(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", all.join(", ")))
            .map_err(pg)?;
        check_schemas(src, dst)?;
        check_empty(dst)?;
        let mut rows = Vec::with_capacity(TABLES.len() + 1);
        for t in TABLES {
            rows.push((t.name, copy_table(src, dst, t)?));
        }
        let tree_size = ledger::tree_size(src).map_err(CopyError::Source)?;
        dst.execute(
            "UPDATE ledger_tree SET size = ?1 WHERE id = 0",
            values![to_i64(tree_size).map_err(pg)?],
        )
        .map_err(pg)?;
        rows.push(("ledger_tree", 1));
        let entries = dst
            .query_int("SELECT COUNT(*) FROM ledger_entries", &[])
            .map_err(pg)?;
        dst.execute(
            "UPDATE ledger_head SET next = ?1 WHERE id = 0",
            values![entries],
        )
        .map_err(pg)?;
        // setval() of an empty table's max (NULL) leaves the sequence be.
        dst.query_each(
            "SELECT setval(pg_get_serial_sequence('tag_disclosures', 'id'), max(id)) \
             FROM tag_disclosures",
            &[],
            &mut |_| Ok(false),
        )
        .map_err(pg)?;
        let copied = verify(src, dst, plan, rows, tree_size)?;
        dst.batch("COMMIT").map_err(pg)?;
        Ok(copied)
    })();
    if result.is_err() {
        let _ = dst.batch("ROLLBACK");
    }
    result
}

/// The columns of every table on both sides are those of [`TABLES`], and
/// neither side has a data table the list lacks.
fn check_schemas(src: &dyn Conn, dst: &dyn Conn) -> Result<(), CopyError> {
    let known = |name: &str| TABLES.iter().any(|t| t.name == name) || NOT_COPIED.contains(&name);
    let src_tables = src
        .query_vec(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            &[],
            |r| r.string(0),
        )
        .map_err(CopyError::Source)?;
    let dst_tables = dst
        .query_vec(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            &[],
            |r| r.string(0),
        )
        .map_err(CopyError::Target)?;
    for (side, tables) in [("the source", &src_tables), ("the target", &dst_tables)] {
        if let Some(t) = tables.iter().find(|t| !known(t)) {
            return Err(CopyError::Refused(format!(
                "{side} has a table {t:?} this version of crossflow does not know how to copy"
            )));
        }
    }
    for t in TABLES {
        let want: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        let src_cols = src
            .query_vec(
                "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
                values![t.name],
                |r| r.string(0),
            )
            .map_err(CopyError::Source)?;
        let dst_cols = dst
            .query_vec(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = ?1 \
                 ORDER BY ordinal_position",
                values![t.name],
                |r| r.string(0),
            )
            .map_err(CopyError::Target)?;
        for (side, cols) in [("source", &src_cols), ("target", &dst_cols)] {
            let mut have: Vec<&str> = cols.iter().map(String::as_str).collect();
            let mut w = want.clone();
            have.sort_unstable();
            w.sort_unstable();
            if have != w {
                return Err(CopyError::Refused(format!(
                    "the {side} table {} has columns {have:?}, this version of crossflow copies {w:?}",
                    t.name
                )));
            }
        }
    }
    Ok(())
}

/// The target holds no data: a copy never merges into a live federation.
/// (A replica started once on the target has signed a checkpoint of the
/// empty log; that database is not empty either: drop and recreate it.)
fn check_empty(dst: &dyn Conn) -> Result<(), CopyError> {
    let mut found = Vec::new();
    for t in TABLES {
        let n = dst
            .query_int(&format!("SELECT COUNT(*) FROM {}", t.name), &[])
            .map_err(CopyError::Target)?;
        if n > 0 {
            found.push(format!("{} has {n} rows", t.name));
        }
    }
    let size = ledger::tree_size(dst).map_err(CopyError::Target)?;
    if size > 0 {
        found.push(format!("ledger_tree has size {size}"));
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(CopyError::Refused(format!(
        "the target database is not empty ({}); copy into a new, empty database",
        found.join(", ")
    )))
}

/// Copies every row of `t`, [`ROWS_PER_INSERT`] per statement; the number
/// of rows.
fn copy_table(src: &dyn Conn, dst: &dyn Conn, t: &Table) -> Result<u64, CopyError> {
    let width = t.columns.len();
    let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let names = names.join(", ");
    let per_insert = ROWS_PER_INSERT.min(32_000 / width);
    let insert = |n: usize| {
        let row = format!("({})", vec!["?"; width].join(","));
        format!(
            "INSERT INTO {} ({names}) VALUES {}",
            t.name,
            vec![row.as_str(); n].join(",")
        )
    };
    let full = insert(per_insert);
    let mut batch: Vec<Cell> = Vec::with_capacity(per_insert * width);
    let mut copied = 0u64;
    let mut failed: Option<CopyError> = None;
    let flush = |batch: &mut Vec<Cell>, sql: &str| -> Result<(), CopyError> {
        let values: Vec<Value<'_>> = batch.iter().map(Cell::value).collect();
        dst.execute(sql, &values).map_err(CopyError::Target)?;
        batch.clear();
        Ok(())
    };
    src.query_each(
        &format!("SELECT {names} FROM {} ORDER BY {}", t.name, t.order_by),
        &[],
        &mut |r| {
            for (i, (_, ty)) in t.columns.iter().enumerate() {
                let cell = Cell::read(r, i, *ty).map_err(|e| {
                    StoreError::Corrupt(format!("{}.{}: {e}", t.name, t.columns[i].0))
                })?;
                batch.push(cell);
            }
            copied += 1;
            if batch.len() == per_insert * width
                && let Err(e) = flush(&mut batch, &full)
            {
                failed = Some(e);
                return Ok(false);
            }
            Ok(true)
        },
    )
    .map_err(CopyError::Source)?;
    if let Some(e) = failed {
        return Err(e);
    }
    if !batch.is_empty() {
        let n = batch.len() / width;
        flush(&mut batch, &insert(n))?;
    }
    Ok(copied)
}

/// Checks the copy inside its transaction: row counts, the ledger fsck of
/// the target, the latest checkpoint, and consistency of the copied tree
/// with the source's last two checkpoints.
fn verify(
    src: &dyn Conn,
    dst: &dyn Conn,
    plan: &Plan<'_>,
    rows: Vec<(&'static str, u64)>,
    tree_size: u64,
) -> Result<Copied, CopyError> {
    let bad = CopyError::Verify;
    for t in TABLES {
        let sql = format!("SELECT COUNT(*) FROM {}", t.name);
        let a = src.query_int(&sql, &[]).map_err(CopyError::Source)?;
        let b = dst.query_int(&sql, &[]).map_err(CopyError::Target)?;
        if a != b {
            return Err(bad(format!(
                "{}: {a} rows in the source, {b} in the target",
                t.name
            )));
        }
    }
    let report =
        fsck::fsck(dst, Some(plan.verifier), Some(plan.origin)).map_err(CopyError::Target)?;
    if !report.ok() {
        let msg = crossflow_ledger::cli::fsck_summary(&report)
            .err()
            .unwrap_or_default();
        return Err(bad(format!("the target's {msg}")));
    }
    let src_latest = ledger::latest_checkpoint(src).map_err(CopyError::Source)?;
    let dst_latest = ledger::latest_checkpoint(dst).map_err(CopyError::Target)?;
    if src_latest != dst_latest {
        return Err(bad(format!(
            "the latest checkpoint is of size {:?} in the source and {:?} in the target",
            src_latest.map(|c| c.size),
            dst_latest.map(|c| c.size)
        )));
    }
    let tree = |e| CopyError::Verify(format!("the copied tree: {e}"));
    let root = merkle::root(tree_size, &StoreNodes(dst)).map_err(tree)?;
    let src_root = merkle::root(tree_size, &StoreNodes(src)).map_err(tree)?;
    if root != src_root {
        return Err(bad(format!(
            "the root at size {tree_size} is {} in the source and {} in the target",
            crossflow_ledger::cli::base64_hash(&src_root),
            crossflow_ledger::cli::base64_hash(&root)
        )));
    }
    // The latest checkpoint, and the newest before it: when the latest
    // covers the whole tree its proof is empty, the other's is not.
    let signed = ledger::checkpoints(src).map_err(CopyError::Source)?;
    let latest = signed.last();
    let before = latest.and_then(|l| signed.iter().rev().find(|c| c.size > 0 && c.size < l.size));
    let mut proofs = Vec::new();
    for c in latest.into_iter().chain(before) {
        // The empty tree is a prefix of every tree: nothing to prove.
        if c.size == 0 {
            proofs.push((0, 0));
            continue;
        }
        let proof = merkle::consistency_proof(c.size, tree_size, &StoreNodes(dst)).map_err(tree)?;
        merkle::verify_consistency(c.size, tree_size, &proof, &c.root, &root).map_err(|e| {
            bad(format!(
                "consistency from the source's checkpoint {} to the copied tree of size {tree_size}: {e}",
                c.size
            ))
        })?;
        proofs.push((c.size, proof.len()));
    }
    Ok(Copied {
        host: String::new(),
        rows,
        tree_size,
        root,
        proofs,
        fsck: report,
        millis: 0,
    })
}
