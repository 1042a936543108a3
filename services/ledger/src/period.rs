//! Settlement periods: calendar months in the gateway's time zone, closed in
//! order, each anchored to a checkpoint the log already signed
//! (docs/LEDGER.md, "Settlement periods").
//!
//! Closing records one row (`crossflow_store::periods`); it never signs, so
//! it can run beside a live gateway through any connection to the store,
//! SQLite or PostgreSQL (only the store's neutral [`Conn`] is used).

use crate::settle::PeriodBounds;
use crossflow_store::{
    StoreError, ledger, periods,
    sql::{Conn, Dialect},
};

/// Transaction-scoped advisory lock that serialises closes on PostgreSQL,
/// where `crossflow ledger close` may run on any host at any time:
/// "cfclose!" in ASCII.
const CLOSE_LOCK: i64 = 0x6366_636c_6f73_6521;

/// Why a period cannot be closed or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeriodError {
    #[error("period {0:?} is not a month YYYY-MM (e.g. 2026-11)")]
    BadName(String),
    #[error("time zone {0:?} is not an IANA time zone like Asia/Shanghai")]
    BadTimeZone(String),
    #[error("period {period} has not ended: it ends at {end} ({end_ms} ms), now is {now_ms} ms")]
    NotEnded {
        period: String,
        end: String,
        end_ms: i64,
        now_ms: i64,
    },
    #[error(
        "period {period} cannot be closed: periods close in calendar order and the newest closed one is {newest}, so the next is {next}"
    )]
    NotNext {
        period: String,
        newest: String,
        next: String,
    },
    #[error(
        "period {period} cannot be closed: no checkpoint was signed before it ended ({end}); the log was empty then"
    )]
    NoCheckpoint { period: String, end: String },
    #[error(
        "period {period} cannot be closed: its anchor (size {anchor}) would be smaller than the previous anchor (size {previous})"
    )]
    AnchorShrinks {
        period: String,
        anchor: u64,
        previous: u64,
    },
    #[error("period {0} is not closed (run `crossflow ledger close --period {0}` first)")]
    NotClosed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A month: `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i16,
    pub month: i8,
}

impl Month {
    pub fn parse(s: &str) -> Result<Month, PeriodError> {
        let bad = || PeriodError::BadName(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let year: i16 = y.parse().map_err(|_| bad())?;
        let month: i8 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Its first instant in `tz`, as a zoned time.
    fn start(self, tz: &jiff::tz::TimeZone) -> Result<jiff::Zoned, PeriodError> {
        jiff::civil::date(self.year, self.month, 1)
            .at(0, 0, 0, 0)
            .to_zoned(tz.clone())
            .map_err(|_| PeriodError::BadName(self.to_string()))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A period's time bounds in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub month: Month,
    pub timezone: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// RFC 3339 with milliseconds, e.g. `2026-11-01T00:00:00.000+08:00`.
    pub start: String,
    pub end: String,
}

/// `[1st 00:00, next 1st 00:00)` of `period` in `tz`.
pub fn span(period: &str, tz: &str) -> Result<Span, PeriodError> {
    let month = Month::parse(period)?;
    let zone = jiff::tz::TimeZone::get(tz).map_err(|_| PeriodError::BadTimeZone(tz.to_owned()))?;
    let start = month.start(&zone)?;
    let end = month.next().start(&zone)?;
    let fmt = |z: &jiff::Zoned| {
        crate::settle::rfc3339(&zone, z.timestamp().as_millisecond()).unwrap_or_default()
    };
    Ok(Span {
        month,
        timezone: tz.to_owned(),
        start_ms: start.timestamp().as_millisecond(),
        end_ms: end.timestamp().as_millisecond(),
        start: fmt(&start),
        end: fmt(&end),
    })
}

/// A recorded close, as [`close`] answers it: the stored row (its fields
/// read through `Deref`, e.g. `close.anchor_size`) and whether it was there
/// before the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub recorded: periods::PeriodClose,
    /// The period had been closed before; nothing was changed.
    pub already: bool,
}

// === impl Close ===

// A wrapper rather than a copy of the row's fields: one definition of what a
// close records, in the store that records it.
impl std::ops::Deref for Close {
    type Target = periods::PeriodClose;

    fn deref(&self) -> &periods::PeriodClose {
        &self.recorded
    }
}

impl Close {
    /// The line `crossflow ledger close` prints.
    pub fn summary(&self) -> String {
        let what = if self.already {
            "was already closed"
        } else {
            "closed"
        };
        format!(
            "period {} {what}: entries [{}, {}) ({} entries), anchored to the checkpoint of size {} (time zone {})",
            self.period,
            self.previous_anchor_size,
            self.anchor_size,
            self.anchor_size - self.previous_anchor_size,
            self.anchor_size,
            self.timezone
        )
    }
}

/// Closes `period` (a month in `tz`) at `now_ms`: records the newest
/// checkpoint signed before the month ended as its anchor.
///
/// Run it inside a write transaction, so the order check and the insert
/// cannot race another close: on SQLite a `BEGIN IMMEDIATE` (or the
/// store's writer, which is one), on PostgreSQL any transaction (the close
/// takes a transaction-scoped advisory lock first, since closes there may
/// run from several hosts).
pub fn close(conn: &dyn Conn, period: &str, tz: &str, now_ms: i64) -> Result<Close, PeriodError> {
    if conn.dialect() == Dialect::Postgres {
        // The lock function returns void: the row is not read.
        conn.query_each(
            &format!("SELECT pg_advisory_xact_lock({CLOSE_LOCK})"),
            &[],
            &mut |_| Ok(false),
        )?;
    }
    let span = span(period, tz)?;
    let name = span.month.to_string();
    if let Some(done) = periods::period(conn, &name)? {
        return Ok(Close {
            recorded: done,
            already: true,
        });
    }
    if now_ms < span.end_ms {
        return Err(PeriodError::NotEnded {
            period: name,
            end: span.end,
            end_ms: span.end_ms,
            now_ms,
        });
    }
    let newest = periods::latest(conn)?;
    if let Some(newest) = &newest {
        let next = Month::parse(&newest.period)?.next();
        if next != span.month {
            return Err(PeriodError::NotNext {
                period: name,
                newest: newest.period.clone(),
                next: next.to_string(),
            });
        }
    }
    let previous = newest.as_ref().map_or(0, |n| n.anchor_size);
    let anchor = ledger::latest_checkpoint_before(conn, span.end_ms)?;
    let anchor_size = match (anchor, &newest) {
        (Some(a), _) => a.size,
        // Nothing signed since the previous close (or ever, with no close
        // yet and no checkpoint): the period holds no entries.
        (None, Some(_)) => previous,
        (None, None) => {
            return Err(PeriodError::NoCheckpoint {
                period: name,
                end: span.end,
            });
        }
    };
    if anchor_size < previous {
        return Err(PeriodError::AnchorShrinks {
            period: name,
            anchor: anchor_size,
            previous,
        });
    }
    let row = periods::PeriodClose {
        period: name,
        anchor_size,
        previous_anchor_size: previous,
        timezone: tz.to_owned(),
        closed_at_ms: now_ms,
    };
    periods::insert(conn, &row)?;
    Ok(Close {
        recorded: row,
        already: false,
    })
}

/// The bounds of a closed period (in the zone it was closed in).
pub fn bounds(conn: &dyn Conn, period: &str) -> Result<(PeriodBounds, Span), PeriodError> {
    let month = Month::parse(period)?;
    let close = periods::period(conn, &month.to_string())?
        .ok_or_else(|| PeriodError::NotClosed(month.to_string()))?;
    let span = span(period, &close.timezone)?;
    Ok((
        PeriodBounds {
            name: close.period,
            timezone: close.timezone,
            start_ms: span.start_ms,
            end_ms: span.end_ms,
            previous_anchor_size: close.previous_anchor_size,
            anchor_size: close.anchor_size,
        },
        span,
    ))
}

#[cfg(test)]
mod tests;
