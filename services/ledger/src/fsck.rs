//! The verifier that ships with the log: recomputes the tree from the stored
//! entry bytes and checks every stored leaf hash, tree node, party-index
//! block and checkpoint against it.
//!
//! It reads one connection (SQLite or PostgreSQL: only the store's neutral
//! [`Conn`]) in one pass over the entries in index order, a page at a time,
//! with memory O(page + log n + partners x block), so it can run beside a
//! live gateway inside one read transaction (a read-only SQLite snapshot,
//! or a REPEATABLE READ one on PostgreSQL). The party index is merged in as
//! it goes: one cursor per partner over that partner's blocks. Stored tree
//! nodes are read per page too (one range query per stored level), not
//! one query per node: on PostgreSQL each query is a round trip.
//!
//! Only some tree levels are stored (`crossflow_store::ledger::stored_level`);
//! the others are rehashed by `ledger::nodes` on every read, so besides
//! comparing each stored row, fsck asks `ledger::nodes` for the right edge
//! of the stored tree (the nodes a restart loads) and compares what it
//! serves with the recomputation.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, VecDeque},
};

use crate::{
    merkle::{self, Frontier},
    note::{Checkpoint, Verifier},
};
use crossflow_store::{
    StoreError, ledger,
    sql::{Conn, ConnExt, RowExt, to_i64},
    values,
};

/// Most problems listed; past it only the count grows.
const MAX_LISTED: usize = 100;

/// Entries read per query.
const PAGE: usize = 4096;

/// What fsck found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    /// Entries covered by stored tree nodes.
    pub tree_size: u64,
    /// Stored node rows compared, plus right-edge nodes read through
    /// `ledger::nodes` and compared.
    pub nodes_checked: u64,
    /// (partner, entry) pairs of the party index compared with the entries.
    pub parties_checked: u64,
    pub checkpoints_checked: u64,
    /// Total problems found (only the first [`MAX_LISTED`] are in `problems`).
    pub problem_count: u64,
    pub problems: Vec<String>,
}

/// One stored entry as fsck reads it.
struct StoredEntry {
    idx: i64,
    bytes: Vec<u8>,
    leaf_hash: Vec<u8>,
    parties: String,
}

// === impl Report ===

impl Report {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        }
    }
}

/// Checks the ledger in `conn`. With `verifier` (and `origin`), every
/// checkpoint's signature and origin are checked too. Run it inside one
/// read transaction for a consistent answer beside a live gateway.
pub fn fsck(
    conn: &dyn Conn,
    verifier: Option<&Verifier>,
    origin: Option<&str>,
) -> Result<Report, StoreError> {
    let mut report = Report {
        tree_size: ledger::tree_size(conn)?,
        ..Report::default()
    };
    let mut checkpoints: VecDeque<_> = ledger::checkpoints(conn)?.into();
    for c in &checkpoints {
        check_note(c, verifier, origin, &mut report);
    }

    let mut frontier = Frontier::new();
    let mut edge: Option<Vec<merkle::Hash>> = (report.tree_size == 0).then(Vec::new);
    let mut parties = PartyCursors::open(conn, &mut report)?;
    check_checkpoints_at(&frontier, &mut checkpoints, &mut report);
    loop {
        let from = frontier.size();
        let page = conn.query_vec(
            "SELECT idx, bytes, leaf_hash, parties FROM ledger_entries \
             WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
            values![to_i64(from)?, to_i64(PAGE as u64)?],
            |r| {
                Ok(StoredEntry {
                    idx: r.int(0)?,
                    bytes: r.bytes(1)?.to_vec(),
                    leaf_hash: r.bytes(2)?.to_vec(),
                    parties: r.string(3)?,
                })
            },
        )?;
        if page.is_empty() {
            break;
        }
        let full = page.len() == PAGE;
        // Stored-level nodes this page completes, compared after the page.
        let mut completed: Vec<(u8, u64, merkle::Hash)> = Vec::new();
        let mut gap = false;
        for e in page {
            let idx = e.idx;
            if u64::try_from(idx).ok() != Some(frontier.size()) {
                report.problem(format!(
                    "entry {} is missing (next stored index is {idx})",
                    frontier.size()
                ));
                gap = true;
                break;
            }
            let leaf = merkle::leaf_hash(&e.bytes);
            if e.leaf_hash[..] != leaf[..] {
                report.problem(format!(
                    "entry {idx}: stored leaf hash is not SHA-256(0x00 || bytes)"
                ));
            }
            if frontier.size() < report.tree_size {
                let named = ledger::split_parties(&e.parties);
                let listed = parties.at(conn, frontier.size(), &mut report)?;
                report.parties_checked += listed.len() as u64;
                if listed != named {
                    report.problem(format!(
                        "entry {idx}: the party index lists {listed:?}, the entry names {named:?}"
                    ));
                }
            }
            for (level, index, hash) in frontier.append(leaf) {
                if ledger::stored_level(level) && frontier.size() <= report.tree_size {
                    completed.push((level, index, hash));
                }
            }
            if frontier.size() == report.tree_size {
                edge = Some(frontier.hashes().to_vec());
            }
            check_checkpoints_at(&frontier, &mut checkpoints, &mut report);
        }
        check_nodes(conn, &completed, &mut report)?;
        if gap || !full {
            break;
        }
    }
    report.entries = frontier.size();
    if report.tree_size > report.entries {
        report.problem(format!(
            "tree size {} is larger than the {} stored entries",
            report.tree_size, report.entries
        ));
    }
    // What a restart loads: the right edge, partly rehashed from stored rows.
    if let Some(want) = edge {
        let ids = merkle::root_nodes(report.tree_size);
        report.nodes_checked += ids.len() as u64;
        match ledger::nodes(conn, &ids) {
            Ok(got) if got == want => {}
            Ok(_) => report.problem(format!(
                "the right edge served for tree size {} differs from the recomputed tree",
                report.tree_size
            )),
            Err(e) => report.problem(format!(
                "the right edge of tree size {} cannot be served: {e}",
                report.tree_size
            )),
        }
    }
    parties.rest(conn, &mut report)?;
    // A node beyond what the tree covers would be one fsck never compared.
    let stored_nodes = conn.query_int("SELECT COUNT(*) FROM ledger_nodes", &[])?;
    let want = expected_nodes(report.tree_size.min(report.entries));
    if u64::try_from(stored_nodes).ok() != Some(want) {
        report.problem(format!(
            "{stored_nodes} tree nodes are stored, a tree of {} entries has {want}",
            report.tree_size
        ));
    }
    for c in checkpoints {
        report.problem(format!(
            "checkpoint of size {} is beyond the {} stored entries",
            c.size, report.entries
        ));
    }
    Ok(report)
}

/// Compares the recomputed nodes `completed` (of stored levels, in the
/// order the tree completed them) with the stored rows: one range query
/// per level.
fn check_nodes(
    conn: &dyn Conn,
    completed: &[(u8, u64, merkle::Hash)],
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut ranges: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
    for &(level, index, _) in completed {
        let r = ranges.entry(level).or_insert((index, index));
        r.0 = r.0.min(index);
        r.1 = r.1.max(index);
    }
    let mut stored: HashMap<(u8, u64), Vec<u8>> = HashMap::with_capacity(completed.len());
    for (&level, &(first, last)) in &ranges {
        conn.query_each(
            "SELECT idx, hash FROM ledger_nodes WHERE level = ?1 AND idx BETWEEN ?2 AND ?3",
            values![i64::from(level), to_i64(first)?, to_i64(last)?],
            &mut |r| {
                stored.insert((level, r.uint(0)?), r.bytes(1)?.to_vec());
                Ok(true)
            },
        )?;
    }
    for (level, index, hash) in completed {
        report.nodes_checked += 1;
        match stored.get(&(*level, *index)) {
            None => report.problem(format!("node (level {level}, index {index}) is missing")),
            Some(h) if h[..] != hash[..] => report.problem(format!(
                "node (level {level}, index {index}) differs from the recomputed tree"
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// One cursor per partner over its party blocks, merged by index.
struct PartyCursors {
    partners: Vec<String>,
    /// Per partner: its current block's indexes (reversed: next at the end)
    /// and the last index of that block, where the next block query starts.
    blocks: Vec<(Vec<u64>, i64)>,
    heads: BinaryHeap<Reverse<(u64, usize)>>,
}

// === impl PartyCursors ===

impl PartyCursors {
    fn open(conn: &dyn Conn, report: &mut Report) -> Result<Self, StoreError> {
        let partners = conn.query_vec(
            "SELECT DISTINCT partner FROM ledger_party_blocks ORDER BY partner",
            &[],
            |r| r.string(0),
        )?;
        let mut me = PartyCursors {
            blocks: vec![(Vec::new(), -1); partners.len()],
            partners,
            heads: BinaryHeap::new(),
        };
        for p in 0..me.partners.len() {
            me.advance(conn, p, report)?;
        }
        Ok(me)
    }

    /// Moves partner `p` to its next index, loading its next block if needed.
    /// A malformed or overlapping block is a problem, skipped over.
    fn advance(
        &mut self,
        conn: &dyn Conn,
        p: usize,
        report: &mut Report,
    ) -> Result<(), StoreError> {
        while self.blocks[p].0.is_empty() {
            let after = self.blocks[p].1;
            let next = conn.query_opt(
                "SELECT first_idx, last_idx, gaps FROM ledger_party_blocks \
                 WHERE partner = ?1 AND last_idx > ?2 ORDER BY last_idx LIMIT 1",
                values![&self.partners[p], after],
                |r| Ok((r.int(0)?, r.int(1)?, r.bytes(2)?.to_vec())),
            )?;
            let Some((first, last, gaps)) = next else {
                return Ok(());
            };
            self.blocks[p].1 = last;
            match ledger::decode_block(first, last, &gaps) {
                Ok(_) if first <= after => report.problem(format!(
                    "party blocks of {:?} overlap at index {first}",
                    self.partners[p]
                )),
                Ok(mut block) => {
                    block.reverse();
                    self.blocks[p].0 = block;
                }
                Err(e) => report.problem(format!("party index of {:?}: {e}", self.partners[p])),
            }
        }
        if let Some(i) = self.blocks[p].0.pop() {
            self.heads.push(Reverse((i, p)));
        }
        Ok(())
    }

    /// The partners whose index lists entry `idx` (sorted); anything listed
    /// below `idx` was skipped over, i.e. names a missing entry.
    fn at(
        &mut self,
        conn: &dyn Conn,
        idx: u64,
        report: &mut Report,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        while let Some(&Reverse((i, p))) = self.heads.peek() {
            if i > idx {
                break;
            }
            self.heads.pop();
            if i < idx {
                report.problem(format!(
                    "the party index of {:?} lists entry {i}, which was not checked",
                    self.partners[p]
                ));
            } else {
                out.push(self.partners[p].clone());
            }
            self.advance(conn, p, report)?;
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Whatever is left lists entries beyond the tree.
    fn rest(&mut self, conn: &dyn Conn, report: &mut Report) -> Result<(), StoreError> {
        while let Some(Reverse((i, p))) = self.heads.pop() {
            report.problem(format!(
                "the party index of {:?} lists entry {i}, beyond the tree size {}",
                self.partners[p], report.tree_size
            ));
            self.advance(conn, p, report)?;
        }
        Ok(())
    }
}

/// Node rows stored for a tree of `size` leaves.
fn expected_nodes(size: u64) -> u64 {
    (1..64u8)
        .filter(|&l| ledger::stored_level(l))
        .map(|l| size >> l)
        .sum()
}

fn check_checkpoints_at(
    frontier: &Frontier,
    pending: &mut VecDeque<ledger::StoredCheckpoint>,
    report: &mut Report,
) {
    while pending.front().is_some_and(|c| c.size == frontier.size()) {
        let Some(c) = pending.pop_front() else { break };
        report.checkpoints_checked += 1;
        if c.root != frontier.root() {
            report.problem(format!(
                "checkpoint of size {}: root differs from the tree recomputed from entries",
                c.size
            ));
        }
    }
}

fn check_note(
    c: &ledger::StoredCheckpoint,
    verifier: Option<&Verifier>,
    origin: Option<&str>,
    report: &mut Report,
) {
    let body = match verifier {
        Some(v) => match v.verify_note(&c.note) {
            Ok(body) => body,
            Err(e) => {
                report.problem(format!("checkpoint of size {}: {e}", c.size));
                return;
            }
        },
        None => match crate::note::unverified_text(&c.note) {
            Some(body) => body,
            None => {
                report.problem(format!("checkpoint of size {}: not a signed note", c.size));
                return;
            }
        },
    };
    match Checkpoint::parse_body(body) {
        Ok(p) if p.size != c.size || p.root != c.root => report.problem(format!(
            "checkpoint of size {}: note says size {}, and its root {} the stored root",
            c.size,
            p.size,
            if p.root == c.root {
                "matches"
            } else {
                "differs from"
            }
        )),
        Ok(p) if origin.is_some_and(|o| o != p.origin) => report.problem(format!(
            "checkpoint of size {}: origin {:?}, expected {:?}",
            c.size,
            p.origin,
            origin.unwrap_or_default()
        )),
        Ok(_) => {}
        Err(e) => report.problem(format!("checkpoint of size {}: {e}", c.size)),
    }
}

#[cfg(test)]
mod tests {
    //! fsck on PostgreSQL (with a test server) reads the same log as on
    //! SQLite and says the same; the SQLite cases are in `log::tests`.

    use std::time::Duration;

    use crossflow_store::{Database, Sqlite, ledger::LedgerStore, ledger::sequence};

    use super::*;
    use crate::{Integrator, Signer};

    const ORIGIN: &str = "crossflow.test/ledger";

    fn signer() -> crate::Signer {
        Signer::from_seed("crossflow-ledger", &[7; 32]).unwrap()
    }

    /// A log of more than one fsck page (and party block), integrated in
    /// a few steps.
    async fn log<D: Database + LedgerStore + Clone>(db: &D) {
        let mut integ = Integrator::open(db.clone(), signer(), ORIGIN.into())
            .await
            .unwrap();
        for (from, to) in [(0, 10), (10, PAGE as u64 + 7)] {
            db.write(move |c| {
                for i in from..to {
                    let bytes = format!(r#"{{"salt":"{i:016x}","type":"test"}}"#);
                    let party = if i % 2 == 0 { "a" } else { "b" };
                    sequence(c, bytes.as_bytes(), &[party, "c"], 1_000)?;
                }
                Ok(())
            })
            .await
            .unwrap();
            while integ.step(Duration::ZERO).await.unwrap() > 0 {}
        }
    }

    async fn report<D: Database>(db: &D) -> Report {
        let verifier = signer().verifier();
        db.read(move |c| fsck(c, Some(&verifier), Some(ORIGIN)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_same_report_on_sqlite_and_postgres() {
        let Some(pg) = crossflow_store::testing::postgres("fsck_same_report") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let lite = Sqlite::open(dir.path()).unwrap();
        log(&lite).await;
        log(&pg).await;
        let on_lite = report(&lite).await;
        let on_pg = report(&pg).await;
        assert!(on_lite.ok(), "{on_lite:?}");
        assert_eq!(on_lite.entries, PAGE as u64 + 7);
        assert_eq!(on_pg, on_lite);

        // A rewritten node and a dropped party block are found there too.
        pg.write(|c| {
            c.execute(
                "UPDATE ledger_nodes SET hash = ?1 WHERE level = 3 AND idx = 1",
                values![&[0u8; 32]],
            )?;
            c.execute(
                "DELETE FROM ledger_party_blocks WHERE partner = 'a' AND first_idx = 0",
                &[],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        let broken = report(&pg).await;
        let text = broken.problems.join("\n");
        assert!(text.contains("node (level 3, index 1) differs"), "{text}");
        assert!(
            text.contains("entry 0: the party index lists [\"c\"]"),
            "{text}"
        );
        pg.close();
        lite.close();
    }
}
