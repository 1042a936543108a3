//! The ledger's storage: entries stored verbatim, who is party to each, the
//! complete Merkle subtrees, and every signed checkpoint.
//!
//! Sequencing and integration are separate (as in Tessera and Trillian):
//! [`append`] (or [`sequence`]) durably assigns the next index inside a
//! domain write, so a conversion and its entry commit or roll back together;
//! the integrator in `crossflow-ledger` later takes the new leaf hashes
//! (handed over in memory by the writer, see `Handoff`, or read back),
//! appends them to its tree frontier and persists the nodes and a checkpoint with
//! [`LedgerStore::integrate`]. Storage never sees a signing key: checkpoints
//! arrive here already signed.
//!
//! Leaf hashes are computed here (SHA-256(0x00 ‖ entry), with `ring`) rather
//! than passed in, so no caller can store an entry under a hash that is not
//! its own. Level-0 tree nodes are those leaf hashes, read from
//! `ledger_entries`; `ledger_nodes` holds some levels above them (see below).
//!
//! Sequencing is one row insert: the parties travel in a column of the entry
//! row, and the integrator indexes them for ListEntries with the tree nodes.
//!
//! Since migration `0007_ledger_compact` both of the integrator's tables are
//! compact, in the spirit of Tessera's tiles, because the single writer's
//! cost is per row: a row per tree node and per (partner, entry) made
//! integration write ~3 rows per entry on top of the entry itself.
//!
//! - `ledger_nodes` keeps only levels 3, 7, 11, ... ([`stored_level`]): about
//!   one row per 7.5 entries. Any other complete subtree is rehashed from at
//!   most 8 stored nodes (or 4 leaf hashes) one stored level below it, so
//!   [`nodes`] still answers any complete subtree in one query, with a bounded
//!   number of rows per asked node.
//! - `ledger_party_blocks` holds one row per partner per integration step
//!   (at most [`BLOCK_MAX`] indexes): first and last index, and the gaps
//!   between consecutive indexes as LEB128 varints.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    future::Future,
    ops::Range,
    sync::{Arc, Mutex},
};

use ring::digest::{Context, SHA256};

use crate::{
    Database, Durability, Migration, StoreError,
    sql::{Conn, ConnExt, Dialect, Row, RowExt, Value, blob, to_i64},
    values,
};

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

/// Compacts the party index into per-partner blocks and drops the tree
/// nodes that are no longer stored. Existing `(partner, idx)` rows become
/// blocks of one index (an empty gap list), which [`entries`] reads like any
/// other block.
pub(crate) const MIGRATION_COMPACT: Migration = Migration {
    name: "0007_ledger_compact",
    sql: "
CREATE TABLE ledger_party_blocks (
    partner   TEXT NOT NULL,
    first_idx INTEGER NOT NULL,
    last_idx  INTEGER NOT NULL,
    -- LEB128 varints: idx[i] - idx[i-1] for every index after the first.
    gaps      BLOB NOT NULL,
    PRIMARY KEY (partner, last_idx)
) STRICT, WITHOUT ROWID;
INSERT INTO ledger_party_blocks (partner, first_idx, last_idx, gaps)
    SELECT partner, idx, idx, X'' FROM ledger_parties;
DROP TABLE ledger_parties;
-- Keep levels 3, 7, 11, ...: see stored_level().
DELETE FROM ledger_nodes WHERE level % 4 != 3;
",
};

/// Most indexes in one party block: bounds what one ListEntries page decodes
/// beyond what it returns.
pub const BLOCK_MAX: usize = 1024;

/// Whether complete subtrees of `level` are kept in `ledger_nodes`. Level 0
/// is the entries' leaf hashes; levels 1 and 2 are rehashed from up to 4
/// leaves, and a level `4k + 3 + r` (r = 1..3) from `2^r` nodes of level
/// `4k + 3`.
pub const fn stored_level(level: u8) -> bool {
    level % 4 == 3
}

/// The stored level a node of `level` is rehashed from (itself if stored;
/// 0 means the leaf hashes).
const fn base_level(level: u8) -> u8 {
    if level < 3 {
        0
    } else {
        level - (level - 3) % 4
    }
}

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
    /// `(level, index, hash)` as the frontier emits them; only the levels
    /// [`stored_level`] keeps are persisted (level 0 is the entries' leaf
    /// hashes).
    pub nodes: Vec<(u8, u64, Hash)>,
    /// Each integrated entry's index and parties, packed into one party
    /// block per partner.
    pub parties: Vec<(u64, Arc<[String]>)>,
    pub checkpoint: Option<StoredCheckpoint>,
    /// The leader epoch the integrator was elected in, with several
    /// replicas (PostgreSQL): the step is refused ([`StoreError::Fenced`])
    /// unless it is still the current one. `None` for a single writer.
    pub epoch: Option<u64>,
}

/// A sequenced entry as the integrator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub hash: Hash,
    /// Sorted and deduplicated; shared with the writer's hand-off.
    pub parties: Arc<[String]>,
}

/// Storage of the ledger, read side and integration.
pub trait LedgerStore: Send + Sync + 'static {
    /// The entry at `index`, if sequenced.
    fn entry(&self, index: u64) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// The partners party to entry `index` (empty if there is no such entry).
    fn parties(&self, index: u64) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `limit` entries with an index in `range`, in index order; only
    /// those `party` is party to, or all when `party` is `None`.
    fn entries(
        &self,
        party: Option<String>,
        range: Range<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;

    /// Hashes of the complete subtrees `ids`, in order, in one query
    /// (whichever levels are stored: see [`stored_level`]).
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

    /// Persists one integration step atomically; durably if it carries a
    /// checkpoint. A step without one may be lost in a crash, together with
    /// every later step: the tree is derived from the durable entries, and
    /// the integrator recomputes it from them on restart. A checkpoint's
    /// step, written after them, makes every earlier step durable too.
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

/// SHA-256(0x01 ‖ left ‖ right), the RFC 6962 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256(0x00 ‖ entry), the RFC 6962 leaf hash.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An entry ready to be sequenced: its leaf hash and party list computed
/// off the writer thread. The fields are private, so a `Prepared` always
/// carries the hash of its own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    bytes: Vec<u8>,
    leaf: Hash,
    /// Joined with ',', as stored.
    parties: String,
    /// Sorted and deduplicated, as the integrator wants them; shared with
    /// the [`Handoff`] without a copy on the writer thread.
    party_list: Arc<[String]>,
}

// === impl Prepared ===

impl Prepared {
    /// Hashes `entry` and joins `parties`, the partners who may list the
    /// entry and get its receipt (duplicates are ignored when read back).
    pub fn new(entry: Vec<u8>, parties: &[&str]) -> Result<Prepared, StoreError> {
        // Partner ids are slugs; anything else would split differently.
        if let Some(p) = parties.iter().find(|p| p.is_empty() || p.contains(',')) {
            return Err(StoreError::Corrupt(format!(
                "ledger party {p:?} is not a partner id"
            )));
        }
        let mut list: Vec<String> = parties.iter().map(|p| (*p).to_owned()).collect();
        list.sort_unstable();
        list.dedup();
        Ok(Prepared {
            leaf: leaf_hash(&entry),
            bytes: entry,
            parties: parties.join(","),
            party_list: list.into(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn leaf_hash(&self) -> Hash {
        self.leaf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Appends `entry` verbatim as the next log entry, inside the caller's write
/// closure (so the domain row and its ledger entry commit or roll back
/// together). `parties` are the partners who may list the entry and get its
/// receipt; duplicates are ignored. Hot paths hash off the writer with
/// [`Prepared::new`] and call [`append`].
pub fn sequence(
    conn: &dyn Conn,
    entry: &[u8],
    parties: &[&str],
    now_ms: i64,
) -> Result<Sequenced, StoreError> {
    append(conn, &Prepared::new(entry.to_vec(), parties)?, now_ms)
}

/// Appends a prepared entry as the next log entry, inside the caller's write
/// closure: one row insert, no hashing. To append many in one closure,
/// [`Appender`] keeps the statement between them.
pub fn append(conn: &dyn Conn, entry: &Prepared, now_ms: i64) -> Result<Sequenced, StoreError> {
    Appender::new(conn)?.append(entry, now_ms)
}

/// Appends prepared entries in one write closure, with the writer's
/// hand-off looked up once rather than per entry.
pub struct Appender<'c> {
    conn: &'c dyn Conn,
    handoff: Option<Arc<Handoff>>,
}

impl std::fmt::Debug for Appender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("handoff", &self.handoff.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Appender ===

impl<'c> Appender<'c> {
    pub fn new(conn: &'c dyn Conn) -> Result<Appender<'c>, StoreError> {
        Ok(Appender {
            conn,
            handoff: Handoff::of_this_writer(),
        })
    }

    /// Appends `entry` as the next log entry.
    pub fn append(&mut self, entry: &Prepared, now_ms: i64) -> Result<Sequenced, StoreError> {
        let index = match self.conn.dialect() {
            Dialect::Sqlite => self.append_sqlite(entry, now_ms)?,
            Dialect::Postgres => self.append_postgres(entry, now_ms)?,
        };
        if let Some(h) = &self.handoff {
            h.push(index, entry.leaf, &entry.party_list);
        }
        Ok(Sequenced {
            index,
            leaf_hash: entry.leaf,
        })
    }

    fn append_sqlite(&mut self, entry: &Prepared, now_ms: i64) -> Result<u64, StoreError> {
        // SQLite gives a NULL INTEGER PRIMARY KEY the largest rowid plus one,
        // by seeking the table's last cell; that is the next index, and the
        // single writer runs one write at a time, so indexes are dense: a
        // rolled-back write (or batch) frees its indexes for the next. (An
        // explicit `MAX(idx) + 1` costs a second seek and a subquery per
        // entry: a third of the append.) The one exception is the empty
        // table, where SQLite starts at 1 and the log at 0.
        //
        // RETURNING reads the rowid the insert was given.
        let conn = self.conn;
        let mut index = conn.query_int(
            "INSERT INTO ledger_entries (bytes, leaf_hash, parties, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4) RETURNING idx",
            values![&entry.bytes, &entry.leaf, &entry.parties, now_ms],
        )?;
        if index == 1
            && conn
                .query_opt(
                    "SELECT 1 FROM ledger_entries WHERE idx = 0",
                    &[],
                    |_| Ok(()),
                )?
                .is_none()
        {
            conn.execute("UPDATE ledger_entries SET idx = 0 WHERE idx = 1", &[])?;
            index = 0;
        }
        u64::try_from(index).map_err(|_| StoreError::Corrupt("negative ledger index".into()))
    }

    /// Several replicas append at once: the index comes from the
    /// connection, which locks `ledger_head` at the transaction's first
    /// append and writes the count back before it commits (see
    /// `crate::pg`). Another replica's append waits for that lock, so
    /// indexes are gapless and assigned in commit order, as in Tessera's
    /// MySQL backend.
    fn append_postgres(&mut self, entry: &Prepared, now_ms: i64) -> Result<u64, StoreError> {
        let index = self.conn.next_ledger_index()?.ok_or_else(|| {
            StoreError::Corrupt("a PostgreSQL append outside the store's writer".into())
        })?;
        self.conn.insert_ledger_entry(crate::sql::LedgerRow {
            index: to_i64(index)?,
            bytes: &entry.bytes,
            leaf_hash: &entry.leaf,
            parties: &entry.parties,
            recorded_at_ms: now_ms,
        })?;
        Ok(index)
    }
}

// === the writer's hand-off to the integrator ===

/// Most appended leaves held for the integrator (about 100 bytes each);
/// beyond this the oldest are dropped and the integrator reads them back.
const HANDOFF_MAX: usize = 1 << 15;

/// Leaf hashes and parties of the entries the writer appended, kept in
/// memory so the integrator need not read back what the writer just wrote
/// (reading them back cost about a sixth of the CPU of a full-speed append;
/// Tessera's sequencer likewise hands its integrator the leaves).
///
/// In index order. A write that rolls back leaves its leaf here, but its
/// index is reused by the next append, which drops it (and anything after
/// it) before any commit; and [`Handoff::take`] hands out only indexes below
/// the committed size it is given, so a rolled-back leaf is never
/// integrated. Anything not held (after a restart, past [`HANDOFF_MAX`],
/// appends outside a writer thread) is read from the store as before.
#[derive(Debug, Default)]
#[doc(hidden)]
pub struct Handoff {
    leaves: Mutex<VecDeque<HeldLeaf>>,
}

/// An appended entry's index, leaf hash and parties.
type HeldLeaf = (u64, Hash, Arc<[String]>);

thread_local! {
    /// The hand-off of the database whose writer runs on this thread.
    static WRITER_HANDOFF: RefCell<Option<Arc<Handoff>>> = const { RefCell::new(None) };
}

// === impl Handoff ===

impl Handoff {
    /// Makes this thread (a database's writer) feed `handoff`.
    pub(crate) fn install(handoff: Arc<Handoff>) {
        WRITER_HANDOFF.with(|h| *h.borrow_mut() = Some(handoff));
    }

    /// The hand-off this thread feeds, if it is a database's writer.
    fn of_this_writer() -> Option<Arc<Handoff>> {
        WRITER_HANDOFF.with(|h| h.borrow().clone())
    }

    fn push(&self, index: u64, hash: Hash, parties: &Arc<[String]>) {
        let Ok(mut leaves) = self.leaves.lock() else {
            return;
        };
        // An index at or below the newest held one means writes rolled
        // back: their leaves go.
        while leaves.back().is_some_and(|(i, ..)| *i >= index) {
            leaves.pop_back();
        }
        // Only a run of consecutive indexes is useful.
        if leaves.back().is_some_and(|(i, ..)| *i + 1 != index) {
            leaves.clear();
        }
        leaves.push_back((index, hash, parties.clone()));
        if leaves.len() > HANDOFF_MAX {
            leaves.pop_front();
        }
    }

    /// Leaves `[from, to)`, if every one is held; `to` must not exceed the
    /// committed size. Forgets everything below `to` either way: the
    /// integrator never asks for an index twice unless its step failed, and
    /// then it reads the store.
    pub(crate) fn take(&self, from: u64, to: u64) -> Option<Vec<Leaf>> {
        let mut leaves = self.leaves.lock().ok()?;
        let first = leaves.front().map(|(i, ..)| *i)?;
        let (start, end) = (
            from.checked_sub(first).unwrap_or(u64::MAX),
            to.saturating_sub(first),
        );
        let end = usize::try_from(end).unwrap_or(usize::MAX).min(leaves.len());
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let out = (start <= end && (end - start) as u64 == to.saturating_sub(from)).then(|| {
            leaves
                .range(start..end)
                .map(|(_, hash, parties)| Leaf {
                    hash: *hash,
                    parties: parties.clone(),
                })
                .collect()
        });
        leaves.drain(..end);
        out
    }
}

// === reads, usable inside any read or write closure ===

macro_rules! entry_columns {
    () => {
        "idx, bytes, leaf_hash, recorded_at_ms"
    };
}
const ENTRY_BY_INDEX: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger_entries WHERE idx = ?1"
);

/// The entry at `index`.
pub fn entry(conn: &dyn Conn, index: u64) -> Result<Option<Entry>, StoreError> {
    let Ok(i) = i64::try_from(index) else {
        return Ok(None);
    };
    conn.query_opt(ENTRY_BY_INDEX, values![i], entry_row)
}

/// The partners party to entry `index`, sorted and without duplicates.
/// Read from the entry itself, so it holds before integration too.
pub fn parties(conn: &dyn Conn, index: u64) -> Result<Vec<String>, StoreError> {
    let Ok(i) = i64::try_from(index) else {
        return Ok(Vec::new());
    };
    let joined = conn.query_opt(
        "SELECT parties FROM ledger_entries WHERE idx = ?1",
        values![i],
        |r| r.string(0),
    )?;
    Ok(split_parties(joined.as_deref().unwrap_or_default()))
}

/// Partner ids of an entry's `parties` column, sorted, without duplicates.
pub fn split_parties(joined: &str) -> Vec<String> {
    let mut v: Vec<String> = joined
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Up to `limit` entries with an index in `range`, optionally only
/// `party`'s (those are the integrated ones: the party index is written on
/// integration).
pub fn entries(
    conn: &dyn Conn,
    party: Option<&str>,
    range: Range<u64>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let since = i64::try_from(range.start).unwrap_or(i64::MAX);
    let below = i64::try_from(range.end).unwrap_or(i64::MAX);
    let Some(p) = party else {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        return conn.query_vec(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ledger_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx LIMIT ?3"
            ),
            values![since, below, limit],
            entry_row,
        );
    };
    // The blocks that can hold an index >= since, in index order; decode
    // until the page is full.
    let mut wanted: Vec<u64> = Vec::with_capacity(limit.min(BLOCK_MAX));
    conn.query_each(
        "SELECT first_idx, last_idx, gaps FROM ledger_party_blocks
         WHERE partner = ?1 AND last_idx >= ?2 ORDER BY last_idx",
        values![p, since],
        &mut |r| {
            if wanted.len() >= limit {
                return Ok(false);
            }
            let block = decode_block(r.int(0)?, r.int(1)?, r.bytes(2)?)?;
            let from = block.partition_point(|&i| i < range.start);
            let to = block.partition_point(|&i| i < range.end);
            let take = (limit - wanted.len()).min(to.saturating_sub(from));
            wanted.extend_from_slice(&block[from..from + take]);
            // The blocks after this one start at or past the end.
            Ok(to == block.len())
        },
    )?;
    wanted
        .into_iter()
        .map(|i| {
            conn.query_opt(ENTRY_BY_INDEX, values![to_i64(i)?], entry_row)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "party index of {p:?} lists entry {i}, which is not stored"
                    ))
                })
        })
        .collect()
}

/// The indexes of one party block, ascending: `first`, then each LEB128 gap
/// added to the previous index; the last must be `last`.
pub fn decode_block(first: i64, last: i64, gaps: &[u8]) -> Result<Vec<u64>, StoreError> {
    let bad = |why: &str| {
        StoreError::Corrupt(format!(
            "party block ({first}..={last}) is malformed: {why}"
        ))
    };
    let mut at = u64::try_from(first).map_err(|_| bad("negative first index"))?;
    let mut out = Vec::with_capacity(gaps.len() + 1);
    out.push(at);
    let (mut gap, mut shift) = (0u64, 0u32);
    for &b in gaps {
        if shift > 56 {
            return Err(bad("gap varint too long"));
        }
        gap |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            if gap == 0 {
                return Err(bad("indexes not ascending"));
            }
            at = at.checked_add(gap).ok_or_else(|| bad("index overflow"))?;
            out.push(at);
            (gap, shift) = (0, 0);
        }
    }
    if shift != 0 {
        return Err(bad("truncated gap varint"));
    }
    if i64::try_from(at).ok() != Some(last) {
        return Err(bad("last index does not match the gaps"));
    }
    Ok(out)
}

/// The gaps of ascending `indexes` as [`decode_block`] reads them.
fn encode_gaps(indexes: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(indexes.len());
    for w in indexes.windows(2) {
        let mut gap = w[1] - w[0];
        loop {
            let low = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                out.push(low);
                break;
            }
            out.push(low | 0x80);
        }
    }
    out
}

/// Most ranges per node query: SQLite caps a compound SELECT at 500 terms.
const RANGES_PER_QUERY: usize = 400;

/// Hashes of complete subtrees `ids`, in order. Stored levels and leaves are
/// read as they are; any other node is rehashed from the stored level below
/// it. Every row needed is fetched with one query (a range per asked node;
/// more than [`RANGES_PER_QUERY`] nodes take more queries). A row that is
/// not stored is `Corrupt`: callers only ask for nodes of integrated trees.
pub fn nodes(conn: &dyn Conn, ids: &[(u8, u64)]) -> Result<Vec<Hash>, StoreError> {
    // (base level, first index, count) of the stored rows each id needs.
    let mut ranges: Vec<(u8, i64, i64)> = Vec::with_capacity(ids.len());
    for &(level, index) in ids {
        let out_of_range =
            || StoreError::Corrupt(format!("node (level {level}, index {index}) out of range"));
        if level >= 63 {
            return Err(out_of_range());
        }
        let base = base_level(level);
        let width = 1u64 << (level - base);
        // The last row of the range must be addressable too.
        let first = index
            .checked_mul(width)
            .filter(|f| {
                f.checked_add(width - 1)
                    .is_some_and(|l| l <= i64::MAX as u64)
            })
            .and_then(|f| i64::try_from(f).ok())
            .ok_or_else(out_of_range)?;
        ranges.push((base, first, width as i64));
    }
    let mut found: HashMap<(u8, i64), Hash> = HashMap::with_capacity(ids.len() * 4);
    for chunk in ranges.chunks(RANGES_PER_QUERY) {
        fetch_ranges(conn, chunk, &mut found)?;
    }
    ids.iter()
        .zip(&ranges)
        .map(|(&(level, index), &(base, first, width))| {
            let mut row: Vec<Hash> = (first..=first + (width - 1))
                .map(|i| {
                    found.get(&(base, i)).copied().ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "tree node (level {base}, index {i}) is not stored \
                             (asked for level {level}, index {index})"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            while row.len() > 1 {
                row = row
                    .chunks_exact(2)
                    .map(|p| node_hash(&p[0], &p[1]))
                    .collect();
            }
            // `width` >= 1, so one hash is left.
            row.first()
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("node (level {level}) has no rows")))
        })
        .collect()
}

/// One query for the rows `(level, first .. first + count)` of `ranges`.
fn fetch_ranges(
    conn: &dyn Conn,
    ranges: &[(u8, i64, i64)],
    found: &mut HashMap<(u8, i64), Hash>,
) -> Result<(), StoreError> {
    if ranges.is_empty() {
        return Ok(());
    }
    // Placeholders only; values are bound.
    let mut sql = String::new();
    let mut values: Vec<i64> = Vec::with_capacity(3 * ranges.len());
    for (n, &(level, first, count)) in ranges.iter().enumerate() {
        if n > 0 {
            sql.push_str(" UNION ALL ");
        }
        if level == 0 {
            sql.push_str("SELECT 0, idx, leaf_hash FROM ledger_entries WHERE idx BETWEEN ? AND ?");
        } else {
            sql.push_str(
                "SELECT level, idx, hash FROM ledger_nodes WHERE level = ? AND idx BETWEEN ? AND ?",
            );
            values.push(i64::from(level));
        }
        values.push(first);
        // nodes() checked that the last row is addressable.
        values.push(first + (count - 1));
    }
    let values: Vec<Value<'_>> = values.into_iter().map(Value::Int).collect();
    conn.query_each(&sql, &values, &mut |r| {
        let level = r.int(0)?;
        let index = r.int(1)?;
        let hash = blob(r, 2, "node hash")?;
        found.insert((level as u8, index), hash);
        Ok(true)
    })
}

/// Number of sequenced entries.
pub fn sequenced_size(conn: &dyn Conn) -> Result<u64, StoreError> {
    let n = conn.query_int("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_entries", &[])?;
    Ok(n as u64)
}

/// Number of entries the stored nodes cover.
pub fn tree_size(conn: &dyn Conn) -> Result<u64, StoreError> {
    let n = conn.query_int("SELECT size FROM ledger_tree WHERE id = 0", &[])?;
    Ok(n as u64)
}

/// Leaf hashes and parties of entries `[from, from + limit)`, in order.
pub fn leaves(conn: &dyn Conn, from: u64, limit: usize) -> Result<Vec<Leaf>, StoreError> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    conn.query_each(
        "SELECT idx, leaf_hash, parties FROM ledger_entries WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
        values![from, limit],
        &mut |r| {
            let idx = r.int(0)?;
            // Indexes are dense; a gap would silently shift every later leaf.
            if idx != from + out.len() as i64 {
                return Err(StoreError::Corrupt(format!(
                    "ledger entry {} is missing",
                    from + out.len() as i64
                )));
            }
            out.push(Leaf {
                hash: blob(r, 1, "leaf_hash")?,
                parties: split_parties(r.text(2)?).into(),
            });
            Ok(true)
        },
    )?;
    Ok(out)
}

/// Rows per multi-row INSERT: one statement per row costs several times
/// more than a row of a multi-row statement.
const CHUNK: usize = 64;

/// Inserts rows of `width` values each, [`CHUNK`] rows per statement; the
/// short last chunk goes row by row, so only two statements are cached.
fn insert_rows(
    conn: &dyn Conn,
    head: &str,
    width: usize,
    values: &[Value<'_>],
) -> Result<(), StoreError> {
    let row = format!("({})", vec!["?"; width].join(","));
    let sql = |n: usize| format!("{head}{}", vec![row.as_str(); n].join(","));
    let mut chunks = values.chunks_exact(width * CHUNK);
    if chunks.len() > 0 {
        let sql = sql(CHUNK);
        for c in &mut chunks {
            conn.execute(&sql, c)?;
        }
    }
    if !chunks.remainder().is_empty() {
        let sql = sql(1);
        for r in chunks.remainder().chunks(width) {
            conn.execute(&sql, r)?;
        }
    }
    Ok(())
}

/// Persists `step` in the caller's write closure: the nodes of stored
/// levels (others are dropped: [`nodes`] rehashes them), one party block per
/// partner (per [`BLOCK_MAX`] indexes), the tree size and the checkpoint.
pub fn integrate(conn: &dyn Conn, step: &Integration) -> Result<(), StoreError> {
    if let Some(epoch) = step.epoch
        && conn.dialect() == Dialect::Postgres
    {
        crate::leader::fence(conn, epoch)?;
    }
    // The step extends the stored tree by one leaf per party entry: from
    // any other size, it was computed from a tree some other integrator
    // has moved on from since.
    let from = step
        .size
        .checked_sub(step.parties.len() as u64)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "integration to size {} with {} leaves",
                step.size,
                step.parties.len()
            ))
        })?;
    let moved = conn.execute(
        "UPDATE ledger_tree SET size = ?1 WHERE id = 0 AND size = ?2",
        values![to_i64(step.size)?, to_i64(from)?],
    )?;
    if moved != 1 {
        return Err(StoreError::Corrupt(format!(
            "the stored tree is not of size {from}, which an integration to {} extends",
            step.size
        )));
    }
    let mut values: Vec<Value<'_>> = Vec::with_capacity(step.nodes.len());
    for (level, index, hash) in step.nodes.iter().filter(|n| stored_level(n.0)) {
        values.push(Value::Int(i64::from(*level)));
        values.push(Value::Int(*index as i64));
        values.push(Value::Blob(&hash[..]));
    }
    insert_rows(
        conn,
        "INSERT INTO ledger_nodes (level, idx, hash) VALUES ",
        3,
        &values,
    )?;
    let mut by_partner: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (index, parties) in &step.parties {
        for partner in parties.iter() {
            by_partner.entry(partner).or_default().push(*index);
        }
    }
    for (partner, mut indexes) in by_partner {
        indexes.sort_unstable();
        indexes.dedup();
        for b in indexes.chunks(BLOCK_MAX) {
            let (first, last) = (b[0], b[b.len() - 1]);
            let first = i64::try_from(first)
                .map_err(|_| StoreError::Corrupt(format!("ledger index {first} out of range")))?;
            let last = i64::try_from(last)
                .map_err(|_| StoreError::Corrupt(format!("ledger index {last} out of range")))?;
            conn.execute(
                "INSERT INTO ledger_party_blocks (partner, first_idx, last_idx, gaps) \
                 VALUES (?1, ?2, ?3, ?4)",
                values![partner, first, last, &encode_gaps(b)],
            )?;
        }
    }

    if let Some(c) = &step.checkpoint {
        conn.execute(
            "INSERT INTO ledger_checkpoints (size, root, note, signed_at_ms) VALUES (?1, ?2, ?3, ?4)",
            values![to_i64(c.size)?, &c.root, &c.note, c.signed_at_ms],
        )?;
    }
    Ok(())
}

macro_rules! checkpoint_columns {
    () => {
        "size, root, note, signed_at_ms"
    };
}

pub fn latest_checkpoint(conn: &dyn Conn) -> Result<Option<StoredCheckpoint>, StoreError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM ledger_checkpoints ORDER BY size DESC LIMIT 1"
        ),
        &[],
        checkpoint_row,
    )
}

/// The largest checkpoint signed before `before_ms` (a period close's
/// anchor), read without loading every checkpoint.
pub fn latest_checkpoint_before(
    conn: &dyn Conn,
    before_ms: i64,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM ledger_checkpoints WHERE signed_at_ms < ?1 ORDER BY size DESC LIMIT 1"
        ),
        values![before_ms],
        checkpoint_row,
    )
}

pub fn checkpoint(conn: &dyn Conn, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
    let Ok(size) = i64::try_from(size) else {
        return Ok(None);
    };
    conn.query_opt(
        concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM ledger_checkpoints WHERE size = ?1"
        ),
        values![size],
        checkpoint_row,
    )
}

pub fn checkpoints(conn: &dyn Conn) -> Result<Vec<StoredCheckpoint>, StoreError> {
    conn.query_vec(
        concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM ledger_checkpoints ORDER BY size"
        ),
        &[],
        checkpoint_row,
    )
}

fn entry_row(r: &dyn Row) -> Result<Entry, StoreError> {
    Ok(Entry {
        index: r.uint(0)?,
        bytes: r.bytes(1)?.to_vec(),
        leaf_hash: blob(r, 2, "leaf_hash")?,
        recorded_at_ms: r.int(3)?,
    })
}

fn checkpoint_row(r: &dyn Row) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: r.uint(0)?,
        root: blob(r, 1, "checkpoint root")?,
        note: r.string(2)?,
        signed_at_ms: r.int(3)?,
    })
}

// === impl Database ===

impl<D: Database> LedgerStore for D {
    async fn entry(&self, index: u64) -> Result<Option<Entry>, StoreError> {
        self.read(move |c| entry(c, index)).await
    }

    async fn parties(&self, index: u64) -> Result<Vec<String>, StoreError> {
        self.read(move |c| parties(c, index)).await
    }

    async fn entries(
        &self,
        party: Option<String>,
        range: Range<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.read(move |c| entries(c, party.as_deref(), range, limit))
            .await
    }

    async fn nodes(&self, ids: Vec<(u8, u64)>) -> Result<Vec<Hash>, StoreError> {
        self.read(move |c| nodes(c, &ids)).await
    }

    async fn sequenced_size(&self) -> Result<u64, StoreError> {
        self.read(|c| sequenced_size(c)).await
    }

    async fn tree_size(&self) -> Result<u64, StoreError> {
        self.read(|c| tree_size(c)).await
    }

    async fn leaves(&self, from: u64, limit: usize) -> Result<Vec<Leaf>, StoreError> {
        let handoff = self.handoff();
        self.read(move |c| {
            // The committed size first: the writer hands a leaf over
            // before its commit, so everything below it is final.
            let to = sequenced_size(c)?.min(from.saturating_add(limit as u64));
            if let Some(held) = handoff.as_ref().and_then(|h| h.take(from, to)) {
                return Ok(held);
            }
            leaves(c, from, limit)
        })
        .await
    }

    async fn integrate(&self, step: Integration) -> Result<(), StoreError> {
        // Steps without a checkpoint are rebuilt from the entries after a
        // crash; a checkpoint must be durable before it is published.
        let durability = match step.checkpoint {
            Some(_) => Durability::Fsynced,
            None => Durability::Committed,
        };
        self.write_as(durability, move |c| integrate(c, &step))
            .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.read(|c| latest_checkpoint(c)).await
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.read(move |c| checkpoint(c, size)).await
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.read(|c| checkpoints(c)).await
    }
}

#[cfg(test)]
mod tests;
