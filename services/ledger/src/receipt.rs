//! Offline-verifiable inclusion receipts (c2sp.org/tlog-proof@v1): an entry's
//! index and inclusion proof, followed by the signed checkpoint they lead to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::{self, Hash, ProofError};
use crate::note::{Checkpoint, NoteError, Verifier, decode_hash, parse_decimal};

pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A tree of at most 2^64 leaves never needs more.
const MAX_PROOF_HASHES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("malformed receipt at line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("receipt checkpoint: {0}")]
    Note(#[from] NoteError),
    #[error("receipt is from log {found:?}, expected {expected:?}")]
    OriginMismatch { expected: String, found: String },
    #[error("receipt inclusion proof: {0}")]
    Proof(#[from] ProofError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Unauthenticated application data; never trust it without checking.
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    /// Leaf's sibling first.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint_note: String,
}

impl Receipt {
    pub fn to_text(&self) -> String {
        let mut text =
            String::with_capacity(64 + 45 * self.proof.len() + self.checkpoint_note.len());
        text.push_str(HEADER);
        text.push('\n');
        if let Some(extra) = &self.extra {
            text.push_str("extra ");
            text.push_str(&B64.encode(extra));
            text.push('\n');
        }
        text.push_str(&format!("index {}\n", self.index));
        for hash in &self.proof {
            B64.encode_string(hash, &mut text);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.checkpoint_note);
        text
    }

    /// Parses the receipt framing; the note is kept verbatim, unverified.
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        let mut rest = text;
        let mut line_no = 0;
        // Each call yields the next line without its newline; a final line
        // without one is malformed because the note must follow.
        let mut next_line = |reason: &'static str| {
            line_no += 1;
            let (line, tail) = rest.split_once('\n').ok_or(ReceiptError::Malformed {
                line: line_no,
                reason,
            })?;
            rest = tail;
            Ok::<_, ReceiptError>((line_no, line))
        };
        let bad = |line, reason| ReceiptError::Malformed { line, reason };

        let (n, header) = next_line("missing header line")?;
        if header != HEADER {
            return Err(bad(n, "first line must be c2sp.org/tlog-proof@v1"));
        }
        let (mut n, mut line) = next_line("missing index line")?;
        let mut extra = None;
        if let Some(b64) = line.strip_prefix("extra ") {
            extra = Some(
                B64.decode(b64)
                    .map_err(|_| bad(n, "extra data is not valid base64"))?,
            );
            (n, line) = next_line("missing index line")?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(parse_decimal)
            .ok_or(bad(n, "expected `index <decimal>` without leading zeros"))?;
        let mut proof = Vec::new();
        loop {
            let (n, line) = next_line("missing blank line before the checkpoint")?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_HASHES {
                return Err(bad(n, "inclusion proof has more than 64 hashes"));
            }
            proof.push(
                decode_hash(line).ok_or(bad(n, "proof line must be base64 of a 32-byte hash"))?,
            );
        }
        if rest.is_empty() {
            return Err(bad(line_no + 1, "checkpoint note is missing"));
        }
        Ok(Self {
            extra,
            index,
            proof,
            checkpoint_note: rest.to_owned(),
        })
    }
}

/// Checks that `entry` is in the log named `expected_origin`: the checkpoint
/// must be signed by `verifier` and the proof must lead from the entry's leaf
/// hash to its root. Returns the verified checkpoint.
pub fn verify_receipt(
    text: &str,
    entry: &[u8],
    verifier: &Verifier,
    expected_origin: &str,
) -> Result<Checkpoint, ReceiptError> {
    let receipt = Receipt::parse(text)?;
    let body = verifier.verify_note(&receipt.checkpoint_note)?;
    let checkpoint = Checkpoint::parse_body(body)?;
    if checkpoint.origin != expected_origin {
        return Err(ReceiptError::OriginMismatch {
            expected: expected_origin.to_owned(),
            found: checkpoint.origin,
        });
    }
    merkle::verify_inclusion(
        receipt.index,
        checkpoint.size,
        &merkle::leaf_hash(entry),
        &receipt.proof,
        &checkpoint.root,
    )?;
    Ok(checkpoint)
}

#[cfg(test)]
mod tests;
