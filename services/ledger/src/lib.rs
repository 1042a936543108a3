//! The crossflow ledger.
//!
//! The pure core has no I/O: RFC 6962 Merkle trees ([`merkle`]), signed notes
//! and checkpoints ([`note`]), and inclusion receipts ([`receipt`]). Around
//! it, [`log`] integrates sequenced entries into the stored tree, signs
//! checkpoints and answers proofs; [`grpc`] serves `crossflow.v1.LedgerService`;
//! [`fsck`] recomputes everything from stored entries. Finance: [`period`]
//! closes months, [`settle`] computes statements and the settlement matrix,
//! [`export`] writes a period's files and [`verify_export`] checks them
//! offline.
#![forbid(unsafe_code)]

pub mod cli;
pub mod export;
pub mod fsck;
pub mod grpc;
pub mod leader;
pub mod log;
pub mod merkle;
pub mod note;
pub mod period;
pub mod receipt;
pub mod settle;
pub mod verify_export;

pub use log::{Integrator, IntegratorHandle, Ledger, LedgerError, origin};
pub use merkle::{Frontier, Hash, NodeReader, ProofError};
pub use note::{Checkpoint, NoteError, Signer, Verifier};
pub use receipt::{Receipt, ReceiptError, verify_receipt};
