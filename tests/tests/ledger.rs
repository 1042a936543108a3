//! End-to-end: `crossflow.v1.LedgerService` over real mTLS on 127.0.0.1.
//! Entries come from real conversion reports; receipts and consistency
//! proofs are verified with `crossflow_ledger` and with the `crossflow
//! verify` CLI; a restart keeps entries, checkpoints and proofs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::SystemTime};

use crossflow_ledger::{
    Verifier, merkle,
    note::Checkpoint,
    receipt::{Receipt, verify_receipt},
};
use crossflow_proto::v1::{
    GetCheckpointRequest, GetConsistencyProofRequest, GetLogKeyRequest, GetReceiptRequest,
    ListEntriesRequest, ReportConversionRequest,
    conversion_service_client::ConversionServiceClient, get_receipt_request,
    ledger_service_client::LedgerServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, FEDERATION, GAMMA, TestGateway, assert_refused, create_req, redeem_req, run_cli,
};
use tonic::{Code, transport::Channel};

const OPERATOR: &str = "ops";

async fn gateway() -> TestGateway {
    crossflow_tests::ledger_gateway(OPERATOR).await
}

async fn ledger(gw: &TestGateway, name: &str) -> LedgerServiceClient<Channel> {
    LedgerServiceClient::new(gw.channel(name).await)
}

fn now() -> prost_types::Timestamp {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// `reporter` reports order `id` of its user `subject`; returns the entry's
/// index and bytes.
async fn report(gw: &TestGateway, reporter: &str, id: &str, subject: &str) -> (u64, Vec<u8>) {
    let r = ConversionServiceClient::new(gw.channel(reporter).await)
        .report_conversion(ReportConversionRequest {
            order_id: id.into(),
            subject: subject.into(),
            amount_minor: 10_000,
            currency: "CNY".into(),
            category: "toys".into(),
            occurred_at: Some(now()),
            referral_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = r.entry.unwrap();
    (e.index, e.entry)
}

/// A viewer of alpha lands at beta as `b-user`.
async fn land_alpha_to_beta(gw: &TestGateway) {
    let made = gw
        .referrals(ALPHA)
        .await
        .create_referral(create_req("a-user", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    gw.referrals(BETA)
        .await
        .redeem_referral(redeem_req(&made.token, "b-user"))
        .await
        .unwrap();
}

fn by_index(index: u64) -> GetReceiptRequest {
    GetReceiptRequest {
        entry: Some(get_receipt_request::Entry::Index(index)),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn list(since: u64, page_size: u32, token: &str) -> ListEntriesRequest {
    ListEntriesRequest {
        since_index: since,
        page_size,
        page_token: token.into(),
    }
}

#[tokio::test]
async fn receipts_verify_online_and_offline() {
    let gw = gateway().await;
    land_alpha_to_beta(&gw).await;
    let (i1, e1) = report(&gw, BETA, "o-1", "b-user").await; // beta + alpha
    let (i2, _) = report(&gw, GAMMA, "o-2", "g-user").await; // gamma only

    let mut alpha = ledger(&gw, ALPHA).await;
    let key = alpha
        .get_log_key(GetLogKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let origin = format!("{FEDERATION}/ledger");
    assert_eq!(key.origin, origin);
    let verifier = Verifier::parse(&key.verifier_key).unwrap();

    // The referrer gets a receipt for the entry that pays it.
    let r = alpha.get_receipt(by_index(i1)).await.unwrap().into_inner();
    let entry = r.entry.unwrap();
    assert_eq!((entry.index, &entry.entry), (i1, &e1));
    let c = verify_receipt(&r.receipt, &e1, &verifier, &origin).unwrap();
    assert!(c.size > i1);
    assert_eq!(r.checkpoint.unwrap().size, c.size);

    // The same receipt by order id, asked by the reporter.
    let by_order = ledger(&gw, BETA)
        .await
        .get_receipt(GetReceiptRequest {
            entry: Some(get_receipt_request::Entry::OrderId("o-1".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Receipt::parse(&by_order.receipt).unwrap().index, i1);
    verify_receipt(&by_order.receipt, &e1, &verifier, &origin).unwrap();

    // Offline, with the CLI: key as text and as a file.
    let dir = tempfile::tempdir().unwrap();
    let entry_file = write(dir.path(), "entry.json", &e1);
    let receipt_file = write(dir.path(), "receipt.txt", r.receipt.as_bytes());
    let key_file = write(dir.path(), "ledger.vkey", key.verifier_key.as_bytes());
    let out = run_cli(&[
        "verify",
        "receipt",
        "--vkey",
        &key.verifier_key,
        "--entry",
        &entry_file,
        "--origin",
        &origin,
        &receipt_file,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("entry {i1} is in {origin}")),
        "{out:?}"
    );

    let mut forged = e1.clone();
    forged[e1.len() / 2] ^= 1;
    let forged_file = write(dir.path(), "forged.json", &forged);
    let out = run_cli(&[
        "verify",
        "receipt",
        "--vkey",
        &key_file,
        "--entry",
        &forged_file,
        &receipt_file,
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("root does not match"), "{out:?}");

    let note = alpha
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap()
        .note;
    let note_file = write(dir.path(), "checkpoint", note.as_bytes());
    let out = run_cli(&["verify", "checkpoint", "--vkey", &key_file, &note_file]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .starts_with("checkpoint OK: origin crossflow.test/ledger"),
        "{out:?}"
    );
    let tampered = note.replacen("\n", "\n1", 1);
    let tampered_file = write(dir.path(), "tampered", tampered.as_bytes());
    let out = run_cli(&["verify", "checkpoint", "--vkey", &key_file, &tampered_file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("does not verify"), "{out:?}");

    // Not a party: no receipt, whatever the index.
    assert_refused(
        alpha.get_receipt(by_index(i2)).await,
        Code::PermissionDenied,
        "NOT_A_PARTY",
    );
    // Operators see every entry.
    let r2 = ledger(&gw, &format!("operator-{OPERATOR}"))
        .await
        .get_receipt(by_index(i2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r2.entry.unwrap().index, i2);
}

#[tokio::test]
async fn list_entries_filters_by_party_and_pages() {
    let gw = gateway().await;
    land_alpha_to_beta(&gw).await;
    let mut mine = Vec::new();
    let mut last = 0;
    for k in 0..5 {
        mine.push(report(&gw, BETA, &format!("o-{k}"), "b-user").await.0);
        last = report(&gw, GAMMA, &format!("g-{k}"), "g-user").await.0;
    }
    let mut alpha = ledger(&gw, ALPHA).await;
    let mut ops = ledger(&gw, &format!("operator-{OPERATOR}")).await;
    // ListEntries stops at the latest checkpoint (services/ledger's
    // listing_stops_at_the_latest_checkpoint); a receipt for the last entry
    // waits for the one that covers everything.
    ops.get_receipt(by_index(last)).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = alpha
            .list_entries(list(0, 2, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        for e in &page.entries {
            assert_eq!(e.leaf_hash, merkle::leaf_hash(&e.entry).to_vec());
            seen.push(e.index);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, mine);
    let from_third = alpha
        .list_entries(list(mine[2], 0, ""))
        .await
        .unwrap()
        .into_inner();
    let idx: Vec<u64> = from_third.entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, mine[2..]);
    let all = ops
        .list_entries(list(0, 1000, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 10);

    assert_refused(
        alpha.list_entries(list(0, 1001, "")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["page_size"]);
    assert_refused(
        alpha.list_entries(list(0, 10, "bogus")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["page_token"]);
    assert_refused(
        alpha.list_entries(list(u64::MAX, 10, "")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["since_index"]);
    assert_refused(
        alpha.get_receipt(by_index(1_000_000)).await,
        Code::NotFound,
        "NO_SUCH_ENTRY",
    );
    assert_refused(
        alpha.get_receipt(by_index(u64::MAX)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["index"]);
    assert_refused(
        alpha.get_receipt(GetReceiptRequest { entry: None }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["entry"]);
    assert_refused(
        alpha
            .get_receipt(GetReceiptRequest {
                entry: Some(get_receipt_request::Entry::OrderId("no-such-order".into())),
            })
            .await,
        Code::NotFound,
        "NO_SUCH_ORDER",
    );
    let consistency = |from_size, to_size| GetConsistencyProofRequest { from_size, to_size };
    assert_refused(
        alpha.get_consistency_proof(consistency(0, 0)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["from_size"]);
    assert_refused(
        alpha.get_consistency_proof(consistency(1, 999_999)).await,
        Code::NotFound,
        "NO_SUCH_CHECKPOINT",
    );
}

#[tokio::test]
async fn restart_keeps_entries_checkpoints_and_proofs() {
    let mut gw = gateway().await;
    land_alpha_to_beta(&gw).await;
    let (i1, e1) = report(&gw, BETA, "o-1", "b-user").await;
    let mut beta = ledger(&gw, BETA).await;
    let verifier = Verifier::parse(
        &beta
            .get_log_key(GetLogKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .verifier_key,
    )
    .unwrap();
    let origin = format!("{FEDERATION}/ledger");
    let before = beta.get_receipt(by_index(i1)).await.unwrap().into_inner();
    let old = Checkpoint::parse_body(
        verifier
            .verify_note(&before.checkpoint.unwrap().note)
            .unwrap(),
    )
    .unwrap();

    gw.restart().await;
    let mut beta = ledger(&gw, BETA).await;
    // The key and the entry are the same; the old receipt still verifies.
    let key = beta
        .get_log_key(GetLogKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.verifier_key, verifier.to_string());
    verify_receipt(&before.receipt, &e1, &verifier, &origin).unwrap();
    let (i2, e2) = report(&gw, BETA, "o-2", "b-user").await;
    let after = beta.get_receipt(by_index(i2)).await.unwrap().into_inner();
    let new = verify_receipt(&after.receipt, &e2, &verifier, &origin).unwrap();
    assert!(new.size > old.size);

    // The new tree extends the one signed before the restart.
    let proof =
        crossflow_tests::assert_consistent(&mut beta, (old.size, &old.root), (new.size, &new.root))
            .await;
    assert_eq!(proof.to_checkpoint.unwrap().size, new.size);

    // fsck (read-only, beside the running gateway) agrees.
    let config = gw.dir().join("crossflow.toml").display().to_string();
    let out = run_cli(&["ledger", "fsck", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with("ledger OK: "), "{out:?}");
}
