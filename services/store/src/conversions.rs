//! Conversions: orders reported by partners, their lifecycle, and where each
//! of their ledger entries landed.
//!
//! These are plain functions on a [`Conn`] rather than a trait with its own
//! `write`: a conversion row must commit or roll back together with its
//! ledger entry, so the conversions service calls them inside the same
//! write closure (of whichever [`Database`] it runs on) as
//! `ledger::append`. [`ConversionStore`] is the read side outside a write.

use std::future::Future;

use crate::{
    Database, Migration, StoreError,
    sql::{Conn, ConnExt, Row, RowExt, blob, opt_blob, to_i64},
    values,
};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0004_conversions",
    sql: "
CREATE TABLE conversions (
    conversion_id    BLOB PRIMARY KEY,
    reporter         TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    buyer_uid        BLOB NOT NULL,
    amount_minor     INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    category         TEXT NOT NULL,
    occurred_at_ms   INTEGER NOT NULL,
    referral_id      BLOB,
    recorded_at_ms   INTEGER NOT NULL,
    status           TEXT NOT NULL,
    model            TEXT NOT NULL,
    touches          INTEGER NOT NULL,
    commission_minor INTEGER NOT NULL,
    payouts          TEXT NOT NULL,
    refunded_minor   INTEGER NOT NULL,
    held             INTEGER NOT NULL,
    hold_reason      TEXT NOT NULL,
    confirmed_at_ms  INTEGER,
    report_index     INTEGER NOT NULL,
    report_leaf      BLOB NOT NULL,
    latest_index     INTEGER NOT NULL,
    UNIQUE (reporter, order_id)
) STRICT;
-- Every update (confirm, cancel, refund, release) with its ledger entry.
CREATE TABLE conversion_updates (
    conversion_id  BLOB NOT NULL,
    seq            INTEGER NOT NULL,
    event          TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    refund_minor   INTEGER NOT NULL,
    entry_index    INTEGER NOT NULL,
    leaf_hash      BLOB NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (conversion_id, seq)
) STRICT;
-- Fraud velocity: a buyer's landings at one partner within an hour use
-- landings_by_dest; held conversions are listed by this index.
CREATE INDEX conversions_held ON conversions (held, reporter);
",
};

/// Drops `conversions_held`: no query ever used it, and every report paid
/// for it (one more index page written, and copied into the savepoint's
/// journal, per conversion). Listing held conversions, if it is ever
/// needed, wants a partial index (`WHERE held = 1`), which costs nothing for
/// the conversions that are not held.
pub(crate) const MIGRATION_NO_HELD_INDEX: Migration = Migration {
    name: "0008_conversions_no_held_index",
    sql: "DROP INDEX IF EXISTS conversions_held;",
};

/// A conversion as stored. Raw subjects are never stored: `buyer_uid` is the
/// reporter's HMAC uid of the buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionRecord {
    pub conversion_id: [u8; 16],
    pub reporter: String,
    pub order_id: String,
    pub buyer_uid: [u8; 32],
    pub amount_minor: i64,
    pub currency: String,
    pub category: String,
    pub occurred_at_ms: i64,
    /// The referral the reporter asked to attribute to, if any.
    pub referral_id: Option<[u8; 16]>,
    pub recorded_at_ms: i64,
    /// `pending`, `confirmed`, `cancelled` or `refunded`.
    pub status: String,
    /// Attribution model name used at report time.
    pub model: String,
    pub touches: u32,
    pub commission_minor: i64,
    /// What each payee earns from this conversion before any reversal, one
    /// entry per partner, in the order of the report entry's postings.
    pub payouts: Vec<(String, i64)>,
    /// Sum of refunds so far.
    pub refunded_minor: i64,
    /// Held and not released: postings not yet made.
    pub held: bool,
    /// Why it was (or is) held; empty if never.
    pub hold_reason: String,
    pub confirmed_at_ms: Option<i64>,
    pub report_index: u64,
    pub report_leaf: [u8; 32],
    pub latest_index: u64,
}

/// One update of a conversion and its ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRecord {
    pub conversion_id: [u8; 16],
    pub seq: u32,
    /// `confirmed`, `cancelled`, `refunded` or `released`.
    pub event: String,
    /// The caller's idempotency key; empty if none.
    pub request_id: String,
    /// Refund requested (0 = "all that is left" or not a refund).
    pub refund_minor: i64,
    pub entry_index: u64,
    pub leaf_hash: [u8; 32],
    pub recorded_at_ms: i64,
}

/// Reads of conversions outside a write.
pub trait ConversionStore: Send + Sync + 'static {
    /// [`latest_entry_index`] on a reader.
    fn latest_conversion_entry(
        &self,
        reporter: &str,
        order_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

// Literal SQL (not format!): the statement caches hash the text on every
// call, and these run on the writer for every report.
macro_rules! columns {
    () => {
        "conversion_id, reporter, order_id, buyer_uid, amount_minor, currency, category, \
         occurred_at_ms, referral_id, recorded_at_ms, status, model, touches, commission_minor, \
         payouts, refunded_minor, held, hold_reason, confirmed_at_ms, report_index, report_leaf, \
         latest_index"
    };
}
macro_rules! update_columns {
    () => {
        "conversion_id, seq, event, request_id, refund_minor, entry_index, leaf_hash, \
         recorded_at_ms"
    };
}
const INSERT: &str = concat!(
    "INSERT INTO conversions (",
    columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22)"
);
const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversions WHERE conversion_id = ?1"
);
const SELECT_BY_ORDER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversions WHERE reporter = ?1 AND order_id = ?2"
);
const INSERT_UPDATE: &str = concat!(
    "INSERT INTO conversion_updates (",
    update_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
);
const SELECT_UPDATES: &str = concat!(
    "SELECT ",
    update_columns!(),
    " FROM conversion_updates WHERE conversion_id = ?1 ORDER BY seq"
);

/// Inserts a new conversion. Fails on a duplicate (reporter, order_id).
pub fn insert(conn: &dyn Conn, c: &ConversionRecord) -> Result<(), StoreError> {
    let payouts = encode_payouts(&c.payouts);
    conn.execute(
        INSERT,
        values![
            &c.conversion_id,
            &c.reporter,
            &c.order_id,
            &c.buyer_uid,
            c.amount_minor,
            &c.currency,
            &c.category,
            c.occurred_at_ms,
            c.referral_id.as_ref(),
            c.recorded_at_ms,
            &c.status,
            &c.model,
            c.touches,
            c.commission_minor,
            &payouts,
            c.refunded_minor,
            c.held,
            &c.hold_reason,
            c.confirmed_at_ms,
            to_i64(c.report_index)?,
            &c.report_leaf,
            to_i64(c.latest_index)?,
        ],
    )?;
    Ok(())
}

/// Writes the mutable state of a conversion (status, refunds, hold, latest
/// entry) back.
pub fn update_state(conn: &dyn Conn, c: &ConversionRecord) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE conversions SET status = ?2, refunded_minor = ?3, held = ?4, \
         confirmed_at_ms = ?5, latest_index = ?6 WHERE conversion_id = ?1",
        values![
            &c.conversion_id,
            &c.status,
            c.refunded_minor,
            c.held,
            c.confirmed_at_ms,
            to_i64(c.latest_index)?,
        ],
    )?;
    if n != 1 {
        return Err(StoreError::Corrupt(format!(
            "conversion {} vanished during an update",
            hex::encode(c.conversion_id)
        )));
    }
    Ok(())
}

/// A conversion by id.
pub fn select(conn: &dyn Conn, id: &[u8; 16]) -> Result<Option<ConversionRecord>, StoreError> {
    conn.query_opt(SELECT_BY_ID, values![id], from_row)
}

/// A conversion by its reporter's order id.
pub fn select_by_order(
    conn: &dyn Conn,
    reporter: &str,
    order_id: &str,
) -> Result<Option<ConversionRecord>, StoreError> {
    conn.query_opt(SELECT_BY_ORDER, values![reporter, order_id], from_row)
}

/// The ledger index of the latest entry about (reporter, order_id): the
/// report, or its latest update. For receipts by order id.
pub fn latest_entry_index(
    conn: &dyn Conn,
    reporter: &str,
    order_id: &str,
) -> Result<Option<u64>, StoreError> {
    conn.query_opt(
        "SELECT latest_index FROM conversions WHERE reporter = ?1 AND order_id = ?2",
        values![reporter, order_id],
        |r| r.uint(0),
    )
}

/// Records an update; `seq` must be the next one (see [`updates`]).
pub fn insert_update(conn: &dyn Conn, u: &UpdateRecord) -> Result<(), StoreError> {
    conn.execute(
        INSERT_UPDATE,
        values![
            &u.conversion_id,
            u.seq,
            &u.event,
            &u.request_id,
            u.refund_minor,
            to_i64(u.entry_index)?,
            &u.leaf_hash,
            u.recorded_at_ms,
        ],
    )?;
    Ok(())
}

/// Every update of a conversion, oldest first.
pub fn updates(conn: &dyn Conn, id: &[u8; 16]) -> Result<Vec<UpdateRecord>, StoreError> {
    conn.query_vec(SELECT_UPDATES, values![id], update_from_row)
}

/// How many landings of `dest_uid` at `to_partner` were redeemed in
/// `[from_ms, to_ms]`. For the landing-velocity fraud rule.
pub fn count_landings(
    conn: &dyn Conn,
    to_partner: &str,
    dest_uid: &[u8; 32],
    from_ms: i64,
    to_ms: i64,
) -> Result<u64, StoreError> {
    let n = conn.query_int(
        "SELECT COUNT(*) FROM landings WHERE to_partner = ?1 AND dest_uid = ?2 \
         AND redeemed_at_ms >= ?3 AND redeemed_at_ms <= ?4",
        values![to_partner, dest_uid, from_ms, to_ms],
    )?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

// === impl Database ===

impl<D: Database> ConversionStore for D {
    async fn latest_conversion_entry(
        &self,
        reporter: &str,
        order_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let (reporter, order_id) = (reporter.to_owned(), order_id.to_owned());
        self.read(move |conn| latest_entry_index(conn, &reporter, &order_id))
            .await
    }
}

fn from_row(r: &dyn Row) -> Result<ConversionRecord, StoreError> {
    Ok(ConversionRecord {
        conversion_id: blob(r, 0, "conversion_id")?,
        reporter: r.string(1)?,
        order_id: r.string(2)?,
        buyer_uid: blob(r, 3, "buyer_uid")?,
        amount_minor: r.int(4)?,
        currency: r.string(5)?,
        category: r.string(6)?,
        occurred_at_ms: r.int(7)?,
        referral_id: opt_blob(r, 8, "referral_id")?,
        recorded_at_ms: r.int(9)?,
        status: r.string(10)?,
        model: r.string(11)?,
        touches: r.int32(12)?,
        commission_minor: r.int(13)?,
        payouts: decode_payouts(r.text(14)?)?,
        refunded_minor: r.int(15)?,
        held: r.flag(16)?,
        hold_reason: r.string(17)?,
        confirmed_at_ms: r.opt_int(18)?,
        report_index: r.uint(19)?,
        report_leaf: blob(r, 20, "report_leaf")?,
        latest_index: r.uint(21)?,
    })
}

fn update_from_row(r: &dyn Row) -> Result<UpdateRecord, StoreError> {
    Ok(UpdateRecord {
        conversion_id: blob(r, 0, "conversion_id")?,
        seq: r.int32(1)?,
        event: r.string(2)?,
        request_id: r.string(3)?,
        refund_minor: r.int(4)?,
        entry_index: r.uint(5)?,
        leaf_hash: blob(r, 6, "leaf_hash")?,
        recorded_at_ms: r.int(7)?,
    })
}

/// `partner=amount,partner=amount`: partner ids are slugs (no '=' or ',').
fn encode_payouts(p: &[(String, i64)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(p.iter().map(|(who, _)| who.len() + 12).sum());
    for (i, (who, amount)) in p.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        // Writing to a String cannot fail.
        let _ = write!(out, "{sep}{who}={amount}");
    }
    out
}

fn decode_payouts(s: &str) -> Result<Vec<(String, i64)>, StoreError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let (who, amount) = part
                .split_once('=')
                .ok_or_else(|| StoreError::Corrupt(format!("payout {part:?}")))?;
            let amount = amount
                .parse::<i64>()
                .map_err(|_| StoreError::Corrupt(format!("payout {part:?}")))?;
            Ok((who.to_owned(), amount))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payouts_round_trip() {
        let p = vec![("alpha".to_owned(), 120), ("beta-2".to_owned(), 0)];
        assert_eq!(encode_payouts(&p), "alpha=120,beta-2=0");
        assert_eq!(decode_payouts(&encode_payouts(&p)).unwrap(), p);
        assert_eq!(encode_payouts(&[]), "");
        assert_eq!(decode_payouts("").unwrap(), vec![]);
        assert!(decode_payouts("alpha").is_err());
        assert!(decode_payouts("alpha=x").is_err());
    }
}
