//! Referral hops: a partner mints a sealed token for a viewer it sends to
//! another partner (CreateReferral); the destination redeems it for its own
//! user (RedeemReferral), which records a durable landing. A partner that
//! received a viewer can send it onward (A->B->C), up to the agreement's
//! `max_hops`.
//!
//! Minting writes nothing: everything a redemption needs travels inside the
//! AEAD-sealed token. Only landings are stored.
#![forbid(unsafe_code)]

pub mod grpc;

use std::sync::Arc;

use crossflow_api::{Kind, Problem, check::Checks};
use crossflow_identity::{KeyRing, Pseudonym, ReferralClaims, ReferralId, TokenError, Uid};
use crossflow_settings::SettingsHandle;
use crossflow_store::{Landing, LandingStore, OptOutLookup, Redeemed, StoreError};

/// Longest `target`, in bytes.
pub const MAX_TARGET_BYTES: usize = crossflow_identity::token::MAX_TARGET_LEN;

pub use crossflow_api::clock::{Clock, SystemClock};

/// Per-agreement limits on minting hops (daily caps, reciprocity), checked
/// once the destination and the agreement are known. The gateway passes the
/// quota engine; a hop it refuses is not minted.
pub trait HopGuard: Send + Sync + 'static {
    /// Admits (and counts) one hop `flow.from -> flow.to`, or says which
    /// quota refused it. A future: with quotas shared through Redis the
    /// answer is a round trip away.
    fn admit_hop<'a>(
        &'a self,
        agreement: &'a crossflow_settings::raw::Agreement,
        flow: &'a crossflow_settings::raw::Flow,
    ) -> HopAdmission<'a>;
}

/// What [`HopGuard::admit_hop`] returns.
pub type HopAdmission<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Problem>> + Send + 'a>>;

/// Why a referral operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReferralError {
    #[error("{0}")]
    Invalid(Problem),
    #[error("a partner cannot refer a viewer to itself")]
    SelfReferral,
    #[error("unknown partner {0:?}")]
    UnknownPartner(String),
    #[error("partner {0:?} is disabled")]
    PartnerDisabled(String),
    #[error("no agreement allows referrals from {from} to {to}")]
    NoAgreement { from: String, to: String },
    #[error("hop {hop} would exceed max_hops {max_hops} of agreement {agreement}")]
    MaxHops {
        agreement: String,
        max_hops: u32,
        hop: u32,
    },
    #[error("parent referral {0} was not redeemed by the caller")]
    ParentNotRedeemed(String),
    #[error("subject is not the user who landed through parent referral {0}")]
    ParentSubjectMismatch(String),
    #[error(transparent)]
    Token(TokenError),
    #[error("referral token expired at {expired_at_ms} ms since the epoch")]
    Expired { expired_at_ms: i64 },
    #[error("this referral token is for {to}, not for the caller")]
    WrongDestination { to: String },
    #[error("referral {0} was already redeemed for another user")]
    AlreadyRedeemed(String),
    #[error("referral {0} is not redeemed or does not exist")]
    NotFound(String),
    #[error("the caller is not a party to referral {0}")]
    NotAParty(String),
    #[error("{0}")]
    Quota(Problem),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReferralError {
    /// How this error is told to the caller.
    pub fn problem(&self) -> Problem {
        use ReferralError as E;
        let msg = self.to_string();
        match self {
            E::Invalid(p) => p.clone(),
            E::SelfReferral => Problem::field("SELF_REFERRAL", "to_partner", msg),
            E::UnknownPartner(p) => {
                Problem::field("UNKNOWN_PARTNER", "to_partner", msg).with("partner", p)
            }
            E::PartnerDisabled(p) => {
                Problem::new(Kind::FailedPrecondition, "PARTNER_DISABLED", msg).with("partner", p)
            }
            E::NoAgreement { from, to } => {
                Problem::new(Kind::PermissionDenied, "NO_AGREEMENT", msg)
                    .with("from_partner", from)
                    .with("to_partner", to)
            }
            E::MaxHops {
                agreement,
                max_hops,
                hop,
            } => Problem::new(Kind::FailedPrecondition, "MAX_HOPS_EXCEEDED", msg)
                .with("agreement_id", agreement)
                .with("max_hops", max_hops.to_string())
                .with("hop", hop.to_string()),
            E::ParentNotRedeemed(id) => {
                Problem::new(Kind::FailedPrecondition, "PARENT_NOT_REDEEMED", msg)
                    .with("parent_referral_id", id)
            }
            E::ParentSubjectMismatch(id) => {
                Problem::new(Kind::FailedPrecondition, "PARENT_SUBJECT_MISMATCH", msg)
                    .with("parent_referral_id", id)
            }
            E::Token(TokenError::Malformed) => Problem::field("TOKEN_MALFORMED", "token", msg),
            E::Token(TokenError::UnknownKey(k)) => {
                Problem::field("TOKEN_UNKNOWN_KEY", "token", msg).with("key_id", k.to_string())
            }
            E::Token(TokenError::Tampered) => Problem::field("TOKEN_INVALID", "token", msg),
            E::Token(e) => Problem::internal(e),
            E::Expired { .. } => Problem::new(Kind::FailedPrecondition, "TOKEN_EXPIRED", msg),
            E::WrongDestination { .. } => {
                Problem::new(Kind::PermissionDenied, "WRONG_DESTINATION", msg)
            }
            E::AlreadyRedeemed(id) => {
                Problem::new(Kind::AlreadyExists, "ALREADY_REDEEMED", msg).with("referral_id", id)
            }
            E::NotFound(id) => {
                Problem::new(Kind::NotFound, "REFERRAL_NOT_FOUND", msg).with("referral_id", id)
            }
            E::NotAParty(id) => {
                Problem::new(Kind::PermissionDenied, "NOT_A_PARTY", msg).with("referral_id", id)
            }
            E::Quota(p) => p.clone(),
            E::Store(e) => Problem::storage(e, e.is_unavailable()),
        }
    }
}

/// A minted hop.
#[derive(Debug, Clone)]
pub struct Minted {
    pub claims: ReferralClaims,
    pub agreement_id: String,
    pub token: String,
}

/// A redeemed hop, with the destination's pseudonym for the origin's user.
#[derive(Debug, Clone)]
pub struct Landed {
    pub landing: Landing,
    pub pseudonym: Pseudonym,
    /// False when the same subject redeemed it before (idempotent replay).
    pub new: bool,
}

/// What CreateReferral asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub subject: String,
    pub to_partner: String,
    pub target: String,
    pub parent_referral_id: String,
    pub request_id: String,
}

/// The referral service, generic over its storage.
pub struct Referrals<S> {
    store: S,
    keys: Arc<KeyRing>,
    settings: SettingsHandle,
    clock: Arc<dyn Clock>,
    guard: Option<Arc<dyn HopGuard>>,
}

impl<S> std::fmt::Debug for Referrals<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Referrals").finish_non_exhaustive()
    }
}

// === impl Referrals ===

impl<S: LandingStore + OptOutLookup> Referrals<S> {
    pub fn new(
        store: S,
        keys: Arc<KeyRing>,
        settings: SettingsHandle,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Referrals {
            store,
            keys,
            settings,
            clock,
            guard: None,
        }
    }

    /// Checks every hop against `guard` (per-agreement quotas) before
    /// minting it.
    pub fn with_guard(mut self, guard: Arc<dyn HopGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Mints a hop from `caller`. Writes nothing.
    pub async fn create(&self, caller: &str, req: CreateRequest) -> Result<Minted, ReferralError> {
        let mut c = Checks::new();
        c.subject("subject", &req.subject);
        c.slug("to_partner", &req.to_partner);
        c.printable("target", &req.target, MAX_TARGET_BYTES);
        c.request_id("request_id", &req.request_id);
        let parent = c.optional_referral_id("parent_referral_id", &req.parent_referral_id);
        c.finish().map_err(ReferralError::Invalid)?;

        let to = req.to_partner.as_str();
        if to == caller {
            return Err(ReferralError::SelfReferral);
        }
        let settings = self.settings.get();
        match settings.partner(to) {
            None => return Err(ReferralError::UnknownPartner(to.to_owned())),
            Some(p) if !p.enabled => return Err(ReferralError::PartnerDisabled(to.to_owned())),
            Some(_) => {}
        }
        let flow = settings
            .flow(caller, to)
            .ok_or_else(|| ReferralError::NoAgreement {
                from: caller.to_owned(),
                to: to.to_owned(),
            })?;

        let caller_uid = self.keys.uid(caller, &req.subject);
        let (chain, hop, origin, origin_uid, tag_access) = match parent {
            None => (
                vec![caller.to_owned()],
                1,
                caller.to_owned(),
                caller_uid,
                true,
            ),
            Some(pid) => {
                let hex = ReferralId(pid).to_string();
                let landing = self
                    .store
                    .landing(pid)
                    .await?
                    .filter(|l| l.to == caller)
                    .ok_or_else(|| ReferralError::ParentNotRedeemed(hex.clone()))?;
                if landing.dest_uid != caller_uid.0 {
                    return Err(ReferralError::ParentSubjectMismatch(hex));
                }
                let mut chain = landing.chain.clone();
                chain.push(caller.to_owned());
                (
                    chain,
                    landing.hop + 1,
                    landing.origin.clone(),
                    Uid(landing.origin_uid),
                    landing.tag_access,
                )
            }
        };
        // A user who opted out of tag sharing (see crossflow-tags) gets hops
        // without tag access, whichever hop of the chain this is.
        let tag_access = tag_access && !self.store.opted_out(origin_uid.0).await?;
        if hop > flow.agreement.max_hops {
            return Err(ReferralError::MaxHops {
                agreement: flow.agreement.id.clone(),
                max_hops: flow.agreement.max_hops,
                hop,
            });
        }
        if let Some(g) = &self.guard {
            g.admit_hop(flow.agreement, flow.flow)
                .await
                .map_err(ReferralError::Quota)?;
        }
        let referral_id = if req.request_id.is_empty() {
            ReferralId::random().map_err(|e| ReferralError::Invalid(Problem::internal(&e)))?
        } else {
            ReferralId::derive(&self.keys, caller, &req.request_id)
        };
        let now = self.clock.now_ms();
        let ttl_ms =
            i64::try_from(flow.agreement.token_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let claims = ReferralClaims {
            referral_id,
            from: caller.to_owned(),
            to: to.to_owned(),
            chain,
            parent: parent.map(ReferralId),
            hop,
            origin,
            origin_uid,
            target: req.target,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            tag_access,
        };
        let token = self.keys.seal(&claims).map_err(ReferralError::Token)?;
        Ok(Minted {
            claims,
            agreement_id: flow.agreement.id.clone(),
            token,
        })
    }

    /// Redeems a token for the caller's own `subject`, durably.
    pub async fn redeem(
        &self,
        caller: &str,
        token: &str,
        subject: &str,
    ) -> Result<Landed, ReferralError> {
        let mut c = Checks::new();
        if token.is_empty() {
            c.violation("token", "must not be empty");
        }
        c.subject("subject", subject);
        c.finish().map_err(ReferralError::Invalid)?;

        let (claims, _key_id) = self.keys.open(token).map_err(ReferralError::Token)?;
        if claims.to != caller {
            return Err(ReferralError::WrongDestination { to: claims.to });
        }
        let dest_uid = self.keys.uid(caller, subject);
        let now = self.clock.now_ms();
        let id = claims.referral_id;
        if now >= claims.expires_at_ms {
            // A replay of a redemption that happened in time is still answered.
            return match self.store.landing(id.0).await? {
                Some(l) if l.dest_uid == dest_uid.0 => Ok(self.landed(l, false)),
                Some(_) => Err(ReferralError::AlreadyRedeemed(id.to_string())),
                None => Err(ReferralError::Expired {
                    expired_at_ms: claims.expires_at_ms,
                }),
            };
        }
        let settings = self.settings.get();
        let flow =
            settings
                .flow(&claims.from, &claims.to)
                .ok_or_else(|| ReferralError::NoAgreement {
                    from: claims.from.clone(),
                    to: claims.to.clone(),
                })?;
        let landing = Landing {
            referral_id: id.0,
            agreement_id: flow.agreement.id.clone(),
            from: claims.from,
            to: claims.to,
            chain: claims.chain,
            hop: claims.hop,
            parent: claims.parent.map(|p| p.0),
            target: claims.target,
            origin: claims.origin,
            origin_uid: claims.origin_uid.0,
            dest_uid: dest_uid.0,
            issued_at_ms: claims.issued_at_ms,
            expires_at_ms: claims.expires_at_ms,
            redeemed_at_ms: now,
            tag_access: claims.tag_access,
        };
        match self.store.redeem(landing).await? {
            Redeemed::New(l) => Ok(self.landed(l, true)),
            Redeemed::Existing(l) if l.dest_uid == dest_uid.0 => Ok(self.landed(l, false)),
            Redeemed::Existing(_) => Err(ReferralError::AlreadyRedeemed(id.to_string())),
        }
    }

    /// A redeemed referral, for either of its two parties.
    pub async fn get(&self, caller: &str, referral_id: &str) -> Result<Landing, ReferralError> {
        let mut c = Checks::new();
        let id = c.referral_id("referral_id", referral_id);
        c.finish().map_err(ReferralError::Invalid)?;
        let id = id.ok_or_else(|| ReferralError::NotFound(referral_id.to_owned()))?;
        let l = self
            .store
            .landing(id)
            .await?
            .ok_or_else(|| ReferralError::NotFound(referral_id.to_owned()))?;
        if l.from != caller && l.to != caller {
            return Err(ReferralError::NotAParty(referral_id.to_owned()));
        }
        Ok(l)
    }

    fn landed(&self, landing: Landing, new: bool) -> Landed {
        let pseudonym = self
            .keys
            .pseudonym(&landing.to, &landing.origin, &Uid(landing.origin_uid));
        Landed {
            landing,
            pseudonym,
            new,
        }
    }
}
