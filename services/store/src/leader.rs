//! The ledger leader's election on PostgreSQL: of all replicas, the one
//! holding a session advisory lock integrates entries and signs
//! checkpoints.
//!
//! The lock lives as long as its connection: when the leader dies (or its
//! connection does), PostgreSQL releases it and the next replica to ask
//! takes it. A lock alone cannot stop a leader that has lost it without
//! knowing (a stalled process whose session the server already ended), so
//! each election also raises an epoch in `ledger_leader`, and every write
//! of the integrator checks its epoch in the same transaction (see
//! `ledger::integrate`): a deposed leader's write fails with
//! [`StoreError::Fenced`] and it never publishes a checkpoint.

use crate::{
    Postgres, StoreError,
    pg::PgConn,
    sql::{Conn, ConnExt, Value},
};

/// Advisory lock key (per database) of the ledger's leader:
/// "crossflow-leader" folded into 63 bits.
const LEADER_LOCK: i64 = 0x6366_6c65_6164_6572;

/// The lead, held for as long as this value lives.
#[derive(Debug)]
pub struct Lease {
    conn: PgConn,
    epoch: u64,
}

/// A replica standing for the lead, with the connection it asks on (kept
/// between attempts, and handed to the [`Lease`] when it wins).
#[derive(Debug)]
pub struct Candidate {
    db: Postgres,
    holder: String,
    conn: Option<PgConn>,
}

// === impl Candidate ===

impl Candidate {
    /// `holder` names this replica in `ledger_leader` (for operators).
    pub fn new(db: Postgres, holder: impl Into<String>) -> Candidate {
        Candidate {
            db,
            holder: holder.into(),
            conn: None,
        }
    }

    /// Tries to become the ledger's leader, without waiting: `None` while
    /// another replica leads. Blocks on I/O: call it off the async runtime.
    pub fn try_lead(&mut self, now_ms: i64) -> Result<Option<Lease>, StoreError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.db.dedicated()?,
        };
        let got = conn.query_opt(
            "SELECT pg_try_advisory_lock(?1)",
            &[Value::Int(LEADER_LOCK)],
            |r| crate::sql::RowExt::flag(r, 0),
        )?;
        if got != Some(true) {
            self.conn = Some(conn);
            return Ok(None);
        }
        let epoch = conn.query_int(
            "UPDATE ledger_leader SET epoch = epoch + 1, holder = ?1, elected_at_ms = ?2 \
             WHERE id = 0 RETURNING epoch",
            &[Value::Text(&self.holder), Value::Int(now_ms)],
        )?;
        let epoch = u64::try_from(epoch)
            .map_err(|_| StoreError::Corrupt(format!("ledger leader epoch {epoch}")))?;
        Ok(Some(Lease { conn, epoch }))
    }
}

// === impl Lease ===

impl Lease {
    /// The epoch this lead was elected in; the integrator's writes carry it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lead is still held: its session is alive (the lock is
    /// the session's). Blocks on I/O.
    pub fn still_held(&self) -> bool {
        self.conn.execute("SELECT 1", &[]).is_ok()
    }
}

/// Checks, inside an integrator's write, that `epoch` is still the
/// leader's, locking the row so that a new election waits for this
/// transaction (and the new leader then reads what it wrote).
pub(crate) fn fence(conn: &dyn Conn, epoch: u64) -> Result<(), StoreError> {
    let current = conn.query_int(
        "SELECT epoch FROM ledger_leader WHERE id = 0 FOR UPDATE",
        &[],
    )?;
    if u64::try_from(current).ok() != Some(epoch) {
        return Err(StoreError::Fenced {
            epoch,
            current: current.max(0) as u64,
        });
    }
    Ok(())
}
