//! Tag exchange end to end over mTLS: publication, the disclosure rule
//! (flow scopes, chain intersection, sensitive guard), opt-out, expiry,
//! pseudonyms across a key rotation, and the disclosure audit CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossflow_proto::v1::{
    GetReferredUserTagsRequest, GetReferredUserTagsResponse, OptOutRequest, PublishTagsRequest,
    Tag, tag_service_client::TagServiceClient,
};
use crossflow_store::{LandingStore, Sqlite};
use crossflow_tests::{
    ALPHA, ALPHA_BETA, BETA, BETA_GAMMA, Federation, GAMMA, TestGateway, assert_refused,
    create_req, onward_req, redeem_req, refusal, run_cli,
};
use tonic::{Code, Status, transport::Channel};

const DELTA: &str = "delta";

/// alpha -> beta -> gamma with alpha -> gamma too; delta only knows beta.
///
/// | flow | tag_scopes |
/// |---|---|
/// | alpha -> beta | iab-audience, life-stage, room-style, health |
/// | alpha -> gamma | iab-audience, room-style |
/// | beta -> gamma | iab-audience, life-stage |
/// | beta -> delta | iab-audience |
///
/// `budget` is a valid namespace that no flow scopes; `health` is scoped by
/// alpha -> beta but sensitive.
fn body() -> Federation {
    Federation::partners(&[ALPHA, BETA, GAMMA, DELTA])
        .agreement(ALPHA_BETA, ALPHA, BETA, "max_hops = 3")
        .flow(
            ALPHA,
            BETA,
            &scopes(&["iab-audience", "life-stage", "room-style", "health"]),
        )
        .flow(BETA, ALPHA, "")
        .agreement("alpha-gamma", ALPHA, GAMMA, "")
        .flow(ALPHA, GAMMA, &scopes(&["iab-audience", "room-style"]))
        .agreement(BETA_GAMMA, BETA, GAMMA, "max_hops = 3")
        .flow(BETA, GAMMA, &scopes(&["iab-audience", "life-stage"]))
        .agreement("beta-delta", BETA, DELTA, "max_hops = 3")
        .flow(BETA, DELTA, &scopes(&["iab-audience"]))
        .then(TAGS)
}

/// A flow's `tag_scopes` key.
fn scopes(namespaces: &[&str]) -> String {
    format!("tag_scopes = {namespaces:?}")
}

/// The tag namespaces [`body`] configures.
const TAGS: &str = r#"
[tags]
max_ttl_secs = 3600
pseudonym_overlap_days = 90
sensitive = ["health", "life-stage/expecting"]
[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"
[[tags.namespaces]]
name = "life-stage"
values = ["expecting", "newborn", "toddler"]
[[tags.namespaces]]
name = "room-style"
pattern = "[a-z]+"
[[tags.namespaces]]
name = "budget"
values = ["low", "high"]
[[tags.namespaces]]
name = "health"
pattern = "[a-z]+"
"#;

async fn gateway() -> TestGateway {
    TestGateway::builder()
        .partner(DELTA)
        .body(body())
        .start()
        .await
}

async fn tags(gw: &TestGateway, who: &str) -> TagServiceClient<Channel> {
    TagServiceClient::new(gw.channel(who).await)
}

fn tag(ns: &str, value: &str, ttl_secs: i64) -> Tag {
    Tag {
        namespace: ns.into(),
        value: value.into(),
        ttl: (ttl_secs > 0).then_some(prost_types::Duration {
            seconds: ttl_secs,
            nanos: 0,
        }),
    }
}

async fn publish(gw: &TestGateway, owner: &str, subject: &str, t: Vec<Tag>) {
    tags(gw, owner)
        .await
        .publish_tags(PublishTagsRequest {
            subject: subject.into(),
            tags: t,
            request_id: String::new(),
        })
        .await
        .unwrap();
}

/// A hop `from` -> `to` (onward from `parent` when not empty), redeemed;
/// returns the referral id and the pseudonym value RedeemReferral gave.
async fn hop(
    gw: &TestGateway,
    from: &str,
    subject: &str,
    to: &str,
    dest_subject: &str,
    parent: &str,
) -> (String, String) {
    let made = gw
        .referrals(from)
        .await
        .create_referral(onward_req(subject, to, "room-1", parent))
        .await
        .unwrap()
        .into_inner();
    let r = gw
        .referrals(to)
        .await
        .redeem_referral(redeem_req(&made.token, dest_subject))
        .await
        .unwrap()
        .into_inner();
    (r.referral.unwrap().referral_id, r.pseudonym.unwrap().value)
}

async fn read(
    gw: &TestGateway,
    reader: &str,
    referral_id: &str,
) -> Result<GetReferredUserTagsResponse, Status> {
    tags(gw, reader)
        .await
        .get_referred_user_tags(GetReferredUserTagsRequest {
            referral_id: referral_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn shown(r: &GetReferredUserTagsResponse) -> Vec<String> {
    r.tags
        .iter()
        .map(|t| format!("{}/{}", t.namespace, t.value))
        .collect()
}

#[tokio::test]
async fn destination_reads_its_scopes_and_the_owner_can_audit_it() {
    let gw = gateway().await;
    publish(
        &gw,
        ALPHA,
        "a-user-1",
        vec![
            tag("iab-audience", "354", 0),
            tag("life-stage", "newborn", 600),
            tag("room-style", "scandinavian", 0),
            // No flow scopes budget: it is filtered out.
            tag("budget", "high", 0),
        ],
    )
    .await;
    let (rid, redeemed_pseudonym) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    let r = read(&gw, BETA, &rid).await.unwrap();
    assert_eq!(
        shown(&r),
        [
            "iab-audience/354",
            "life-stage/newborn",
            "room-style/scandinavian"
        ]
    );
    // "health" is in the flow but sensitive: never a scope.
    assert_eq!(r.scopes, ["iab-audience", "life-stage", "room-style"]);
    assert_eq!(
        (r.origin_partner.as_str(), r.agreement_id.as_str()),
        (ALPHA, "alpha-beta")
    );
    let p = r.pseudonym.clone().unwrap();
    assert_eq!(p.value, redeemed_pseudonym);
    assert!(p.value.starts_with(&format!("ps1.{}.", p.epoch)), "{p:?}");
    assert!(r.previous_pseudonyms.is_empty());
    let life = r.tags.iter().find(|t| t.namespace == "life-stage").unwrap();
    let iab = r
        .tags
        .iter()
        .find(|t| t.namespace == "iab-audience")
        .unwrap();
    let (life_exp, iab_exp) = (life.expires_at.unwrap(), iab.expires_at.unwrap());
    assert_eq!(iab_exp.seconds - life_exp.seconds, 3600 - 600);

    // The audit: alpha's DPO sees one disclosure to beta; nothing of the
    // subject appears; filtering by subject, reader and time works.
    let config = gw.dir().join("crossflow.toml");
    let config = config.to_str().unwrap();
    let audit = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "disclosures",
            "--partner",
            ALPHA,
            "--config",
            config,
        ];
        args.extend_from_slice(extra);
        let out = run_cli(&args);
        assert!(out.status.success(), "{}", out.stderr);
        out.stdout
    };
    let csv = audit(&["--since", "2020-01-01"]);
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(lines.len(), 3, "{csv:?}");
    assert!(
        lines[0].starts_with("disclosed_at,owner,reader,uid,"),
        "{csv}"
    );
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row[1..3], [ALPHA, BETA]);
    assert_eq!(row[3].len(), 64);
    let epoch = p.epoch.to_string();
    assert_eq!(
        row[4..],
        [
            "alpha-beta",
            rid.as_str(),
            "iab-audience life-stage room-style",
            "3",
            epoch.as_str()
        ]
    );
    assert!(!csv.contains("a-user-1"));
    assert_eq!(
        audit(&["--since", "2020-01-01", "--subject", "a-user-1"]),
        csv
    );
    assert_eq!(
        audit(&["--since", "2020-01-01", "--subject", "a-user-2"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        audit(&["--since", "2020-01-01", "--reader", GAMMA])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        audit(&["--since", "2999-01-01T00:00:00Z"]).lines().count(),
        1
    );
    let bad = run_cli(&[
        "audit",
        "disclosures",
        "--partner",
        ALPHA,
        "--since",
        "soon",
        "--config",
        config,
    ]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("--since"), "{}", bad.stderr);
}

#[tokio::test]
async fn who_may_not_read() {
    let gw = gateway().await;
    publish(&gw, ALPHA, "a-user-1", vec![tag("iab-audience", "354", 0)]).await;
    let (rid, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    // Not the destination: another partner, and the origin itself.
    for who in [GAMMA, ALPHA] {
        assert_refused(
            read(&gw, who, &rid).await,
            Code::PermissionDenied,
            "NOT_DESTINATION",
        );
    }
    // Minted but never redeemed.
    let made = gw
        .referrals(ALPHA)
        .await
        .create_referral(create_req("a-user-1", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let unredeemed = made.referral.unwrap().referral_id;
    assert_refused(
        read(&gw, BETA, &unredeemed).await,
        Code::NotFound,
        "REFERRAL_NOT_FOUND",
    );
    refusal(read(&gw, BETA, "nope").await)
        .expect(Code::InvalidArgument, "INVALID_FIELD")
        .expect_fields(&["referral_id"]);
    // A flow without tag_scopes (beta -> alpha) is an agreement that grants
    // nothing: an empty answer, not a refusal.
    publish(&gw, BETA, "b-user-9", vec![tag("iab-audience", "457", 0)]).await;
    let (back, _) = hop(&gw, BETA, "b-user-9", ALPHA, "a-user-9", "").await;
    let r = read(&gw, ALPHA, &back).await.unwrap();
    assert!(r.tags.is_empty() && r.scopes.is_empty(), "{r:?}");
}

#[tokio::test]
async fn publication_is_validated_field_by_field() {
    let gw = gateway().await;
    let mut c = tags(&gw, ALPHA).await;
    let r = c
        .publish_tags(PublishTagsRequest {
            subject: "a-user-1".into(),
            tags: vec![
                tag("iab-audience", "354", 0),
                tag("iab-audience", "1680", 0),
                tag("life-stage", "retired", 0),
                tag("zodiac", "leo", 0),
                tag("room-style", "mid century", 0),
                tag("health", "flu", 0),
                tag("life-stage", "expecting", 0),
                tag("budget", "low", 7200),
            ],
            request_id: String::new(),
        })
        .await;
    let refused = refusal(r)
        .expect(Code::InvalidArgument, "INVALID_FIELD")
        .expect_fields(&[
            "tags[1].value",
            "tags[2].value",
            "tags[3].namespace",
            "tags[4].value",
            "tags[5].namespace",
            "tags[6].value",
            "tags[7].ttl",
        ]);
    assert!(
        refused.descriptions[0].contains("IAB Audience Taxonomy"),
        "{refused:?}"
    );
    assert!(refused.descriptions[4].contains("sensitive"), "{refused:?}");
    // Idempotent retries by request id.
    let req = PublishTagsRequest {
        subject: "a-user-1".into(),
        tags: vec![tag("budget", "low", 60)],
        request_id: "pub-1".into(),
    };
    let first = c.publish_tags(req.clone()).await.unwrap().into_inner();
    let again = c.publish_tags(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, again);
    let mut other = req;
    other.tags[0].value = "high".into();
    assert_refused(
        c.publish_tags(other).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
}

#[tokio::test]
async fn expired_tags_are_never_returned() {
    let gw = gateway().await;
    publish(
        &gw,
        ALPHA,
        "a-user-1",
        vec![tag("iab-audience", "354", 1), tag("iab-audience", "457", 0)],
    )
    .await;
    let (rid, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    // Time has to pass for a TTL to run out: this waits for the clock, not
    // for the gateway.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = read(&gw, BETA, &rid).await.unwrap();
    assert_eq!(shown(&r), ["iab-audience/457"]);
}

#[tokio::test]
async fn opt_out_removes_tags_and_tag_access() {
    let mut gw = gateway().await;
    publish(
        &gw,
        ALPHA,
        "a-user-1",
        vec![tag("iab-audience", "354", 0), tag("room-style", "boho", 0)],
    )
    .await;
    publish(&gw, ALPHA, "a-user-2", vec![tag("iab-audience", "457", 0)]).await;
    let (before, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    assert_eq!(read(&gw, BETA, &before).await.unwrap().tags.len(), 2);

    let mut c = tags(&gw, ALPHA).await;
    let out = c
        .opt_out(OptOutRequest {
            subject: "a-user-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((out.tags_removed, out.newly_opted_out), (2, true));
    let again = c
        .opt_out(OptOutRequest {
            subject: "a-user-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.tags_removed, again.newly_opted_out), (0, false));

    // No more disclosure on the hop that predates the opt-out ...
    assert_refused(
        read(&gw, BETA, &before).await,
        Code::PermissionDenied,
        "NO_TAG_ACCESS",
    );
    // ... nor on hops minted afterwards, direct or onward.
    let (direct, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1b", "").await;
    let (onward, _) = hop(&gw, BETA, "b-user-1", GAMMA, "c-user-1", &before).await;
    for (reader, rid) in [(BETA, &direct), (GAMMA, &onward)] {
        assert_refused(
            read(&gw, reader, rid).await,
            Code::PermissionDenied,
            "NO_TAG_ACCESS",
        );
    }
    assert_refused(
        tags(&gw, ALPHA)
            .await
            .publish_tags(PublishTagsRequest {
                subject: "a-user-1".into(),
                tags: vec![tag("iab-audience", "354", 0)],
                request_id: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "USER_OPTED_OUT",
    );
    // Another user of the same owner is untouched.
    let (other, _) = hop(&gw, ALPHA, "a-user-2", BETA, "b-user-2", "").await;
    assert_eq!(
        shown(&read(&gw, BETA, &other).await.unwrap()),
        ["iab-audience/457"]
    );

    // The landings themselves: tag access only on the hop minted before.
    gw.shutdown().await;
    let store = Sqlite::open(&gw.data_dir()).unwrap();
    let access = |rid: &str| {
        let store = store.clone();
        let id: [u8; 16] = crossflow_identity::ReferralId::from_hex(rid).unwrap().0;
        async move { store.landing(id).await.unwrap().unwrap().tag_access }
    };
    assert!(access(&before).await);
    assert!(!access(&direct).await);
    assert!(!access(&onward).await);
    assert!(access(&other).await);
}

#[tokio::test]
async fn sensitive_guard_wins_over_the_agreement() {
    let mut gw = gateway().await;
    publish(
        &gw,
        ALPHA,
        "a-user-1",
        // 386 Health Care and Physicians < 383 < 381 Health and Medical
        // Services; 354 Parenting Babies and Toddlers.
        vec![tag("iab-audience", "354", 0), tag("iab-audience", "386", 0)],
    )
    .await;
    let (rid, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    assert_eq!(
        shown(&read(&gw, BETA, &rid).await.unwrap()),
        ["iab-audience/354", "iab-audience/386"]
    );

    // The operator marks the whole Health and Medical Services subtree
    // sensitive; alpha -> beta still scopes iab-audience.
    let config = gw.dir().join("crossflow.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let guarded = text.replace(
        r#"sensitive = ["health", "life-stage/expecting"]"#,
        r#"sensitive = ["health", "life-stage/expecting", "iab-audience/381"]"#,
    );
    assert_ne!(text, guarded);
    std::fs::write(&config, guarded).unwrap();
    gw.restart().await;
    let r = read(&gw, BETA, &rid).await.unwrap();
    assert_eq!(shown(&r), ["iab-audience/354"]);
    assert!(r.scopes.contains(&"iab-audience".to_owned()));
    // And publishing into the subtree is refused from now on.
    let refused = refusal(
        tags(&gw, ALPHA)
            .await
            .publish_tags(PublishTagsRequest {
                subject: "a-user-1".into(),
                tags: vec![tag("iab-audience", "383", 0)],
                request_id: String::new(),
            })
            .await,
    )
    .expect_fields(&["tags[0].value"]);
    assert!(refused.descriptions[0].contains("sensitive"), "{refused:?}");
}

#[tokio::test]
async fn onward_hops_see_the_intersection_along_the_chain() {
    let gw = gateway().await;
    publish(
        &gw,
        ALPHA,
        "a-user-1",
        vec![
            tag("iab-audience", "354", 0),
            tag("life-stage", "newborn", 0),
            tag("room-style", "boho", 0),
        ],
    )
    .await;
    let (ab, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    let (bc, _) = hop(&gw, BETA, "b-user-1", GAMMA, "c-user-1", &ab).await;
    // alpha->gamma {iab, room-style} ∩ alpha->beta {iab, life-stage,
    // room-style} ∩ beta->gamma {iab, life-stage} = {iab}.
    let r = read(&gw, GAMMA, &bc).await.unwrap();
    assert_eq!(shown(&r), ["iab-audience/354"]);
    assert_eq!(r.scopes, ["iab-audience"]);
    assert_eq!(
        (r.origin_partner.as_str(), r.agreement_id.as_str()),
        (ALPHA, "alpha-gamma")
    );
    // Directly, gamma would see room-style too: the chain narrowed it.
    let (ac, _) = hop(&gw, ALPHA, "a-user-1", GAMMA, "c-user-1", "").await;
    assert_eq!(
        shown(&read(&gw, GAMMA, &ac).await.unwrap()),
        ["iab-audience/354", "room-style/boho"]
    );
    // alpha has no agreement with delta: nothing, whatever beta -> delta says.
    let (bd, _) = hop(&gw, BETA, "b-user-1", DELTA, "d-user-1", &ab).await;
    let refused = assert_refused(
        read(&gw, DELTA, &bd).await,
        Code::PermissionDenied,
        "NO_TAG_AGREEMENT",
    );
    assert_eq!(refused.metadata["origin_partner"], ALPHA);
}

#[tokio::test]
async fn pseudonyms_are_pairwise_stable_and_survive_rotation() {
    let mut gw = gateway().await;
    publish(&gw, ALPHA, "a-user-1", vec![tag("iab-audience", "354", 0)]).await;
    let (to_beta, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    let (to_gamma, _) = hop(&gw, ALPHA, "a-user-1", GAMMA, "c-user-1", "").await;
    let b1 = read(&gw, BETA, &to_beta).await.unwrap().pseudonym.unwrap();
    let c1 = read(&gw, GAMMA, &to_gamma)
        .await
        .unwrap()
        .pseudonym
        .unwrap();
    // Two readers, one user: unrelated values in the same epoch.
    assert_eq!(b1.epoch, c1.epoch);
    assert_ne!(b1.value, c1.value);
    let mac = |v: &str| v.rsplit('.').next().unwrap().to_owned();
    assert_ne!(mac(&b1.value), mac(&c1.value));
    // The same reader: stable across reads and across referrals of the user.
    let (to_beta_again, _) = hop(&gw, ALPHA, "a-user-1", BETA, "b-user-1", "").await;
    assert_eq!(
        read(&gw, BETA, &to_beta).await.unwrap().pseudonym.unwrap(),
        b1
    );
    assert_eq!(
        read(&gw, BETA, &to_beta_again)
            .await
            .unwrap()
            .pseudonym
            .unwrap(),
        b1
    );
    // Another user at the same reader: another pseudonym.
    publish(&gw, ALPHA, "a-user-2", vec![tag("iab-audience", "354", 0)]).await;
    let (u2, _) = hop(&gw, ALPHA, "a-user-2", BETA, "b-user-2", "").await;
    assert_ne!(
        read(&gw, BETA, &u2).await.unwrap().pseudonym.unwrap().value,
        b1.value
    );

    // `keys rotate` + restart: a new epoch, and the old pseudonym still
    // resolves (listed beside the new one) during the 90-day overlap.
    let rotated = gw.rotate_keys();
    gw.restart().await;
    let r = read(&gw, BETA, &to_beta).await.unwrap();
    let b2 = r.pseudonym.clone().unwrap();
    assert_eq!(b2.epoch, rotated.epoch);
    assert_eq!(b2.epoch, b1.epoch + 1);
    assert_ne!(b2.value, b1.value);
    assert_eq!(r.previous_pseudonyms, std::slice::from_ref(&b1));
    let c = read(&gw, GAMMA, &to_gamma).await.unwrap();
    assert_eq!(c.previous_pseudonyms, [c1]);
    assert_ne!(c.pseudonym.unwrap().value, b2.value);
    // The tags themselves are unaffected by the rotation.
    assert_eq!(shown(&r), ["iab-audience/354"]);
}
