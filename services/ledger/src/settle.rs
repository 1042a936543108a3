//! Settlement, pure: from conversion entries and a closed period's bounds to
//! the rows of `statement.csv` and `settlement.csv` (docs/LEDGER.md,
//! "Settlement periods" and "Exports").
//!
//! The exporter and the offline verifier both call [`statement`] and
//! [`settlement`] on the entries of `entries.jsonl`, so what is written is by
//! construction what a verifier recomputes. All sums are exact `i128`s of
//! minor units; decimals appear only in [`format_minor`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Deserialize;

use crate::{merkle::Hash, note::hex};

/// Where a closed period sits, and what a verifier needs to place entries
/// and instants relative to it (no time zone data beyond the bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodBounds {
    /// `YYYY-MM`.
    pub name: String,
    /// IANA zone of the month boundaries and of the CSV times.
    pub timezone: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub previous_anchor_size: u64,
    pub anchor_size: u64,
}

/// Before, in, or after the period. Periods are totally ordered, and
/// settlement only ever compares with the exported one, so three places
/// are enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Before,
    This,
    After,
}

impl PeriodBounds {
    fn of_index(&self, index: u64) -> Place {
        if index < self.previous_anchor_size {
            Place::Before
        } else if index < self.anchor_size {
            Place::This
        } else {
            Place::After
        }
    }

    fn of_time(&self, ms: i64) -> Place {
        if ms < self.start_ms {
            Place::Before
        } else if ms < self.end_ms {
            Place::This
        } else {
            Place::After
        }
    }
}

/// A logged entry with what settlement reads from its bytes.
#[derive(Debug, Clone)]
pub struct LoggedEntry {
    pub index: u64,
    pub leaf_hash: Hash,
    pub entry: Entry,
}

/// The fields of an entry that settlement reads. Unknown fields are
/// ignored; absent optional ones are `None`/empty.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub conversion_id: String,
    #[serde(default)]
    pub reporter: String,
    #[serde(default)]
    pub order_id: String,
    #[serde(default)]
    pub amount_minor: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub exponent: u8,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub occurred_at_ms: i64,
    #[serde(default)]
    pub recorded_at_ms: i64,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub hold: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub attribution: Option<Attribution>,
    #[serde(default)]
    pub payable_at_ms: Option<i64>,
    #[serde(default)]
    pub postings: Vec<Posting>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Attribution {
    pub model: String,
    pub commission_minor: i64,
    #[serde(default)]
    pub touches: Vec<Touch>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Touch {
    pub weight: u64,
    #[serde(default)]
    pub shares: Vec<Share>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Share {
    pub partner: String,
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Posting {
    pub account: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// An entry or set of entries settlement cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("entry {index} is not a valid entry: {reason}")]
    Parse { index: u64, reason: String },
    #[error("entry {index}: postings do not balance in {currency} (they sum to {sum})")]
    Unbalanced {
        index: u64,
        currency: String,
        sum: i128,
    },
    #[error("entry {index}: account {account:?} is not partner:<id>:payable|receivable")]
    Account { index: u64, account: String },
    #[error("entry {index}: conversion {conversion_id} has no reported entry among the entries")]
    NoReport { index: u64, conversion_id: String },
    #[error("entry {index}: confirmed entry has no payable_at_ms")]
    NoPayableAt { index: u64 },
    #[error("entry {index}: time {ms} ms cannot be shown in {timezone}")]
    Time {
        index: u64,
        ms: i64,
        timezone: String,
    },
    #[error("time zone {0:?} is unknown")]
    TimeZone(String),
}

impl LoggedEntry {
    /// Parses entry `bytes` logged at `index`.
    pub fn parse(index: u64, bytes: &[u8]) -> Result<LoggedEntry, SettleError> {
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| SettleError::Parse {
            index,
            reason: e.to_string(),
        })?;
        Ok(LoggedEntry {
            index,
            leaf_hash: crate::merkle::leaf_hash(bytes),
            entry,
        })
    }

    fn is_conversion(&self) -> bool {
        self.entry.kind == "conversion"
    }
}

/// Checks that an entry's postings sum to zero in every currency and name
/// partner accounts.
pub fn check_postings(e: &LoggedEntry) -> Result<(), SettleError> {
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for p in &e.entry.postings {
        if account(&p.account).is_none() {
            return Err(SettleError::Account {
                index: e.index,
                account: p.account.clone(),
            });
        }
        *sums.entry(&p.currency).or_default() += i128::from(p.amount_minor);
    }
    match sums.into_iter().find(|(_, s)| *s != 0) {
        Some((currency, sum)) => Err(SettleError::Unbalanced {
            index: e.index,
            currency: currency.to_owned(),
            sum,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Payable,
    Receivable,
}

fn account(a: &str) -> Option<(&str, Side)> {
    let rest = a.strip_prefix("partner:")?;
    let (id, side) = rest.rsplit_once(':')?;
    let side = match side {
        "payable" => Side::Payable,
        "receivable" => Side::Receivable,
        _ => return None,
    };
    (!id.is_empty()).then_some((id, side))
}

// === statement ===

/// One row of `statement.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    pub period: String,
    pub entry_index: u64,
    pub order_id: String,
    pub conversion_id: String,
    pub event: &'static str,
    pub occurred_at: String,
    pub recorded_at: String,
    pub payer: String,
    pub payee: String,
    pub role: String,
    pub model: String,
    pub weight: String,
    pub category: String,
    pub currency: String,
    pub exponent: u8,
    pub order_amount_minor: i64,
    pub commission_minor: i64,
    pub amount_minor: i64,
    pub status: String,
    /// `yes` or why not: `pending`, `held`, `cancelled`, `locked`.
    pub payable: &'static str,
    pub leaf_hash: Hash,
}

impl StatementRow {
    pub fn is_payable(&self) -> bool {
        self.payable == "yes"
    }
}

pub const STATEMENT_HEADER: &[&str] = &[
    "period",
    "entry_index",
    "order_id",
    "conversion_id",
    "event",
    "occurred_at",
    "recorded_at",
    "payer",
    "payee",
    "role",
    "model",
    "weight",
    "category",
    "currency",
    "exponent",
    "order_amount_minor",
    "commission_minor",
    "amount_minor",
    "amount",
    "status",
    "payable",
    "leaf_hash",
];

fn event_name(event: &str) -> &'static str {
    match event {
        "reported" => "conversion",
        "confirmed" => "confirm",
        "cancelled" => "cancel",
        "refunded" => "refund",
        "released" => "release",
        _ => "other",
    }
}

/// The statement rows of `entries` (ascending index) for `bounds`: every
/// receivable posting of an entry that belongs to the period or settles in
/// it, in index then posting order.
pub fn statement(
    bounds: &PeriodBounds,
    entries: &[LoggedEntry],
) -> Result<Vec<StatementRow>, SettleError> {
    let tz = jiff::tz::TimeZone::get(&bounds.timezone)
        .map_err(|_| SettleError::TimeZone(bounds.timezone.clone()))?;
    let mut by_conversion: BTreeMap<&str, Vec<&LoggedEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_conversion()) {
        by_conversion
            .entry(&e.entry.conversion_id)
            .or_default()
            .push(e);
    }
    let mut rows = Vec::new();
    for group in by_conversion.values() {
        conversion_rows(bounds, &tz, group, &mut rows)?;
    }
    rows.sort_by_key(|r: &(u64, usize, StatementRow)| (r.0, r.1));
    Ok(rows.into_iter().map(|(_, _, r)| r).collect())
}

/// The period a conversion is paid in, if ever (docs: `paid(c)`).
fn paid(bounds: &PeriodBounds, group: &[&LoggedEntry]) -> Result<Option<Place>, SettleError> {
    let find = |event: &str| group.iter().find(|e| e.entry.event == event);
    let Some(confirmed) = find("confirmed") else {
        return Ok(None);
    };
    let payable_at = confirmed
        .entry
        .payable_at_ms
        .ok_or(SettleError::NoPayableAt {
            index: confirmed.index,
        })?;
    let mut at = bounds
        .of_time(payable_at)
        .max(bounds.of_index(confirmed.index));
    if find("reported").is_some_and(|r| r.entry.hold.is_some()) {
        match find("released") {
            Some(r) => at = at.max(bounds.of_index(r.index)),
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

fn conversion_rows(
    bounds: &PeriodBounds,
    tz: &jiff::tz::TimeZone,
    group: &[&LoggedEntry],
    rows: &mut Vec<(u64, usize, StatementRow)>,
) -> Result<(), SettleError> {
    let paid = paid(bounds, group)?;
    let report = group.iter().find(|e| e.entry.event == "reported");
    let Some(last) = group.last() else {
        return Ok(());
    };
    let status = &last.entry.status;
    let held = report.is_some_and(|r| r.entry.hold.is_some())
        && !group.iter().any(|e| e.entry.event == "released");
    let why_not = if held {
        "held"
    } else if status == "cancelled" {
        "cancelled"
    } else if paid.is_none() {
        "pending"
    } else {
        "locked"
    };
    for e in group {
        let settles = paid.map(|p| p.max(bounds.of_index(e.index)));
        let belongs = bounds.of_index(e.index) == Place::This;
        if !belongs && settles != Some(Place::This) {
            continue;
        }
        let receivables: Vec<(usize, &str, &Posting)> = e
            .entry
            .postings
            .iter()
            .enumerate()
            .filter_map(|(n, p)| match account(&p.account) {
                Some((id, Side::Receivable)) => Some((n, id, p)),
                _ => None,
            })
            .collect();
        if receivables.is_empty() {
            continue;
        }
        let Some(report) = report else {
            return Err(SettleError::NoReport {
                index: e.index,
                conversion_id: e.entry.conversion_id.clone(),
            });
        };
        let attribution = report.entry.attribution.as_ref();
        let time = |ms: i64| {
            rfc3339(tz, ms).ok_or_else(|| SettleError::Time {
                index: e.index,
                ms,
                timezone: bounds.timezone.clone(),
            })
        };
        for (n, payee, p) in receivables {
            let (role, weight) = role_and_weight(attribution, payee);
            let row = StatementRow {
                period: bounds.name.clone(),
                entry_index: e.index,
                order_id: e.entry.order_id.clone(),
                conversion_id: e.entry.conversion_id.clone(),
                event: event_name(&e.entry.event),
                occurred_at: time(e.entry.occurred_at_ms)?,
                recorded_at: time(e.entry.recorded_at_ms)?,
                payer: e.entry.reporter.clone(),
                payee: payee.to_owned(),
                role,
                model: attribution.map(|a| a.model.clone()).unwrap_or_default(),
                weight,
                category: e.entry.category.clone(),
                currency: p.currency.clone(),
                exponent: e.entry.exponent,
                order_amount_minor: e.entry.amount_minor,
                commission_minor: attribution.map_or(0, |a| a.commission_minor),
                amount_minor: p.amount_minor,
                status: status.clone(),
                payable: if settles == Some(Place::This) {
                    "yes"
                } else {
                    why_not
                },
                leaf_hash: e.leaf_hash,
            };
            rows.push((e.index, n, row));
        }
    }
    Ok(())
}

/// The payee's roles (`direct`, `upstream`, joined with `+`) and `w/W`.
fn role_and_weight(attribution: Option<&Attribution>, payee: &str) -> (String, String) {
    let Some(a) = attribution else {
        return (String::new(), String::new());
    };
    let (mut direct, mut upstream) = (false, false);
    let (mut w, mut total) = (0u128, 0u128);
    for t in &a.touches {
        total += u128::from(t.weight);
        let mut has = false;
        for s in t.shares.iter().filter(|s| s.partner == payee) {
            has = true;
            match s.role.as_str() {
                "direct" => direct = true,
                "upstream" => upstream = true,
                _ => {}
            }
        }
        if has {
            w += u128::from(t.weight);
        }
    }
    let role = match (direct, upstream) {
        (true, true) => "direct+upstream",
        (true, false) => "direct",
        (false, true) => "upstream",
        (false, false) => "",
    };
    (role.to_owned(), format!("{w}/{total}"))
}

/// RFC 3339 with milliseconds in `tz`, e.g. `2026-11-03T14:05:00.123+08:00`.
pub fn rfc3339(tz: &jiff::tz::TimeZone, ms: i64) -> Option<String> {
    let t = jiff::Timestamp::from_millisecond(ms).ok()?;
    let z = t.to_zoned(tz.clone());
    Some(format!(
        "{}.{:03}{}",
        z.strftime("%Y-%m-%dT%H:%M:%S"),
        ms.rem_euclid(1000),
        z.strftime("%:z")
    ))
}

/// `minor` with `exponent` decimals: `-5`, 2 → `-0.05`.
pub fn format_minor(minor: i128, exponent: u8) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u128.pow(u32::from(exponent));
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = usize::from(exponent)
    )
}

/// `statement.csv`: header and rows, RFC 4180 with CRLF.
pub fn statement_csv(rows: &[StatementRow]) -> String {
    let mut out = String::new();
    csv_line(&mut out, STATEMENT_HEADER.iter().copied());
    for r in rows {
        let fields = [
            r.period.clone(),
            r.entry_index.to_string(),
            r.order_id.clone(),
            r.conversion_id.clone(),
            r.event.to_owned(),
            r.occurred_at.clone(),
            r.recorded_at.clone(),
            r.payer.clone(),
            r.payee.clone(),
            r.role.clone(),
            r.model.clone(),
            r.weight.clone(),
            r.category.clone(),
            r.currency.clone(),
            r.exponent.to_string(),
            r.order_amount_minor.to_string(),
            r.commission_minor.to_string(),
            r.amount_minor.to_string(),
            format_minor(i128::from(r.amount_minor), r.exponent),
            r.status.clone(),
            r.payable.to_owned(),
            hex(&r.leaf_hash),
        ];
        csv_line(&mut out, fields.iter().map(String::as_str));
    }
    out
}

// === settlement ===

/// One row of `settlement.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    pub period: String,
    /// `pair` or `total`.
    pub kind: &'static str,
    pub partner: String,
    /// Empty on `total` rows.
    pub counterparty: String,
    pub currency: String,
    pub exponent: u8,
    /// What `partner` owes `counterparty` (or everyone, on a total row).
    pub owes_minor: i128,
    pub owed_minor: i128,
    pub conversions: u64,
}

impl SettlementRow {
    pub fn net_minor(&self) -> i128 {
        self.owed_minor - self.owes_minor
    }
}

pub const SETTLEMENT_HEADER: &[&str] = &[
    "period",
    "kind",
    "partner",
    "counterparty",
    "currency",
    "exponent",
    "owes_minor",
    "owed_minor",
    "net_minor",
    "owes",
    "owed",
    "net",
    "conversions",
];

#[derive(Default)]
struct Sums<'a> {
    exponent: u8,
    owes: i128,
    owed: i128,
    conversions: BTreeSet<&'a str>,
}

/// The net matrix of the payable rows: mirrored pair rows, then a total per
/// partner and currency. With `partner`, only that partner's rows.
pub fn settlement(
    period: &str,
    rows: &[StatementRow],
    partner: Option<&str>,
) -> Vec<SettlementRow> {
    // (partner, counterparty, currency); counterparty "" is the total.
    let mut sums: BTreeMap<(&str, &str, &str), Sums<'_>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.is_payable()) {
        let x = i128::from(r.amount_minor);
        for (who, other, owes, owed) in [(&r.payer, &r.payee, x, 0), (&r.payee, &r.payer, 0, x)] {
            for key in [
                (who.as_str(), other.as_str(), r.currency.as_str()),
                (who.as_str(), "", r.currency.as_str()),
            ] {
                let s = sums.entry(key).or_default();
                s.exponent = r.exponent;
                s.owes += owes;
                s.owed += owed;
                s.conversions.insert(&r.conversion_id);
            }
        }
    }
    let row = |((p, c, cur), s): (&(&str, &str, &str), &Sums<'_>), kind| SettlementRow {
        period: period.to_owned(),
        kind,
        partner: (*p).to_owned(),
        counterparty: (*c).to_owned(),
        currency: (*cur).to_owned(),
        exponent: s.exponent,
        owes_minor: s.owes,
        owed_minor: s.owed,
        conversions: s.conversions.len() as u64,
    };
    let keep = |p: &str| partner.is_none_or(|want| want == p);
    let pairs = sums
        .iter()
        .filter(|((p, c, _), _)| !c.is_empty() && keep(p))
        .map(|kv| row(kv, "pair"));
    let totals = sums
        .iter()
        .filter(|((p, c, _), _)| c.is_empty() && keep(p))
        .map(|kv| row(kv, "total"));
    pairs.chain(totals).collect()
}

/// `settlement.csv`: header and rows, RFC 4180 with CRLF.
pub fn settlement_csv(rows: &[SettlementRow]) -> String {
    let mut out = String::new();
    csv_line(&mut out, SETTLEMENT_HEADER.iter().copied());
    for r in rows {
        let fields = [
            r.period.clone(),
            r.kind.to_owned(),
            r.partner.clone(),
            r.counterparty.clone(),
            r.currency.clone(),
            r.exponent.to_string(),
            r.owes_minor.to_string(),
            r.owed_minor.to_string(),
            r.net_minor().to_string(),
            format_minor(r.owes_minor, r.exponent),
            format_minor(r.owed_minor, r.exponent),
            format_minor(r.net_minor(), r.exponent),
            r.conversions.to_string(),
        ];
        csv_line(&mut out, fields.iter().map(String::as_str));
    }
    out
}

/// The settlement matrix as a fixed-width text table for people (the demo
/// prints it): one line per row, amounts formatted, totals after pairs.
pub fn settlement_table(rows: &[SettlementRow]) -> String {
    let head = [
        "partner",
        "counterparty",
        "currency",
        "owes",
        "owed",
        "net",
        "conversions",
    ];
    let body: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.partner.clone(),
                if r.kind == "total" {
                    "(total)".to_owned()
                } else {
                    r.counterparty.clone()
                },
                r.currency.clone(),
                format_minor(r.owes_minor, r.exponent),
                format_minor(r.owed_minor, r.exponent),
                format_minor(r.net_minor(), r.exponent),
                r.conversions.to_string(),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for line in &body {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut put = |cells: &[&str]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            // Text columns left-aligned, numbers right-aligned.
            if i < 3 {
                let _ = write!(out, "{sep}{cell:<w$}");
            } else {
                let _ = write!(out, "{sep}{cell:>w$}");
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    put(&head);
    for line in &body {
        let cells: Vec<&str> = line.iter().map(String::as_str).collect();
        put(&cells);
    }
    if rows.is_empty() {
        out.push_str("(nothing payable in this period)\n");
    }
    out
}

// === CSV ===

/// Appends one RFC 4180 record: fields quoted only when they hold `,`, `"`,
/// CR or LF, quotes doubled, CRLF at the end.
fn csv_line<'a>(out: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests;
