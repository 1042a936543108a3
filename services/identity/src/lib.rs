//! Identity for the crossflow gateway: the key directory, uid and pseudonym
//! derivation, referral token sealing, SPIFFE principals from mTLS client
//! certificates, and a dev PKI generator.
//!
//! Nothing here speaks gRPC or needs an async runtime.
//!
//! - [`keys`]: [`KeyRing`] — generate, load and rotate a key directory;
//!   [`KeyRing::uid`], [`KeyRing::pseudonym`].
//! - [`token`]: [`KeyRing::seal`] / [`KeyRing::open`] of [`ReferralClaims`].
//! - [`spiffe`]: [`principal_from_cert`] and the slug rule [`is_valid_slug`].
//! - [`pki`]: [`generate_dev`] and [`generate_foreign_client`] for tests and demos.
//! - [`random`]: [`random::fill`], system randomness fetched in blocks (salts only).

#![forbid(unsafe_code)]

mod error;
mod fsutil;
pub mod keys;
pub mod pki;
pub mod random;
pub mod spiffe;
pub mod token;

#[cfg(test)]
mod test_support;

pub use error::IdentityError;
pub use keys::{
    DEFAULT_LEDGER_KEY_NAME, EpochInfo, KeyRing, MANIFEST_FILE, Pseudonym, RotationReport, Uid,
};
pub use pki::{CertFiles, DevPki, ForeignClient, generate_dev, generate_foreign_client};
pub use spiffe::{Principal, is_valid_slug, parse_spiffe_id, principal_from_cert};
pub use token::{MAX_TARGET_LEN, MAX_TOKEN_LEN, ReferralClaims, ReferralId, TokenError};
