//! The verifier that ships with the log: recomputes the tree from the stored
//! entry bytes and checks every stored leaf hash, tree node and checkpoint
//! against it.
//!
//! It reads one connection in one pass (entries in index order, O(log n)
//! memory), so it can run beside a live gateway on a read-only connection.

use std::collections::VecDeque;

use rusqlite::{Connection, params};

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
    pub nodes_checked: u64,
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
    let mut node = conn.prepare("SELECT hash FROM ledger_nodes WHERE level = ?1 AND idx = ?2")?;
    let mut stmt = conn.prepare("SELECT idx, bytes, leaf_hash FROM ledger_entries ORDER BY idx")?;
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
        for (level, index, hash) in frontier.append(leaf) {
            if level == 0 || frontier.size() > report.tree_size {
                continue;
            }
            report.nodes_checked += 1;
            let got: Option<Vec<u8>> = node
                .query_row(params![i64::from(level), index as i64], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            match got {
                None => report.problem(format!("node (level {level}, index {index}) is missing")),
                Some(h) if h[..] != hash[..] => report.problem(format!(
                    "node (level {level}, index {index}) differs from the recomputed tree"
                )),
                Some(_) => {}
            }
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

/// Nodes of level >= 1 stored for a tree of `size` leaves.
fn expected_nodes(size: u64) -> u64 {
    (1..64).map(|l| size >> l).sum()
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
        None => match c.note.rfind("\n\n") {
            Some(at) => &c.note[..=at],
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
