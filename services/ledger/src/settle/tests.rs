use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;

const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00+08:00 and 2026-12-01T00:00+08:00.
const START: i64 = 1_793_462_400_000;
const END: i64 = 1_796_054_400_000;

fn bounds(prev: u64, anchor: u64) -> PeriodBounds {
    PeriodBounds {
        name: "2026-11".into(),
        timezone: "Asia/Shanghai".into(),
        start_ms: START,
        end_ms: END,
        previous_anchor_size: prev,
        anchor_size: anchor,
    }
}

/// Builds entries like the gateway does: a report paying `payouts`, then
/// updates, each a JSON object with the fields settlement reads.
struct Log {
    entries: Vec<LoggedEntry>,
}

fn postings(reporter: &str, payouts: &[(&str, i64)], sign: i64) -> serde_json::Value {
    let total: i64 = payouts.iter().map(|p| p.1).sum();
    if total == 0 {
        return json!([]);
    }
    let mut v = vec![json!({"account": format!("partner:{reporter}:payable"),
        "amount_minor": -sign * total, "currency": "CNY"})];
    for (who, a) in payouts.iter().filter(|p| p.1 != 0) {
        v.push(json!({"account": format!("partner:{who}:receivable"),
            "amount_minor": sign * a, "currency": "CNY"}));
    }
    json!(v)
}

impl Log {
    fn push(&mut self, mut v: serde_json::Value, defaults: serde_json::Value) -> u64 {
        let index = self.entries.len() as u64;
        for (k, val) in defaults.as_object().unwrap() {
            v.as_object_mut()
                .unwrap()
                .entry(k.clone())
                .or_insert(val.clone());
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        self.entries
            .push(LoggedEntry::parse(index, &bytes).unwrap());
        index
    }

    fn report(&mut self, id: &str, reporter: &str, payouts: &[(&str, i64)], held: bool) -> u64 {
        let shares: Vec<_> = payouts
            .iter()
            .map(|(p, a)| json!({"partner": p, "role": "direct", "amount_minor": a}))
            .collect();
        let mut v = json!({"v": 1, "type": "conversion", "event": "reported",
            "conversion_id": id, "reporter": reporter, "order_id": format!("o-{id}"),
            "amount_minor": 10_000, "currency": "CNY", "exponent": 2, "category": "toys",
            "occurred_at_ms": START + DAY, "recorded_at_ms": START + DAY, "status": "pending",
            "attribution": {"model": "linear", "commission_minor": payouts.iter().map(|p| p.1).sum::<i64>(),
                "touches": [{"weight": 1, "shares": shares}]},
            "postings": if held { json!([]) } else { postings(reporter, payouts, 1) }});
        if held {
            v["hold"] = json!({"reason": "AMOUNT_OVER_CAP"});
        }
        self.push(v, json!({}))
    }

    fn update(
        &mut self,
        id: &str,
        reporter: &str,
        event: &str,
        status: &str,
        extra: serde_json::Value,
    ) -> u64 {
        let v = json!({"v": 1, "type": "conversion", "event": event, "conversion_id": id,
            "reporter": reporter, "order_id": format!("o-{id}"), "amount_minor": 10_000,
            "currency": "CNY", "exponent": 2, "category": "toys",
            "occurred_at_ms": START + DAY, "recorded_at_ms": START + 2 * DAY, "status": status});
        self.push(v, extra)
    }
}

fn log() -> Log {
    Log {
        entries: Vec::new(),
    }
}

fn payable_of(rows: &[StatementRow]) -> Vec<(u64, &str, i64, &str)> {
    rows.iter()
        .map(|r| (r.entry_index, r.payee.as_str(), r.amount_minor, r.payable))
        .collect()
}

#[test]
fn lock_hold_release_and_late_refunds_settle_per_the_rules() {
    let mut l = log();
    // 0-1 before the period: a is confirmed with a lock ending inside it.
    l.report("a", "r", &[("x", 100)], false);
    l.update(
        "a",
        "r",
        "confirmed",
        "confirmed",
        json!({"payable_at_ms": START + 3 * DAY, "postings": []}),
    );
    // 2: b reported in the period, confirmed with a lock past its end.
    l.report("b", "r", &[("x", 50), ("y", 25)], false);
    l.update(
        "b",
        "r",
        "confirmed",
        "confirmed",
        json!({"payable_at_ms": END + DAY, "postings": []}),
    );
    // 4: c held, confirmed, never released.
    l.report("c", "r", &[("y", 70)], true);
    l.update(
        "c",
        "r",
        "confirmed",
        "confirmed",
        json!({"payable_at_ms": START, "postings": []}),
    );
    // 6: d pending, then cancelled.
    l.report("d", "r", &[("x", 40)], false);
    l.update(
        "d",
        "r",
        "cancelled",
        "cancelled",
        json!({"postings": postings("r", &[("x", 40)], -1)}),
    );
    // 8: e held, released, confirmed: pays now.
    l.report("e", "r", &[("y", 30)], true);
    l.update(
        "e",
        "r",
        "released",
        "pending",
        json!({"postings": postings("r", &[("y", 30)], 1)}),
    );
    l.update(
        "e",
        "r",
        "confirmed",
        "confirmed",
        json!({"payable_at_ms": START, "postings": []}),
    );
    // 11: a refund of a, paid in this period, reverses within it.
    l.update(
        "a",
        "r",
        "refunded",
        "confirmed",
        json!({"postings": postings("r", &[("x", 10)], -1)}),
    );

    let rows = statement(&bounds(2, 12), &l.entries).unwrap();
    assert_eq!(
        payable_of(&rows),
        vec![
            (0, "x", 100, "yes"),
            (2, "x", 50, "locked"),
            (2, "y", 25, "locked"),
            (6, "x", 40, "cancelled"),
            (7, "x", -40, "cancelled"),
            (9, "y", 30, "yes"),
            (11, "x", -10, "yes"),
        ]
    );
    assert_eq!(rows[0].status, "confirmed");
    assert_eq!(rows[0].role, "direct");
    assert_eq!(rows[0].weight, "1/1");
    assert_eq!(rows[0].occurred_at, "2026-11-02T00:00:00.000+08:00");
    assert_eq!(rows[1].event, "conversion");

    let s = settlement("2026-11", &rows, None);
    let find = |p: &str, c: &str| {
        s.iter()
            .find(|r| r.partner == p && r.counterparty == c)
            .unwrap()
    };
    assert_eq!(find("r", "x").owes_minor, 90);
    assert_eq!(find("x", "r").owed_minor, 90);
    assert_eq!(find("x", "r").net_minor(), 90);
    assert_eq!(find("r", "x").conversions, 1);
    assert_eq!(find("r", "").owes_minor, 120);
    assert_eq!(find("r", "").conversions, 2);
    assert_eq!(settlement("2026-11", &rows, Some("y")).len(), 2);

    // In the next period the lock of b has passed; a's entries stay in Nov.
    let mut dec = bounds(12, 12);
    dec.start_ms = END;
    dec.end_ms = END + 31 * DAY;
    let next = statement(&dec, &l.entries).unwrap();
    assert_eq!(
        payable_of(&next),
        vec![(2, "x", 50, "yes"), (2, "y", 25, "yes")]
    );
}

#[test]
fn held_without_release_and_missing_report_are_reported() {
    let mut l = log();
    l.report("c", "r", &[("y", 70)], true);
    let rows = statement(&bounds(0, 1), &l.entries).unwrap();
    // A held report posts nothing, so it has no rows.
    assert!(rows.is_empty());

    let mut l = log();
    l.update(
        "z",
        "r",
        "refunded",
        "pending",
        json!({"postings": postings("r", &[("x", 5)], -1)}),
    );
    assert_eq!(
        statement(&bounds(0, 1), &l.entries),
        Err(SettleError::NoReport {
            index: 0,
            conversion_id: "z".into()
        })
    );
    let mut l = log();
    l.report("a", "r", &[("x", 100)], false);
    l.update("a", "r", "confirmed", "confirmed", json!({"postings": []}));
    assert_eq!(
        statement(&bounds(0, 2), &l.entries),
        Err(SettleError::NoPayableAt { index: 1 })
    );
}

#[test]
fn postings_must_balance_and_name_partners() {
    let mut l = log();
    l.report("a", "r", &[("x", 100)], false);
    assert!(check_postings(&l.entries[0]).is_ok());
    let mut bad = l.entries[0].clone();
    bad.entry.postings[1].amount_minor = 99;
    assert!(matches!(
        check_postings(&bad),
        Err(SettleError::Unbalanced { sum: -1, .. })
    ));
    bad.entry.postings[1].account = "x:receivable".into();
    assert!(matches!(
        check_postings(&bad),
        Err(SettleError::Account { .. })
    ));
}

#[test]
fn decimals_csv_and_times() {
    assert_eq!(format_minor(-5, 2), "-0.05");
    assert_eq!(format_minor(12_345, 2), "123.45");
    assert_eq!(format_minor(7, 0), "7");
    assert_eq!(format_minor(-1_000, 3), "-1.000");
    assert_eq!(format_minor(0, 2), "0.00");
    let mut out = String::new();
    csv_line(&mut out, ["a", "b,c", "say \"hi\"", "x\ny"].into_iter());
    assert_eq!(out, "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"\r\n");
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    assert_eq!(
        rfc3339(&tz, START + 123).unwrap(),
        "2026-11-01T00:00:00.123+08:00"
    );
    let utc = jiff::tz::TimeZone::UTC;
    assert_eq!(rfc3339(&utc, -1).unwrap(), "1969-12-31T23:59:59.999+00:00");
}

#[test]
fn settlement_table_is_aligned() {
    let row = |p: &str, c: &str, kind, owes, owed| SettlementRow {
        period: "2026-11".into(),
        kind,
        partner: p.into(),
        counterparty: c.into(),
        currency: "CNY".into(),
        exponent: 2,
        owes_minor: owes,
        owed_minor: owed,
        conversions: 1,
    };
    let t = settlement_table(&[
        row("alpha", "beta", "pair", 0, 12_345),
        row("beta", "alpha", "pair", 12_345, 0),
        row("alpha", "", "total", 0, 12_345),
    ]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[3].starts_with("alpha    (total)"), "{t}");
    assert!(lines[2].contains("-123.45"), "{t}");
    assert!(settlement_table(&[]).contains("nothing payable"));
}

proptest! {
    /// Whatever the lifecycle, the settlement matrix is the statement's
    /// payable rows summed: pairs mirror, totals sum their pairs, and every
    /// currency nets to zero across partners.
    #[test]
    fn settlement_sums_statement_yes_rows(
        convs in prop::collection::vec(
            (0usize..3, prop::collection::vec((0usize..4, 0i64..500), 1..3), any::<bool>(), 0u8..5, any::<bool>()),
            1..12)
    ) {
        let partners = ["p0", "p1", "p2", "p3"];
        let mut l = log();
        let prev = 3;
        // Three filler entries before the period.
        for n in 0..3 {
            l.report(&format!("f{n}"), "p0", &[], false);
        }
        for (n, (reporter, payouts, held, lock_days, refund)) in convs.iter().enumerate() {
            let id = format!("c{n}");
            let reporter = partners[*reporter];
            let mut pay: BTreeMap<&str, i64> = BTreeMap::new();
            for (p, a) in payouts {
                if partners[*p] != reporter {
                    *pay.entry(partners[*p]).or_default() += a;
                }
            }
            let pay: Vec<(&str, i64)> = pay.into_iter().collect();
            l.report(&id, reporter, &pay, *held);
            if *held {
                l.update(&id, reporter, "released", "pending", json!({"postings": postings(reporter, &pay, 1)}));
            }
            let at = START + i64::from(*lock_days) * 8 * DAY;
            l.update(&id, reporter, "confirmed", "confirmed", json!({"payable_at_ms": at, "postings": []}));
            if *refund {
                let half: Vec<(&str, i64)> = pay.iter().map(|(p, a)| (*p, a / 2)).collect();
                l.update(&id, reporter, "refunded", "confirmed", json!({"postings": postings(reporter, &half, -1)}));
            }
        }
        let size = l.entries.len() as u64;
        let rows = statement(&bounds(prev, size), &l.entries).unwrap();
        let s = settlement("2026-11", &rows, None);
        let mut want: BTreeMap<(String, String), i128> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.is_payable()) {
            *want.entry((r.payer.clone(), r.payee.clone())).or_default() += i128::from(r.amount_minor);
        }
        let mut net_sum = 0i128;
        for r in &s {
            if r.kind == "pair" {
                let owes = want.get(&(r.partner.clone(), r.counterparty.clone())).copied().unwrap_or(0);
                let owed = want.get(&(r.counterparty.clone(), r.partner.clone())).copied().unwrap_or(0);
                prop_assert_eq!(r.owes_minor, owes);
                prop_assert_eq!(r.owed_minor, owed);
                let mirror = s.iter().find(|m| m.kind == "pair" && m.partner == r.counterparty && m.counterparty == r.partner);
                prop_assert!(mirror.is_some_and(|m| m.owes_minor == r.owed_minor && m.owed_minor == r.owes_minor && m.conversions == r.conversions));
            } else {
                let pairs: Vec<_> = s.iter().filter(|p| p.kind == "pair" && p.partner == r.partner).collect();
                prop_assert_eq!(r.owes_minor, pairs.iter().map(|p| p.owes_minor).sum::<i128>());
                prop_assert_eq!(r.owed_minor, pairs.iter().map(|p| p.owed_minor).sum::<i128>());
                net_sum += r.net_minor();
            }
        }
        prop_assert_eq!(net_sum, 0);
        // Each payable entry's rows are exactly its receivable postings.
        for e in &l.entries {
            let posted: i64 = e.entry.postings.iter().filter(|p| p.account.ends_with(":receivable")).map(|p| p.amount_minor).sum();
            let in_rows: i64 = rows.iter().filter(|r| r.entry_index == e.index).map(|r| r.amount_minor).sum();
            if rows.iter().any(|r| r.entry_index == e.index) {
                prop_assert_eq!(posted, in_rows);
            }
        }
        // Payable rows only in the period; every in-period entry with
        // receivables has rows.
        for e in l.entries.iter().filter(|e| e.index >= prev) {
            let has = e.entry.postings.iter().any(|p| p.account.ends_with(":receivable"));
            prop_assert_eq!(has, rows.iter().any(|r| r.entry_index == e.index));
        }
    }
}
