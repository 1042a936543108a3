//! The PostgreSQL server the `--replicas` and `--ledger` runs use: fresh
//! databases on it, and its own account of what each run made it do.
//!
//! Each configuration gets a database of its own, made as the store's tests
//! make theirs (`crossflow_store::testing`): dropped if an earlier run left
//! it, then created empty; the gateway (or the ledger benchmark) applies the
//! schema. They are named `crossflow_bench_*`, which is also how
//! `cpu::watch_postgres` tells their server processes from those of other
//! databases on the same server.
//!
//! PostgreSQL's cumulative statistics (`pg_stat_database`, `pg_stat_wal`)
//! are flushed by each backend at most once a second, and by an idle one
//! within a second: [`settle`] waits that out before each snapshot.

use std::time::Duration;

use postgres::{Client, NoTls};

use crate::BoxError;

/// Prefix of every database the benchmark makes.
pub const PREFIX: &str = "crossflow_bench_";

/// The environment variable the admin URL defaults to (the store's tests
/// read the same one).
pub use crossflow_store::testing::POSTGRES_URL_ENV;

/// One database's counters and the server's WAL counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Transactions committed and rolled back in the database (an
    /// autocommit statement is one).
    pub xact_commit: i64,
    pub xact_rollback: i64,
    /// Sessions (connections) established to the database.
    pub sessions: i64,
    pub tup_inserted: i64,
    pub tup_updated: i64,
    /// WAL syncs to disk and bytes of WAL, server-wide (other databases'
    /// work counts too).
    pub wal_sync: i64,
    pub wal_bytes: i64,
}

/// `url` (a PostgreSQL URL) without its user info, for printing.
pub fn host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// A connection to the admin URL.
pub fn admin(url: &str) -> Result<Client, BoxError> {
    Client::connect(url, NoTls).map_err(|e| {
        format!(
            "cannot connect to PostgreSQL at {} (--postgres-url or {POSTGRES_URL_ENV}): {e}",
            host(url)
        )
        .into()
    })
}

/// Drops database `PREFIX + name` if it exists and creates it empty; its URL.
pub fn fresh_database(admin_url: &str, name: &str) -> Result<String, BoxError> {
    let db = format!("{PREFIX}{name}");
    let mut c = admin(admin_url)?;
    c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))?;
    c.batch_execute(&format!("CREATE DATABASE \"{db}\""))?;
    Ok(crossflow_store::testing::with_database(admin_url, &db))
}

/// Drops database `db` (its users closed or not).
pub fn drop_database(admin_url: &str, db: &str) -> Result<(), BoxError> {
    admin(admin_url)?.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))?;
    Ok(())
}

/// The database a URL names.
pub fn database(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split('?').next().unwrap_or(rest);
    path.split_once('/').map_or("", |(_, d)| d).to_owned()
}

/// Waits until the backends' statistics of the last second are flushed.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// The counters of database `db` now.
pub fn counters(c: &mut Client, db: &str) -> Result<Counters, BoxError> {
    let row = c.query_one(
        "SELECT d.xact_commit, d.xact_rollback, d.sessions, d.tup_inserted, d.tup_updated,
                w.wal_sync, w.wal_bytes::bigint
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1",
        &[&db],
    )?;
    Ok(Counters {
        xact_commit: row.try_get(0)?,
        xact_rollback: row.try_get(1)?,
        sessions: row.try_get(2)?,
        tup_inserted: row.try_get(3)?,
        tup_updated: row.try_get(4)?,
        wal_sync: row.try_get(5)?,
        wal_bytes: row.try_get(6)?,
    })
}

// === impl Counters ===

impl Counters {
    /// What happened from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            xact_commit: self.xact_commit - before.xact_commit,
            xact_rollback: self.xact_rollback - before.xact_rollback,
            sessions: self.sessions - before.sessions,
            tup_inserted: self.tup_inserted - before.tup_inserted,
            tup_updated: self.tup_updated - before.tup_updated,
            wal_sync: self.wal_sync - before.wal_sync,
            wal_bytes: self.wal_bytes - before.wal_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_user_info() {
        assert_eq!(
            host("postgresql://ops:secret@db.internal:5432/x?sslmode=disable"),
            "db.internal:5432"
        );
        assert_eq!(host("postgresql://127.0.0.1:55432"), "127.0.0.1:55432");
        assert_eq!(
            database("postgresql://u@h:5/crossflow_bench_r2?x=y"),
            "crossflow_bench_r2"
        );
        assert_eq!(database("postgresql://u@h:5"), "");
    }
}
