//! The verifier that ships with the log: recomputes the tree from the stored
//! entry bytes and checks every stored leaf hash, tree node, party-index
//! block and checkpoint against it.
//!
//! It reads one connection in one pass over the entries (index order), with
//! memory O(log n + partners x block), so it can run beside a live gateway on
//! a read-only connection. The party index is merged in as it goes: one
//! cursor per partner over that partner's blocks.
//!
//! Only some tree levels are stored (`crossflow_store::ledger::stored_level`);
//! the others are rehashed by `ledger::nodes` on every read, so besides
//! comparing each stored row, fsck asks `ledger::nodes` for the right edge
//! of the stored tree (the nodes a restart loads) and compares what it
//! serves with the recomputation.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    merkle::{self, Frontier},
    note::{Checkpoint, Verifier},
};
use crossflow_store::{StoreError, ledger};

/// Most problems listed; past it only the count grows.
const MAX_LISTED: usize = 100;

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
/// checkpoint's signature and origin are checked too.
pub fn fsck(
    conn: &Connection,
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
    let mut node = conn.prepare("SELECT hash FROM ledger_nodes WHERE level = ?1 AND idx = ?2")?;
    let mut stmt =
        conn.prepare("SELECT idx, bytes, leaf_hash, parties FROM ledger_entries ORDER BY idx")?;
    let mut rows = stmt.query([])?;
    check_checkpoints_at(&frontier, &mut checkpoints, &mut report);
    while let Some(r) = rows.next()? {
        let idx: i64 = r.get(0)?;
        let bytes: Vec<u8> = r.get(1)?;
        let stored: Vec<u8> = r.get(2)?;
        if idx as u64 != frontier.size() {
            report.problem(format!(
                "entry {} is missing (next stored index is {idx})",
                frontier.size()
            ));
            break;
        }
        let leaf = merkle::leaf_hash(&bytes);
        if stored[..] != leaf[..] {
            report.problem(format!(
                "entry {idx}: stored leaf hash is not SHA-256(0x00 || bytes)"
            ));
        }
        if (idx as u64) < report.tree_size {
            let named = ledger::split_parties(&r.get::<_, String>(3)?);
            let listed = parties.at(conn, idx as u64, &mut report)?;
            report.parties_checked += listed.len() as u64;
            if listed != named {
                report.problem(format!(
                    "entry {idx}: the party index lists {listed:?}, the entry names {named:?}"
                ));
            }
        }
        for (level, index, hash) in frontier.append(leaf) {
            if !ledger::stored_level(level) || frontier.size() > report.tree_size {
                continue;
            }
            report.nodes_checked += 1;
            let got: Option<Vec<u8>> = node
                .query_row(params![i64::from(level), index as i64], |r| r.get(0))
                .optional()?;
            match got {
                None => report.problem(format!("node (level {level}, index {index}) is missing")),
                Some(h) if h[..] != hash[..] => report.problem(format!(
                    "node (level {level}, index {index}) differs from the recomputed tree"
                )),
                Some(_) => {}
            }
        }
        if frontier.size() == report.tree_size {
            edge = Some(frontier.hashes().to_vec());
        }
        check_checkpoints_at(&frontier, &mut checkpoints, &mut report);
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
    let stored_nodes: i64 =
        conn.query_row("SELECT COUNT(*) FROM ledger_nodes", [], |r| r.get(0))?;
    let want = expected_nodes(report.tree_size.min(report.entries));
    if stored_nodes as u64 != want {
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

/// One cursor per partner over its party blocks, merged by index.
struct PartyCursors {
    partners: Vec<String>,
    /// Per partner: its current block's indexes (reversed: next at the end)
    /// and the last index of that block, where the next block query starts.
    blocks: Vec<(Vec<u64>, i64)>,
    heads: BinaryHeap<Reverse<(u64, usize)>>,
}

impl PartyCursors {
    fn open(conn: &Connection, report: &mut Report) -> Result<Self, StoreError> {
        let partners = conn
            .prepare("SELECT DISTINCT partner FROM ledger_party_blocks ORDER BY partner")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
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
        conn: &Connection,
        p: usize,
        report: &mut Report,
    ) -> Result<(), StoreError> {
        while self.blocks[p].0.is_empty() {
            let after = self.blocks[p].1;
            let next: Option<(i64, i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT first_idx, last_idx, gaps FROM ledger_party_blocks
                     WHERE partner = ?1 AND last_idx > ?2 ORDER BY last_idx LIMIT 1",
                )?
                .query_row(params![self.partners[p], after], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
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
        conn: &Connection,
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
    fn rest(&mut self, conn: &Connection, report: &mut Report) -> Result<(), StoreError> {
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
