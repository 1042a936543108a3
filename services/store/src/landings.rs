//! Landings: redeemed referral hops, bound to the destination's own user.

use std::{future::Future, sync::Arc};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Migration, Sqlite, StoreError, blob, opt_blob};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0001_landings",
    sql: "
CREATE TABLE landings (
    referral_id    BLOB PRIMARY KEY,
    agreement_id   TEXT NOT NULL,
    from_partner   TEXT NOT NULL,
    to_partner     TEXT NOT NULL,
    chain          TEXT NOT NULL,
    hop            INTEGER NOT NULL,
    parent_id      BLOB,
    target         TEXT NOT NULL,
    origin         TEXT NOT NULL,
    origin_uid     BLOB NOT NULL,
    dest_uid       BLOB NOT NULL,
    issued_at_ms   INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    redeemed_at_ms INTEGER NOT NULL,
    tag_access     INTEGER NOT NULL
) STRICT;
-- Attribution reads a buyer's landings at one partner within a window.
CREATE INDEX landings_by_dest ON landings (to_partner, dest_uid, redeemed_at_ms);
",
};

/// A redeemed hop. No raw subject is kept: users are HMAC uids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    pub referral_id: [u8; 16],
    pub agreement_id: String,
    pub from: String,
    pub to: String,
    /// Origin first, ending with `from`.
    pub chain: Vec<String>,
    pub hop: u32,
    pub parent: Option<[u8; 16]>,
    pub target: String,
    pub origin: String,
    /// The user at the origin platform.
    pub origin_uid: [u8; 32],
    /// The user at the destination platform (`to`).
    pub dest_uid: [u8; 32],
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub redeemed_at_ms: i64,
    /// Whether the hop carries access to the origin user's tags.
    pub tag_access: bool,
}

/// Outcome of recording a landing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Recorded now.
    New(Landing),
    /// The referral was already redeemed; this is the landing on record.
    Existing(Landing),
}

/// Storage of landings.
pub trait LandingStore: Send + Sync + 'static {
    /// Records `landing` unless its referral id already has one, in which
    /// case the recorded one is returned unchanged. Durable when answered.
    fn redeem(&self, landing: Landing)
    -> impl Future<Output = Result<Redeemed, StoreError>> + Send;

    /// The landing of a referral, if it was redeemed.
    fn landing(
        &self,
        referral_id: [u8; 16],
    ) -> impl Future<Output = Result<Option<Landing>, StoreError>> + Send;
}

// === impl Sqlite ===

impl LandingStore for Sqlite {
    async fn redeem(&self, landing: Landing) -> Result<Redeemed, StoreError> {
        // Shared with the write, which may run twice (see `Db::write`); the
        // write is dropped before it answers, so this unwraps without a
        // copy.
        let landing = Arc::new(landing);
        let written = landing.clone();
        let existing = self
            .db
            .write(move |conn| {
                if let Some(existing) = select(conn, &written.referral_id)? {
                    return Ok(Some(existing));
                }
                insert(conn, &written)?;
                Ok(None)
            })
            .await?;
        Ok(match existing {
            Some(existing) => Redeemed::Existing(existing),
            None => Redeemed::New(Arc::unwrap_or_clone(landing)),
        })
    }

    async fn landing(&self, referral_id: [u8; 16]) -> Result<Option<Landing>, StoreError> {
        self.db.read(move |conn| select(conn, &referral_id)).await
    }
}

// Literal SQL (not format!): prepare_cached hashes the text on every call.
/// The columns [`insert`] binds and [`from_row`] reads, in their order.
macro_rules! columns {
    () => {
        "referral_id, agreement_id, from_partner, to_partner, chain, hop, parent_id, target, \
         origin, origin_uid, dest_uid, issued_at_ms, expires_at_ms, redeemed_at_ms, tag_access"
    };
}
const INSERT: &str = concat!(
    "INSERT INTO landings (",
    columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);
const SELECT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM landings WHERE referral_id = ?1"
);
const IN_WINDOW: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM landings WHERE to_partner = ?1 AND dest_uid = ?2 \
     AND redeemed_at_ms >= ?3 AND redeemed_at_ms <= ?4 ORDER BY redeemed_at_ms"
);

fn insert(conn: &Connection, l: &Landing) -> Result<(), StoreError> {
    conn.prepare_cached(INSERT)?.execute(params![
        &l.referral_id[..],
        l.agreement_id,
        l.from,
        l.to,
        l.chain.join(","),
        l.hop,
        l.parent.as_ref().map(|p| &p[..]),
        l.target,
        l.origin,
        &l.origin_uid[..],
        &l.dest_uid[..],
        l.issued_at_ms,
        l.expires_at_ms,
        l.redeemed_at_ms,
        l.tag_access,
    ])?;
    Ok(())
}

/// Reads one landing by referral id.
pub fn select(conn: &Connection, referral_id: &[u8; 16]) -> Result<Option<Landing>, StoreError> {
    let row = conn
        .prepare_cached(SELECT)?
        .query_row([&referral_id[..]], |r| Ok(from_row(r)))
        .optional()?;
    row.transpose()
}

/// Landings of `dest_uid` at `to_partner` redeemed in `[from_ms, to_ms]`,
/// oldest first (ties by referral id), in one query.
pub fn in_window(
    conn: &Connection,
    to_partner: &str,
    dest_uid: &[u8; 32],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Landing>, StoreError> {
    let mut stmt = conn.prepare_cached(IN_WINDOW)?;
    let mut rows = stmt.query(params![to_partner, &dest_uid[..], from_ms, to_ms])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(from_row(r)?);
    }
    // `landings_by_dest` yields them by time; ties by referral id here, not
    // in the ORDER BY, which would make SQLite sort every result itself.
    out.sort_by_key(|l| (l.redeemed_at_ms, l.referral_id));
    Ok(out)
}

/// Decodes a row selected with the columns of `columns!()` in order.
fn from_row(r: &Row<'_>) -> Result<Landing, StoreError> {
    let chain: String = r.get(4)?;
    Ok(Landing {
        referral_id: blob(r, 0, "referral_id")?,
        agreement_id: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        chain: chain.split(',').map(str::to_owned).collect(),
        hop: r.get(5)?,
        parent: opt_blob(r, 6, "parent_id")?,
        target: r.get(7)?,
        origin: r.get(8)?,
        origin_uid: blob(r, 9, "origin_uid")?,
        dest_uid: blob(r, 10, "dest_uid")?,
        issued_at_ms: r.get(11)?,
        expires_at_ms: r.get(12)?,
        redeemed_at_ms: r.get(13)?,
        tag_access: r.get(14)?,
    })
}
