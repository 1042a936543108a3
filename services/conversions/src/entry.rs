//! The ledger entry of a conversion event: one line of compact JSON, field
//! order fixed by these structs (docs/LEDGER.md, "Conversion entries").
//!
//! The bytes are produced once, hashed and stored verbatim; nobody ever
//! re-serialises an entry, so no canonical form is needed. No raw subject
//! and no buyer uid is written: the touches' referral ids already bind the
//! entry to landings both parties know, and a uid in a log shared with other
//! partners would let them link one buyer's orders across entries.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

/// Version of the entry schema.
pub const VERSION: u32 = 1;

/// One conversion event.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    pub v: u32,
    /// Always `conversion` (other entry types may follow).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `reported`, `confirmed`, `cancelled`, `refunded` or `released`.
    pub event: &'static str,
    /// Base64 of 16 random bytes: makes every entry's leaf hash unguessable.
    pub salt: String,
    pub conversion_id: &'a str,
    pub reporter: &'a str,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub exponent: u8,
    pub category: &'a str,
    pub occurred_at_ms: i64,
    pub recorded_at_ms: i64,
    /// Lifecycle status after this event.
    pub status: &'a str,
    /// Set on `reported` when a fraud rule held the conversion, and on
    /// `released` (the hold that was lifted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold<'a>>,
    /// Only on `reported`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    /// Every event after `reported`: the index of the report entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_index: Option<u64>,
    /// `refunded`: the refund of this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_minor: Option<i64>,
    /// Every event after `reported`: all refunds so far, this one included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_total_minor: Option<i64>,
    /// `confirmed`: when the conversion becomes payable, `recorded_at_ms`
    /// plus the longest lock period of the report's touches' agreements.
    /// Written into the entry so settlement never needs the settings that
    /// were in force at confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payable_at_ms: Option<i64>,
    /// `released`: who released it (`operator/<name>` or `cli`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_by: Option<&'a str>,
    /// `released`: the operator's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
    pub postings: Vec<Posting>,
}

/// A fraud hold.
#[derive(Debug, Clone, Serialize)]
pub struct Hold<'a> {
    /// Comma-separated rule names, e.g. `TOO_SOON_AFTER_LANDING`.
    pub reason: &'a str,
}

/// How the commission was attributed.
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    pub model: &'static str,
    /// Total commission of the order (sum of the touches' commissions).
    pub commission_minor: i64,
    /// Touches with a positive weight, oldest landing first.
    pub touches: Vec<Touch>,
}

/// One landing the commission is attributed to.
#[derive(Debug, Clone, Serialize)]
pub struct Touch {
    pub referral_id: String,
    pub agreement_id: String,
    pub from: String,
    /// Origin first, ending with `from`.
    pub chain: Vec<String>,
    pub redeemed_at_ms: i64,
    /// Share of the commission = weight / sum of the touches' weights.
    pub weight: u64,
    /// Category rate plus boosts, bps of the order amount.
    pub rate_bps: u32,
    /// Names of the boosts included in `rate_bps`.
    pub boosts: Vec<String>,
    pub commission_minor: i64,
    pub upstream_share_bps: u32,
    pub shares: Vec<ShareOut>,
}

/// One partner's part of a touch's commission.
#[derive(Debug, Clone, Serialize)]
pub struct ShareOut {
    pub partner: String,
    pub role: &'static str,
    pub amount_minor: i64,
}

/// One leg of the double entry. Amounts are signed; an entry's postings sum
/// to zero per currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posting {
    /// `partner:<id>:payable` (what `<id>` owes) or `partner:<id>:receivable`
    /// (what `<id>` is owed).
    pub account: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Why an entry could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("postings do not balance in {currency}: they sum to {sum}")]
    Unbalanced { currency: String, sum: i128 },
    #[error("no randomness for the entry salt")]
    Random,
    #[error("serialising the entry: {0}")]
    Json(#[from] serde_json::Error),
}

/// 16 random bytes from the system generator, base64 (standard, padded).
pub fn salt() -> Result<String, EntryError> {
    let mut b = [0u8; 16];
    crossflow_identity::random::fill(&mut b).map_err(|_| EntryError::Random)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(b))
}

/// Checks that `postings` sum to zero in every currency.
pub fn check_balanced(postings: &[Posting]) -> Result<(), EntryError> {
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for p in postings {
        *sums.entry(p.currency.as_str()).or_default() += i128::from(p.amount_minor);
    }
    match sums.into_iter().find(|(_, s)| *s != 0) {
        Some((currency, sum)) => Err(EntryError::Unbalanced {
            currency: currency.to_owned(),
            sum,
        }),
        None => Ok(()),
    }
}

/// Postings moving `amounts` (per payee, positive = owed to the payee) from
/// the reporter's payable account: one leg for the reporter, then one per
/// payee with a non-zero amount. `sign` -1 reverses them.
pub fn postings(
    reporter: &str,
    currency: &str,
    amounts: &[(String, i64)],
    sign: i64,
) -> Vec<Posting> {
    let total: i64 = amounts.iter().map(|(_, a)| *a).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(amounts.len() + 1);
    out.push(Posting {
        account: format!("partner:{reporter}:payable"),
        amount_minor: -sign * total,
        currency: currency.to_owned(),
    });
    for (who, a) in amounts.iter().filter(|(_, a)| *a != 0) {
        out.push(Posting {
            account: format!("partner:{who}:receivable"),
            amount_minor: sign * a,
            currency: currency.to_owned(),
        });
    }
    out
}

// === impl Entry ===

impl Entry<'_> {
    /// The entry's bytes, after checking its postings balance.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EntryError> {
        check_balanced(&self.postings)?;
        Ok(serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_balance_and_reverse() {
        let amounts = vec![
            ("alpha".to_owned(), 30),
            ("beta".to_owned(), 0),
            ("gamma".to_owned(), 12),
        ];
        let p = postings("delta", "CNY", &amounts, 1);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].account, "partner:delta:payable");
        assert_eq!(p[0].amount_minor, -42);
        assert!(check_balanced(&p).is_ok());
        let r = postings("delta", "CNY", &amounts, -1);
        assert_eq!(r[0].amount_minor, 42);
        assert_eq!(r[1].amount_minor, -30);
        assert!(postings("delta", "CNY", &[("a".into(), 0)], 1).is_empty());
    }

    #[test]
    fn unbalanced_postings_are_refused() {
        let mut p = postings("delta", "CNY", &[("alpha".into(), 5)], 1);
        p[1].amount_minor = 6;
        assert!(matches!(
            check_balanced(&p),
            Err(EntryError::Unbalanced { sum: 1, .. })
        ));
        // Balanced overall but not per currency.
        p[1].amount_minor = 5;
        p[1].currency = "USD".into();
        assert!(check_balanced(&p).is_err());
    }

    #[test]
    fn salt_is_16_random_bytes() {
        let (a, b) = (salt().unwrap(), salt().unwrap());
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD.decode(a).unwrap();
        assert_eq!(raw.len(), 16);
    }
}
