//! Closes run on SQLite (an in-memory store) and, with a test server, on
//! PostgreSQL (`crossflow_store::testing`): the same cases, the same answers.

use crossflow_store::{pg::PgConn, values};
use rusqlite::Connection;

use super::*;

const NOV_START: i64 = 1_793_462_400_000; // 2026-11-01T00:00+08:00
const DEC_START: i64 = 1_796_054_400_000; // 2026-12-01T00:00+08:00
const HOUR: i64 = 3_600_000;

/// A connection of either backend, and how to run transaction control on it.
trait TestConn: Conn {
    fn run(&self, sql: &str);
}

impl TestConn for Connection {
    fn run(&self, sql: &str) {
        self.execute_batch(sql).unwrap();
    }
}

impl TestConn for PgConn {
    fn run(&self, sql: &str) {
        self.batch(sql).unwrap();
    }
}

fn store() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    for m in crossflow_store::MIGRATIONS {
        conn.execute_batch(m.sql).unwrap();
    }
    conn
}

/// `case` on a fresh PostgreSQL database for test `name` (skipped, with a
/// line saying so, without a test server).
fn on_postgres(name: &str, case: fn(&PgConn)) {
    let Some(pg) = crossflow_store::testing::postgres(name) else {
        return;
    };
    case(&pg.dedicated().unwrap());
    pg.close();
}

fn checkpoint(conn: &dyn Conn, size: u64, signed_at_ms: i64) {
    conn.execute(
        "INSERT INTO ledger_checkpoints (size, root, note, signed_at_ms) VALUES (?1, ?2, 'n', ?3)",
        values![size as i64, &[0u8; 32], signed_at_ms],
    )
    .unwrap();
}

#[test]
fn months_and_spans() {
    assert_eq!(
        Month::parse("2026-11").unwrap().next().to_string(),
        "2026-12"
    );
    assert_eq!(
        Month::parse("2026-12").unwrap().next().to_string(),
        "2027-01"
    );
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-11",
        "2026/11",
        "2026-11-01",
        "+026-11",
    ] {
        assert!(
            matches!(Month::parse(bad), Err(PeriodError::BadName(_))),
            "{bad}"
        );
    }
    let s = span("2026-11", "Asia/Shanghai").unwrap();
    assert_eq!((s.start_ms, s.end_ms), (NOV_START, DEC_START));
    assert_eq!(s.start, "2026-11-01T00:00:00.000+08:00");
    assert_eq!(s.end, "2026-12-01T00:00:00.000+08:00");
    let utc = span("2026-11", "UTC").unwrap();
    assert_eq!(utc.start_ms, NOV_START + 8 * HOUR);
    // A month with a DST change: March 2026 in New York is 31 days less an hour.
    let ny = span("2026-03", "America/New_York").unwrap();
    assert_eq!(ny.end_ms - ny.start_ms, 31 * 24 * HOUR - HOUR);
    assert!(matches!(
        span("2026-11", "Mars/Olympus"),
        Err(PeriodError::BadTimeZone(_))
    ));
}

#[test]
fn closes_in_order_after_the_month_ends() {
    closes_in_order(&store());
}

#[test]
fn closes_in_order_after_the_month_ends_on_postgres() {
    on_postgres("period_closes_in_order", closes_in_order);
}

fn closes_in_order(conn: &impl TestConn) {
    let tz = "Asia/Shanghai";
    checkpoint(conn, 3, NOV_START - HOUR); // October
    checkpoint(conn, 8, NOV_START + HOUR);
    checkpoint(conn, 12, DEC_START - 1);
    checkpoint(conn, 15, DEC_START); // signed as December began: not November's

    // Before November ends.
    let err = close(conn, "2026-11", tz, DEC_START - 1).unwrap_err();
    assert!(matches!(err, PeriodError::NotEnded { .. }), "{err}");
    assert!(
        err.to_string().contains("2026-12-01T00:00:00.000+08:00"),
        "{err}"
    );

    let oct = close(conn, "2026-10", tz, DEC_START).unwrap();
    assert_eq!(
        (oct.previous_anchor_size, oct.anchor_size, oct.already),
        (0, 3, false)
    );
    // Skipping a month is refused, naming the next one.
    let err = close(conn, "2026-12", tz, DEC_START + 40 * 24 * HOUR).unwrap_err();
    assert!(err.to_string().contains("the next is 2026-11"), "{err}");
    let nov = close(conn, "2026-11", tz, DEC_START).unwrap();
    assert_eq!((nov.previous_anchor_size, nov.anchor_size), (3, 12));
    assert!(
        nov.summary().contains("entries [3, 12) (9 entries)"),
        "{}",
        nov.summary()
    );
    // Again: the recorded close, unchanged.
    let again = close(conn, "2026-11", "UTC", DEC_START + 5).unwrap();
    assert!(again.already);
    assert_eq!((again.anchor_size, again.timezone.as_str()), (12, tz));
    // An earlier month than the newest close is refused.
    let err = close(conn, "2026-09", tz, DEC_START).unwrap_err();
    assert!(matches!(err, PeriodError::NotNext { .. }), "{err}");

    let (b, _) = bounds(conn, "2026-11").unwrap();
    assert_eq!(
        (b.previous_anchor_size, b.anchor_size, b.start_ms),
        (3, 12, NOV_START)
    );
    assert!(matches!(
        bounds(conn, "2026-12"),
        Err(PeriodError::NotClosed(_))
    ));
}

#[test]
fn first_close_needs_a_checkpoint() {
    first_close(&store());
}

#[test]
fn first_close_needs_a_checkpoint_on_postgres() {
    on_postgres("period_first_close", first_close);
}

fn first_close(conn: &impl TestConn) {
    let err = close(conn, "2026-10", "Asia/Shanghai", DEC_START).unwrap_err();
    assert!(matches!(err, PeriodError::NoCheckpoint { .. }), "{err}");
    // Inside a caller's transaction, nothing is committed on its own.
    conn.run("BEGIN");
    checkpoint(conn, 2, NOV_START - HOUR);
    close(conn, "2026-10", "Asia/Shanghai", DEC_START).unwrap();
    conn.run("ROLLBACK");
    assert!(crossflow_store::periods::latest(conn).unwrap().is_none());
}
