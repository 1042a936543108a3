//! Settlement's entry reader (services/ledger/src/settle.rs): the bytes of
//! `entries.jsonl` lines through `LoggedEntry::parse`, `check_postings`,
//! then `statement` and `settlement` and their CSV renderings, for
//! arbitrary period bounds. Whatever the lines hold: a result or a precise
//! error, never a panic (an export and an offline verifier both run this).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use crossflow_ledger::settle::{self, LoggedEntry, PeriodBounds};
use libfuzzer_sys::fuzz_target;

const ZONES: [&str; 4] = ["Asia/Shanghai", "UTC", "America/New_York", "Not/AZone"];

#[derive(Debug, Arbitrary)]
struct Bounds {
    zone: u8,
    start_ms: i64,
    len_ms: u32,
    previous_anchor_size: u8,
    anchor_size: u8,
    partner: Option<u8>,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(b) = Bounds::arbitrary(&mut u) else {
        return;
    };
    let lines = u.take_rest();
    let mut entries = Vec::new();
    for (i, line) in lines.split(|&c| c == b'\n').take(64).enumerate() {
        if let Ok(e) = LoggedEntry::parse(i as u64, line)
            && settle::check_postings(&e).is_ok()
        {
            entries.push(e);
        }
    }
    let bounds = PeriodBounds {
        name: "2026-11".into(),
        timezone: ZONES[usize::from(b.zone) % ZONES.len()].into(),
        start_ms: b.start_ms,
        end_ms: b.start_ms.saturating_add(i64::from(b.len_ms)),
        previous_anchor_size: u64::from(b.previous_anchor_size.min(b.anchor_size)),
        anchor_size: u64::from(b.anchor_size),
    };
    let Ok(rows) = settle::statement(&bounds, &entries) else {
        return;
    };
    let _ = settle::statement_csv(&rows);
    let partner = b
        .partner
        .and_then(|p| rows.get(usize::from(p)).map(|r| r.payer.clone()));
    let net = settle::settlement(&bounds.name, &rows, partner.as_deref());
    let _ = settle::settlement_csv(&net);
    let _ = settle::settlement_table(&net);
});
