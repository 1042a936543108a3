//! Landings: redeemed referral hops, bound to the destination's own user.

use std::{future::Future, sync::Arc};

use crate::{
    Database, Migration, StoreError,
    sql::{Conn, ConnExt, Row, RowExt, blob, opt_blob},
    values,
};

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

// === impl Database ===

impl<D: Database> LandingStore for D {
    async fn redeem(&self, landing: Landing) -> Result<Redeemed, StoreError> {
        // Shared with the write, which may run twice (see `Db::write`); the
        // write is dropped before it answers, so this unwraps without a
        // copy.
        let landing = Arc::new(landing);
        let written = landing.clone();
        let existing = self
            .write(move |conn| {
                // One statement for a new landing (the usual case): on
                // PostgreSQL a round trip costs more than the insert. An
                // insert racing another replica's waits for its commit.
                if insert(conn, &written)? {
                    return Ok(None);
                }
                select(conn, &written.referral_id)?
                    .map(Some)
                    .ok_or_else(|| {
                        StoreError::Corrupt("a landing conflicted but is not stored".into())
                    })
            })
            .await?;
        Ok(match existing {
            Some(existing) => Redeemed::Existing(existing),
            None => Redeemed::New(Arc::unwrap_or_clone(landing)),
        })
    }

    async fn landing(&self, referral_id: [u8; 16]) -> Result<Option<Landing>, StoreError> {
        self.read(move |conn| select(conn, &referral_id)).await
    }
}

// Literal SQL (not format!): the statement caches hash the text on every
// call.
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
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
     ON CONFLICT (referral_id) DO NOTHING"
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

/// Inserts `l` unless its referral already has a landing; whether it did.
fn insert(conn: &dyn Conn, l: &Landing) -> Result<bool, StoreError> {
    let chain = l.chain.join(",");
    let n = conn.execute(
        INSERT,
        values![
            &l.referral_id,
            &l.agreement_id,
            &l.from,
            &l.to,
            &chain,
            l.hop,
            l.parent.as_ref(),
            &l.target,
            &l.origin,
            &l.origin_uid,
            &l.dest_uid,
            l.issued_at_ms,
            l.expires_at_ms,
            l.redeemed_at_ms,
            l.tag_access,
        ],
    )?;
    Ok(n == 1)
}

/// Reads one landing by referral id.
pub fn select(conn: &dyn Conn, referral_id: &[u8; 16]) -> Result<Option<Landing>, StoreError> {
    conn.query_opt(SELECT, values![referral_id], from_row)
}

/// Landings of `dest_uid` at `to_partner` redeemed in `[from_ms, to_ms]`,
/// oldest first (ties by referral id), in one query.
pub fn in_window(
    conn: &dyn Conn,
    to_partner: &str,
    dest_uid: &[u8; 32],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Landing>, StoreError> {
    let mut out = conn.query_vec(
        IN_WINDOW,
        values![to_partner, dest_uid, from_ms, to_ms],
        from_row,
    )?;
    // `landings_by_dest` yields them by time; ties by referral id here, not
    // in the ORDER BY, which would make SQLite sort every result itself.
    out.sort_by_key(|l| (l.redeemed_at_ms, l.referral_id));
    Ok(out)
}

/// Decodes a row selected with the columns of `columns!()` in order.
fn from_row(r: &dyn Row) -> Result<Landing, StoreError> {
    Ok(Landing {
        referral_id: blob(r, 0, "referral_id")?,
        agreement_id: r.string(1)?,
        from: r.string(2)?,
        to: r.string(3)?,
        chain: r.text(4)?.split(',').map(str::to_owned).collect(),
        hop: r.int32(5)?,
        parent: opt_blob(r, 6, "parent_id")?,
        target: r.string(7)?,
        origin: r.string(8)?,
        origin_uid: blob(r, 9, "origin_uid")?,
        dest_uid: blob(r, 10, "dest_uid")?,
        issued_at_ms: r.int(11)?,
        expires_at_ms: r.int(12)?,
        redeemed_at_ms: r.int(13)?,
        tag_access: r.flag(14)?,
    })
}
