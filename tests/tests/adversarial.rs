//! Adversarial partners over real mTLS: what a configured, authenticated
//! partner (or someone holding a certificate it should not) tries in order
//! to read or move what is not its own, and the exact refusal it gets.
//!
//! Many attacks are already pinned by the service suites; docs/RELIABILITY.md
//! ("Adversarial partners") lists every attack with the test that shows it,
//! here or there. This file holds the ones no other suite covers: a third
//! partner probing every service about a hop it is not in, and tokens
//! sealed with another gateway's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossflow_identity::{KeyRing, ReferralClaims, ReferralId};
use crossflow_proto::v1::{
    ConversionStatus, GetConversionRequest, GetQuotaStatusRequest, GetReceiptRequest,
    GetReferredUserTagsRequest, ListEntriesRequest, ReleaseConversionRequest,
    ReportConversionRequest, UpdateConversionRequest,
    conversion_service_client::ConversionServiceClient, get_receipt_request,
    ledger_service_client::LedgerServiceClient, quota_service_client::QuotaServiceClient,
    tag_service_client::TagServiceClient,
};
use crossflow_tests::{
    ALPHA, BETA, GAMMA, TestGateway, assert_refused, create_req, get_req, now_ms, redeem_req,
    refusal, timestamp,
};
use tonic::{Code, transport::Channel};

const OPERATOR: &str = "ops";

async fn gateway() -> TestGateway {
    crossflow_tests::ledger_gateway(OPERATOR).await
}

fn now() -> prost_types::Timestamp {
    timestamp(now_ms())
}

fn by_index(index: u64) -> GetReceiptRequest {
    GetReceiptRequest {
        entry: Some(get_receipt_request::Entry::Index(index)),
    }
}

/// The indexes of the first page (1000) of entries `client` may list.
async fn listed_indexes(client: &mut LedgerServiceClient<Channel>) -> Vec<u64> {
    client
        .list_entries(ListEntriesRequest {
            since_index: 0,
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .map(|e| e.index)
        .collect()
}

fn by_order(order_id: &str) -> GetReceiptRequest {
    GetReceiptRequest {
        entry: Some(get_receipt_request::Entry::OrderId(order_id.into())),
    }
}

async fn conversions(gw: &TestGateway, who: &str) -> ConversionServiceClient<Channel> {
    ConversionServiceClient::new(gw.channel(who).await)
}

async fn ledger(gw: &TestGateway, who: &str) -> LedgerServiceClient<Channel> {
    LedgerServiceClient::new(gw.channel(who).await)
}

/// alpha -> beta, then gamma (a partner of beta's, with no part in this
/// hop) asks every service about it. Each answer is the refusal a stranger
/// gets, and where a stranger could otherwise learn that something exists,
/// the answer equals the one for something that does not.
#[tokio::test]
async fn a_third_partner_learns_nothing_about_a_hop_it_is_not_in() {
    let gw = gateway().await;
    let made = gw
        .referrals(ALPHA)
        .await
        .create_referral(create_req("a-user", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let rid = made.referral.unwrap().referral_id;
    gw.referrals(BETA)
        .await
        .redeem_referral(redeem_req(&made.token, "b-user"))
        .await
        .unwrap();
    let reported = conversions(&gw, BETA)
        .await
        .report_conversion(ReportConversionRequest {
            order_id: "b-order-1".into(),
            subject: "b-user".into(),
            amount_minor: 10_000,
            currency: "CNY".into(),
            category: "toys".into(),
            occurred_at: Some(now()),
            referral_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let conversion_id = reported.conversion.unwrap().conversion_id;
    let index = reported.entry.unwrap().index;
    // The parties can read all of it (so the refusals below are about who
    // asks, not about what exists). A receipt also means the entry is
    // integrated and checkpointed.
    for party in [ALPHA, BETA] {
        ledger(&gw, party)
            .await
            .get_receipt(by_index(index))
            .await
            .unwrap();
        gw.referrals(party)
            .await
            .get_referral(get_req(&rid))
            .await
            .unwrap();
    }

    // Referral.
    assert_refused(
        gw.referrals(GAMMA).await.get_referral(get_req(&rid)).await,
        Code::PermissionDenied,
        "NOT_A_PARTY",
    );
    // Tags of the landed user.
    assert_refused(
        TagServiceClient::new(gw.channel(GAMMA).await)
            .get_referred_user_tags(GetReferredUserTagsRequest {
                referral_id: rid.clone(),
            })
            .await,
        Code::PermissionDenied,
        "NOT_DESTINATION",
    );
    // beta's order, by its order id: order ids are per reporter, so gamma
    // is told exactly what it is told for an order nobody reported.
    let mut g = conversions(&gw, GAMMA).await;
    let theirs = refusal(
        g.get_conversion(GetConversionRequest {
            order_id: "b-order-1".into(),
        })
        .await,
    )
    .expect(Code::NotFound, "CONVERSION_NOT_FOUND");
    let nobodys = refusal(
        g.get_conversion(GetConversionRequest {
            order_id: "no-such-order".into(),
        })
        .await,
    )
    .expect(Code::NotFound, "CONVERSION_NOT_FOUND");
    assert_eq!(
        theirs.message.replace("b-order-1", "X"),
        nobodys.message.replace("no-such-order", "X")
    );
    assert_refused(
        g.update_conversion(UpdateConversionRequest {
            order_id: "b-order-1".into(),
            status: ConversionStatus::Cancelled as i32,
            refund_minor: 0,
            request_id: "g-cancel-1".into(),
        })
        .await,
        Code::NotFound,
        "CONVERSION_NOT_FOUND",
    );
    // An operator RPC with a partner certificate, on a conversion it could
    // not see anyway.
    assert_refused(
        g.release_conversion(ReleaseConversionRequest {
            conversion_id: conversion_id.clone(),
            note: "let it through".into(),
        })
        .await,
        Code::PermissionDenied,
        "OPERATOR_ONLY",
    );
    // Ledger: no receipt by index or by beta's order id, nothing listed
    // (once a checkpoint covers the entry: ListEntries stops at the latest
    // one, and beta's receipt waits for it).
    ledger(&gw, BETA)
        .await
        .get_receipt(by_index(index))
        .await
        .unwrap();
    let mut gl = ledger(&gw, GAMMA).await;
    assert_refused(
        gl.get_receipt(by_index(index)).await,
        Code::PermissionDenied,
        "NOT_A_PARTY",
    );
    assert_refused(
        gl.get_receipt(by_order("b-order-1")).await,
        Code::NotFound,
        "NO_SUCH_ORDER",
    );
    let gamma_sees = listed_indexes(&mut gl).await;
    assert!(
        !gamma_sees.contains(&index),
        "gamma listed beta's entry {index}: {gamma_sees:?}"
    );
    // While beta, a party, sees it in the same listing.
    let beta_sees = listed_indexes(&mut ledger(&gw, BETA).await).await;
    assert!(
        beta_sees.contains(&index),
        "beta does not list its own entry {index}: {beta_sees:?}"
    );
    // Quota status of either party.
    let mut gq = QuotaServiceClient::new(gw.channel(GAMMA).await);
    for other in [ALPHA, BETA] {
        assert_refused(
            gq.get_quota_status(GetQuotaStatusRequest {
                partner: other.into(),
            })
            .await,
            Code::PermissionDenied,
            "OTHER_PARTNER",
        );
    }

    // None of that changed the conversion.
    let still = conversions(&gw, BETA)
        .await
        .get_conversion(GetConversionRequest {
            order_id: "b-order-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversion
        .unwrap();
    assert_eq!(still.status(), ConversionStatus::Pending);
}

/// Claims for a direct hop alpha -> beta that are valid in every field.
fn claims(ring: &KeyRing) -> ReferralClaims {
    let now = now_ms();
    ReferralClaims {
        referral_id: ReferralId::random().unwrap(),
        from: ALPHA.into(),
        to: BETA.into(),
        chain: vec![ALPHA.into()],
        parent: None,
        hop: 1,
        origin: ALPHA.into(),
        origin_uid: ring.uid(ALPHA, "a-user"),
        issued_at_ms: now,
        expires_at_ms: now + 900_000,
        tag_access: true,
        target: "room-1".into(),
    }
}

/// A forger without the gateway's token keys: well-formed tokens sealed
/// with another key directory's keys (same key id as the gateway's, and a
/// key id the gateway never had) are refused on the token field, and the
/// refusal burns nothing.
#[tokio::test]
async fn tokens_sealed_with_another_gateways_keys_are_refused() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    KeyRing::generate(&dir.path().join("k1")).unwrap();
    let forger = KeyRing::load(&dir.path().join("k1")).unwrap();
    // A fresh key directory starts at the same key id as the gateway's.
    assert_eq!(forger.current_token_key_id(), {
        KeyRing::load(&gw.key_dir()).unwrap().current_token_key_id()
    });
    let c = claims(&forger);
    let forged = forger.seal(&c).unwrap();
    let mut b = gw.referrals(BETA).await;
    refusal(b.redeem_referral(redeem_req(&forged, "b-user")).await)
        .expect(Code::InvalidArgument, "TOKEN_INVALID")
        .expect_fields(&["token"]);

    // Rotated twice, the forger's current key id is one the gateway has
    // never issued.
    KeyRing::rotate(&dir.path().join("k1"), now_ms()).unwrap();
    KeyRing::rotate(&dir.path().join("k1"), now_ms() + 1).unwrap();
    let forger = KeyRing::load(&dir.path().join("k1")).unwrap();
    let unknown = forger.seal(&claims(&forger)).unwrap();
    let r = refusal(b.redeem_referral(redeem_req(&unknown, "b-user")).await)
        .expect(Code::InvalidArgument, "TOKEN_UNKNOWN_KEY")
        .expect_fields(&["token"]);
    assert_eq!(
        r.metadata.get("key_id"),
        Some(&forger.current_token_key_id().to_string())
    );

    // The forged referral id was never landed: nobody can read it.
    assert_refused(
        gw.referrals(BETA)
            .await
            .get_referral(get_req(&c.referral_id.to_string()))
            .await,
        Code::NotFound,
        "REFERRAL_NOT_FOUND",
    );
}
