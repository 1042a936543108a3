//! Ledger entries: the double-entry postings every conversion entry carries
//! (`entry::postings`, `entry::check_balanced`) and an entry's bytes
//! (`Entry::to_bytes`), read back as JSON the way exports and verifiers read
//! them. Amounts range over what the service can produce: any share of an
//! order is at most `money::MAX_AMOUNT_MINOR`, and
//! all shares of one order together are too.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use crossflow_conversions::entry::{self, Entry, Posting};
use crossflow_conversions::money::MAX_AMOUNT_MINOR;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    reporter: String,
    currency: String,
    amounts: Vec<(String, i64)>,
    reverse: bool,
    raw: Vec<(String, i64, String)>,
    order_id: String,
    category: String,
    occurred_at_ms: i64,
    note: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    // Arbitrary postings, any amounts: balanced or refused, never a panic.
    let raw: Vec<Posting> = input
        .raw
        .iter()
        .map(|(a, m, c)| Posting {
            account: a.clone(),
            amount_minor: *m,
            currency: c.clone(),
        })
        .collect();
    let _ = entry::check_balanced(&raw);

    input.amounts.truncate(64);
    // At most 64 shares of one order, so they sum within the order's cap.
    for (_, a) in &mut input.amounts {
        *a %= MAX_AMOUNT_MINOR / 64 + 1;
    }
    let sign = if input.reverse { -1 } else { 1 };
    let postings = entry::postings(&input.reporter, &input.currency, &input.amounts, sign);
    // postings() always balances.
    assert!(entry::check_balanced(&postings).is_ok(), "{postings:?}");

    let e = Entry {
        v: entry::VERSION,
        kind: "conversion",
        event: "released",
        salt: "AAAAAAAAAAAAAAAAAAAAAA==".into(),
        conversion_id: &input.order_id,
        reporter: &input.reporter,
        order_id: &input.order_id,
        amount_minor: input.occurred_at_ms,
        currency: &input.currency,
        exponent: 2,
        category: &input.category,
        occurred_at_ms: input.occurred_at_ms,
        recorded_at_ms: input.occurred_at_ms,
        status: "confirmed",
        hold: None,
        attribution: None,
        report_index: Some(0),
        refund_minor: None,
        refunded_total_minor: None,
        payable_at_ms: None,
        released_by: Some("cli"),
        note: input.note.as_deref(),
        postings: postings.clone(),
    };
    let bytes = e
        .to_bytes()
        .unwrap_or_else(|err| panic!("balanced entry refused: {err}"));
    // One line of JSON that reads back to what was written.
    assert!(!bytes.contains(&b'\n'));
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("entry is not JSON: {err}"));
    assert_eq!(v["order_id"].as_str(), Some(input.order_id.as_str()));
    assert_eq!(v["note"].as_str(), input.note.as_deref());
    assert_eq!(v["postings"].as_array().map(Vec::len), Some(postings.len()));
});
