//! Tags published by the platform that owns a user, opt-outs, and the audit
//! of every disclosure.
//!
//! Users are HMAC uids; no subject is ever stored. An opt-out is the uid
//! alone (with its owner, for listing), so the referral service can refuse
//! tag access to hops minted for that user afterwards.

use std::{future::Future, path::Path};

use rusqlite::{Connection, OpenFlags};

use crate::{
    Database, Landing, Migration, StoreError, landings,
    sql::{Conn, ConnExt, Dialect, RowExt, exactly},
    values,
};

pub(crate) const MIGRATION: Migration = Migration {
    name: "0005_tags",
    sql: "
CREATE TABLE tags (
    owner           TEXT NOT NULL,
    uid             BLOB NOT NULL,
    namespace       TEXT NOT NULL,
    value           TEXT NOT NULL,
    published_at_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (owner, uid, namespace, value)
) STRICT;
CREATE INDEX tags_by_expiry ON tags (expires_at_ms);
-- Idempotency keys of PublishTags, kept as long as the longest TTL.
CREATE TABLE tag_requests (
    owner           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    fingerprint     BLOB NOT NULL,
    published_at_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (owner, request_id)
) STRICT;
CREATE INDEX tag_requests_by_expiry ON tag_requests (expires_at_ms);
CREATE TABLE tag_opt_outs (
    uid              BLOB PRIMARY KEY,
    owner            TEXT NOT NULL,
    opted_out_at_ms  INTEGER NOT NULL
) STRICT;
CREATE TABLE tag_disclosures (
    id              INTEGER PRIMARY KEY,
    disclosed_at_ms INTEGER NOT NULL,
    owner           TEXT NOT NULL,
    reader          TEXT NOT NULL,
    uid             BLOB NOT NULL,
    agreement_id    TEXT NOT NULL,
    referral_id     BLOB NOT NULL,
    namespaces      TEXT NOT NULL,
    tag_count       INTEGER NOT NULL,
    pseudonym_epoch INTEGER NOT NULL
) STRICT;
CREATE INDEX tag_disclosures_by_owner ON tag_disclosures (owner, disclosed_at_ms);
CREATE INDEX tag_disclosures_by_reader ON tag_disclosures (reader, disclosed_at_ms);
",
};

/// Most expired rows one publication sweeps away besides its own user's.
const SWEEP_LIMIT: u32 = 256;

/// One stored tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTag {
    pub namespace: String,
    pub value: String,
    pub expires_at_ms: i64,
}

/// A tag to upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTag {
    pub namespace: String,
    pub value: String,
    pub ttl_ms: i64,
}

/// A PublishTags call, checked.
#[derive(Debug, Clone)]
pub struct Publication {
    pub owner: String,
    pub uid: [u8; 32],
    pub tags: Vec<NewTag>,
    /// `(request_id, fingerprint of the request)` for idempotent retries.
    pub request: Option<(String, [u8; 32])>,
    /// Idempotency keys are kept this long.
    pub request_ttl_ms: i64,
    pub now_ms: i64,
}

/// Outcome of a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored (or, for a retry, stored before), in request order.
    Stored(Vec<StoredTag>),
    /// The user opted out: nothing stored.
    OptedOut,
    /// The request id was used before for other content.
    RequestReused,
}

/// Outcome of an opt-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptedOut {
    pub tags_removed: u64,
    pub newly_opted_out: bool,
}

/// What a tag read needs, read consistently at once.
#[derive(Debug, Clone)]
pub struct ReferredUser {
    pub landing: Landing,
    /// The origin's user opted out of tag sharing.
    pub opted_out: bool,
    /// The origin user's unexpired tags, by namespace then value.
    pub tags: Vec<StoredTag>,
}

/// One recorded disclosure. No subject: the user is the owner's uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    pub disclosed_at_ms: i64,
    /// The platform that owns the user (the referral chain's origin).
    pub owner: String,
    /// The platform that read the tags.
    pub reader: String,
    pub uid: [u8; 32],
    /// The agreement between owner and reader that allowed it.
    pub agreement_id: String,
    pub referral_id: [u8; 16],
    /// Namespaces of the tags disclosed, sorted.
    pub namespaces: Vec<String>,
    pub tag_count: u32,
    pub pseudonym_epoch: u32,
}

/// Which disclosures to list.
#[derive(Debug, Clone, Default)]
pub struct DisclosureQuery {
    /// The owning platform.
    pub owner: String,
    /// Only disclosures to this reader.
    pub reader: Option<String>,
    /// Only disclosures about this user.
    pub uid: Option<[u8; 32]>,
    /// Only disclosures at or after this time.
    pub since_ms: i64,
}

/// Storage of tags, opt-outs and disclosures.
pub trait TagStore: Send + Sync + 'static {
    /// Upserts tags (unless the user opted out), purging expired ones.
    /// Durable when answered.
    fn publish(&self, p: Publication)
    -> impl Future<Output = Result<Published, StoreError>> + Send;

    /// Deletes the user's tags and records the opt-out (idempotent).
    fn opt_out(
        &self,
        owner: String,
        uid: [u8; 32],
        now_ms: i64,
    ) -> impl Future<Output = Result<OptedOut, StoreError>> + Send;

    /// Whether the user with this uid opted out.
    fn opted_out(&self, uid: [u8; 32]) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The landing of a referral with its origin user's opt-out state and
    /// unexpired tags; `None` if the referral was not redeemed.
    fn referred_user(
        &self,
        referral_id: [u8; 16],
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<ReferredUser>, StoreError>> + Send;

    /// Records a disclosure durably.
    fn record_disclosure(
        &self,
        d: Disclosure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every expired tag and idempotency key; returns how many tags.
    fn purge_expired(&self, now_ms: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Disclosures matching `q`, oldest first.
    fn disclosures(
        &self,
        q: DisclosureQuery,
    ) -> impl Future<Output = Result<Vec<Disclosure>, StoreError>> + Send;
}

/// What the referral service needs of tags: whether a user opted out.
pub trait OptOutLookup: Send + Sync + 'static {
    fn opted_out(&self, uid: [u8; 32]) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

// === impl Database ===

impl<T: TagStore> OptOutLookup for T {
    fn opted_out(&self, uid: [u8; 32]) -> impl Future<Output = Result<bool, StoreError>> + Send {
        TagStore::opted_out(self, uid)
    }
}

impl<D: Database> TagStore for D {
    async fn publish(&self, p: Publication) -> Result<Published, StoreError> {
        self.write(move |conn| publish(conn, &p)).await
    }

    async fn opt_out(
        &self,
        owner: String,
        uid: [u8; 32],
        now_ms: i64,
    ) -> Result<OptedOut, StoreError> {
        self.write(move |conn| {
            let removed = conn.execute(
                "DELETE FROM tags WHERE owner = ?1 AND uid = ?2",
                values![&owner, &uid],
            )?;
            let inserted = conn.execute(
                "INSERT INTO tag_opt_outs (uid, owner, opted_out_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (uid) DO NOTHING",
                values![&uid, &owner, now_ms],
            )?;
            Ok(OptedOut {
                tags_removed: removed,
                newly_opted_out: inserted == 1,
            })
        })
        .await
    }

    async fn opted_out(&self, uid: [u8; 32]) -> Result<bool, StoreError> {
        self.read(move |conn| is_opted_out(conn, &uid)).await
    }

    async fn referred_user(
        &self,
        referral_id: [u8; 16],
        now_ms: i64,
    ) -> Result<Option<ReferredUser>, StoreError> {
        self.read(move |conn| {
            // One read transaction: the landing, opt-out and tags agree
            // (PostgreSQL's default isolation gives each statement its own
            // snapshot).
            conn.execute(
                match conn.dialect() {
                    Dialect::Sqlite => "BEGIN",
                    Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                },
                &[],
            )?;
            let out = referred_user(conn, &referral_id, now_ms);
            let _ = conn.execute("COMMIT", &[]);
            out
        })
        .await
    }

    async fn record_disclosure(&self, d: Disclosure) -> Result<(), StoreError> {
        self.write(move |conn| {
            let namespaces = d.namespaces.join(" ");
            conn.execute(
                "INSERT INTO tag_disclosures (disclosed_at_ms, owner, reader, uid, agreement_id,
                    referral_id, namespaces, tag_count, pseudonym_epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                values![
                    d.disclosed_at_ms,
                    &d.owner,
                    &d.reader,
                    &d.uid,
                    &d.agreement_id,
                    &d.referral_id,
                    &namespaces,
                    d.tag_count,
                    d.pseudonym_epoch,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM tags WHERE expires_at_ms <= ?1",
                values![now_ms],
            )?;
            conn.execute(
                "DELETE FROM tag_requests WHERE expires_at_ms <= ?1",
                values![now_ms],
            )?;
            Ok(n)
        })
        .await
    }

    async fn disclosures(&self, q: DisclosureQuery) -> Result<Vec<Disclosure>, StoreError> {
        self.read(move |conn| select_disclosures(conn, &q)).await
    }
}

/// Lists disclosures straight from the database file in `data_dir`, read
/// only and without the directory lock, so it works while a gateway serves
/// (WAL readers never block the writer).
pub fn read_disclosures(
    data_dir: &Path,
    q: &DisclosureQuery,
) -> Result<Vec<Disclosure>, StoreError> {
    // The file name `Db::open` uses.
    let path = data_dir.join("crossflow.db");
    if !path.is_file() {
        return Err(StoreError::Io {
            path: path.display().to_string(),
            message: "no crossflow store here (has the gateway ever run with this data_dir?)"
                .to_owned(),
        });
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.execute_batch("PRAGMA busy_timeout=5000;")?;
    select_disclosures(&conn, q)
}

fn publish(conn: &dyn Conn, p: &Publication) -> Result<Published, StoreError> {
    if is_opted_out(conn, &p.uid)? {
        return Ok(Published::OptedOut);
    }
    let mut now = p.now_ms;
    if let Some((request_id, fingerprint)) = &p.request {
        let seen = conn.query_opt(
            "SELECT fingerprint, published_at_ms FROM tag_requests
             WHERE owner = ?1 AND request_id = ?2 AND expires_at_ms > ?3",
            values![&p.owner, request_id, p.now_ms],
            |r| Ok((r.bytes(0)? == &fingerprint[..], r.int(1)?)),
        )?;
        match seen {
            Some((false, _)) => return Ok(Published::RequestReused),
            // A retry: the answer (and the expiries) of the first attempt.
            Some((true, at)) => now = at,
            None => {
                conn.execute(
                    "INSERT INTO tag_requests (owner, request_id, fingerprint, published_at_ms, expires_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (owner, request_id) DO UPDATE SET fingerprint = excluded.fingerprint,
                        published_at_ms = excluded.published_at_ms, expires_at_ms = excluded.expires_at_ms",
                    values![
                        &p.owner,
                        request_id,
                        fingerprint,
                        now,
                        now.saturating_add(p.request_ttl_ms)
                    ],
                )?;
            }
        }
    }
    let mut stored = Vec::with_capacity(p.tags.len());
    for t in &p.tags {
        let expires_at_ms = now.saturating_add(t.ttl_ms);
        conn.execute(
            "INSERT INTO tags (owner, uid, namespace, value, published_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (owner, uid, namespace, value) DO UPDATE SET
                published_at_ms = excluded.published_at_ms, expires_at_ms = excluded.expires_at_ms",
            values![&p.owner, &p.uid, &t.namespace, &t.value, now, expires_at_ms],
        )?;
        stored.push(StoredTag {
            namespace: t.namespace.clone(),
            value: t.value.clone(),
            expires_at_ms,
        });
    }
    // Purge on write: this user's expired tags, and a bounded sweep of
    // everyone else's, so the table never keeps much that can't be read.
    conn.execute(
        "DELETE FROM tags WHERE owner = ?1 AND uid = ?2 AND expires_at_ms <= ?3",
        values![&p.owner, &p.uid, p.now_ms],
    )?;
    conn.execute(
        "DELETE FROM tags WHERE (owner, uid, namespace, value) IN (
            SELECT owner, uid, namespace, value FROM tags WHERE expires_at_ms <= ?1 LIMIT ?2)",
        values![p.now_ms, SWEEP_LIMIT],
    )?;
    conn.execute(
        "DELETE FROM tag_requests WHERE (owner, request_id) IN (
            SELECT owner, request_id FROM tag_requests WHERE expires_at_ms <= ?1 LIMIT ?2)",
        values![p.now_ms, SWEEP_LIMIT],
    )?;
    Ok(Published::Stored(stored))
}

fn is_opted_out(conn: &dyn Conn, uid: &[u8; 32]) -> Result<bool, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM tag_opt_outs WHERE uid = ?1",
            values![uid],
            |_| Ok(()),
        )?
        .is_some())
}

fn referred_user(
    conn: &dyn Conn,
    referral_id: &[u8; 16],
    now_ms: i64,
) -> Result<Option<ReferredUser>, StoreError> {
    let Some(landing) = landings::select(conn, referral_id)? else {
        return Ok(None);
    };
    let opted_out = is_opted_out(conn, &landing.origin_uid)?;
    let tags = if opted_out {
        Vec::new()
    } else {
        conn.query_vec(
            "SELECT namespace, value, expires_at_ms FROM tags
             WHERE owner = ?1 AND uid = ?2 AND expires_at_ms > ?3
             ORDER BY namespace, value",
            values![&landing.origin, &landing.origin_uid, now_ms],
            |r| {
                Ok(StoredTag {
                    namespace: r.string(0)?,
                    value: r.string(1)?,
                    expires_at_ms: r.int(2)?,
                })
            },
        )?
    };
    Ok(Some(ReferredUser {
        landing,
        opted_out,
        tags,
    }))
}

fn select_disclosures(conn: &dyn Conn, q: &DisclosureQuery) -> Result<Vec<Disclosure>, StoreError> {
    // `COALESCE` rather than `?3 IS NULL OR reader = ?3`: PostgreSQL cannot
    // type a parameter that only `IS NULL` sees. The columns are NOT NULL,
    // so a NULL filter matches every row on both backends.
    conn.query_vec(
        "SELECT disclosed_at_ms, owner, reader, uid, agreement_id, referral_id, namespaces,
                tag_count, pseudonym_epoch
         FROM tag_disclosures
         WHERE owner = ?1 AND disclosed_at_ms >= ?2
           AND reader = COALESCE(?3, reader) AND uid = COALESCE(?4, uid)
         ORDER BY disclosed_at_ms, id",
        values![&q.owner, q.since_ms, q.reader.as_ref(), q.uid.as_ref()],
        |r| {
            Ok(Disclosure {
                disclosed_at_ms: r.int(0)?,
                owner: r.string(1)?,
                reader: r.string(2)?,
                uid: exactly(r.bytes(3)?, "tag_disclosures.uid")?,
                agreement_id: r.string(4)?,
                referral_id: exactly(r.bytes(5)?, "tag_disclosures.referral_id")?,
                namespaces: r.text(6)?.split_whitespace().map(str::to_owned).collect(),
                tag_count: r.int32(7)?,
                pseudonym_epoch: r.int32(8)?,
            })
        },
    )
}

#[cfg(test)]
mod tests;
