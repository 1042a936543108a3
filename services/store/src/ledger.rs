//! The ledger's storage: entries stored verbatim, who is party to each, the
//! complete Merkle subtrees, and every signed checkpoint.
//!
//! Sequencing and integration are separate (as in Tessera and Trillian):
//! [`sequence`] durably assigns the next index inside a domain write, so a
//! conversion and its entry commit or roll back together; the integrator in
//! `crossflow-ledger` later reads new leaf hashes, appends them to its tree
//! frontier and persists the nodes and a checkpoint with
//! [`LedgerStore::integrate`]. Storage never sees a signing key: checkpoints
//! arrive here already signed.
//!
//! Leaf hashes are computed here (SHA-256(0x00 ‖ entry), with `ring`) rather
//! than passed in, so no caller can store an entry under a hash that is not
//! its own. Level-0 tree nodes are those leaf hashes, read from
//! `ledger_entries`; `ledger_nodes` holds levels 1 and up.
//!
//! Sequencing is one row insert: the parties travel in a column of the entry
//! row, and the integrator copies them into the `ledger_parties` index (for
//! ListEntries) in bulk, with the tree nodes. Multi-row inserts there cost
//! far less per row than one statement per party on the request path, which
//! is what keeps durable append within 2x of plain inserts.

use std::{collections::HashMap, fmt::Write as _, future::Future};

use ring::digest::{Context, SHA256};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Migration, Sqlite, StoreError};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0002_ledger",
    sql: "
CREATE TABLE ledger_entries (
    idx            INTEGER PRIMARY KEY,
    bytes          BLOB NOT NULL,
    leaf_hash      BLOB NOT NULL,
    -- Party partner ids joined with ','; indexed into ledger_parties on
    -- integration.
    parties        TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL
) STRICT;
-- ListEntries pages through one partner's integrated entries in index order.
CREATE TABLE ledger_parties (
    partner TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (partner, idx)
) STRICT, WITHOUT ROWID;
-- Complete subtrees of level >= 1: node (level, idx) covers leaves
-- [idx << level, (idx + 1) << level). Written once, never updated.
CREATE TABLE ledger_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;
-- How many entries the stored nodes cover (one row).
CREATE TABLE ledger_tree (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL
) STRICT;
INSERT INTO ledger_tree (id, size) VALUES (0, 0);
CREATE TABLE ledger_checkpoints (
    size         INTEGER PRIMARY KEY,
    root         BLOB NOT NULL,
    note         TEXT NOT NULL,
    signed_at_ms INTEGER NOT NULL
) STRICT;
",
};

/// A tree hash.
pub type Hash = [u8; 32];

/// Where [`sequence`] put an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    pub index: u64,
    pub leaf_hash: Hash,
}

/// A stored ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    /// Exactly the bytes that were sequenced.
    pub bytes: Vec<u8>,
    pub leaf_hash: Hash,
    pub recorded_at_ms: i64,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The signed note, verbatim.
    pub note: String,
    pub signed_at_ms: i64,
}

/// What one integration step persists: the nodes the frontier emitted for
/// the leaves `[old size, size)`, the party index of those entries, and
/// optionally a checkpoint of `size`.
#[derive(Debug, Clone, Default)]
pub struct Integration {
    pub size: u64,
    /// `(level, index, hash)`; level-0 nodes are skipped (they are the
    /// entries' leaf hashes).
    pub nodes: Vec<(u8, u64, Hash)>,
    /// `(partner, index)` rows for `ledger_parties`.
    pub parties: Vec<(String, u64)>,
    pub checkpoint: Option<StoredCheckpoint>,
}

/// A sequenced entry as the integrator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub hash: Hash,
    pub parties: Vec<String>,
}

/// Storage of the ledger, read side and integration.
pub trait LedgerStore: Send + Sync + 'static {
    /// The entry at `index`, if sequenced.
    fn entry(&self, index: u64) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// The partners party to entry `index` (empty if there is no such entry).
    fn parties(&self, index: u64) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `limit` entries with index >= `since`, in index order; only
    /// those `party` is party to, or all when `party` is `None`.
    fn entries(
        &self,
        party: Option<String>,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;

    /// Hashes of the complete subtrees `ids`, in order, in one query.
    fn nodes(
        &self,
        ids: Vec<(u8, u64)>,
    ) -> impl Future<Output = Result<Vec<Hash>, StoreError>> + Send;

    /// Number of sequenced entries.
    fn sequenced_size(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Number of entries the stored tree nodes cover.
    fn tree_size(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Leaf hashes and parties of entries `[from, from + limit)` that
    /// exist, in order.
    fn leaves(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Leaf>, StoreError>> + Send;

    /// Persists one integration step atomically and durably.
    fn integrate(&self, step: Integration) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn latest_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<StoredCheckpoint>, StoreError>> + Send;

    fn checkpoint(
        &self,
        size: u64,
    ) -> impl Future<Output = Result<Option<StoredCheckpoint>, StoreError>> + Send;

    /// Every signed checkpoint, oldest first.
    fn checkpoints(&self)
    -> impl Future<Output = Result<Vec<StoredCheckpoint>, StoreError>> + Send;
}

// === sequencing ===

/// SHA-256(0x00 ‖ entry), the RFC 6962 leaf hash.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Appends `entry` verbatim as the next log entry, inside the caller's write
/// closure (so the domain row and its ledger entry commit or roll back
/// together). `parties` are the partners who may list the entry and get its
/// receipt; duplicates are ignored.
pub fn sequence(
    conn: &Connection,
    entry: &[u8],
    parties: &[&str],
    now_ms: i64,
) -> Result<Sequenced, StoreError> {
    let leaf = leaf_hash(entry);
    let mut joined = String::with_capacity(parties.iter().map(|p| p.len() + 1).sum());
    for p in parties {
        // Partner ids are slugs; anything else would split differently.
        if p.is_empty() || p.contains(',') {
            return Err(StoreError::Corrupt(format!(
                "ledger party {p:?} is not a partner id"
            )));
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(p);
    }
    // The next index is read in the same savepoint as the insert, and the
    // single writer serialises savepoints, so indexes are dense: a rolled
    // back write frees its index for the next one.
    conn.prepare_cached(
        "INSERT INTO ledger_entries (idx, bytes, leaf_hash, parties, recorded_at_ms)
         VALUES ((SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_entries), ?1, ?2, ?3, ?4)",
    )?
    .execute(params![entry, &leaf[..], joined, now_ms])?;
    let index = u64::try_from(conn.last_insert_rowid())
        .map_err(|_| StoreError::Corrupt("negative ledger index".into()))?;
    Ok(Sequenced {
        index,
        leaf_hash: leaf,
    })
}

// === reads, usable inside any read or write closure ===

const ENTRY_COLUMNS: &str = "idx, bytes, leaf_hash, recorded_at_ms";

/// The entry at `index`.
pub fn entry(conn: &Connection, index: u64) -> Result<Option<Entry>, StoreError> {
    let Ok(i) = i64::try_from(index) else {
        return Ok(None);
    };
    conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE idx = ?1"
    ))?
    .query_row([i], |r| Ok(entry_row(r)))
    .optional()?
    .transpose()
}

/// The partners party to entry `index`, sorted and without duplicates.
/// Read from the entry itself, so it holds before integration too.
pub fn parties(conn: &Connection, index: u64) -> Result<Vec<String>, StoreError> {
    let Ok(i) = i64::try_from(index) else {
        return Ok(Vec::new());
    };
    let joined: Option<String> = conn
        .prepare_cached("SELECT parties FROM ledger_entries WHERE idx = ?1")?
        .query_row([i], |r| r.get(0))
        .optional()?;
    Ok(split_parties(joined.as_deref().unwrap_or_default()))
}

fn split_parties(joined: &str) -> Vec<String> {
    let mut v: Vec<String> = joined
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Up to `limit` entries from `since` on, optionally only `party`'s (those
/// are the integrated ones: the party index is written on integration).
pub fn entries(
    conn: &Connection,
    party: Option<&str>,
    since: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match party {
        Some(p) => {
            let mut stmt = conn.prepare_cached(
                "SELECT e.idx, e.bytes, e.leaf_hash, e.recorded_at_ms
                 FROM ledger_parties p JOIN ledger_entries e ON e.idx = p.idx
                 WHERE p.partner = ?1 AND p.idx >= ?2
                 ORDER BY p.idx LIMIT ?3",
            )?;
            stmt.query_map(params![p, since, limit], |r| Ok(entry_row(r)))?
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE idx >= ?1 ORDER BY idx LIMIT ?2"
            ))?;
            stmt.query_map(params![since, limit], |r| Ok(entry_row(r)))?
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    rows.into_iter().collect()
}

/// Hashes of complete subtrees `ids`, in order, with one query. A node that
/// is not stored is `Corrupt`: callers only ask for nodes of integrated trees.
pub fn nodes(conn: &Connection, ids: &[(u8, u64)]) -> Result<Vec<Hash>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut leaves = Vec::new();
    let mut inner = Vec::new();
    for &(level, index) in ids {
        let i = i64::try_from(index)
            .map_err(|_| StoreError::Corrupt(format!("node index {index} out of range")))?;
        if level == 0 {
            leaves.push(i);
        } else {
            inner.push((i64::from(level), i));
        }
    }
    // Placeholders only; values are bound. At most ~130 ids per proof.
    let mut sql = String::new();
    let mut values: Vec<i64> = Vec::with_capacity(leaves.len() + 2 * inner.len());
    if !leaves.is_empty() {
        sql.push_str("SELECT 0, idx, leaf_hash FROM ledger_entries WHERE idx IN (");
        for (n, i) in leaves.iter().enumerate() {
            sql.push_str(if n == 0 { "?" } else { ",?" });
            values.push(*i);
        }
        sql.push(')');
    }
    if !inner.is_empty() {
        if !sql.is_empty() {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str("SELECT level, idx, hash FROM ledger_nodes WHERE (level, idx) IN (VALUES ");
        for (n, (level, i)) in inner.iter().enumerate() {
            let _ = write!(sql, "{}(?,?)", if n == 0 { "" } else { "," });
            values.push(*level);
            values.push(*i);
        }
        sql.push(')');
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut found: HashMap<(u8, u64), Hash> = HashMap::with_capacity(ids.len());
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
    while let Some(r) = rows.next()? {
        let level: i64 = r.get(0)?;
        let index: i64 = r.get(1)?;
        let hash = fixed(r.get::<_, Vec<u8>>(2)?, "node hash")?;
        found.insert((level as u8, index as u64), hash);
    }
    ids.iter()
        .map(|id| {
            found.get(id).copied().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "tree node (level {}, index {}) is not stored",
                    id.0, id.1
                ))
            })
        })
        .collect()
}

/// Number of sequenced entries.
pub fn sequenced_size(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_entries")?
        .query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

/// Number of entries the stored nodes cover.
pub fn tree_size(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT size FROM ledger_tree WHERE id = 0")?
        .query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

/// Leaf hashes and parties of entries `[from, from + limit)`, in order.
pub fn leaves(conn: &Connection, from: u64, limit: usize) -> Result<Vec<Leaf>, StoreError> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT idx, leaf_hash, parties FROM ledger_entries WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![from, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let idx: i64 = r.get(0)?;
        // Indexes are dense; a gap would silently shift every later leaf.
        if idx != from + out.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "ledger entry {} is missing",
                from + out.len() as i64
            )));
        }
        out.push(Leaf {
            hash: fixed(r.get::<_, Vec<u8>>(1)?, "leaf_hash")?,
            parties: split_parties(&r.get::<_, String>(2)?),
        });
    }
    Ok(out)
}

/// Rows per multi-row INSERT: one statement per row costs several times
/// more than a row of a multi-row statement.
const CHUNK: usize = 64;

/// Inserts rows of `width` values each, [`CHUNK`] rows per statement; the
/// short last chunk goes row by row, so only two statements are cached.
fn insert_rows(
    conn: &Connection,
    head: &str,
    width: usize,
    values: &[rusqlite::types::ToSqlOutput<'_>],
) -> Result<(), StoreError> {
    let row = format!("({})", vec!["?"; width].join(","));
    let sql = |n: usize| format!("{head}{}", vec![row.as_str(); n].join(","));
    let mut chunks = values.chunks_exact(width * CHUNK);
    if chunks.len() > 0 {
        let mut stmt = conn.prepare_cached(&sql(CHUNK))?;
        for c in &mut chunks {
            stmt.execute(rusqlite::params_from_iter(c.iter()))?;
        }
    }
    if !chunks.remainder().is_empty() {
        let mut stmt = conn.prepare_cached(&sql(1))?;
        for r in chunks.remainder().chunks(width) {
            stmt.execute(rusqlite::params_from_iter(r.iter()))?;
        }
    }
    Ok(())
}

/// Persists `step` in the caller's write closure.
pub fn integrate(conn: &Connection, step: &Integration) -> Result<(), StoreError> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    let mut values: Vec<ToSqlOutput<'_>> = Vec::with_capacity(3 * step.nodes.len());
    for (level, index, hash) in step.nodes.iter().filter(|n| n.0 > 0) {
        values.push(ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*level))));
        values.push(ToSqlOutput::Borrowed(ValueRef::Integer(*index as i64)));
        values.push(ToSqlOutput::Borrowed(ValueRef::Blob(&hash[..])));
    }
    insert_rows(
        conn,
        "INSERT INTO ledger_nodes (level, idx, hash) VALUES ",
        3,
        &values,
    )?;
    values.clear();
    for (partner, index) in &step.parties {
        values.push(ToSqlOutput::Borrowed(ValueRef::Text(partner.as_bytes())));
        values.push(ToSqlOutput::Borrowed(ValueRef::Integer(*index as i64)));
    }
    insert_rows(
        conn,
        "INSERT INTO ledger_parties (partner, idx) VALUES ",
        2,
        &values,
    )?;
    conn.prepare_cached("UPDATE ledger_tree SET size = ?1 WHERE id = 0")?
        .execute([step.size as i64])?;
    if let Some(c) = &step.checkpoint {
        conn.prepare_cached(
            "INSERT INTO ledger_checkpoints (size, root, note, signed_at_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![c.size as i64, &c.root[..], c.note, c.signed_at_ms])?;
    }
    Ok(())
}

const CHECKPOINT_COLUMNS: &str = "size, root, note, signed_at_ms";

pub fn latest_checkpoint(conn: &Connection) -> Result<Option<StoredCheckpoint>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoints ORDER BY size DESC LIMIT 1"
    ))?
    .query_row([], |r| Ok(checkpoint_row(r)))
    .optional()?
    .transpose()
}

pub fn checkpoint(conn: &Connection, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
    let Ok(size) = i64::try_from(size) else {
        return Ok(None);
    };
    conn.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoints WHERE size = ?1"
    ))?
    .query_row([size], |r| Ok(checkpoint_row(r)))
    .optional()?
    .transpose()
}

pub fn checkpoints(conn: &Connection) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoints ORDER BY size"
    ))?;
    let rows = stmt
        .query_map([], |r| Ok(checkpoint_row(r)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().collect()
}

fn entry_row(r: &Row<'_>) -> Result<Entry, StoreError> {
    Ok(Entry {
        index: r.get::<_, i64>(0)? as u64,
        bytes: r.get(1)?,
        leaf_hash: fixed(r.get::<_, Vec<u8>>(2)?, "leaf_hash")?,
        recorded_at_ms: r.get(3)?,
    })
}

fn checkpoint_row(r: &Row<'_>) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: r.get::<_, i64>(0)? as u64,
        root: fixed(r.get::<_, Vec<u8>>(1)?, "checkpoint root")?,
        note: r.get(2)?,
        signed_at_ms: r.get(3)?,
    })
}

fn fixed(v: Vec<u8>, what: &str) -> Result<Hash, StoreError> {
    v.try_into()
        .map_err(|v: Vec<u8>| StoreError::Corrupt(format!("{what} has {} bytes, want 32", v.len())))
}

// === impl Sqlite ===

impl LedgerStore for Sqlite {
    async fn entry(&self, index: u64) -> Result<Option<Entry>, StoreError> {
        self.db.read(move |c| entry(c, index)).await
    }

    async fn parties(&self, index: u64) -> Result<Vec<String>, StoreError> {
        self.db.read(move |c| parties(c, index)).await
    }

    async fn entries(
        &self,
        party: Option<String>,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.db
            .read(move |c| entries(c, party.as_deref(), since, limit))
            .await
    }

    async fn nodes(&self, ids: Vec<(u8, u64)>) -> Result<Vec<Hash>, StoreError> {
        self.db.read(move |c| nodes(c, &ids)).await
    }

    async fn sequenced_size(&self) -> Result<u64, StoreError> {
        self.db.read(sequenced_size).await
    }

    async fn tree_size(&self) -> Result<u64, StoreError> {
        self.db.read(tree_size).await
    }

    async fn leaves(&self, from: u64, limit: usize) -> Result<Vec<Leaf>, StoreError> {
        self.db.read(move |c| leaves(c, from, limit)).await
    }

    async fn integrate(&self, step: Integration) -> Result<(), StoreError> {
        self.db.write(move |c| integrate(c, &step)).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.db.read(latest_checkpoint).await
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.db.read(move |c| checkpoint(c, size)).await
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.db.read(checkpoints).await
    }
}

#[cfg(test)]
mod tests;
