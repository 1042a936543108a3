//! Exports from SQLite and from PostgreSQL (with a test server) of the same
//! log are the same files, byte for byte, and verify offline.

use std::{path::Path, sync::Arc, time::Duration};

use crossflow_api::clock::{OffsetClock, SharedClock};
use crossflow_store::{Database, Sqlite, ledger::LedgerStore, ledger::sequence};
use serde_json::json;

use super::*;
use crate::{Integrator, Signer, verify_export};

const ORIGIN: &str = "crossflow.test/ledger";
const TZ: &str = "Asia/Shanghai";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-10-01T00:00+08:00 and 2026-11-01T00:00+08:00.
const OCT_START: i64 = 1_790_784_000_000;
const NOV_START: i64 = 1_793_462_400_000;

#[test]
fn view_names_round_trip() {
    for v in [View::Federation, View::Partner("alpha".into())] {
        assert_eq!(View::parse(&v.name()), Some(v));
    }
    assert_eq!(View::parse("partner:"), None);
    assert_eq!(View::parse("everyone"), None);
}

fn signer() -> Signer {
    Signer::from_seed("crossflow-ledger", &[7; 32]).unwrap()
}

/// Conversion `n` reported by gamma, paying alpha (and beta for odd `n`),
/// at `at_ms`; even ones are confirmed, payable a day later.
fn entries(n: u64, at_ms: i64) -> Vec<(Vec<u8>, Vec<&'static str>)> {
    let id = format!("{n:032x}");
    let mut payouts = vec![("alpha", 300)];
    if n % 2 == 1 {
        payouts.push(("beta", 200));
    }
    let total: i64 = payouts.iter().map(|p| p.1).sum();
    let mut postings = vec![json!({"account": "partner:gamma:payable",
        "amount_minor": -total, "currency": "CNY"})];
    for (who, a) in &payouts {
        postings.push(json!({"account": format!("partner:{who}:receivable"),
            "amount_minor": a, "currency": "CNY"}));
    }
    let shares: Vec<_> = payouts
        .iter()
        .map(|(p, a)| json!({"partner": p, "role": "direct", "amount_minor": a}))
        .collect();
    let parties: Vec<&str> = std::iter::once("gamma")
        .chain(payouts.iter().map(|p| p.0))
        .collect();
    let base = json!({"v": 1, "type": "conversion", "salt": format!("{n:016x}"),
        "conversion_id": id, "reporter": "gamma", "order_id": format!("o-{n}"),
        "amount_minor": 10_000, "currency": "CNY", "exponent": 2, "category": "toys",
        "occurred_at_ms": at_ms});
    let mut report = base.clone();
    report["event"] = json!("reported");
    report["status"] = json!("pending");
    report["recorded_at_ms"] = json!(at_ms);
    report["attribution"] = json!({"model": "last_touch", "commission_minor": total,
        "touches": [{"weight": 1, "shares": shares}]});
    report["postings"] = json!(postings);
    let mut out = vec![(serde_json::to_vec(&report).unwrap(), parties.clone())];
    if n.is_multiple_of(2) {
        let mut confirm = base;
        confirm["event"] = json!("confirmed");
        confirm["status"] = json!("confirmed");
        confirm["recorded_at_ms"] = json!(at_ms + HOUR);
        confirm["payable_at_ms"] = json!(at_ms + DAY);
        confirm["postings"] = json!([]);
        out.push((serde_json::to_vec(&confirm).unwrap(), parties));
    }
    out
}

/// Sequences `entries` and integrates them, signing at the clock's time.
async fn log<D: Database + LedgerStore + Clone>(
    db: &D,
    integ: &mut Integrator<D>,
    entries: Vec<(Vec<u8>, Vec<&'static str>)>,
    at_ms: i64,
) {
    db.write(move |c| {
        for (bytes, parties) in &entries {
            sequence(c, bytes, parties, at_ms)?;
        }
        Ok(())
    })
    .await
    .unwrap();
    while integ.step(Duration::ZERO).await.unwrap() > 0 {}
}

/// Lives through October (10 conversions) into November (4 more), closes
/// October on `db` and exports it for the federation and for beta into
/// `out/federation` and `out/beta`.
async fn october<D: Database + LedgerStore + Clone>(db: D, out: &Path) {
    let clock = Arc::new(OffsetClock::starting_at(OCT_START + DAY));
    let mut integ = Integrator::open_with_clock(
        db.clone(),
        signer(),
        ORIGIN.into(),
        SharedClock(clock.clone()),
    )
    .await
    .unwrap();
    for n in 0..10 {
        let at = OCT_START + (n as i64 + 2) * DAY;
        clock.jump_to(at);
        log(&db, &mut integ, entries(n, at), at).await;
    }
    clock.jump_to(NOV_START + HOUR);
    for n in 10..14 {
        log(
            &db,
            &mut integ,
            entries(n, NOV_START + HOUR),
            NOV_START + HOUR,
        )
        .await;
    }
    let close = db
        .write(|c| {
            period::close(c, "2026-10", TZ, NOV_START + 2 * HOUR)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!((close.previous_anchor_size, close.anchor_size), (0, 15));
    for (view, dir) in [
        (View::Federation, out.join("federation")),
        (View::Partner("beta".into()), out.join("beta")),
    ] {
        let summary = db
            .read(move |c| {
                export(c, "2026-10", view, &dir).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .await
            .unwrap();
        assert!(summary.entries > 0, "{}", summary.summary());
    }
    db.close();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn exports_are_the_same_bytes_on_sqlite_and_postgres() {
    let tmp = tempfile::tempdir().unwrap();
    let lite = tmp.path().join("sqlite");
    october(Sqlite::open(&tmp.path().join("data")).unwrap(), &lite).await;
    let verifier = signer().verifier();
    for view in ["federation", "beta"] {
        let verdict = verify_export::verify(&lite.join(view), &verifier).unwrap();
        assert!(verdict.starts_with("export OK"), "{verdict}");
    }
    let Some(pg) = crossflow_store::testing::postgres("export_same_bytes") else {
        return;
    };
    let on_pg = tmp.path().join("postgres");
    october(pg, &on_pg).await;
    for view in ["federation", "beta"] {
        let (a, b) = (files(&lite.join(view)), files(&on_pg.join(view)));
        assert_eq!(a.len(), 8);
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert_eq!(name, other);
            assert!(
                x == y,
                "{view}/{name} differs between SQLite and PostgreSQL"
            );
        }
    }
}
