//! `crossflow ledger verify DIR --vkey KEY`: checks a period export offline
//! (docs/LEDGER.md, "Verifying an export") and names the first failing file
//! and line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{
    export::{FORMAT, View},
    merkle::{self, Hash},
    note::{
        CONSISTENCY_FIRST_HASH_LINE, Checkpoint, ConsistencyText, MultiProofText, ProofTextError,
        Verifier,
    },
    period,
    settle::{self, LoggedEntry, PeriodBounds, SettleError},
};

/// The first thing wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct VerifyFailure {
    pub file: &'static str,
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

fn fail<T>(file: &'static str, line: usize, reason: impl Into<String>) -> Result<T, VerifyFailure> {
    Err(VerifyFailure {
        file,
        line,
        reason: reason.into(),
    })
}

fn text_fail(file: &'static str) -> impl Fn(ProofTextError) -> VerifyFailure {
    move |e| VerifyFailure {
        file,
        line: e.line,
        reason: e.reason,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    origin: String,
    period: String,
    timezone: String,
    period_start: String,
    period_start_ms: i64,
    period_end: String,
    period_end_ms: i64,
    view: String,
    previous_anchor_size: u64,
    anchor_size: u64,
    entries: usize,
}

fn read(dir: &Path, file: &'static str) -> Result<Vec<u8>, VerifyFailure> {
    std::fs::read(dir.join(file)).or_else(|e| fail(file, 0, format!("cannot read: {e}")))
}

fn read_text(dir: &Path, file: &'static str) -> Result<String, VerifyFailure> {
    String::from_utf8(read(dir, file)?).or_else(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        fail(file, line, "not UTF-8")
    })
}

/// Verifies the export in `dir` against the log key `verifier`; the `OK`
/// verdict line, or the first failure.
pub fn verify(dir: &Path, verifier: &Verifier) -> Result<String, VerifyFailure> {
    // export.json
    const MANIFEST: &str = "export.json";
    let m: Manifest = serde_json::from_str(&read_text(dir, MANIFEST)?)
        .or_else(|e| fail(MANIFEST, e.line(), format!("not the export manifest: {e}")))?;
    if m.format != FORMAT {
        return fail(
            MANIFEST,
            1,
            format!("format is {:?}, expected {FORMAT}", m.format),
        );
    }
    let Some(view) = View::parse(&m.view) else {
        return fail(
            MANIFEST,
            1,
            format!("view {:?} is not federation or partner:<id>", m.view),
        );
    };
    let span =
        period::span(&m.period, &m.timezone).or_else(|e| fail(MANIFEST, 1, e.to_string()))?;
    if (
        span.start_ms,
        span.end_ms,
        span.start.as_str(),
        span.end.as_str(),
    ) != (
        m.period_start_ms,
        m.period_end_ms,
        m.period_start.as_str(),
        m.period_end.as_str(),
    ) {
        return fail(
            MANIFEST,
            1,
            format!(
                "period bounds differ from {} in {}: [{}, {})",
                m.period, m.timezone, span.start, span.end
            ),
        );
    }
    if m.previous_anchor_size > m.anchor_size {
        return fail(
            MANIFEST,
            1,
            "previous_anchor_size is larger than anchor_size",
        );
    }
    let bounds = PeriodBounds {
        name: m.period.clone(),
        timezone: m.timezone.clone(),
        start_ms: m.period_start_ms,
        end_ms: m.period_end_ms,
        previous_anchor_size: m.previous_anchor_size,
        anchor_size: m.anchor_size,
    };

    // 1. checkpoint.txt
    const CHECKPOINT: &str = "checkpoint.txt";
    let note = read_text(dir, CHECKPOINT)?;
    let anchor = signed_checkpoint(&note, verifier, CHECKPOINT, 1)?;
    if anchor.origin != m.origin {
        return fail(
            CHECKPOINT,
            1,
            format!(
                "origin {:?}, export.json says {:?}",
                anchor.origin, m.origin
            ),
        );
    }
    if anchor.size != m.anchor_size {
        return fail(
            CHECKPOINT,
            2,
            format!(
                "size {}, export.json says anchor_size {}",
                anchor.size, m.anchor_size
            ),
        );
    }

    // 2. consistency.txt
    const CONSISTENCY: &str = "consistency.txt";
    let c =
        ConsistencyText::parse(&read_text(dir, CONSISTENCY)?).map_err(text_fail(CONSISTENCY))?;
    if c.old != m.previous_anchor_size {
        return fail(
            CONSISTENCY,
            2,
            format!(
                "old {}, export.json says previous_anchor_size {}",
                c.old, m.previous_anchor_size
            ),
        );
    }
    if c.new != m.anchor_size {
        return fail(
            CONSISTENCY,
            3,
            format!(
                "new {}, export.json says anchor_size {}",
                c.new, m.anchor_size
            ),
        );
    }
    if let Some(old_note) = &c.old_note {
        let note_line = CONSISTENCY_FIRST_HASH_LINE + c.proof.len() + 1;
        let old = signed_checkpoint(old_note, verifier, CONSISTENCY, note_line)?;
        if old.size != c.old || old.origin != anchor.origin {
            return fail(
                CONSISTENCY,
                note_line,
                format!(
                    "previous anchor note is {} size {}, expected {} size {}",
                    old.origin, old.size, anchor.origin, c.old
                ),
            );
        }
        merkle::verify_consistency(c.old, c.new, &c.proof, &old.root, &anchor.root).or_else(
            |e| {
                let line = if c.proof.is_empty() {
                    3
                } else {
                    CONSISTENCY_FIRST_HASH_LINE
                };
                fail(
                    CONSISTENCY,
                    line,
                    format!("the anchor does not extend the previous anchor: {e}"),
                )
            },
        )?;
    }

    // 3. entries.jsonl
    const ENTRIES: &str = "entries.jsonl";
    let raw = read(dir, ENTRIES)?;
    let mut entries: Vec<LoggedEntry> = Vec::new();
    let mut line_of: BTreeMap<u64, usize> = BTreeMap::new();
    let mut next_in_period = m.previous_anchor_size;
    let mut lines = raw.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let line_no = n + 1;
        if lines.peek().is_none() {
            if !line.is_empty() {
                return fail(
                    ENTRIES,
                    line_no,
                    "the last line does not end with a newline",
                );
            }
            break;
        }
        let (index, bytes) = unwrap_line(line).or_else(|r| fail(ENTRIES, line_no, r))?;
        if let Some(prev) = entries.last()
            && index <= prev.index
        {
            return fail(
                ENTRIES,
                line_no,
                format!("index {index} does not ascend (previous {})", prev.index),
            );
        }
        if index >= m.anchor_size {
            return fail(
                ENTRIES,
                line_no,
                format!("index {index} is not below anchor_size {}", m.anchor_size),
            );
        }
        if view == View::Federation && index >= m.previous_anchor_size {
            if index != next_in_period {
                return fail(
                    ENTRIES,
                    line_no,
                    format!("entry {next_in_period} of the period is missing (found {index})"),
                );
            }
            next_in_period += 1;
        }
        let e =
            LoggedEntry::parse(index, bytes).or_else(|e| fail(ENTRIES, line_no, e.to_string()))?;
        // Updates carry no shares; a report names every party.
        if let Some(p) = view.partner()
            && e.entry.event == "reported"
            && !is_party(&e, p)
        {
            return fail(
                ENTRIES,
                line_no,
                format!("report {index} does not involve partner {p}"),
            );
        }
        // 4. balance
        settle::check_postings(&e).or_else(|e| fail(ENTRIES, line_no, e.to_string()))?;
        line_of.insert(index, line_no);
        entries.push(e);
    }
    if view == View::Federation && next_in_period != m.anchor_size {
        return fail(
            ENTRIES,
            entries.len() + 1,
            format!(
                "entries end before index {next_in_period}; the period runs to {}",
                m.anchor_size
            ),
        );
    }
    if entries.len() != m.entries {
        return fail(
            MANIFEST,
            1,
            format!(
                "entries is {}, entries.jsonl has {} lines",
                m.entries,
                entries.len()
            ),
        );
    }

    // 4. proof.txt
    const PROOF: &str = "proof.txt";
    const STATEMENT: &str = "statement.csv";
    let statement_text = read_text(dir, STATEMENT)?;
    let proof = MultiProofText::parse(&read_text(dir, PROOF)?).map_err(text_fail(PROOF))?;
    if proof.size != m.anchor_size {
        return fail(
            PROOF,
            2,
            format!(
                "size {}, export.json says anchor_size {}",
                proof.size, m.anchor_size
            ),
        );
    }
    let leaves: Vec<(u64, Hash)> = entries.iter().map(|e| (e.index, e.leaf_hash)).collect();
    if let Err(e) = merkle::verify_multiproof(&leaves, proof.size, &proof.proof, &anchor.root) {
        // A proof cannot tell a changed leaf from a changed proof hash;
        // statement.csv lists leaf hashes too, so an entry whose bytes no
        // longer hash to what it lists is the likelier culprit.
        let listed = listed_leaf_hashes(&statement_text);
        for ent in &entries {
            if listed
                .get(&ent.index)
                .is_some_and(|h| *h != crate::note::hex(&ent.leaf_hash))
            {
                return fail(
                    ENTRIES,
                    line_of.get(&ent.index).copied().unwrap_or(0),
                    format!(
                        "entry {}: its bytes hash to a leaf that is not in the anchored tree (statement.csv lists another leaf hash): the entry was altered",
                        ent.index
                    ),
                );
            }
        }
        let line = match e {
            merkle::ProofError::ProofTooShort => 3 + proof.proof.len(),
            _ => 3,
        };
        return fail(
            PROOF,
            line,
            format!("the entries and proof do not reproduce the anchor's root: {e}"),
        );
    }

    // 5. statement.csv, settlement.csv
    let rows = settle::statement(&bounds, &entries).map_err(|e| {
        let index = match &e {
            SettleError::Parse { index, .. }
            | SettleError::Unbalanced { index, .. }
            | SettleError::Account { index, .. }
            | SettleError::NoReport { index, .. }
            | SettleError::NoPayableAt { index }
            | SettleError::Time { index, .. } => Some(*index),
            SettleError::TimeZone(_) => None,
        };
        VerifyFailure {
            file: ENTRIES,
            line: index.and_then(|i| line_of.get(&i).copied()).unwrap_or(0),
            reason: e.to_string(),
        }
    })?;
    compare(STATEMENT, &settle::statement_csv(&rows), &statement_text)?;
    const SETTLEMENT: &str = "settlement.csv";
    let settlement = settle::settlement(&bounds.name, &rows, view.partner());
    compare(
        SETTLEMENT,
        &settle::settlement_csv(&settlement),
        &read_text(dir, SETTLEMENT)?,
    )?;

    Ok(format!(
        "export OK: period {} ({}), {} entries proved against the anchor (size {}) signed by {}, which extends the previous anchor (size {}); {} statement rows ({} payable) and {} settlement rows recomputed",
        m.period,
        m.view,
        entries.len(),
        m.anchor_size,
        verifier.name(),
        m.previous_anchor_size,
        rows.len(),
        rows.iter().filter(|r| r.is_payable()).count(),
        settlement.len()
    ))
}

/// The checkpoint of a note signed by `verifier`; failures at `line`.
fn signed_checkpoint(
    note: &str,
    verifier: &Verifier,
    file: &'static str,
    line: usize,
) -> Result<Checkpoint, VerifyFailure> {
    let body = verifier.verify_note(note).or_else(|e| {
        fail(
            file,
            line,
            format!("checkpoint does not verify under {}: {e}", verifier.name()),
        )
    })?;
    Checkpoint::parse_body(body).or_else(|e| fail(file, line, e.to_string()))
}

/// `{"index":N,"entry":<bytes>}` → `(N, bytes)`.
fn unwrap_line(line: &[u8]) -> Result<(u64, &[u8]), String> {
    const PREFIX: &[u8] = b"{\"index\":";
    const MIDDLE: &[u8] = b",\"entry\":";
    let bad = || "not {\"index\":N,\"entry\":<entry>}".to_owned();
    let rest = line.strip_prefix(PREFIX).ok_or_else(bad)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let number = std::str::from_utf8(&rest[..digits]).map_err(|_| bad())?;
    let index = crate::note::parse_decimal(number).ok_or_else(bad)?;
    let entry = rest[digits..]
        .strip_prefix(MIDDLE)
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or_else(bad)?;
    if entry.is_empty() {
        return Err(bad());
    }
    Ok((index, entry))
}

/// Whether partner `p` is a party of report `e`: its reporter or a partner
/// in its postings or its attribution shares.
fn is_party(e: &LoggedEntry, p: &str) -> bool {
    let en = &e.entry;
    en.reporter == p
        || en.postings.iter().any(|x| {
            x.account
                .strip_prefix("partner:")
                .and_then(|r| r.rsplit_once(':'))
                .is_some_and(|(id, _)| id == p)
        })
        || en.attribution.as_ref().is_some_and(|a| {
            a.touches
                .iter()
                .any(|t| t.shares.iter().any(|s| s.partner == p))
        })
}

/// `entry_index → leaf_hash` as `statement.csv` lists them (best effort:
/// only used to point at the likelier culprit of a failed proof).
fn listed_leaf_hashes(csv: &str) -> BTreeMap<u64, String> {
    csv.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let index = f.nth(1)?.parse().ok()?;
            let hash = l.rsplit(',').next()?;
            Some((index, hash.to_owned()))
        })
        .collect()
}

/// Byte-for-byte comparison, naming the first differing CSV line.
fn compare(file: &'static str, want: &str, got: &str) -> Result<(), VerifyFailure> {
    if want == got {
        return Ok(());
    }
    let mut w = want.split_inclusive("\r\n");
    let mut g = got.split_inclusive("\r\n");
    let mut line = 1;
    loop {
        match (w.next(), g.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (Some(a), Some(b)) => {
                return fail(
                    file,
                    line,
                    format!(
                        "differs from the one recomputed from entries.jsonl: expected {:?}, found {:?}",
                        a.trim_end(),
                        b.trim_end()
                    ),
                );
            }
            (Some(a), None) => {
                return fail(
                    file,
                    line,
                    format!("line missing: expected {:?}", a.trim_end()),
                );
            }
            (None, Some(b)) => {
                return fail(file, line, format!("unexpected line {:?}", b.trim_end()));
            }
            (None, None) => return fail(file, line, "differs from the recomputed file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lines_unwrap_exactly() {
        assert_eq!(
            unwrap_line(br#"{"index":12,"entry":{"a":1}}"#),
            Ok((12, &br#"{"a":1}"#[..]))
        );
        for bad in [
            &br#"{"index":012,"entry":{"a":1}}"#[..],
            br#"{"index": 12,"entry":{"a":1}}"#,
            br#"{"index":12,"entry":{"a":1}} "#,
            br#"{"index":12,"entry":}"#,
            br#"{"entry":{"a":1},"index":12}"#,
        ] {
            assert!(
                unwrap_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn compare_names_the_first_differing_line() {
        let want = "h\r\na\r\nb\r\n";
        assert_eq!(compare("s.csv", want, want), Ok(()));
        assert_eq!(
            compare("s.csv", want, "h\r\na\r\nc\r\n").unwrap_err().line,
            3
        );
        assert_eq!(compare("s.csv", want, "h\r\nb\r\n").unwrap_err().line, 2);
        assert_eq!(compare("s.csv", want, "h\r\na\r\n").unwrap_err().line, 3);
        assert_eq!(
            compare("s.csv", want, "h\r\na\r\nb\r\nx\r\n")
                .unwrap_err()
                .line,
            4
        );
    }
}
