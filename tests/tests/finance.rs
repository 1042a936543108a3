//! End-to-end: settlement periods, `crossflow ledger close`, `export` and
//! `verify` on a real gateway.
//!
//! Time: the gateway runs on an `OffsetClock`, so entries are recorded in
//! October and then November 2026 (Asia/Shanghai). Checkpoints are stamped
//! by the log itself; the test stamps those covering October's entries as
//! signed on 31 October through the store (the only thing it writes there),
//! so October can be closed with its own anchor. October is closed with the
//! CLI while the gateway serves; November, which has not ended on the wall
//! clock, is closed through `crossflow_ledger::period::close` with a
//! `now_ms` of 2 December.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crossflow_api::clock::{Clock, OffsetClock};
use crossflow_ledger::{Signer, Verifier, note::Checkpoint, verify_export};
use crossflow_proto::v1::{
    ConversionStatus, GetCheckpointRequest, GetLogKeyRequest, ReleaseConversionRequest,
    ReportConversionRequest, UpdateConversionRequest,
    conversion_service_client::ConversionServiceClient, ledger_service_client::LedgerServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, GAMMA, TestGateway, create_req, redeem_req, run_cli, workspace_dir,
};
use tonic::transport::Channel;

const OPERATOR: &str = "ops";
const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00:00+08:00.
const NOV: i64 = 1_793_462_400_000;
/// 2026-12-01T00:00:00+08:00.
const DEC: i64 = 1_796_054_400_000;

/// alpha <-> beta pays as soon as confirmed; beta <-> gamma locks 30 days.
/// JPY orders over 100000 are held.
const BODY: &str = r#"
[[partners]]
id = "alpha"
[[partners]]
id = "beta"
[[partners]]
id = "gamma"

[[agreements]]
id = "alpha-beta"
between = ["alpha", "beta"]
lock_period_days = 0
[[agreements.flows]]
from = "alpha"
to = "beta"
commission = { default_bps = 500 }
[[agreements.flows]]
from = "beta"
to = "alpha"
commission = { default_bps = 400 }

[[agreements]]
id = "beta-gamma"
between = ["beta", "gamma"]
lock_period_days = 30
[[agreements.flows]]
from = "gamma"
to = "beta"
commission = { default_bps = 300 }
[[agreements.flows]]
from = "beta"
to = "gamma"
commission = { default_bps = 300 }

[fraud]
max_amount_minor_by_currency = { JPY = 100000 }

[ledger]
checkpoint_interval_ms = 50
"#;

struct Fed {
    gw: TestGateway,
    clock: Arc<OffsetClock>,
    beta: ConversionServiceClient<Channel>,
    last: u64,
}

impl Fed {
    /// A viewer of `from` (as `from_subject`) lands at beta as `subject`.
    async fn land(&self, from: &str, subject: &str) {
        let made = self
            .gw
            .referrals(from)
            .await
            .create_referral(create_req(&format!("{subject}-origin"), BETA, "room-1"))
            .await
            .unwrap()
            .into_inner();
        self.gw
            .referrals(BETA)
            .await
            .redeem_referral(redeem_req(&made.token, subject))
            .await
            .unwrap();
    }

    async fn report(&mut self, order: &str, subject: &str, amount: i64, currency: &str) {
        let ms = self.clock.now_ms();
        let r = self
            .beta
            .report_conversion(ReportConversionRequest {
                order_id: order.into(),
                subject: subject.into(),
                amount_minor: amount,
                currency: currency.into(),
                category: "toys".into(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: ms / 1000,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                }),
                referral_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        self.last = r.entry.unwrap().index;
    }

    async fn update(&mut self, order: &str, status: ConversionStatus, refund: i64) {
        let r = self
            .beta
            .update_conversion(UpdateConversionRequest {
                order_id: order.into(),
                status: status as i32,
                refund_minor: refund,
                request_id: format!("{order}-{refund}"),
            })
            .await
            .unwrap()
            .into_inner();
        self.last = r.entry.unwrap().index;
    }

    /// Waits until a checkpoint covers every entry so far; its size.
    async fn checkpointed(&self) -> u64 {
        let mut ledger = LedgerServiceClient::new(self.gw.channel(ALPHA).await);
        for _ in 0..400 {
            let c = ledger
                .get_checkpoint(GetCheckpointRequest {})
                .await
                .unwrap()
                .into_inner()
                .checkpoint
                .unwrap();
            if c.size > self.last {
                return c.size;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint covered entry {} in 20 s", self.last);
    }
}

fn db(gw: &TestGateway) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(gw.data_dir().join("crossflow.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// CSV rows (no field of these exports needs quoting) as maps by header.
fn csv(p: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = read(p);
    assert!(text.ends_with("\r\n"), "{}: CRLF line ends", p.display());
    let mut lines = text.split_terminator("\r\n");
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_owned))
                .collect()
        })
        .collect()
}

/// (order, payee, amount, payable) of every statement row.
fn statement(dir: &Path) -> Vec<(String, String, i64, String)> {
    csv(&dir.join("statement.csv"))
        .into_iter()
        .map(|r| {
            (
                r["order_id"].clone(),
                r["payee"].clone(),
                r["amount_minor"].parse().unwrap(),
                r["payable"].clone(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Copies the export, changes one file with `edit`, verifies; the failure.
fn tampered(
    export: &Path,
    verifier: &Verifier,
    file: &str,
    edit: impl FnOnce(String) -> String,
) -> verify_export::VerifyFailure {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(export, dir.path());
    let p = dir.path().join(file);
    std::fs::write(&p, edit(read(&p))).unwrap();
    verify_export::verify(dir.path(), verifier).unwrap_err()
}

fn export_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("finance-export")
}

#[tokio::test]
async fn close_export_verify_and_catch_tampering() {
    let clock = Arc::new(OffsetClock::starting_at(NOV - 11 * DAY - DAY / 2)); // Oct 20, 12:00
    let gw = TestGateway::builder()
        .operator(OPERATOR)
        .body(BODY)
        .clock(clock.clone())
        .start()
        .await;
    let beta = ConversionServiceClient::new(gw.channel(BETA).await);
    let mut fed = Fed {
        gw,
        clock,
        beta,
        last: 0,
    };

    // === October ===
    fed.land(ALPHA, "b-1").await;
    fed.land(GAMMA, "b-2").await;
    fed.report("o1", "b-1", 10_000, "CNY").await; // alpha 500
    fed.update("o1", ConversionStatus::Confirmed, 0).await; // payable now
    fed.report("o2", "b-2", 10_000, "CNY").await; // gamma 300
    fed.update("o2", ConversionStatus::Confirmed, 0).await; // payable Nov 19
    fed.report("o3", "b-1", 200_000, "JPY").await; // held: alpha 10000 JPY
    let october = fed.checkpointed().await;
    // Stamp October's checkpoints as signed on 31 October, 23:00.
    db(&fed.gw)
        .execute(
            "UPDATE ledger_checkpoints SET signed_at_ms = ?1 WHERE size <= ?2",
            rusqlite::params![NOV - 3_600_000, october as i64],
        )
        .unwrap();

    // === November ===
    fed.clock.jump_to(NOV + 9 * DAY + DAY / 2); // Nov 10, 12:00
    fed.land(ALPHA, "b-3").await;
    fed.land(GAMMA, "b-4").await;
    fed.update("o1", ConversionStatus::Refunded, 2_000).await; // alpha -100
    let ops = ConversionServiceClient::new(fed.gw.channel(&format!("operator-{OPERATOR}")).await);
    let o3 = conversion_id(&mut fed, "o3").await;
    let rel = ops
        .clone()
        .release_conversion(ReleaseConversionRequest {
            conversion_id: o3,
            note: "checked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    fed.last = rel.entry.unwrap().index;
    fed.update("o3", ConversionStatus::Confirmed, 0).await;
    fed.report("o4", "b-3", 20_000, "CNY").await; // alpha 1000
    fed.update("o4", ConversionStatus::Confirmed, 0).await;
    fed.report("o5", "b-4", 10_000, "CNY").await; // gamma 300, locked to Dec 10
    fed.update("o5", ConversionStatus::Confirmed, 0).await;
    fed.report("o6", "b-3", 4_000, "CNY").await;
    fed.update("o6", ConversionStatus::Cancelled, 0).await;
    fed.report("o7", "b-3", 6_000, "CNY").await; // stays pending
    let november = fed.checkpointed().await;
    assert!(november > october);

    let config = fed.gw.dir().join("crossflow.toml");
    let config = config.to_str().unwrap();
    let vkey = LedgerServiceClient::new(fed.gw.channel(ALPHA).await)
        .get_log_key(GetLogKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .verifier_key;
    let verifier = Verifier::parse(&vkey).unwrap();
    let work = tempfile::tempdir().unwrap();
    let vkey_file = work.path().join("ledger.vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).unwrap();
    let vkey_file = vkey_file.to_str().unwrap();

    // === close ===
    // While the gateway serves (the store is locked): the CLI records it.
    let far = run_cli(&["ledger", "close", "--period", "2099-01", "--config", config]);
    assert!(!far.status.success());
    assert!(far.stderr.contains("has not ended"), "{}", far.stderr);
    let out = run_cli(&["ledger", "close", "--period", "2026-10", "--config", config]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("period 2026-10 closed: entries [0, {october})")),
        "{}",
        out.stdout
    );
    let again = run_cli(&["ledger", "close", "--period", "2026-10", "--config", config]);
    assert!(
        again.stdout.contains("was already closed"),
        "{}",
        again.stdout
    );
    let skip = run_cli(&["ledger", "close", "--period", "2026-09", "--config", config]);
    assert!(
        skip.stderr.contains("the next is 2026-11"),
        "{}",
        skip.stderr
    );
    // November ends on the test's clock, not the wall clock's.
    let nov = crossflow_ledger::period::close(&db(&fed.gw), "2026-11", "Asia/Shanghai", DEC + DAY)
        .unwrap();
    assert_eq!(
        (nov.previous_anchor_size, nov.anchor_size),
        (october, november)
    );

    // === export, while the gateway serves ===
    let root = export_root();
    let _ = std::fs::remove_dir_all(&root);
    let fed_dir = root.join("federation");
    let gamma_dir = root.join("partner-gamma");
    let oct_dir = work.path().join("october");
    for (period, partner, dir) in [
        ("2026-11", None, &fed_dir),
        ("2026-11", Some(GAMMA), &gamma_dir),
        ("2026-10", None, &oct_dir),
    ] {
        let mut args = vec!["ledger", "export", "--period", period, "--config", config];
        args.extend(["--out", dir.to_str().unwrap()]);
        if let Some(p) = partner {
            args.extend(["--partner", p]);
        }
        let out = run_cli(&args);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(out.stdout.contains("exported period"), "{}", out.stdout);
        let v = run_cli(&[
            "ledger",
            "verify",
            dir.to_str().unwrap(),
            "--vkey",
            vkey_file,
        ]);
        assert!(v.status.success(), "{}{}", v.stdout, v.stderr);
        assert!(v.stdout.starts_with("export OK: "), "{}", v.stdout);
    }
    std::fs::write(root.join("ledger.vkey"), format!("{vkey}\n")).unwrap();

    // October: o1 paid at once, o2 locked into November, o3 held (no rows).
    let s = |o: &str, p: &str, a: i64, y: &str| (o.to_owned(), p.to_owned(), a, y.to_owned());
    assert_eq!(
        statement(&oct_dir),
        vec![s("o1", ALPHA, 500, "yes"), s("o2", GAMMA, 300, "locked")]
    );
    // November: o2's October report settles now; a late refund reverses.
    assert_eq!(
        statement(&fed_dir),
        vec![
            s("o2", GAMMA, 300, "yes"),
            s("o1", ALPHA, -100, "yes"),
            s("o3", ALPHA, 10_000, "yes"),
            s("o4", ALPHA, 1_000, "yes"),
            s("o5", GAMMA, 300, "locked"),
            s("o6", ALPHA, 200, "cancelled"),
            s("o6", ALPHA, -200, "cancelled"),
            s("o7", ALPHA, 300, "pending"),
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&fed_dir.join("export.json"))).unwrap();
    assert_eq!(manifest["period_start"], "2026-11-01T00:00:00.000+08:00");
    assert_eq!(manifest["previous_anchor_size"], october);
    let settlement = read(&fed_dir.join("settlement.csv"));
    for line in [
        "2026-11,pair,alpha,beta,CNY,2,0,900,900,0.00,9.00,9.00,2\r\n",
        "2026-11,pair,beta,alpha,CNY,2,900,0,-900,9.00,0.00,-9.00,2\r\n",
        "2026-11,pair,beta,alpha,JPY,0,10000,0,-10000,10000,0,-10000,1\r\n",
        "2026-11,total,beta,,CNY,2,1200,0,-1200,12.00,0.00,-12.00,3\r\n",
        "2026-11,total,gamma,,CNY,2,0,300,300,0.00,3.00,3.00,1\r\n",
    ] {
        assert!(settlement.contains(line), "{line:?} in\n{settlement}");
    }
    // gamma sees only its conversions, and only its own settlement rows.
    assert_eq!(
        statement(&gamma_dir),
        vec![s("o2", GAMMA, 300, "yes"), s("o5", GAMMA, 300, "locked")]
    );
    assert_eq!(
        read(&gamma_dir.join("settlement.csv")),
        "period,kind,partner,counterparty,currency,exponent,owes_minor,owed_minor,net_minor,owes,owed,net,conversions\r\n\
         2026-11,pair,gamma,beta,CNY,2,0,300,300,0.00,3.00,3.00,1\r\n\
         2026-11,total,gamma,,CNY,2,0,300,300,0.00,3.00,3.00,1\r\n"
    );

    // === tampering: each caught, naming the file ===
    let culprit = |f: verify_export::VerifyFailure| (f.file, f.line);
    // One byte of an entry (o4's salt): its leaf is no longer in the tree.
    let f = tampered(&fed_dir, &verifier, "entries.jsonl", |t| {
        let at = t.find(r#""order_id":"o4""#).unwrap();
        let line_start = t[..at].rfind('\n').map_or(0, |i| i + 1);
        let salt = line_start + t[line_start..].find(r#""salt":""#).unwrap() + 8;
        let mut b = t.into_bytes();
        b[salt] = if b[salt] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    });
    assert_eq!(f.file, "entries.jsonl", "{f}");
    assert!(f.reason.contains("altered"), "{f}");
    // A changed amount in the statement.
    let f = tampered(&fed_dir, &verifier, "statement.csv", |t| {
        t.replacen(",1000,10.00,", ",1001,10.01,", 1)
    });
    assert_eq!(culprit(f), ("statement.csv", 5));
    // A dropped line in entries.jsonl (the federation view misses an index).
    let f = tampered(&fed_dir, &verifier, "entries.jsonl", |t| {
        let mut lines: Vec<&str> = t.split_inclusive('\n').collect();
        // Lines 1-5 are October's entries of conversions with rows; line 8
        // is entry 7, inside the period.
        lines.remove(7);
        lines.concat()
    });
    assert_eq!(f.file, "entries.jsonl", "{f}");
    assert!(f.reason.contains("is missing"), "{f}");
    // A dropped line in settlement.csv.
    let f = tampered(&fed_dir, &verifier, "settlement.csv", |t| {
        let mut lines: Vec<&str> = t.split_inclusive("\r\n").collect();
        lines.remove(2);
        lines.concat()
    });
    assert_eq!(culprit(f), ("settlement.csv", 3));
    // The same checkpoint, signed by another key.
    let f = tampered(&fed_dir, &verifier, "checkpoint.txt", |t| {
        let body = &t[..=t.find("\n\n").unwrap()];
        Checkpoint::parse_body(body).unwrap();
        Signer::from_seed(verifier.name(), &[9; 32])
            .unwrap()
            .sign(body)
            .unwrap()
    });
    assert_eq!(culprit(f.clone()), ("checkpoint.txt", 1), "{f}");
    // A wrong hash in the multi-proof. The federation view exports every
    // leaf of this small log (its proof is empty); gamma's view does not.
    assert_eq!(read(&fed_dir.join("proof.txt")).lines().count(), 2);
    let f = tampered(&gamma_dir, &verifier, "proof.txt", |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        lines.join("\n") + "\n"
    });
    assert_eq!(f.file, "proof.txt", "{f}");
    // A wrong hash in the consistency proof.
    let f = tampered(&fed_dir, &verifier, "consistency.txt", |t| {
        let mut lines: Vec<String> = t.split('\n').map(str::to_owned).collect();
        lines[3] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        lines.join("\n")
    });
    assert_eq!(culprit(f), ("consistency.txt", 4));
    // The CLI prints the verdict and exits 1.
    let bad = work.path().join("bad");
    copy_dir(&fed_dir, &bad);
    std::fs::write(bad.join("settlement.csv"), "period\r\n").unwrap();
    let v = run_cli(&[
        "ledger",
        "verify",
        bad.to_str().unwrap(),
        "--vkey",
        vkey_file,
    ]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        v.stdout.starts_with("export FAILED: settlement.csv:1: "),
        "{}",
        v.stdout
    );
}

/// The conversion id of beta's order `order`.
async fn conversion_id(fed: &mut Fed, order: &str) -> String {
    fed.beta
        .get_conversion(crossflow_proto::v1::GetConversionRequest {
            order_id: order.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversion
        .unwrap()
        .conversion_id
}
