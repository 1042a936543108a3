//! One interface over both backends: a [`Database`] runs write closures in
//! group-committed transactions and read closures on pooled connections,
//! each handed a [`Conn`]. Every storage trait is implemented once, for any
//! `Database`, so SQLite and PostgreSQL run the same statements; [`Store`]
//! is the one chosen at start-up.

use std::{future::Future, sync::Arc};

use crate::{Durability, Postgres, Sqlite, StoreError, WriterStats, ledger::Handoff, sql::Conn};

/// A database the store's traits run on.
pub trait Database: Clone + Send + Sync + 'static {
    /// Runs `f` in the writer's next transaction, answered as `durability`
    /// says; `f` may run more than once (see `Db::write`).
    fn write_as<R, F>(
        &self,
        durability: Durability,
        f: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + 'static;

    /// [`Database::write_as`], answered once durable.
    fn write<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_as(Durability::Fsynced, f)
    }

    /// Runs `f` on a read connection off the async runtime. Reads see every
    /// write that has been answered.
    fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&dyn Conn) -> Result<R, StoreError> + Send + 'static;

    /// Synchronous read, for CLI tools and tests that are not on a runtime.
    fn read_blocking<R>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>;

    /// Statistics of this process's writer.
    fn stats(&self) -> WriterStats;

    /// Stops the writer after everything queued so far is answered.
    fn close(&self);

    /// The ledger leaves this process's writer appended, held for the
    /// integrator (SQLite's single writer only: with several replicas the
    /// leader reads what every replica appended from the database).
    #[doc(hidden)]
    fn handoff(&self) -> Option<Arc<Handoff>> {
        None
    }
}

/// The backend chosen at start-up (`[gateway.store]`).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

// === impl Sqlite ===

impl Database for Sqlite {
    fn write_as<R, F>(
        &self,
        durability: Durability,
        f: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        self.db().write_as(durability, move |c| f(c))
    }

    fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        self.db().read(move |c| f(c))
    }

    fn read_blocking<R>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.db().read_blocking(|c| f(c))
    }

    fn stats(&self) -> WriterStats {
        self.db().stats()
    }

    fn close(&self) {
        self.db().close();
    }

    fn handoff(&self) -> Option<Arc<Handoff>> {
        Some(self.db().handoff().clone())
    }
}

// === impl Postgres ===

impl Database for Postgres {
    fn write_as<R, F>(
        &self,
        durability: Durability,
        f: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        Postgres::write_as(self, durability, move |c| f(c))
    }

    fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        Postgres::read(self, move |c| f(c))
    }

    fn read_blocking<R>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        Postgres::read_blocking(self, |c| f(c))
    }

    fn stats(&self) -> WriterStats {
        Postgres::stats(self)
    }

    fn close(&self) {
        Postgres::close(self);
    }
}

// === impl Store ===

impl Store {
    /// Opens the embedded store in `data_dir`.
    pub fn sqlite(data_dir: &std::path::Path) -> Result<Store, StoreError> {
        Sqlite::open(data_dir).map(Store::Sqlite)
    }

    /// Connects to PostgreSQL at `url` and applies its schema. Blocks: call
    /// it off the async runtime (or in `spawn_blocking`).
    pub fn postgres(url: &str) -> Result<Store, StoreError> {
        Postgres::connect(url, crate::pg_schema::MIGRATIONS).map(Store::Postgres)
    }

    /// The SQLite store, if that is the backend.
    pub fn as_sqlite(&self) -> Option<&Sqlite> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }
}

impl Database for Store {
    async fn write_as<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => Database::write_as(s, durability, f).await,
            Store::Postgres(p) => Database::write_as(p, durability, f).await,
        }
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Conn) -> Result<R, StoreError> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => Database::read(s, f).await,
            Store::Postgres(p) => Database::read(p, f).await,
        }
    }

    fn read_blocking<R>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self {
            Store::Sqlite(s) => Database::read_blocking(s, f),
            Store::Postgres(p) => Database::read_blocking(p, f),
        }
    }

    fn stats(&self) -> WriterStats {
        match self {
            Store::Sqlite(s) => Database::stats(s),
            Store::Postgres(p) => Database::stats(p),
        }
    }

    fn close(&self) {
        match self {
            Store::Sqlite(s) => Database::close(s),
            Store::Postgres(p) => Database::close(p),
        }
    }

    fn handoff(&self) -> Option<Arc<Handoff>> {
        match self {
            Store::Sqlite(s) => Database::handoff(s),
            Store::Postgres(p) => Database::handoff(p),
        }
    }
}
