//! Pseudonymized tag exchange.
//!
//! The platform that owns a user publishes coarse tags about it
//! ([`Tags::publish`]); a platform that received the user through a redeemed
//! referral reads what its agreements allow ([`Tags::read`]) under its own
//! pairwise pseudonym; the owner can opt the user out ([`Tags::opt_out`]).
//! Every disclosure is recorded durably before it is answered, without
//! subjects, and listed per owner by [`audit`].
//!
//! What a reader may see is decided by [`policy`]; the IAB vocabulary lives
//! in [`taxonomy`].
#![forbid(unsafe_code)]

pub mod audit;
pub mod grpc;
pub mod policy;
pub mod taxonomy;

use std::{collections::BTreeSet, sync::Arc};

use crossflow_api::clock::Clock;
use crossflow_api::{Kind, Problem, check::Checks};
use crossflow_identity::{KeyRing, Pseudonym, ReferralId, Uid};
use crossflow_settings::{SettingsHandle, TagValues};
use crossflow_store::StoreError;
use crossflow_store::tags::{Disclosure, NewTag, Publication, Published, StoredTag, TagStore};

pub use policy::check_settings;

/// How often [`spawn_purger`] deletes expired tags.
pub const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Most tags in one PublishTags call.
pub const MAX_TAGS_PER_CALL: usize = 100;
const DAY_MS: i64 = 86_400_000;

/// Why a tag operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("{0}")]
    Invalid(Problem),
    #[error("the user opted out of tag sharing; nothing is stored for them")]
    OptedOut,
    #[error("request_id {0:?} was used before for other tags")]
    RequestReused(String),
    #[error("referral {0} is not redeemed or does not exist")]
    NotFound(String),
    #[error("only the destination of referral {0} may read its user's tags")]
    NotDestination(String),
    #[error("{origin} has no agreement that lets {reader} read its users' tags")]
    NoTagAgreement { origin: String, reader: String },
    #[error("referral {0} carries no tag access (the user opted out)")]
    NoTagAccess(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TagError {
    /// How this error is told to the caller.
    pub fn problem(&self) -> Problem {
        use TagError as E;
        let msg = self.to_string();
        match self {
            E::Invalid(p) => p.clone(),
            E::OptedOut => Problem::new(Kind::FailedPrecondition, "USER_OPTED_OUT", msg),
            E::RequestReused(id) => {
                Problem::new(Kind::AlreadyExists, "REQUEST_ID_REUSED", msg).with("request_id", id)
            }
            E::NotFound(id) => {
                Problem::new(Kind::NotFound, "REFERRAL_NOT_FOUND", msg).with("referral_id", id)
            }
            E::NotDestination(id) => {
                Problem::new(Kind::PermissionDenied, "NOT_DESTINATION", msg).with("referral_id", id)
            }
            E::NoTagAgreement { origin, reader } => {
                Problem::new(Kind::PermissionDenied, "NO_TAG_AGREEMENT", msg)
                    .with("origin_partner", origin)
                    .with("reader_partner", reader)
            }
            E::NoTagAccess(id) => {
                Problem::new(Kind::PermissionDenied, "NO_TAG_ACCESS", msg).with("referral_id", id)
            }
            E::Store(e) => Problem::storage(e, e.is_unavailable()),
        }
    }
}

/// A tag as asked for in PublishTags; `ttl_secs` `None` means the maximum.
#[derive(Debug, Clone, Default)]
pub struct TagInput {
    pub namespace: String,
    pub value: String,
    /// `Err(())` for a TTL that is not whole non-negative seconds.
    pub ttl_secs: Option<Result<u64, ()>>,
}

/// What a reader is told about a referred user.
#[derive(Debug, Clone)]
pub struct ReferredTags {
    pub pseudonym: Pseudonym,
    /// Earlier-epoch pseudonyms still within their overlap, newest first.
    pub previous_pseudonyms: Vec<Pseudonym>,
    pub tags: Vec<StoredTag>,
    pub scopes: BTreeSet<String>,
    pub origin: String,
    pub agreement_id: String,
}

/// What an opt-out removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptOutResult {
    pub tags_removed: u64,
    pub newly_opted_out: bool,
}

/// The tag service, generic over its storage.
pub struct Tags<S> {
    store: S,
    keys: Arc<KeyRing>,
    settings: SettingsHandle,
    clock: Arc<dyn Clock>,
}

impl<S> std::fmt::Debug for Tags<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tags").finish_non_exhaustive()
    }
}

// === impl Tags ===

impl<S: TagStore> Tags<S> {
    pub fn new(
        store: S,
        keys: Arc<KeyRing>,
        settings: SettingsHandle,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Tags {
            store,
            keys,
            settings,
            clock,
        }
    }

    /// Upserts tags about the caller's own user `subject`.
    pub async fn publish(
        &self,
        caller: &str,
        subject: &str,
        tags: &[TagInput],
        request_id: &str,
    ) -> Result<Vec<StoredTag>, TagError> {
        let settings = self.settings.get();
        let t = &settings.tags;
        let max_ttl_secs = t.max_ttl_secs;
        let mut c = Checks::new();
        c.subject("subject", subject);
        c.request_id("request_id", request_id);
        if tags.is_empty() {
            c.violation("tags", "must list at least one tag");
        } else if tags.len() > MAX_TAGS_PER_CALL {
            c.violation(
                "tags",
                format!(
                    "must list at most {MAX_TAGS_PER_CALL} tags, got {}",
                    tags.len()
                ),
            );
        }
        let mut seen = BTreeSet::new();
        let mut new = Vec::with_capacity(tags.len());
        for (i, tag) in tags.iter().enumerate() {
            let (ns, v) = (tag.namespace.as_str(), tag.value.as_str());
            match t.namespaces.get(ns) {
                None if ns.is_empty() => {
                    c.violation(&format!("tags[{i}].namespace"), "must not be empty")
                }
                None => c.violation(
                    &format!("tags[{i}].namespace"),
                    format!(
                        "is not a namespace this gateway allows, got {:?}",
                        short(ns)
                    ),
                ),
                Some(_) if t.sensitive_namespaces.contains(ns) => c.violation(
                    &format!("tags[{i}].namespace"),
                    format!("{ns:?} is sensitive: it is never shared, so it is not accepted"),
                ),
                Some(values) => {
                    let field = format!("tags[{i}].value");
                    if let Some(why) = value_problem(values, ns, v) {
                        c.violation(&field, why);
                    } else if policy::is_sensitive(t, ns, v) {
                        c.violation(
                            &field,
                            format!(
                                "{ns}/{v} is sensitive: it is never shared, so it is not accepted"
                            ),
                        );
                    } else if !seen.insert((ns, v)) {
                        c.violation(&field, format!("repeats the tag {ns}/{v}"));
                    }
                }
            }
            let ttl_secs = match tag.ttl_secs {
                None | Some(Ok(0)) => max_ttl_secs,
                Some(Ok(s)) if s <= max_ttl_secs => s,
                Some(Ok(s)) => {
                    c.violation(
                        &format!("tags[{i}].ttl"),
                        format!(
                            "must be at most {max_ttl_secs} s ([tags] max_ttl_secs), got {s} s"
                        ),
                    );
                    0
                }
                Some(Err(())) => {
                    c.violation(
                        &format!("tags[{i}].ttl"),
                        "must be whole, non-negative seconds",
                    );
                    0
                }
            };
            new.push(NewTag {
                namespace: ns.to_owned(),
                value: v.to_owned(),
                ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            });
        }
        c.finish().map_err(TagError::Invalid)?;

        let uid = self.keys.uid(caller, subject);
        let request =
            (!request_id.is_empty()).then(|| (request_id.to_owned(), fingerprint(&uid, &new)));
        let p = Publication {
            owner: caller.to_owned(),
            uid: uid.0,
            tags: new,
            request,
            request_ttl_ms: i64::try_from(max_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            now_ms: self.clock.now_ms(),
        };
        match self.store.publish(p).await? {
            Published::Stored(tags) => Ok(tags),
            Published::OptedOut => Err(TagError::OptedOut),
            Published::RequestReused => Err(TagError::RequestReused(request_id.to_owned())),
        }
    }

    /// The tags `caller` may read about the user of `referral_id`, recorded
    /// as a disclosure before they are returned.
    pub async fn read(&self, caller: &str, referral_id: &str) -> Result<ReferredTags, TagError> {
        let mut c = Checks::new();
        let id = c.referral_id("referral_id", referral_id);
        c.finish().map_err(TagError::Invalid)?;
        let id = id.ok_or_else(|| TagError::NotFound(referral_id.to_owned()))?;
        let now = self.clock.now_ms();
        let user = self
            .store
            .referred_user(id, now)
            .await?
            .ok_or_else(|| TagError::NotFound(referral_id.to_owned()))?;
        let l = &user.landing;
        if l.to != caller {
            return Err(TagError::NotDestination(referral_id.to_owned()));
        }
        if !l.tag_access || user.opted_out {
            return Err(TagError::NoTagAccess(referral_id.to_owned()));
        }
        let settings = self.settings.get();
        let grant = policy::grant(&settings, l).ok_or_else(|| TagError::NoTagAgreement {
            origin: l.origin.clone(),
            reader: caller.to_owned(),
        })?;
        let tags: Vec<StoredTag> = user
            .tags
            .into_iter()
            .filter(|t| {
                grant.scopes.contains(&t.namespace)
                    && !policy::is_sensitive(&settings.tags, &t.namespace, &t.value)
            })
            .collect();
        let uid = Uid(l.origin_uid);
        let pseudonym = self.keys.pseudonym(caller, &l.origin, &uid);
        let previous_pseudonyms = self.previous_pseudonyms(
            caller,
            &l.origin,
            &uid,
            now,
            settings.tags.pseudonym_overlap_days,
        );
        if !tags.is_empty() {
            let namespaces: BTreeSet<&str> = tags.iter().map(|t| t.namespace.as_str()).collect();
            self.store
                .record_disclosure(Disclosure {
                    disclosed_at_ms: now,
                    owner: l.origin.clone(),
                    reader: caller.to_owned(),
                    uid: l.origin_uid,
                    agreement_id: grant.agreement_id.clone(),
                    referral_id: id,
                    namespaces: namespaces.into_iter().map(str::to_owned).collect(),
                    tag_count: u32::try_from(tags.len()).unwrap_or(u32::MAX),
                    pseudonym_epoch: pseudonym.epoch,
                })
                .await?;
        }
        tracing::debug!(referral_id = %ReferralId(id), reader = caller, origin = %l.origin, disclosed = tags.len(), "tags read");
        Ok(ReferredTags {
            pseudonym,
            previous_pseudonyms,
            tags,
            scopes: grant.scopes,
            origin: l.origin.clone(),
            agreement_id: grant.agreement_id,
        })
    }

    /// Deletes the caller's user's tags and blocks any further disclosure.
    pub async fn opt_out(&self, caller: &str, subject: &str) -> Result<OptOutResult, TagError> {
        let mut c = Checks::new();
        c.subject("subject", subject);
        c.finish().map_err(TagError::Invalid)?;
        let uid = self.keys.uid(caller, subject);
        let r = self
            .store
            .opt_out(caller.to_owned(), uid.0, self.clock.now_ms())
            .await?;
        Ok(OptOutResult {
            tags_removed: r.tags_removed,
            newly_opted_out: r.newly_opted_out,
        })
    }

    /// The reader's pseudonyms for the user under earlier epochs whose
    /// overlap has not ended: an epoch's overlap starts when the next epoch
    /// is created.
    fn previous_pseudonyms(
        &self,
        viewer: &str,
        origin: &str,
        uid: &Uid,
        now_ms: i64,
        overlap_days: u32,
    ) -> Vec<Pseudonym> {
        let overlap_ms = i64::from(overlap_days).saturating_mul(DAY_MS);
        let current = self.keys.current_epoch();
        let epochs = self.keys.epochs();
        let mut out: Vec<Pseudonym> = epochs
            .windows(2)
            .filter(|w| {
                w[0].epoch != current && now_ms < w[1].created_at_ms.saturating_add(overlap_ms)
            })
            .filter_map(|w| {
                self.keys
                    .pseudonym_in_epoch(viewer, origin, uid, w[0].epoch)
            })
            .collect();
        out.reverse();
        out
    }
}

/// Deletes expired tags every `every` until aborted (publications also
/// purge as they write). Abort it before closing the store: it holds a
/// handle.
pub fn spawn_purger<S: TagStore>(
    store: S,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.purge_expired(crossflow_api::clock::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired tags purged"),
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "purging expired tags failed"),
            }
        }
    })
}

/// Why `v` is not a value of the namespace, if it is not.
fn value_problem(values: &TagValues, ns: &str, v: &str) -> Option<String> {
    if v.is_empty() {
        return Some("must not be empty".to_owned());
    }
    match values {
        TagValues::Taxonomy(_) if !taxonomy::iab_audience().contains(v) => Some(format!(
            "must be an IAB Audience Taxonomy 1.1 id, got {:?}",
            short(v)
        )),
        TagValues::Taxonomy(_) => None,
        _ if values.allows(v) => None,
        _ => Some(format!(
            "is not a value namespace {ns:?} allows, got {:?}",
            short(v)
        )),
    }
}

/// SHA-256 of what a publication stores, to tell a retry from a reuse.
fn fingerprint(uid: &Uid, tags: &[NewTag]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&uid.0);
    for t in tags {
        ctx.update(t.namespace.as_bytes());
        ctx.update(&[0]);
        ctx.update(t.value.as_bytes());
        ctx.update(&[0]);
        ctx.update(&t.ttl_ms.to_be_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// At most 64 characters of a bad value, for error messages.
fn short(v: &str) -> String {
    v.chars().take(64).collect()
}

#[cfg(test)]
mod tests;
