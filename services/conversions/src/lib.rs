//! Referred conversions: orders reported by the platform where they happened,
//! attributed to the buyer's landings, turned into exact commission postings,
//! held by fraud rules, and moved through their lifecycle — each accepted
//! change written as one ledger entry in the same durable write as the
//! conversion's own row.
//!
//! - [`attribution`]: weights, per-touch commissions and chain splits (pure,
//!   integer, largest remainder).
//! - [`entry`]: the ledger entry JSON and the balance check.
//! - [`money`]: the ISO 4217 table.
//! - [`grpc`]: the `crossflow.v1.ConversionService` adapter.
#![forbid(unsafe_code)]

pub mod attribution;
pub mod entry;
pub mod grpc;
pub mod money;

use std::sync::Arc;

pub use crossflow_api::clock::{Clock, SystemClock};
use crossflow_api::{Kind, Problem, check::Checks};
use crossflow_identity::{KeyRing, ReferralId};
use crossflow_settings::{Settings, SettingsHandle};
use crossflow_store::{
    Database, Landing, Store, StoreError,
    conversions::{self as rows, ConversionRecord, UpdateRecord},
    ledger,
    sql::Conn,
};
use ring::digest;

use crate::entry::{Entry, EntryError};

/// Longest order id, in bytes.
pub const MAX_ORDER_ID_BYTES: usize = 128;
/// How far ahead of the gateway's clock an order may be placed (clock skew).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// How old an order may be when first reported.
pub const MAX_AGE_MS: i64 = 90 * DAY_MS;
/// One day, in ms.
const DAY_MS: i64 = 86_400_000;
/// Longest release note, in bytes.
pub const MAX_NOTE_BYTES: usize = 256;
/// `ReportRequest::occurred_at_ms` for a wire timestamp that is no instant
/// (nanos outside 0..1e9, or beyond i64 milliseconds). No valid timestamp
/// converts to it (i64::MIN is not a whole number of seconds plus 0..999
/// ms), so the check can name the field next to every other bad one.
pub const INVALID_TIMESTAMP_MS: i64 = i64::MIN;
/// The landing-velocity fraud rule counts landings in this window.
const VELOCITY_WINDOW_MS: i64 = 3_600_000;

/// Lifecycle state. `settled` is not a state: a confirmed conversion is
/// settled once its agreement's lock period after `confirmed_at` has passed,
/// which settlement computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Confirmed,
    Cancelled,
    Refunded,
}

/// Why a conversion call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("{0}")]
    Invalid(Box<Problem>),
    #[error("order {order_id} was already reported with other {}", fields.join(", "))]
    Conflict {
        order_id: String,
        fields: Vec<&'static str>,
    },
    #[error("referral {0} is not a landing of this buyer at the caller")]
    ReferralNotATouch(String),
    #[error("referral {0} landed outside the attribution window before occurred_at")]
    ReferralOutsideWindow(String),
    #[error("no conversion {0} reported by the caller")]
    NotFound(String),
    #[error("a {from} conversion cannot become {to}")]
    IllegalTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("refund of {requested} exceeds the {remaining} not yet refunded")]
    RefundExceeds { requested: i64, remaining: i64 },
    #[error("request_id {0} was used for a different update of this order")]
    RequestIdReused(String),
    #[error("conversion {0} is not held")]
    NotHeld(String),
    #[error("releasing a held conversion needs an operator certificate")]
    OperatorOnly,
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What ReportConversion asks for.
#[derive(Debug, Clone, Default)]
pub struct ReportRequest {
    pub order_id: String,
    pub subject: String,
    pub amount_minor: i64,
    pub currency: String,
    pub category: String,
    /// Milliseconds since the epoch; `None` if the field was missing.
    pub occurred_at_ms: Option<i64>,
    pub referral_id: String,
}

/// What UpdateConversion asks for.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    pub order_id: String,
    /// `None`: unspecified or unknown on the wire.
    pub status: Option<Status>,
    pub refund_minor: i64,
    pub request_id: String,
}

/// Where an entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub index: u64,
    pub leaf_hash: [u8; 32],
    /// The entry's verbatim bytes.
    pub bytes: Vec<u8>,
}

/// The answer to an accepted call.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub conversion: ConversionRecord,
    pub entry: EntryRef,
    /// A retry of an earlier identical call: nothing new was written.
    pub replayed: bool,
}

/// Who releases a hold, written into the release entry.
#[derive(Debug, Clone, Copy)]
pub enum Releaser<'a> {
    Operator(&'a str),
    Cli,
}

/// The conversion service, on whichever [`Database`] the gateway chose.
pub struct Conversions<D = Store> {
    db: D,
    keys: Arc<KeyRing>,
    settings: SettingsHandle,
    clock: Arc<dyn Clock>,
}

impl<D> std::fmt::Debug for Conversions<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversions").finish_non_exhaustive()
    }
}

// === impl Status ===

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Result<Status, StoreError> {
        Ok(match s {
            "pending" => Status::Pending,
            "confirmed" => Status::Confirmed,
            "cancelled" => Status::Cancelled,
            "refunded" => Status::Refunded,
            other => return Err(StoreError::Corrupt(format!("conversion status {other:?}"))),
        })
    }
}

// === impl ConversionError ===

impl ConversionError {
    /// `INVALID_ARGUMENT` with the given field violations.
    pub fn invalid(p: Problem) -> ConversionError {
        ConversionError::Invalid(Box::new(p))
    }

    /// How this error is told to the caller.
    pub fn problem(&self) -> Problem {
        use ConversionError as E;
        let msg = self.to_string();
        match self {
            E::Invalid(p) => (**p).clone(),
            E::Conflict { order_id, fields } => {
                Problem::new(Kind::AlreadyExists, "ORDER_ID_CONFLICT", msg)
                    .with("order_id", order_id)
                    .with("differing_fields", fields.join(","))
            }
            E::ReferralNotATouch(id) => {
                Problem::new(Kind::FailedPrecondition, "REFERRAL_NOT_A_TOUCH", msg)
                    .with("referral_id", id)
                    .with("field", "referral_id")
            }
            E::ReferralOutsideWindow(id) => {
                Problem::new(Kind::FailedPrecondition, "REFERRAL_OUTSIDE_WINDOW", msg)
                    .with("referral_id", id)
                    .with("field", "referral_id")
            }
            E::NotFound(id) => {
                Problem::new(Kind::NotFound, "CONVERSION_NOT_FOUND", msg).with("conversion", id)
            }
            E::IllegalTransition { from, to } => {
                Problem::new(Kind::FailedPrecondition, "ILLEGAL_TRANSITION", msg)
                    .with("from_status", *from)
                    .with("to_status", *to)
            }
            E::RefundExceeds {
                requested,
                remaining,
            } => Problem::new(Kind::FailedPrecondition, "REFUND_EXCEEDS_REMAINING", msg)
                .with("refund_minor", requested.to_string())
                .with("remaining_minor", remaining.to_string())
                .with("field", "refund_minor"),
            E::RequestIdReused(id) => {
                Problem::new(Kind::AlreadyExists, "REQUEST_ID_REUSED", msg).with("request_id", id)
            }
            E::NotHeld(id) => {
                Problem::new(Kind::FailedPrecondition, "NOT_HELD", msg).with("conversion_id", id)
            }
            E::OperatorOnly => Problem::new(Kind::PermissionDenied, "OPERATOR_ONLY", msg),
            E::Entry(e) => Problem::internal(e),
            E::Store(e) => Problem::storage(e, e.is_unavailable()),
        }
    }
}

/// The id given to (reporter, order_id) when it is first recorded at
/// `recorded_at_ms`: that time in milliseconds as 6 big-endian bytes, then
/// the first 10 bytes of SHA-256("crossflow/conversion\0" ‖ reporter ‖ 0x00
/// ‖ order_id). Stored with the conversion, so retries and restarts see the
/// same id. The time comes first so that new ids land at the end of the
/// id index, as rowids do: a hash-first id put every report on a random
/// index page, and each such page is a whole page written to the WAL.
pub fn conversion_id(reporter: &str, order_id: &str, recorded_at_ms: i64) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"crossflow/conversion\0");
    ctx.update(reporter.as_bytes());
    ctx.update(&[0]);
    ctx.update(order_id.as_bytes());
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&recorded_at_ms.max(0).to_be_bytes()[2..]);
    out[6..].copy_from_slice(&ctx.finish().as_ref()[..10]);
    out
}

// === impl Conversions ===

impl<D: Database> Conversions<D> {
    pub fn new(
        db: D,
        keys: Arc<KeyRing>,
        settings: SettingsHandle,
        clock: Arc<dyn Clock>,
    ) -> Conversions<D> {
        Conversions {
            db,
            keys,
            settings,
            clock,
        }
    }

    /// Records an order reported by `caller`, durably, with its ledger entry.
    pub async fn report(
        &self,
        caller: &str,
        req: ReportRequest,
    ) -> Result<Recorded, ConversionError> {
        let now = self.clock.now_ms();
        let checked = check_report(&req, now)?;
        let uid = self.keys.uid(caller, &req.subject).0;
        let ctx = ReportCtx {
            caller: caller.to_owned(),
            id: conversion_id(caller, &req.order_id, now),
            req,
            exponent: checked.exponent,
            occurred_at_ms: checked.occurred_at_ms,
            referral: checked.referral,
            uid,
            now,
            salt: entry::salt()?,
            settings: self.settings.get(),
        };
        self.db.write(move |conn| report_tx(conn, &ctx)).await?
    }

    /// Confirms, cancels or refunds an order `caller` reported.
    pub async fn update(
        &self,
        caller: &str,
        req: UpdateRequest,
    ) -> Result<Recorded, ConversionError> {
        let mut c = Checks::new();
        order_id(&mut c, &req.order_id);
        c.request_id("request_id", &req.request_id);
        match req.status {
            None => c.violation("status", "must be CONFIRMED, CANCELLED or REFUNDED"),
            Some(Status::Pending) => c.violation(
                "status",
                "must be CONFIRMED, CANCELLED or REFUNDED, got PENDING",
            ),
            Some(Status::Refunded) if req.refund_minor < 0 => c.violation(
                "refund_minor",
                format!(
                    "must be > 0, or 0 to refund all that is left, got {}",
                    req.refund_minor
                ),
            ),
            Some(Status::Refunded) => {}
            Some(_) if req.refund_minor != 0 => c.violation(
                "refund_minor",
                format!(
                    "must be 0 unless status is REFUNDED, got {}",
                    req.refund_minor
                ),
            ),
            Some(_) => {}
        }
        c.finish().map_err(ConversionError::invalid)?;
        let Some(target) = req.status else {
            return Err(ConversionError::invalid(Problem::field(
                "INVALID_FIELD",
                "status",
                "must be set",
            )));
        };
        let ctx = UpdateCtx {
            caller: caller.to_owned(),
            req,
            target,
            now: self.clock.now_ms(),
            salt: entry::salt()?,
            settings: self.settings.get(),
        };
        self.db.write(move |conn| update_tx(conn, &ctx)).await?
    }

    /// An order `caller` reported.
    pub async fn get(
        &self,
        caller: &str,
        order: &str,
    ) -> Result<ConversionRecord, ConversionError> {
        let mut c = Checks::new();
        order_id(&mut c, order);
        c.finish().map_err(ConversionError::invalid)?;
        let (caller, wanted) = (caller.to_owned(), order.to_owned());
        self.db
            .read(move |conn| rows::select_by_order(conn, &caller, &wanted))
            .await?
            .ok_or_else(|| ConversionError::NotFound(order.to_owned()))
    }

    /// Lifts the fraud hold of conversion `id` (32 hex).
    pub async fn release(
        &self,
        by: Releaser<'_>,
        id: &str,
        note: &str,
    ) -> Result<Recorded, ConversionError> {
        release_with(&self.db, self.clock.now_ms(), by, id, note).await
    }
}

/// Lifts a hold on `db` directly (also used by `crossflow conversions
/// release`, with the gateway stopped).
pub async fn release_with(
    db: &impl Database,
    now: i64,
    by: Releaser<'_>,
    id: &str,
    note: &str,
) -> Result<Recorded, ConversionError> {
    let mut c = Checks::new();
    let parsed = c.referral_id("conversion_id", id);
    if !note.is_empty() {
        c.printable("note", note, MAX_NOTE_BYTES);
    }
    c.finish().map_err(ConversionError::invalid)?;
    let Some(parsed) = parsed else {
        return Err(ConversionError::NotFound(id.to_owned()));
    };
    let ctx = ReleaseCtx {
        id: parsed,
        hex: id.to_owned(),
        by: match by {
            Releaser::Operator(name) => format!("operator/{name}"),
            Releaser::Cli => "cli".to_owned(),
        },
        note: note.to_owned(),
        now,
        salt: entry::salt()?,
    };
    db.write(move |conn| release_tx(conn, &ctx)).await?
}

// === validation ===

struct Checked {
    exponent: u8,
    occurred_at_ms: i64,
    referral: Option<[u8; 16]>,
}

fn order_id(c: &mut Checks, v: &str) {
    if v.is_empty() {
        c.violation("order_id", "must not be empty");
    } else {
        c.request_id("order_id", v);
    }
}

fn check_report(req: &ReportRequest, now: i64) -> Result<Checked, ConversionError> {
    let mut c = Checks::new();
    order_id(&mut c, &req.order_id);
    c.subject("subject", &req.subject);
    if req.amount_minor <= 0 || req.amount_minor > money::MAX_AMOUNT_MINOR {
        c.violation(
            "amount_minor",
            format!(
                "must be 1..={} minor units, got {}",
                money::MAX_AMOUNT_MINOR,
                req.amount_minor
            ),
        );
    }
    let exponent = money::exponent(&req.currency);
    if exponent.is_none() {
        c.violation(
            "currency",
            format!(
                "must be an active ISO 4217 code in upper case like CNY, got {:?}",
                truncate(&req.currency)
            ),
        );
    }
    if !crossflow_settings::valid_category(&req.category) {
        c.violation(
            "category",
            format!(
                "must be 1-64 of a-z, 0-9, '-' and '_', got {:?}",
                truncate(&req.category)
            ),
        );
    }
    match req.occurred_at_ms {
        None => c.violation("occurred_at", "must be set"),
        Some(INVALID_TIMESTAMP_MS) => c.violation(
            "occurred_at",
            "must be a valid timestamp: nanos in 0..1000000000, seconds within the i64 millisecond range",
        ),
        Some(t) if t > now.saturating_add(MAX_FUTURE_MS) => c.violation(
            "occurred_at",
            format!(
                "must not be more than {} s ahead of the gateway's clock",
                MAX_FUTURE_MS / 1000
            ),
        ),
        Some(t) if t < now.saturating_sub(MAX_AGE_MS) => c.violation(
            "occurred_at",
            format!("must be within the last {} days", MAX_AGE_MS / DAY_MS),
        ),
        Some(_) => {}
    }
    let referral = c.optional_referral_id("referral_id", &req.referral_id);
    c.finish().map_err(ConversionError::invalid)?;
    Ok(Checked {
        exponent: exponent.unwrap_or(0),
        occurred_at_ms: req.occurred_at_ms.unwrap_or(0),
        referral,
    })
}

fn truncate(v: &str) -> String {
    v.chars().take(64).collect()
}

// === report ===

struct ReportCtx {
    caller: String,
    id: [u8; 16],
    req: ReportRequest,
    exponent: u8,
    occurred_at_ms: i64,
    referral: Option<[u8; 16]>,
    uid: [u8; 32],
    now: i64,
    salt: String,
    settings: Arc<Settings>,
}

/// A landing that counts, with the terms of its agreement.
struct Candidate {
    landing: Landing,
    rate_bps: u32,
    boosts: Vec<String>,
    upstream_share_bps: u32,
}

type TxResult<T> = Result<Result<T, ConversionError>, StoreError>;

fn report_tx(conn: &dyn Conn, x: &ReportCtx) -> TxResult<Recorded> {
    let r = &x.req;
    if let Some(prev) = rows::select_by_order(conn, &x.caller, &r.order_id)? {
        let mut fields = Vec::new();
        if prev.amount_minor != r.amount_minor {
            fields.push("amount_minor");
        }
        if prev.currency != r.currency {
            fields.push("currency");
        }
        if prev.category != r.category {
            fields.push("category");
        }
        if prev.occurred_at_ms != x.occurred_at_ms {
            fields.push("occurred_at");
        }
        if prev.buyer_uid != x.uid {
            fields.push("subject");
        }
        if prev.referral_id != x.referral {
            fields.push("referral_id");
        }
        if !fields.is_empty() {
            return Ok(Err(ConversionError::Conflict {
                order_id: r.order_id.clone(),
                fields,
            }));
        }
        let entry = entry_ref(conn, prev.report_index, prev.report_leaf)?;
        return Ok(Ok(Recorded {
            conversion: prev,
            entry,
            replayed: true,
        }));
    }

    let s = &x.settings;
    let candidates = match candidates(conn, x) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let (model, half_life) = s.partner(&x.caller).map_or((Default::default(), 1), |p| {
        (p.attribution_model, p.time_decay_half_life_secs)
    });
    let redeemed: Vec<i64> = candidates
        .iter()
        .map(|c| c.landing.redeemed_at_ms)
        .collect();
    let weights = attribution::weights(model, half_life, x.occurred_at_ms, &redeemed);
    let rates: Vec<u32> = candidates.iter().map(|c| c.rate_bps).collect();
    let amount = r.amount_minor.unsigned_abs();
    let (total, per_touch) = attribution::touch_commissions(amount, &rates, &weights);

    let mut touches = Vec::new();
    let mut payouts: Vec<(String, i64)> = Vec::new();
    for ((c, w), commission) in candidates.iter().zip(&weights).zip(&per_touch) {
        if *w == 0 {
            continue;
        }
        let shares = attribution::split_chain(*commission, c.upstream_share_bps, &c.landing.chain);
        for sh in &shares {
            // A share owed to the reporter itself (a chain that passed
            // through it) is shown but not posted: it would pay itself.
            if sh.partner == x.caller {
                continue;
            }
            let a = i64::try_from(sh.amount_minor).unwrap_or(i64::MAX);
            match payouts.iter_mut().find(|(p, _)| *p == sh.partner) {
                Some((_, sum)) => *sum += a,
                None => payouts.push((sh.partner.clone(), a)),
            }
        }
        touches.push(entry::Touch {
            referral_id: ReferralId(c.landing.referral_id).to_string(),
            agreement_id: c.landing.agreement_id.clone(),
            from: c.landing.from.clone(),
            chain: c.landing.chain.clone(),
            redeemed_at_ms: c.landing.redeemed_at_ms,
            weight: *w,
            rate_bps: c.rate_bps,
            boosts: c.boosts.clone(),
            commission_minor: i64::try_from(*commission).unwrap_or(i64::MAX),
            upstream_share_bps: c.upstream_share_bps,
            shares: shares
                .into_iter()
                .map(|sh| entry::ShareOut {
                    partner: sh.partner,
                    role: sh.role,
                    amount_minor: i64::try_from(sh.amount_minor).unwrap_or(i64::MAX),
                })
                .collect(),
        });
    }
    let commission = i64::try_from(total).unwrap_or(i64::MAX);

    let hold_reason = if touches.is_empty() {
        String::new()
    } else {
        fraud_reasons(conn, x, &candidates)?.join(",")
    };
    let held = !hold_reason.is_empty();
    let id_hex = hex::encode(x.id);
    let model_name = attribution::model_name(model);
    let e = Entry {
        v: entry::VERSION,
        kind: "conversion",
        event: "reported",
        salt: x.salt.clone(),
        conversion_id: &id_hex,
        reporter: &x.caller,
        order_id: &r.order_id,
        amount_minor: r.amount_minor,
        currency: &r.currency,
        exponent: x.exponent,
        category: &r.category,
        occurred_at_ms: x.occurred_at_ms,
        recorded_at_ms: x.now,
        status: Status::Pending.as_str(),
        hold: held.then_some(entry::Hold {
            reason: &hold_reason,
        }),
        attribution: Some(entry::Attribution {
            model: model_name,
            commission_minor: commission,
            touches,
        }),
        report_index: None,
        refund_minor: None,
        refunded_total_minor: None,
        payable_at_ms: None,
        released_by: None,
        note: None,
        postings: if held {
            Vec::new()
        } else {
            entry::postings(&x.caller, &r.currency, &payouts, 1)
        },
    };
    let bytes = match e.to_bytes() {
        Ok(b) => b,
        Err(err) => return Ok(Err(err.into())),
    };
    let parties = parties(&x.caller, &payouts);
    let entry = ledger::Prepared::new(bytes, &parties)?;
    let seq = ledger::append(conn, &entry, x.now)?;
    let record = ConversionRecord {
        conversion_id: x.id,
        reporter: x.caller.clone(),
        order_id: r.order_id.clone(),
        buyer_uid: x.uid,
        amount_minor: r.amount_minor,
        currency: r.currency.clone(),
        category: r.category.clone(),
        occurred_at_ms: x.occurred_at_ms,
        referral_id: x.referral,
        recorded_at_ms: x.now,
        status: Status::Pending.as_str().to_owned(),
        model: model_name.to_owned(),
        touches: u32::try_from(e.attribution.as_ref().map_or(0, |a| a.touches.len()))
            .unwrap_or(u32::MAX),
        commission_minor: commission,
        payouts,
        refunded_minor: 0,
        held,
        hold_reason,
        confirmed_at_ms: None,
        report_index: seq.index,
        report_leaf: seq.leaf_hash,
        latest_index: seq.index,
    };
    rows::insert(conn, &record)?;
    Ok(Ok(Recorded {
        conversion: record,
        entry: EntryRef {
            index: seq.index,
            leaf_hash: seq.leaf_hash,
            bytes: entry.into_bytes(),
        },
        replayed: false,
    }))
}

/// The landings that count as touches, oldest first.
fn candidates(conn: &dyn Conn, x: &ReportCtx) -> Result<Vec<Candidate>, ConversionError> {
    let s = &x.settings;
    let occurred = x.occurred_at_ms;
    if let Some(rid) = x.referral {
        let hex_id = ReferralId(rid).to_string();
        let landing = crossflow_store::landings::select(conn, &rid)?
            .filter(|l| l.to == x.caller && l.dest_uid == x.uid)
            .ok_or_else(|| ConversionError::ReferralNotATouch(hex_id.clone()))?;
        return match terms(s, &x.caller, &x.req.category, occurred, landing) {
            Some(c) => Ok(vec![c]),
            None => Err(ConversionError::ReferralOutsideWindow(hex_id)),
        };
    }
    let widest_ms = s
        .agreements
        .iter()
        .map(|a| secs_to_ms(a.attribution_window_secs))
        .max()
        .unwrap_or(0);
    let landings = crossflow_store::landings::in_window(
        conn,
        &x.caller,
        &x.uid,
        occurred.saturating_sub(widest_ms),
        occurred,
    )?;
    Ok(landings
        .into_iter()
        .filter_map(|l| terms(s, &x.caller, &x.req.category, occurred, l))
        .collect())
}

/// The rate and split of a landing at `reporter`, if its agreement still
/// has the flow and the landing is within the agreement's window.
fn terms(
    s: &Settings,
    reporter: &str,
    category: &str,
    occurred: i64,
    landing: Landing,
) -> Option<Candidate> {
    let flow = s
        .flow(&landing.from, reporter)
        .filter(|f| f.agreement.id == landing.agreement_id)?;
    let window = secs_to_ms(flow.agreement.attribution_window_secs);
    if landing.redeemed_at_ms > occurred || landing.redeemed_at_ms < occurred.saturating_sub(window)
    {
        return None;
    }
    let c = &flow.flow.commission;
    let mut rate = c.categories.get(category).copied().unwrap_or(c.default_bps);
    let mut boosts = Vec::new();
    for b in &c.boosts {
        let covers = b.categories.is_empty() || b.categories.iter().any(|x| x == category);
        let (Ok(start), Ok(end)) = (
            b.starts_at.parse::<jiff::Timestamp>(),
            b.ends_at.parse::<jiff::Timestamp>(),
        ) else {
            continue;
        };
        if covers && start.as_millisecond() <= occurred && occurred < end.as_millisecond() {
            rate = rate.saturating_add(b.extra_bps);
            boosts.push(b.name.clone());
        }
    }
    Some(Candidate {
        landing,
        rate_bps: rate.min(10_000),
        boosts,
        upstream_share_bps: flow.agreement.upstream_share_bps.min(10_000),
    })
}

fn fraud_reasons(
    conn: &dyn Conn,
    x: &ReportCtx,
    candidates: &[Candidate],
) -> Result<Vec<&'static str>, StoreError> {
    let f = &x.settings.fraud;
    let mut reasons = Vec::new();
    if let Some(min) = f.min_seconds_after_landing
        && let Some(last) = candidates.iter().map(|c| c.landing.redeemed_at_ms).max()
        && x.occurred_at_ms.saturating_sub(last) < secs_to_ms(min)
    {
        reasons.push("TOO_SOON_AFTER_LANDING");
    }
    if let Some(max) = f.max_landings_per_uid_per_hour {
        let n = rows::count_landings(
            conn,
            &x.caller,
            &x.uid,
            x.occurred_at_ms.saturating_sub(VELOCITY_WINDOW_MS),
            x.occurred_at_ms,
        )?;
        if n > u64::from(max) {
            reasons.push("LANDING_VELOCITY");
        }
    }
    let cap = f
        .max_amount_minor_by_currency
        .get(&x.req.currency)
        .copied()
        .or(f.max_amount_minor);
    if let Some(cap) = cap
        && x.req.amount_minor.unsigned_abs() > cap
    {
        reasons.push("AMOUNT_OVER_CAP");
    }
    Ok(reasons)
}

// === update ===

struct UpdateCtx {
    caller: String,
    req: UpdateRequest,
    target: Status,
    now: i64,
    salt: String,
    settings: Arc<Settings>,
}

fn update_tx(conn: &dyn Conn, x: &UpdateCtx) -> TxResult<Recorded> {
    let r = &x.req;
    let Some(mut rec) = rows::select_by_order(conn, &x.caller, &r.order_id)? else {
        return Ok(Err(ConversionError::NotFound(r.order_id.clone())));
    };
    let history = rows::updates(conn, &rec.conversion_id)?;
    let event = x.target.as_str();
    if !r.request_id.is_empty()
        && let Some(u) = history.iter().find(|u| u.request_id == r.request_id)
    {
        if u.event == event && u.refund_minor == r.refund_minor {
            let entry = entry_ref(conn, u.entry_index, u.leaf_hash)?;
            return Ok(Ok(Recorded {
                conversion: rec,
                entry,
                replayed: true,
            }));
        }
        return Ok(Err(ConversionError::RequestIdReused(r.request_id.clone())));
    }
    let current = Status::parse(&rec.status)?;
    let amount = rec.amount_minor;
    let old_basis = basis(current, &rec);
    let mut refund = None;
    let next = match (current, x.target) {
        (Status::Confirmed, Status::Confirmed) | (Status::Cancelled, Status::Cancelled) => {
            // A repeated confirm or cancel answers like the first one.
            if let Some(u) = history.iter().rev().find(|u| u.event == event) {
                let entry = entry_ref(conn, u.entry_index, u.leaf_hash)?;
                return Ok(Ok(Recorded {
                    conversion: rec,
                    entry,
                    replayed: true,
                }));
            }
            return Ok(Err(ConversionError::IllegalTransition {
                from: current.as_str(),
                to: event,
            }));
        }
        (Status::Pending, Status::Confirmed) => {
            rec.confirmed_at_ms = Some(x.now);
            Status::Confirmed
        }
        (Status::Pending, Status::Cancelled) => Status::Cancelled,
        (Status::Pending | Status::Confirmed, Status::Refunded) => {
            let remaining = amount - rec.refunded_minor;
            let want = if r.refund_minor == 0 {
                remaining
            } else {
                r.refund_minor
            };
            if want > remaining {
                return Ok(Err(ConversionError::RefundExceeds {
                    requested: want,
                    remaining,
                }));
            }
            rec.refunded_minor += want;
            refund = Some(want);
            if rec.refunded_minor == amount {
                Status::Refunded
            } else {
                current
            }
        }
        (from, to) => {
            return Ok(Err(ConversionError::IllegalTransition {
                from: from.as_str(),
                to: to.as_str(),
            }));
        }
    };
    rec.status = next.as_str().to_owned();
    let payable_at_ms = match (current, next) {
        (Status::Pending, Status::Confirmed) => Some(payable_at(conn, &rec, x)?),
        _ => None,
    };
    let new_basis = basis(next, &rec);
    let postings = if rec.held {
        // Nothing was posted yet; the release posts what is left then.
        Vec::new()
    } else {
        let deltas = deltas(&rec.payouts, old_basis, new_basis, amount);
        entry::postings(&rec.reporter, &rec.currency, &deltas, -1)
    };
    let id_hex = hex::encode(rec.conversion_id);
    let e = Entry {
        v: entry::VERSION,
        kind: "conversion",
        event,
        salt: x.salt.clone(),
        conversion_id: &id_hex,
        reporter: &rec.reporter,
        order_id: &rec.order_id,
        amount_minor: rec.amount_minor,
        currency: &rec.currency,
        exponent: money::exponent(&rec.currency).unwrap_or(0),
        category: &rec.category,
        occurred_at_ms: rec.occurred_at_ms,
        recorded_at_ms: x.now,
        status: &rec.status,
        hold: None,
        attribution: None,
        report_index: Some(rec.report_index),
        refund_minor: refund,
        refunded_total_minor: Some(rec.refunded_minor),
        payable_at_ms,
        released_by: None,
        note: None,
        postings,
    };
    let bytes = match e.to_bytes() {
        Ok(b) => b,
        Err(err) => return Ok(Err(err.into())),
    };
    append_update(
        conn,
        rec,
        &history,
        event,
        &r.request_id,
        r.refund_minor,
        bytes,
        x.now,
    )
}

/// Lock period used for a touch whose agreement is no longer configured:
/// the settings' default, so a removed agreement never pays early.
const UNKNOWN_AGREEMENT_LOCK_DAYS: u32 = crossflow_settings::raw::DEFAULT_LOCK_PERIOD_DAYS;

/// `payable_at_ms` of a `confirmed` entry recorded now: the longest
/// `lock_period_days` among the report's touches' agreements after `x.now`.
/// The agreements are read from the report entry itself (the record keeps
/// only the payouts), so this is exactly what a verifier sees.
fn payable_at(conn: &dyn Conn, rec: &ConversionRecord, x: &UpdateCtx) -> Result<i64, StoreError> {
    let report = ledger::entry(conn, rec.report_index)?.ok_or_else(|| {
        StoreError::Corrupt(format!("report entry {} is missing", rec.report_index))
    })?;
    let parsed: serde_json::Value = serde_json::from_slice(&report.bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "report entry {} is not JSON: {e}",
            rec.report_index
        ))
    })?;
    let touches = parsed
        .pointer("/attribution/touches")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let days = touches
        .iter()
        .filter_map(|t| t.get("agreement_id").and_then(serde_json::Value::as_str))
        .map(|id| {
            x.settings
                .agreements
                .iter()
                .find(|a| a.id == id)
                .map_or(UNKNOWN_AGREEMENT_LOCK_DAYS, |a| a.lock_period_days)
        })
        .max()
        .unwrap_or(0);
    Ok(x.now.saturating_add(i64::from(days).saturating_mul(DAY_MS)))
}

// === release ===

struct ReleaseCtx {
    id: [u8; 16],
    hex: String,
    by: String,
    note: String,
    now: i64,
    salt: String,
}

fn release_tx(conn: &dyn Conn, x: &ReleaseCtx) -> TxResult<Recorded> {
    let Some(mut rec) = rows::select(conn, &x.id)? else {
        return Ok(Err(ConversionError::NotFound(x.hex.clone())));
    };
    if !rec.held {
        return Ok(Err(ConversionError::NotHeld(x.hex.clone())));
    }
    let history = rows::updates(conn, &rec.conversion_id)?;
    let status = Status::parse(&rec.status)?;
    let amount = rec.amount_minor;
    // What is left to post: each payout less what refunds (or a cancel)
    // already took back while it was held.
    let left: Vec<(String, i64)> = rec
        .payouts
        .iter()
        .map(|(p, payout)| {
            (
                p.clone(),
                payout - reversed(*payout, basis(status, &rec), amount),
            )
        })
        .collect();
    rec.held = false;
    let e = Entry {
        v: entry::VERSION,
        kind: "conversion",
        event: "released",
        salt: x.salt.clone(),
        conversion_id: &x.hex,
        reporter: &rec.reporter,
        order_id: &rec.order_id,
        amount_minor: rec.amount_minor,
        currency: &rec.currency,
        exponent: money::exponent(&rec.currency).unwrap_or(0),
        category: &rec.category,
        occurred_at_ms: rec.occurred_at_ms,
        recorded_at_ms: x.now,
        status: &rec.status,
        hold: Some(entry::Hold {
            reason: &rec.hold_reason,
        }),
        attribution: None,
        report_index: Some(rec.report_index),
        refund_minor: None,
        refunded_total_minor: Some(rec.refunded_minor),
        payable_at_ms: None,
        released_by: Some(&x.by),
        note: (!x.note.is_empty()).then_some(x.note.as_str()),
        postings: entry::postings(&rec.reporter, &rec.currency, &left, 1),
    };
    let bytes = match e.to_bytes() {
        Ok(b) => b,
        Err(err) => return Ok(Err(err.into())),
    };
    append_update(conn, rec, &history, "released", "", 0, bytes, x.now)
}

// === shared ===

/// How much of the order no longer earns commission: everything once
/// cancelled, else the refunds so far.
fn basis(status: Status, rec: &ConversionRecord) -> i64 {
    match status {
        Status::Cancelled => rec.amount_minor,
        _ => rec.refunded_minor,
    }
}

/// Per payee, what moving the reversal basis from `old` to `new` reverses:
/// `reversed(payout, new) - reversed(payout, old)` (docs/LEDGER.md).
fn deltas(payouts: &[(String, i64)], old: i64, new: i64, amount: i64) -> Vec<(String, i64)> {
    payouts
        .iter()
        .map(|(p, payout)| {
            (
                p.clone(),
                reversed(*payout, new, amount) - reversed(*payout, old, amount),
            )
        })
        .collect()
}

/// [`attribution::reversed`] on signed amounts (all non-negative here).
fn reversed(payout: i64, basis: i64, amount: i64) -> i64 {
    let r = attribution::reversed(
        payout.unsigned_abs(),
        basis.unsigned_abs(),
        amount.unsigned_abs(),
    );
    i64::try_from(r).unwrap_or(i64::MAX)
}

#[allow(clippy::too_many_arguments)]
fn append_update(
    conn: &dyn Conn,
    mut rec: ConversionRecord,
    history: &[UpdateRecord],
    event: &str,
    request_id: &str,
    refund_minor: i64,
    bytes: Vec<u8>,
    now: i64,
) -> TxResult<Recorded> {
    let parties = parties(&rec.reporter, &rec.payouts);
    let entry = ledger::Prepared::new(bytes, &parties)?;
    let seq = ledger::append(conn, &entry, now)?;
    rec.latest_index = seq.index;
    rows::update_state(conn, &rec)?;
    rows::insert_update(
        conn,
        &UpdateRecord {
            conversion_id: rec.conversion_id,
            seq: u32::try_from(history.len() + 1).unwrap_or(u32::MAX),
            event: event.to_owned(),
            request_id: request_id.to_owned(),
            refund_minor,
            entry_index: seq.index,
            leaf_hash: seq.leaf_hash,
            recorded_at_ms: now,
        },
    )?;
    Ok(Ok(Recorded {
        conversion: rec,
        entry: EntryRef {
            index: seq.index,
            leaf_hash: seq.leaf_hash,
            bytes: entry.into_bytes(),
        },
        replayed: false,
    }))
}

/// The reporter and every payee, once each.
fn parties<'a>(reporter: &'a str, payouts: &'a [(String, i64)]) -> Vec<&'a str> {
    let mut out = vec![reporter];
    for (p, _) in payouts {
        if !out.contains(&p.as_str()) {
            out.push(p);
        }
    }
    out
}

fn entry_ref(conn: &dyn Conn, index: u64, leaf_hash: [u8; 32]) -> Result<EntryRef, StoreError> {
    let bytes = ledger::entry(conn, index)?
        .map(|e| e.bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("ledger entry {index} is missing")))?;
    Ok(EntryRef {
        index,
        leaf_hash,
        bytes,
    })
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
