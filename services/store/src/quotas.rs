//! Daily quota counters: how many calls (or hops) each quota key has used in
//! one local day. Written behind (a batch of deltas per flush, not a write
//! per call) by `crossflow-quota`, read back at start so a restart does not
//! reset a day's caps.

use std::future::Future;

use crate::{
    Database, Migration, StoreError,
    sql::{ConnExt, RowExt},
    values,
};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0003_quota_counters",
    sql: "
CREATE TABLE quota_counters (
    day   TEXT NOT NULL,
    key   TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, key)
) STRICT;
",
};

/// Storage of daily quota counters. `day` is a local date `YYYY-MM-DD`;
/// `key` names one counter (the quota crate decides the scheme).
pub trait QuotaCounterStore: Send + Sync + 'static {
    /// Every counter of `day`.
    fn day_counters(
        &self,
        day: &str,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Adds each delta to its counter of `day` in one durable write, and
    /// forgets days before `keep_from` (same format, compared as text).
    fn add_counters(
        &self,
        day: &str,
        deltas: Vec<(String, u64)>,
        keep_from: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<D: Database> QuotaCounterStore for D {
    async fn day_counters(&self, day: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let day = day.to_owned();
        self.read(move |c| {
            c.query_vec(
                "SELECT key, count FROM quota_counters WHERE day = ?1 ORDER BY key",
                values![&day],
                |r| {
                    let (k, n) = (r.string(0)?, r.int(1)?);
                    let n = u64::try_from(n)
                        .map_err(|_| StoreError::Corrupt(format!("quota counter {k} is {n}")))?;
                    Ok((k, n))
                },
            )
        })
        .await
    }

    async fn add_counters(
        &self,
        day: &str,
        deltas: Vec<(String, u64)>,
        keep_from: &str,
    ) -> Result<(), StoreError> {
        let day = day.to_owned();
        let keep_from = keep_from.to_owned();
        self.write(move |c| {
            for (k, n) in &deltas {
                let n = i64::try_from(*n).unwrap_or(i64::MAX);
                // Qualified: in PostgreSQL a bare `count` here is ambiguous
                // between the row and `excluded`.
                c.execute(
                    "INSERT INTO quota_counters (day, key, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (day, key) DO UPDATE
                     SET count = quota_counters.count + excluded.count",
                    values![&day, k, n],
                )?;
            }
            c.execute(
                "DELETE FROM quota_counters WHERE day < ?1",
                values![&keep_from],
            )?;
            Ok(())
        })
        .await
    }
}

// Tested on both backends in `pg_tests`.
