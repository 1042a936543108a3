//! Pure core of the crossflow ledger: RFC 6962 Merkle trees, signed notes and
//! checkpoints, and inclusion receipts. No I/O: storage feeds tree nodes in
//! through [`merkle::NodeReader`] and persists what [`merkle::Frontier`] emits.
#![forbid(unsafe_code)]

pub mod merkle;
pub mod note;
pub mod receipt;

pub use merkle::{Frontier, Hash, NodeReader, ProofError};
pub use note::{Checkpoint, NoteError, Signer, Verifier};
pub use receipt::{Receipt, ReceiptError, verify_receipt};
