//! The embedded store: SQLite in WAL mode in the data directory, one writer
//! with group commit ([`Db`]), and the narrow storage traits the services use.
//!
//! Services depend on the traits (e.g. [`LandingStore`]), never on SQLite, so
//! a PostgreSQL implementation can be added beside [`Sqlite`] without touching
//! them. SQL here stays plain and portable for that reason.
#![forbid(unsafe_code)]

pub mod conversions;
mod db;
pub mod landings;
pub mod ledger;
pub mod periods;
pub mod quotas;
pub mod tags;

use std::{path::Path, sync::Arc};

pub use db::{Db, Durability, Migration, WriterStats};
pub use landings::{Landing, LandingStore, Redeemed};
pub use ledger::{LedgerStore, Sequenced};
pub use quotas::QuotaCounterStore;
pub use tags::{OptOutLookup, TagStore};

/// A storage failure. Cloneable because one commit failure answers every
/// write of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("data directory {0} is in use by another crossflow process")]
    Locked(std::path::PathBuf),
    #[error("the store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    fn io(path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// Column `idx` of `r`: a blob of exactly `N` bytes, read in place.
pub(crate) fn blob<const N: usize>(
    r: &rusqlite::Row<'_>,
    idx: usize,
    what: &str,
) -> Result<[u8; N], StoreError> {
    opt_blob(r, idx, what)?.ok_or_else(|| StoreError::Corrupt(format!("{what} is NULL")))
}

/// [`blob`], or `None` for NULL.
pub(crate) fn opt_blob<const N: usize>(
    r: &rusqlite::Row<'_>,
    idx: usize,
    what: &str,
) -> Result<Option<[u8; N]>, StoreError> {
    let v = r.get_ref(idx)?;
    let b = v
        .as_blob_or_null()
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    b.map(|b| exactly(b, what)).transpose()
}

/// `b` as an array of exactly `N` bytes.
pub(crate) fn exactly<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} has {} bytes, want {N}", b.len())))
}

/// Every migration of the embedded schema, in order.
pub const MIGRATIONS: &[Migration] = &[
    landings::MIGRATION,
    ledger::MIGRATION,
    quotas::MIGRATION,
    conversions::MIGRATION,
    tags::MIGRATION,
    periods::MIGRATION,
    ledger::MIGRATION_COMPACT,
    conversions::MIGRATION_NO_HELD_INDEX,
];

/// The SQLite implementation of every storage trait.
#[derive(Debug, Clone)]
pub struct Sqlite {
    db: Db,
}

impl Sqlite {
    /// Opens the store in `data_dir`, applying the schema.
    pub fn open(data_dir: &Path) -> Result<Sqlite, StoreError> {
        Ok(Sqlite {
            db: Db::open(data_dir, MIGRATIONS)?,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[cfg(test)]
mod tests;
