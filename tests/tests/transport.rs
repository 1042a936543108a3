//! End-to-end: mTLS identity at the edge, health and reflection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crossflow_identity::generate_foreign_client;
use crossflow_proto::v1::referral_service_client::ReferralServiceClient;
use crossflow_tests::{
    ALPHA, BETA, FEDERATION, TestGateway, agreement_toml, assert_refused, connect_with, create_req,
    default_body, get_req, health_check, partner_toml, redeem_req, reflection_services,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

/// A client the gateway must refuse during the TLS handshake: either the
/// connection fails, or (TLS 1.3 tells the client about a refused
/// certificate only after its side of the handshake) the first call fails
/// as a transport error. It never reaches a service: no ErrorInfo comes back.
/// The client learns why: the gateway's TLS alert reaches it (`alert` as
/// rustls names it) before the connection closes.
async fn assert_handshake_refused(
    ca: &Path,
    gw: &TestGateway,
    identity: Option<(&Path, &Path)>,
    alert: &str,
) {
    let want = format!("received fatal alert: {alert}");
    let channel: Channel = match connect_with(ca, gw.addr(), identity).await {
        Err(e) => {
            assert!(chain(&e).contains(&want), "{}", chain(&e));
            return;
        }
        Ok(c) => c,
    };
    let r = ReferralServiceClient::new(channel.clone())
        .create_referral(create_req("a-1", BETA, "r"))
        .await;
    let status = r.expect_err("a call over a refused handshake must fail");
    assert!(chain(&status).contains(&want), "{}", chain(&status));
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "expected a transport failure, got {status:?}"
    );
    assert!(
        crossflow_tests::Refusal::from_status(&status)
            .reason
            .is_empty(),
        "the gateway must not have answered: {status:?}"
    );
    // Health is behind the same handshake.
    assert!(health_check(channel, "").await.is_err());
}

/// An error and its sources, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out += ": ";
        out += &s.to_string();
        next = s.source();
    }
    out
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_the_handshake() {
    let gw = TestGateway::builder().start().await;
    let ca = gw.dir().join("pki/ca.crt");
    assert_handshake_refused(&ca, &gw, None, "CertificateRequired").await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let gw = TestGateway::builder().start().await;
    let foreign = generate_foreign_client(&gw.dir().join("foreign"), FEDERATION, ALPHA).unwrap();
    let ca = gw.dir().join("pki/ca.crt");
    assert_handshake_refused(&ca, &gw, Some((&foreign.cert, &foreign.key)), "UnknownCA").await;
    // The same client with its real certificate gets through.
    gw.referrals(ALPHA)
        .await
        .create_referral(create_req("a-1", BETA, "r"))
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_and_disabled_partners_and_operators_are_refused() {
    // mallory holds a certificate from the federation's CA but is not
    // configured; delta is configured but disabled.
    let body = format!(
        "{}{}{}",
        default_body(),
        partner_toml("delta", false),
        agreement_toml("alpha-delta", ALPHA, "delta", 2, 900),
    );
    let gw = TestGateway::builder()
        .partner("mallory")
        .partner("delta")
        .operator("ops")
        .body(body)
        .start()
        .await;

    let mut mallory = gw.referrals("mallory").await;
    let r = assert_refused(
        mallory.create_referral(create_req("m-1", BETA, "r")).await,
        Code::PermissionDenied,
        "UNKNOWN_PARTNER",
    );
    assert_eq!(
        r.metadata.get("partner").map(String::as_str),
        Some("mallory")
    );
    assert_refused(
        mallory.get_referral(get_req(&"0".repeat(32))).await,
        Code::PermissionDenied,
        "UNKNOWN_PARTNER",
    );

    let mut delta = gw.referrals("delta").await;
    assert_refused(
        delta.create_referral(create_req("d-1", ALPHA, "r")).await,
        Code::PermissionDenied,
        "PARTNER_DISABLED",
    );
    assert_refused(
        delta.redeem_referral(redeem_req("cf1.AAAA", "d-1")).await,
        Code::PermissionDenied,
        "PARTNER_DISABLED",
    );
    // Nor can anyone send viewers to a disabled partner.
    assert_refused(
        gw.referrals(ALPHA)
            .await
            .create_referral(create_req("a-1", "delta", "r"))
            .await,
        Code::FailedPrecondition,
        "PARTNER_DISABLED",
    );

    // An operator certificate is not a partner.
    let mut ops = gw.referrals("operator-ops").await;
    let r = crossflow_tests::refusal(ops.create_referral(create_req("o-1", BETA, "r")).await);
    assert_eq!(r.code, Code::PermissionDenied, "{r:?}");
    assert!(!r.reason.is_empty(), "{r:?}");
    assert_eq!(
        crossflow_tests::refusal(ops.get_referral(get_req(&"0".repeat(32))).await).code,
        Code::PermissionDenied
    );

    // The federation still works for everyone else.
    let made = gw
        .referrals(ALPHA)
        .await
        .create_referral(create_req("a-1", BETA, "r"))
        .await
        .unwrap()
        .into_inner();
    gw.referrals(BETA)
        .await
        .redeem_referral(redeem_req(&made.token, "b-1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let gw = TestGateway::builder().operator("ops").start().await;
    for service in ["", "crossflow.v1.ReferralService"] {
        assert_eq!(
            health_check(gw.channel(ALPHA).await, service)
                .await
                .unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // Tooling can use any certificate the federation's CA signed.
    assert_eq!(
        health_check(gw.channel("operator-ops").await, "")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    let unknown = health_check(gw.channel(ALPHA).await, "no.such.Service").await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    let services = reflection_services(gw.channel(BETA).await).await.unwrap();
    for want in [
        "crossflow.v1.ReferralService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == want),
            "{want} not in {services:?}"
        );
    }
}
