//! Where the gateways keep their state, as the checks read it: the SQLite
//! file of the single gateway, or the PostgreSQL database the replicas
//! share. The checks' SQL is written once, against
//! `crossflow_store::sql::Conn`, and runs on either.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crossflow_store::{
    Database as _, Postgres, StoreError,
    sql::{Conn, Dialect},
};

use crate::BoxError;

/// Tries of a PostgreSQL read whose connection was lost (a pooled
/// connection from before a server restart fails once, then is replaced).
const READ_TRIES: u32 = 10;
const READ_RETRY: Duration = Duration::from_millis(500);

/// The store the gateways run on.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The single gateway's SQLite file, opened read-only for each read
    /// (the gateway may be running).
    Sqlite(PathBuf),
    /// The replicas' database.
    Postgres(Postgres),
}

// === impl Storage ===

impl Storage {
    /// The SQLite file `data/crossflow.db` of the federation in `dir`.
    pub fn sqlite(dir: &Path) -> Storage {
        Storage::Sqlite(dir.join("data").join("crossflow.db"))
    }

    /// Connects to the replicas' database at `url` (its schema is applied
    /// by whichever connects first, the replicas or this).
    pub fn postgres(url: &str) -> Result<Storage, BoxError> {
        let db = Postgres::connect(url, crossflow_store::pg_schema::MIGRATIONS)?;
        Ok(Storage::Postgres(db))
    }

    /// Runs `f` in one read-only transaction (a snapshot: every query of
    /// `f` sees the same committed state), then rolls it back.
    pub async fn snapshot<R, F>(&self, f: F) -> Result<R, BoxError>
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + Sync + 'static,
    {
        self.read(move |c| {
            let begin = match c.dialect() {
                Dialect::Sqlite => "BEGIN",
                Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            };
            c.execute(begin, &[])?;
            let out = f(c);
            // A pooled connection must not go back inside a transaction.
            let end = c.execute("ROLLBACK", &[]);
            let out = out?;
            end?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on a read connection.
    pub async fn read<R, F>(&self, f: F) -> Result<R, BoxError>
    where
        R: Send + 'static,
        F: Fn(&dyn Conn) -> Result<R, StoreError> + Send + Sync + 'static,
    {
        match self {
            Storage::Sqlite(path) => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(10))?;
                Ok(f(&c)?)
            }
            Storage::Postgres(db) => {
                let f = Arc::new(f);
                let mut tries = 0;
                loop {
                    tries += 1;
                    let g = f.clone();
                    match db.read(move |c| g(c)).await {
                        Err(e) if e.is_unavailable() && tries < READ_TRIES => {
                            tokio::time::sleep(READ_RETRY).await;
                        }
                        res => return Ok(res?),
                    }
                }
            }
        }
    }

    /// Runs `f` in a write transaction of its own (`--tamper`); the number
    /// of rows it changed.
    pub async fn write<F>(&self, f: F) -> Result<u64, BoxError>
    where
        F: Fn(&dyn Conn) -> Result<u64, StoreError> + Send + Sync + 'static,
    {
        match self {
            Storage::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                Ok(f(&c)?)
            }
            Storage::Postgres(db) => Ok(db.write(f).await?),
        }
    }

    /// Stops the connection's writer (before the database is dropped).
    pub fn close(&self) {
        if let Storage::Postgres(db) = self {
            db.close();
        }
    }
}
