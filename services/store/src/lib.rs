//! The embedded store: SQLite in WAL mode in the data directory, one writer
//! with group commit ([`Db`]), and the narrow storage traits the services use.
//!
//! Services depend on the traits (e.g. [`LandingStore`]), never on SQLite, so
//! a PostgreSQL implementation can be added beside [`Sqlite`] without touching
//! them. SQL here stays plain and portable for that reason.
#![forbid(unsafe_code)]

pub mod conversions;
mod database;
mod db;
pub mod landings;
pub mod leader;
pub mod ledger;
pub mod periods;
pub mod pg;
pub mod pg_schema;
pub mod quotas;
pub mod sql;
pub mod tags;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::{path::Path, sync::Arc};

pub use conversions::ConversionStore;
pub use database::{Database, Store};
pub use db::{Db, Durability, Migration, WriterStats};
pub use landings::{Landing, LandingStore, Redeemed};
pub use ledger::{LedgerStore, Sequenced};
pub use pg::Postgres;
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
    #[error("postgres: {0}")]
    Postgres(Arc<postgres::Error>),
    /// The database cannot be reached (or is shutting down, or starting):
    /// nothing was written, and the call may be retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
    /// A ledger leader's write after another replica was elected.
    #[error("ledger leader epoch {epoch} was superseded by epoch {current}")]
    Fenced { epoch: u64, current: u64 },
}

impl StoreError {
    /// Whether the failure is the database being out of reach (a retry
    /// later may succeed), rather than a bug or corruption.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }

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
mod pg_tests;
#[cfg(test)]
mod tests;
