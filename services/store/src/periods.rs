//! Settlement period closes: which stored checkpoint anchors each closed
//! month (docs/LEDGER.md, "Settlement periods"). Closing only records a row;
//! the anchor is a checkpoint the log already signed, so nothing here signs.
//!
//! Functions take a plain [`Conn`] so `crossflow ledger close` can record a
//! close through its own connection while a gateway holds the store's lock.

use crate::{
    Migration, StoreError,
    sql::{Conn, ConnExt, Row, RowExt, to_i64},
    values,
};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0006_ledger_periods",
    sql: "
-- One row per closed settlement period (a calendar month YYYY-MM in
-- `timezone`). Entries [previous_anchor_size, anchor_size) belong to it.
CREATE TABLE ledger_periods (
    period               TEXT PRIMARY KEY,
    anchor_size          INTEGER NOT NULL,
    previous_anchor_size INTEGER NOT NULL,
    timezone             TEXT NOT NULL,
    closed_at_ms         INTEGER NOT NULL
) STRICT;
",
};

/// A recorded period close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodClose {
    /// `YYYY-MM`.
    pub period: String,
    pub anchor_size: u64,
    pub previous_anchor_size: u64,
    /// IANA time zone the month boundaries were computed in.
    pub timezone: String,
    pub closed_at_ms: i64,
}

macro_rules! columns {
    () => {
        "period, anchor_size, previous_anchor_size, timezone, closed_at_ms"
    };
}

/// The close of `period`, if it was closed.
pub fn period(conn: &dyn Conn, period: &str) -> Result<Option<PeriodClose>, StoreError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            columns!(),
            " FROM ledger_periods WHERE period = ?1"
        ),
        values![period],
        row,
    )
}

/// The most recent close (periods are `YYYY-MM`, so text order is time order).
pub fn latest(conn: &dyn Conn) -> Result<Option<PeriodClose>, StoreError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            columns!(),
            " FROM ledger_periods ORDER BY period DESC LIMIT 1"
        ),
        &[],
        row,
    )
}

/// Every close, oldest first.
pub fn all(conn: &dyn Conn) -> Result<Vec<PeriodClose>, StoreError> {
    conn.query_vec(
        concat!(
            "SELECT ",
            columns!(),
            " FROM ledger_periods ORDER BY period"
        ),
        &[],
        row,
    )
}

/// Records a close. Fails (constraint) if `period` is already closed; the
/// caller checks order and anchors.
pub fn insert(conn: &dyn Conn, close: &PeriodClose) -> Result<(), StoreError> {
    conn.execute(
        concat!(
            "INSERT INTO ledger_periods (",
            columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5)"
        ),
        values![
            &close.period,
            to_i64(close.anchor_size)?,
            to_i64(close.previous_anchor_size)?,
            &close.timezone,
            close.closed_at_ms
        ],
    )?;
    Ok(())
}

fn row(r: &dyn Row) -> Result<PeriodClose, StoreError> {
    Ok(PeriodClose {
        period: r.string(0)?,
        anchor_size: r.uint(1)?,
        previous_anchor_size: r.uint(2)?,
        timezone: r.string(3)?,
        closed_at_ms: r.int(4)?,
    })
}

// Tested on both backends in `pg_tests`.
