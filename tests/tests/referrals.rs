//! End-to-end: `crossflow.v1.ReferralService` over real mTLS on 127.0.0.1,
//! called by the partners of a generated federation with real tonic clients.
//! The default federation: alpha <-> beta <-> gamma, nothing between alpha
//! and gamma, max_hops 2, token TTL 900 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use crossflow_proto::v1::{
    CreateReferralRequest, CreateReferralResponse, RedeemReferralResponse, Referral, ReferralState,
};
use crossflow_tests::{
    ALPHA, ALPHA_BETA, BETA, BETA_GAMMA, GAMMA, TestGateway, assert_refused, create_req,
    default_body_with, get_req, onward_req, redeem_req, refusal,
};
use tonic::Code;

/// Mints a hop as `from`.
async fn mint(gw: &TestGateway, from: &str, req: CreateReferralRequest) -> CreateReferralResponse {
    gw.referrals(from)
        .await
        .create_referral(req)
        .await
        .unwrap_or_else(|s| panic!("create as {from}: {s:?}"))
        .into_inner()
}

/// Redeems `token` as `to` for `subject`.
async fn land(gw: &TestGateway, to: &str, token: &str, subject: &str) -> RedeemReferralResponse {
    gw.referrals(to)
        .await
        .redeem_referral(redeem_req(token, subject))
        .await
        .unwrap_or_else(|s| panic!("redeem as {to}: {s:?}"))
        .into_inner()
}

fn referral<T: HasReferral>(r: &T) -> &Referral {
    r.referral()
}

trait HasReferral {
    fn referral(&self) -> &Referral;
}
impl HasReferral for CreateReferralResponse {
    fn referral(&self) -> &Referral {
        self.referral.as_ref().expect("referral in answer")
    }
}
impl HasReferral for RedeemReferralResponse {
    fn referral(&self) -> &Referral {
        self.referral.as_ref().expect("referral in answer")
    }
}

fn pseudonym(r: &RedeemReferralResponse) -> String {
    r.pseudonym.as_ref().expect("pseudonym").value.clone()
}

fn is_referral_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn direct_hop_is_minted_redeemed_and_readable_by_both_parties() {
    let gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("alpha-user-1", BETA, "room-42")).await;
    let m = referral(&made);
    assert!(is_referral_id(&m.referral_id), "{m:?}");
    assert_eq!(
        (m.from_partner.as_str(), m.to_partner.as_str()),
        (ALPHA, BETA)
    );
    assert_eq!(m.chain, vec![ALPHA]);
    assert_eq!(m.hop, 1);
    assert_eq!(m.parent_referral_id, "");
    assert_eq!(m.target, "room-42");
    assert_eq!(m.agreement_id, ALPHA_BETA);
    assert_eq!(m.state(), ReferralState::Minted);
    assert!(m.redeemed_at.is_none());
    let (issued, expires) = (m.issued_at.unwrap(), m.expires_at.unwrap());
    assert_eq!(expires.seconds - issued.seconds, 900, "token_ttl_secs");
    assert!(made.token.starts_with("cf1."), "{}", made.token);
    assert!(!made.token.contains("alpha-user-1"));

    let landed = land(&gw, BETA, &made.token, "beta-user-1").await;
    let l = referral(&landed);
    assert_eq!(l.referral_id, m.referral_id);
    assert_eq!(l.state(), ReferralState::Redeemed);
    assert_eq!(l.chain, m.chain);
    assert_eq!((l.hop, l.agreement_id.as_str()), (1, ALPHA_BETA));
    assert_eq!(l.issued_at, m.issued_at);
    assert_eq!(l.expires_at, m.expires_at);
    assert!(l.redeemed_at.is_some());
    let p = landed.pseudonym.as_ref().unwrap();
    assert!(!p.value.is_empty() && p.epoch >= 1, "{p:?}");

    // GetReferral: the origin and the destination both see the landing.
    for party in [ALPHA, BETA] {
        let got = gw
            .referrals(party)
            .await
            .get_referral(get_req(&m.referral_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.referral.as_ref(), Some(l), "as {party}");
    }
}

#[tokio::test]
async fn onward_hop_extends_the_chain() {
    let gw = TestGateway::builder().start().await;
    let first = mint(&gw, ALPHA, create_req("a-7", BETA, "room-1")).await;
    let first_id = referral(&first).referral_id.clone();
    land(&gw, BETA, &first.token, "b-7").await;

    let onward = mint(&gw, BETA, onward_req("b-7", GAMMA, "room-9", &first_id)).await;
    let o = referral(&onward);
    assert_eq!(o.chain, vec![ALPHA, BETA]);
    assert_eq!(o.hop, 2);
    assert_eq!(o.parent_referral_id, first_id);
    assert_eq!(
        (o.from_partner.as_str(), o.to_partner.as_str()),
        (BETA, GAMMA)
    );
    assert_eq!(o.agreement_id, BETA_GAMMA);

    let landed = land(&gw, GAMMA, &onward.token, "g-7").await;
    let l = referral(&landed);
    assert_eq!(l.chain, vec![ALPHA, BETA]);
    assert_eq!(l.hop, 2);
    assert_eq!(l.parent_referral_id, first_id);
    assert_eq!(l.state(), ReferralState::Redeemed);

    // The onward landing is visible to beta and gamma, not to alpha (it is
    // not a party to the second hop).
    for party in [BETA, GAMMA] {
        gw.referrals(party)
            .await
            .get_referral(get_req(&l.referral_id))
            .await
            .unwrap();
    }
    assert_refused(
        gw.referrals(ALPHA)
            .await
            .get_referral(get_req(&l.referral_id))
            .await,
        Code::PermissionDenied,
        "NOT_A_PARTY",
    );
}

#[tokio::test]
async fn redeem_is_idempotent_for_the_same_subject_only() {
    let gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "room")).await;
    let first = land(&gw, BETA, &made.token, "b-1").await;
    let again = land(&gw, BETA, &made.token, "b-1").await;
    assert_eq!(first, again, "same subject: the same answer");
    assert_eq!(referral(&first).redeemed_at, referral(&again).redeemed_at);
    assert_eq!(pseudonym(&first), pseudonym(&again));

    let mut b = gw.referrals(BETA).await;
    let r = assert_refused(
        b.redeem_referral(redeem_req(&made.token, "b-2")).await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
    assert_eq!(
        r.metadata.get("referral_id"),
        Some(&referral(&made).referral_id)
    );
    // The refusal changed nothing.
    assert_eq!(land(&gw, BETA, &made.token, "b-1").await, first);
}

/// The token with one character of its sealed body changed.
fn tampered(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn bad_tokens_are_invalid_arguments_on_the_token_field() {
    let gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "room")).await;
    let mut b = gw.referrals(BETA).await;
    let cases = [
        ("tampered", tampered(&made.token), &["TOKEN_INVALID"][..]),
        // Cut short, the base64 may no longer decode at all.
        (
            "truncated",
            made.token[..made.token.len() - 4].to_owned(),
            &["TOKEN_INVALID", "TOKEN_MALFORMED"],
        ),
        (
            "garbage",
            "this is not a token".to_owned(),
            &["TOKEN_MALFORMED"],
        ),
        ("bad base64", "cf1.!!!!".to_owned(), &["TOKEN_MALFORMED"]),
        (
            "too long",
            format!("cf1.{}", "A".repeat(5000)),
            &["TOKEN_MALFORMED"],
        ),
        ("empty", String::new(), &["INVALID_FIELD"]),
    ];
    for (what, token, reasons) in cases {
        let r = refusal(b.redeem_referral(redeem_req(&token, "b-1")).await);
        assert_eq!(r.code, Code::InvalidArgument, "{what}: {r:?}");
        assert!(reasons.contains(&r.reason.as_str()), "{what}: {r:?}");
        assert_eq!(r.fields, vec!["token"], "{what}: {r:?}");
    }
    // None of that burnt the real token.
    land(&gw, BETA, &made.token, "b-1").await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let gw = TestGateway::builder()
        .body(default_body_with(2, 1))
        .start()
        .await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "room")).await;
    let late = mint(&gw, ALPHA, create_req("a-2", BETA, "room")).await;
    // Redeemed in time: replays stay answered after expiry.
    let in_time = land(&gw, BETA, &late.token, "b-2").await;

    // Let the 1 s TTL pass (a wait for time itself, not for an event).
    let e = referral(&made).expires_at.unwrap();
    let expires = SystemTime::UNIX_EPOCH + Duration::new(e.seconds as u64, e.nanos as u32);
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
    let mut b = gw.referrals(BETA).await;
    assert_refused(
        b.redeem_referral(redeem_req(&made.token, "b-1")).await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    assert_eq!(land(&gw, BETA, &late.token, "b-2").await, in_time);
    assert_refused(
        b.redeem_referral(redeem_req(&late.token, "b-3")).await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
}

#[tokio::test]
async fn only_the_destination_may_redeem() {
    let gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "room")).await;
    for other in [GAMMA, ALPHA] {
        assert_refused(
            gw.referrals(other)
                .await
                .redeem_referral(redeem_req(&made.token, "x-1"))
                .await,
            Code::PermissionDenied,
            "WRONG_DESTINATION",
        );
    }
    land(&gw, BETA, &made.token, "b-1").await;
}

#[tokio::test]
async fn create_is_refused_without_an_agreement_to_self_and_to_strangers() {
    let gw = TestGateway::builder().start().await;
    let mut a = gw.referrals(ALPHA).await;

    let r = assert_refused(
        a.create_referral(create_req("a-1", GAMMA, "room")).await,
        Code::PermissionDenied,
        "NO_AGREEMENT",
    );
    assert_eq!(
        r.metadata.get("from_partner").map(String::as_str),
        Some(ALPHA)
    );
    assert_eq!(
        r.metadata.get("to_partner").map(String::as_str),
        Some(GAMMA)
    );
    // Nor the other way round.
    assert_refused(
        gw.referrals(GAMMA)
            .await
            .create_referral(create_req("g-1", ALPHA, "room"))
            .await,
        Code::PermissionDenied,
        "NO_AGREEMENT",
    );

    assert_refused(
        a.create_referral(create_req("a-1", ALPHA, "room")).await,
        Code::InvalidArgument,
        "SELF_REFERRAL",
    )
    .expect_fields(&["to_partner"]);

    let r = assert_refused(
        a.create_referral(create_req("a-1", "zeta", "room")).await,
        Code::InvalidArgument,
        "UNKNOWN_PARTNER",
    )
    .expect_fields(&["to_partner"]);
    assert_eq!(r.metadata.get("partner").map(String::as_str), Some("zeta"));
}

#[tokio::test]
async fn chains_longer_than_max_hops_are_refused() {
    let gw = TestGateway::builder().start().await;
    // alpha -> beta -> gamma uses both hops of max_hops = 2 ...
    let h1 = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    land(&gw, BETA, &h1.token, "b-1").await;
    let h2 = mint(
        &gw,
        BETA,
        onward_req("b-1", GAMMA, "r", &referral(&h1).referral_id),
    )
    .await;
    land(&gw, GAMMA, &h2.token, "g-1").await;
    // ... so gamma -> beta would be hop 3.
    let r = assert_refused(
        gw.referrals(GAMMA)
            .await
            .create_referral(onward_req("g-1", BETA, "r", &referral(&h2).referral_id))
            .await,
        Code::FailedPrecondition,
        "MAX_HOPS_EXCEEDED",
    );
    assert_eq!(r.metadata.get("max_hops").map(String::as_str), Some("2"));
    assert_eq!(r.metadata.get("hop").map(String::as_str), Some("3"));
    assert_eq!(
        r.metadata.get("agreement_id").map(String::as_str),
        Some(BETA_GAMMA)
    );
}

#[tokio::test]
async fn max_hops_1_allows_direct_hops_only() {
    let body = format!(
        "{}{}{}{}{}",
        crossflow_tests::partner_toml(ALPHA, true),
        crossflow_tests::partner_toml(BETA, true),
        crossflow_tests::partner_toml(GAMMA, true),
        crossflow_tests::agreement_toml(ALPHA_BETA, ALPHA, BETA, 2, 900),
        crossflow_tests::agreement_toml(BETA_GAMMA, BETA, GAMMA, 1, 900),
    );
    let gw = TestGateway::builder().body(body).start().await;
    let h1 = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    land(&gw, BETA, &h1.token, "b-1").await;
    assert_refused(
        gw.referrals(BETA)
            .await
            .create_referral(onward_req("b-1", GAMMA, "r", &referral(&h1).referral_id))
            .await,
        Code::FailedPrecondition,
        "MAX_HOPS_EXCEEDED",
    );
    // A direct hop under the same agreement is fine.
    mint(&gw, BETA, create_req("b-1", GAMMA, "r")).await;
}

#[tokio::test]
async fn onward_hops_need_a_parent_the_caller_redeemed_for_that_subject() {
    let gw = TestGateway::builder().start().await;
    let h1 = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    let parent = referral(&h1).referral_id.clone();
    let mut b = gw.referrals(BETA).await;

    // Minted but not redeemed yet.
    let r = assert_refused(
        b.create_referral(onward_req("b-1", GAMMA, "r", &parent))
            .await,
        Code::FailedPrecondition,
        "PARENT_NOT_REDEEMED",
    );
    assert_eq!(r.metadata.get("parent_referral_id"), Some(&parent));
    // A referral id that never existed.
    assert_refused(
        b.create_referral(onward_req("b-1", GAMMA, "r", &"0".repeat(32)))
            .await,
        Code::FailedPrecondition,
        "PARENT_NOT_REDEEMED",
    );

    land(&gw, BETA, &h1.token, "b-1").await;
    // Redeemed, but by beta: gamma cannot extend it ...
    assert_refused(
        gw.referrals(GAMMA)
            .await
            .create_referral(onward_req("g-1", BETA, "r", &parent))
            .await,
        Code::FailedPrecondition,
        "PARENT_NOT_REDEEMED",
    );
    // ... and alpha (its origin) cannot either.
    assert_refused(
        gw.referrals(ALPHA)
            .await
            .create_referral(onward_req("a-1", BETA, "r", &parent))
            .await,
        Code::FailedPrecondition,
        "PARENT_NOT_REDEEMED",
    );
    // Beta, for another of its users than the one who landed.
    assert_refused(
        b.create_referral(onward_req("b-2", GAMMA, "r", &parent))
            .await,
        Code::FailedPrecondition,
        "PARENT_SUBJECT_MISMATCH",
    );
    // For the right user it works.
    b.create_referral(onward_req("b-1", GAMMA, "r", &parent))
        .await
        .unwrap();
}

#[tokio::test]
async fn request_id_makes_create_idempotent() {
    let gw = TestGateway::builder().start().await;
    let with_id = |subject: &str, id: &str| CreateReferralRequest {
        request_id: id.to_owned(),
        ..create_req(subject, BETA, "room")
    };
    let one = mint(&gw, ALPHA, with_id("a-1", "order-17:retry.A_b")).await;
    let two = mint(&gw, ALPHA, with_id("a-1", "order-17:retry.A_b")).await;
    let other = mint(&gw, ALPHA, with_id("a-1", "order-18")).await;
    assert_eq!(referral(&one).referral_id, referral(&two).referral_id);
    assert_ne!(referral(&one).referral_id, referral(&other).referral_id);
    // Another partner's request ids are its own.
    let betas = gw
        .referrals(BETA)
        .await
        .create_referral(CreateReferralRequest {
            request_id: "order-17:retry.A_b".into(),
            ..create_req("b-1", ALPHA, "room")
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(referral(&betas).referral_id, referral(&one).referral_id);

    // Both retries name one referral: only one redemption can exist.
    let landed = land(&gw, BETA, &one.token, "b-1").await;
    assert_refused(
        gw.referrals(BETA)
            .await
            .redeem_referral(redeem_req(&two.token, "b-2"))
            .await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
    assert_eq!(land(&gw, BETA, &two.token, "b-1").await, landed);
}

#[tokio::test]
async fn invalid_fields_are_listed_together() {
    let gw = TestGateway::builder().start().await;
    let mut a = gw.referrals(ALPHA).await;
    let r = assert_refused(
        a.create_referral(CreateReferralRequest {
            subject: String::new(),
            to_partner: "Not A Slug".into(),
            target: "room\n1".into(),
            parent_referral_id: "xyz".into(),
            request_id: "has spaces!".into(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&[
        "subject",
        "to_partner",
        "target",
        "parent_referral_id",
        "request_id",
    ]);
    assert!(r.descriptions.iter().all(|d| !d.is_empty()), "{r:?}");

    // Each rule on its own.
    let cases: [(&str, CreateReferralRequest); 7] = [
        ("subject", create_req("bad\u{7}subject", BETA, "r")),
        ("subject", create_req("   ", BETA, "r")),
        ("subject", create_req(&"s".repeat(257), BETA, "r")),
        ("to_partner", create_req("a-1", "", "r")),
        ("target", create_req("a-1", BETA, "")),
        ("target", create_req("a-1", BETA, &"t".repeat(256))),
        (
            "request_id",
            CreateReferralRequest {
                request_id: "r".repeat(129),
                ..create_req("a-1", BETA, "r")
            },
        ),
    ];
    for (field, req) in cases {
        assert_refused(
            a.create_referral(req).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        )
        .expect_fields(&[field]);
    }
    // An upper-case parent id is not the canonical form.
    assert_refused(
        a.create_referral(onward_req("a-1", BETA, "r", &"A".repeat(32)))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["parent_referral_id"]);

    // Redeem lists both of its fields too.
    assert_refused(
        gw.referrals(BETA)
            .await
            .redeem_referral(redeem_req("", ""))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    )
    .expect_fields(&["token", "subject"]);
}

#[tokio::test]
async fn get_referral_is_for_its_two_parties_only() {
    let gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    let id = referral(&made).referral_id.clone();

    // Minted is not stored: nothing to get yet.
    assert_refused(
        gw.referrals(ALPHA).await.get_referral(get_req(&id)).await,
        Code::NotFound,
        "REFERRAL_NOT_FOUND",
    );
    let landed = land(&gw, BETA, &made.token, "b-1").await;
    for party in [ALPHA, BETA] {
        let got = gw
            .referrals(party)
            .await
            .get_referral(get_req(&id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.referral, landed.referral, "as {party}");
    }
    let mut g = gw.referrals(GAMMA).await;
    let r = assert_refused(
        g.get_referral(get_req(&id)).await,
        Code::PermissionDenied,
        "NOT_A_PARTY",
    );
    assert_eq!(r.metadata.get("referral_id"), Some(&id));
    assert_refused(
        g.get_referral(get_req(&"f".repeat(32))).await,
        Code::NotFound,
        "REFERRAL_NOT_FOUND",
    );
    for bad in ["", "nope", &"g".repeat(32), &"a".repeat(31)] {
        assert_refused(
            g.get_referral(get_req(bad)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        )
        .expect_fields(&["referral_id"]);
    }
}

#[tokio::test]
async fn pseudonyms_are_pairwise() {
    let gw = TestGateway::builder().start().await;
    // One beta user sent directly to alpha and to gamma.
    let to_alpha = mint(&gw, BETA, create_req("b-user", ALPHA, "r")).await;
    let to_gamma = mint(&gw, BETA, create_req("b-user", GAMMA, "r")).await;
    let at_alpha = pseudonym(&land(&gw, ALPHA, &to_alpha.token, "a-x").await);
    let at_gamma = pseudonym(&land(&gw, GAMMA, &to_gamma.token, "g-x").await);
    assert_ne!(at_alpha, at_gamma, "two partners, two pseudonyms");

    // The same user reaching alpha again, whatever alpha calls it: the same.
    let again = mint(&gw, BETA, create_req("b-user", ALPHA, "other-room")).await;
    assert_eq!(
        pseudonym(&land(&gw, ALPHA, &again.token, "a-y").await),
        at_alpha
    );
    // Another beta user: another pseudonym.
    let other = mint(&gw, BETA, create_req("b-user-2", ALPHA, "r")).await;
    assert_ne!(
        pseudonym(&land(&gw, ALPHA, &other.token, "a-z").await),
        at_alpha
    );

    // An alpha user reaching beta directly and gamma onward through beta:
    // the pseudonym is for the origin's user, different at each partner.
    let h1 = mint(&gw, ALPHA, create_req("a-user", BETA, "r")).await;
    let at_beta = pseudonym(&land(&gw, BETA, &h1.token, "b-9").await);
    let h2 = mint(
        &gw,
        BETA,
        onward_req("b-9", GAMMA, "r", &referral(&h1).referral_id),
    )
    .await;
    let at_gamma_onward = pseudonym(&land(&gw, GAMMA, &h2.token, "g-9").await);
    assert_ne!(at_beta, at_gamma_onward);
    assert_ne!(at_gamma_onward, at_gamma, "different origin users");
    for p in [&at_alpha, &at_gamma, &at_beta, &at_gamma_onward] {
        assert!(!p.contains("user"), "{p}");
    }
}

#[tokio::test]
async fn restart_keeps_landings() {
    let mut gw = TestGateway::builder().start().await;
    let made = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    let pending = mint(&gw, ALPHA, create_req("a-2", BETA, "r")).await;
    let before = land(&gw, BETA, &made.token, "b-1").await;

    gw.restart().await;

    let mut b = gw.referrals(BETA).await;
    assert_refused(
        b.redeem_referral(redeem_req(&made.token, "b-2")).await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
    let after = land(&gw, BETA, &made.token, "b-1").await;
    assert_eq!(after, before, "same redeemed_at, same pseudonym");
    let got = gw
        .referrals(ALPHA)
        .await
        .get_referral(get_req(&referral(&made).referral_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.referral, before.referral);
    // A token minted before the restart redeems after it.
    land(&gw, BETA, &pending.token, "b-3").await;
}

#[tokio::test]
async fn tokens_sealed_before_a_key_rotation_still_redeem() {
    let mut gw = TestGateway::builder().start().await;
    let old = mint(&gw, ALPHA, create_req("a-1", BETA, "r")).await;
    let report = gw.rotate_keys();
    assert_ne!(report.token_key_id, report.previous_token_key_id);
    gw.restart().await;

    let landed = land(&gw, BETA, &old.token, "b-1").await;
    assert_eq!(referral(&landed).referral_id, referral(&old).referral_id);
    assert_eq!(landed.pseudonym.as_ref().unwrap().epoch, report.epoch);

    // New tokens are sealed under the new key and redeem as well.
    let new = mint(&gw, ALPHA, create_req("a-2", BETA, "r")).await;
    land(&gw, BETA, &new.token, "b-2").await;
}
