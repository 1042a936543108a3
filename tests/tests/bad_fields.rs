//! Hostile input, part 2: every partner-facing RPC is sent every kind of bad
//! field over real mTLS, and each answer must carry the exact gRPC code,
//! `ErrorInfo.reason` and `BadRequest` field violations the row names.
//!
//! One table per service. A row is (rpc, what is wrong, how the valid base
//! request is mutated, what must come back). Each RPC also has control rows
//! that must be accepted (the base request, and values exactly at a limit),
//! so a refusal cannot come from a broken base request. A table runs to the
//! end and then reports every failing row at once.
//!
//! `BAD_FIELDS_SUMMARY=1 cargo test -p crossflow-tests --test bad_fields --
//! --nocapture` prints how many rows each table has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossflow_proto::v1::{
    ConversionStatus, CreateReferralRequest, GetConsistencyProofRequest, GetConversionRequest,
    GetQuotaStatusRequest, GetReceiptRequest, GetReferralRequest, GetReferredUserTagsRequest,
    ListEntriesRequest, OptOutRequest, PublishTagsRequest, RedeemReferralRequest,
    ReleaseConversionRequest, ReportConversionRequest, Tag, UpdateConversionRequest,
    conversion_service_client::ConversionServiceClient, get_receipt_request,
    ledger_service_client::LedgerServiceClient, quota_service_client::QuotaServiceClient,
    referral_service_client::ReferralServiceClient, tag_service_client::TagServiceClient,
};
use crossflow_tests::{
    ALPHA, ALPHA_BETA, BETA, BETA_GAMMA, Federation, GAMMA, Refusal, TestGateway, create_req,
    now_ms, redeem_req, timestamp as ts,
};
use tonic::{Code, Status};

const OPS: &str = "ops";

/// alpha <-> beta <-> gamma; alpha -> beta may share two tag namespaces;
/// JPY orders over 100000 are held; checkpoints every 50 ms.
fn body() -> Federation {
    Federation::partners(&[ALPHA, BETA, GAMMA])
        .agreement(ALPHA_BETA, ALPHA, BETA, "max_hops = 3")
        .flow(
            ALPHA,
            BETA,
            r#"commission = { default_bps = 500 }
tag_scopes = ["iab-audience", "room-style"]"#,
        )
        .flow(BETA, ALPHA, "commission = { default_bps = 400 }")
        .both_ways(BETA_GAMMA, BETA, GAMMA)
        .then(REST)
}

/// What [`body`] adds to the federation: limits, checkpoints, tags.
const REST: &str = r#"
[fraud]
max_amount_minor_by_currency = { JPY = 100000 }

[ledger]
checkpoint_interval_ms = 50

[tags]
max_ttl_secs = 3600
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
name = "health"
pattern = "[a-z]+"
"#;

/// A referral id no hop ever had.
const UNKNOWN_ID: &str = "00000000000000000000000000000000";
/// One MiB: far past every limit, well inside the 4 MiB message limit.
const MIB: usize = 1 << 20;
const BASE_AMOUNT: i64 = 10_000;

// === rows ===

/// What a row must get back.
#[derive(Debug, Clone, Copy)]
enum Want {
    Accepted,
    Refused {
        code: Code,
        reason: &'static str,
        fields: &'static [&'static str],
    },
}

/// `INVALID_ARGUMENT INVALID_FIELD` naming exactly `fields`.
const fn bad(fields: &'static [&'static str]) -> Want {
    Want::Refused {
        code: Code::InvalidArgument,
        reason: "INVALID_FIELD",
        fields,
    }
}

const fn refused(code: Code, reason: &'static str, fields: &'static [&'static str]) -> Want {
    Want::Refused {
        code,
        reason,
        fields,
    }
}

const OK: Want = Want::Accepted;

/// One row of a table: `call` names the RPC and carries the mutation of its
/// valid base request.
struct Row<C> {
    call: C,
    what: &'static str,
    want: Want,
}

fn row<C>(call: C, what: &'static str, want: Want) -> Row<C> {
    Row { call, what, want }
}

type Mutate<R> = fn(&mut R);

/// Collects the failing rows of a table.
#[derive(Default)]
struct Report {
    rows: usize,
    failures: Vec<String>,
}

impl Report {
    /// Compares one answer with its row.
    fn check(&mut self, rpc: &str, what: &str, got: Result<(), Status>, want: Want) {
        self.rows += 1;
        let problem = match (got, want) {
            (Ok(()), Want::Accepted) => None,
            (
                Ok(()),
                Want::Refused {
                    code,
                    reason,
                    fields,
                },
            ) => Some(format!(
                "accepted; want {code:?} {reason} fields {fields:?}"
            )),
            (Err(s), Want::Accepted) => Some(format!("refused; want accepted: {}", show(&s))),
            (
                Err(s),
                Want::Refused {
                    code,
                    reason,
                    fields,
                },
            ) => refusal_mismatch(&s, code, reason, fields),
        };
        if let Some(p) = problem {
            self.failures.push(format!("{rpc} [{what}]: {p}"));
        }
    }

    /// Panics listing every failing row; prints the row count when asked.
    fn finish(self, service: &str) {
        if std::env::var_os("BAD_FIELDS_SUMMARY").is_some() {
            println!("{service}: {} rows", self.rows);
        }
        assert!(
            self.failures.is_empty(),
            "{service}: {} of {} rows failed:\n  {}",
            self.failures.len(),
            self.rows,
            self.failures.join("\n  ")
        );
    }
}

fn show(s: &Status) -> String {
    let r = Refusal::from_status(s);
    format!(
        "{:?} {:?} reason={:?} fields={:?}",
        r.code, r.message, r.reason, r.fields
    )
}

/// Why a refusal is not the one wanted, if it is not.
fn refusal_mismatch(s: &Status, code: Code, reason: &str, fields: &[&str]) -> Option<String> {
    let r = Refusal::from_status(s);
    let mut got_fields: Vec<&str> = r.fields.iter().map(String::as_str).collect();
    let mut want_fields = fields.to_vec();
    got_fields.sort_unstable();
    want_fields.sort_unstable();
    let precise = !r.message.is_empty()
        && r.domain == "crossflow.v1"
        && r.descriptions.iter().all(|d| !d.is_empty())
        // A refusal naming fields says which in its message too.
        && fields.iter().all(|f| r.message.contains(f));
    if r.code == code && r.reason == reason && got_fields == want_fields && precise {
        None
    } else {
        Some(format!(
            "got {}; want {code:?} reason={reason:?} fields={fields:?} (with domain crossflow.v1, a message naming them, non-empty descriptions)",
            show(s)
        ))
    }
}

// === values ===

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn ts_raw(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn ttl(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

const DAY_MS: i64 = 86_400_000;

// === the federation ===

/// What the base requests refer to.
struct Fixture {
    /// alpha -> beta, redeemed by beta for `b-user-1`.
    referral_id: String,
    token: String,
    /// Reported by beta, CNY, attributed to the hop.
    order_id: String,
    /// Ledger index of that report.
    index: u64,
    /// A JPY order of beta held by the amount rule.
    held_id: String,
}

async fn setup() -> (TestGateway, Fixture) {
    let gw = TestGateway::builder()
        .operator(OPS)
        .body(body())
        .start()
        .await;
    let made = gw
        .referrals(ALPHA)
        .await
        .create_referral(create_req("user-1", BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let referral_id = made.referral.unwrap().referral_id;
    gw.referrals(BETA)
        .await
        .redeem_referral(redeem_req(&made.token, "b-user-1"))
        .await
        .unwrap();
    let mut conv = ConversionServiceClient::new(gw.channel(BETA).await);
    let report = |order_id: &str, amount_minor: i64, currency: &str| ReportConversionRequest {
        order_id: order_id.into(),
        subject: "b-user-1".into(),
        amount_minor,
        currency: currency.into(),
        category: "toys".into(),
        occurred_at: Some(ts(now_ms())),
        referral_id: String::new(),
    };
    let reported = conv
        .report_conversion(report("bf-setup", BASE_AMOUNT, "CNY"))
        .await
        .unwrap()
        .into_inner();
    let index = reported.entry.unwrap().index;
    let held = conv
        .report_conversion(report("bf-held", 200_000, "JPY"))
        .await
        .unwrap()
        .into_inner()
        .conversion
        .unwrap();
    assert!(held.held, "the JPY order must be held: {held:?}");
    let fx = Fixture {
        referral_id,
        token: made.token,
        order_id: "bf-setup".into(),
        index,
        held_id: held.conversion_id,
    };
    (gw, fx)
}

// === ReferralService ===

enum ReferralCall {
    Create(Mutate<CreateReferralRequest>),
    Redeem(Mutate<RedeemReferralRequest>),
    Get(Mutate<GetReferralRequest>),
}

#[rustfmt::skip]
fn referral_table() -> Vec<Row<ReferralCall>> {
    use ReferralCall::{Create, Get, Redeem};
    vec![
        // CreateReferral, as alpha: subject user-1, to beta, target room-1.
        row(Create(|_| {}), "valid base request", OK),
        row(Create(|r| r.subject = long(256)), "subject of 256 bytes (the limit)", OK),
        row(Create(|r| r.subject = "用户-42".into()), "subject in UTF-8", OK),
        row(Create(|r| r.target = long(255)), "target of 255 bytes (the limit)", OK),
        row(Create(|r| r.request_id = "r".repeat(128)), "request_id of 128 bytes (the limit)", OK),
        row(Create(|r| r.subject.clear()), "subject empty", bad(&["subject"])),
        row(Create(|r| r.subject = long(257)), "subject too long (257)", bad(&["subject"])),
        row(Create(|r| r.subject = long(MIB)), "subject of 1 MiB", bad(&["subject"])),
        row(Create(|r| r.subject = "a\nb".into()), "subject with a newline", bad(&["subject"])),
        row(Create(|r| r.subject = "a\0b".into()), "subject with NUL", bad(&["subject"])),
        row(Create(|r| r.subject = " \t ".into()), "subject only white space", bad(&["subject"])),
        row(Create(|r| r.to_partner.clear()), "to_partner empty", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "b".repeat(64)), "to_partner too long (64)", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "Beta".into()), "to_partner upper case", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "be_ta".into()), "to_partner with '_'", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "1beta".into()), "to_partner starts with a digit", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "beta-".into()), "to_partner ends with '-'", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "bêta".into()), "to_partner not ASCII", bad(&["to_partner"])),
        row(Create(|r| r.to_partner = "zeta".into()), "to_partner unknown", refused(Code::InvalidArgument, "UNKNOWN_PARTNER", &["to_partner"])),
        row(Create(|r| r.to_partner = ALPHA.into()), "to_partner is the caller", refused(Code::InvalidArgument, "SELF_REFERRAL", &["to_partner"])),
        row(Create(|r| r.target.clear()), "target empty", bad(&["target"])),
        row(Create(|r| r.target = long(256)), "target too long (256)", bad(&["target"])),
        row(Create(|r| r.target = "room\u{7f}".into()), "target with DEL", bad(&["target"])),
        row(Create(|r| r.target = "room\n1".into()), "target with a newline", bad(&["target"])),
        row(Create(|r| r.target = "房间-1".into()), "target not ASCII", bad(&["target"])),
        row(Create(|r| r.parent_referral_id = "0".repeat(31)), "parent_referral_id too short", bad(&["parent_referral_id"])),
        row(Create(|r| r.parent_referral_id = "0".repeat(33)), "parent_referral_id too long", bad(&["parent_referral_id"])),
        row(Create(|r| r.parent_referral_id = "A".repeat(32)), "parent_referral_id upper-case hex", bad(&["parent_referral_id"])),
        row(Create(|r| r.parent_referral_id = "g".repeat(32)), "parent_referral_id not hex", bad(&["parent_referral_id"])),
        row(
            Create(|r| r.parent_referral_id = UNKNOWN_ID.into()),
            "parent_referral_id unknown",
            refused(Code::FailedPrecondition, "PARENT_NOT_REDEEMED", &[]),
        ),
        row(Create(|r| r.request_id = "r".repeat(129)), "request_id too long (129)", bad(&["request_id"])),
        row(Create(|r| r.request_id = "a b".into()), "request_id with a space", bad(&["request_id"])),
        row(Create(|r| r.request_id = "a/b".into()), "request_id with '/'", bad(&["request_id"])),
        row(Create(|r| r.request_id = "é".into()), "request_id not ASCII", bad(&["request_id"])),
        row(
            Create(|r| {
                r.subject.clear();
                r.to_partner.clear();
                r.target.clear();
                r.request_id = "a b".into();
                r.parent_referral_id = "xyz".into();
            }),
            "every field bad at once",
            bad(&[
                "subject",
                "to_partner",
                "target",
                "request_id",
                "parent_referral_id",
            ]),
        ),
        // RedeemReferral, as beta: the fixture's token for b-user-1 (a replay).
        row(Redeem(|_| {}), "valid base request (a replay)", OK),
        row(Redeem(|r| r.token.clear()), "token empty", bad(&["token"])),
        row(
            Redeem(|r| r.token = "not-a-token".into()),
            "token without the cf1. prefix",
            refused(Code::InvalidArgument, "TOKEN_MALFORMED", &["token"]),
        ),
        row(Redeem(|r| r.token = "cf1.!!!!".into()), "token not base64url", refused(Code::InvalidArgument, "TOKEN_MALFORMED", &["token"])),
        row(
            Redeem(|r| r.token = format!("cf1.{}", "A".repeat(MIB))),
            "token of 1 MiB",
            refused(Code::InvalidArgument, "TOKEN_MALFORMED", &["token"]),
        ),
        row(Redeem(|r| r.token = "cf1.é".into()), "token not ASCII", refused(Code::InvalidArgument, "TOKEN_MALFORMED", &["token"])),
        row(
            Redeem(|r| {
                // One base64url character in the sealed part changed.
                let mut b = r.token.clone().into_bytes();
                let i = b.len() / 2;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                r.token = String::from_utf8(b).unwrap();
            }),
            "token tampered",
            refused(Code::InvalidArgument, "TOKEN_INVALID", &["token"]),
        ),
        row(Redeem(|r| r.subject.clear()), "subject empty", bad(&["subject"])),
        row(Redeem(|r| r.subject = long(257)), "subject too long (257)", bad(&["subject"])),
        row(Redeem(|r| r.subject = "a\u{1b}b".into()), "subject with ESC", bad(&["subject"])),
        row(
            Redeem(|r| {
                r.token.clear();
                r.subject.clear();
            }),
            "every field bad at once",
            bad(&["token", "subject"]),
        ),
        // GetReferral, as alpha: the fixture's referral.
        row(Get(|_| {}), "valid base request", OK),
        row(Get(|r| r.referral_id.clear()), "referral_id empty", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = "0".repeat(31)), "referral_id too short", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = "0".repeat(33)), "referral_id too long", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = r.referral_id.to_uppercase()), "referral_id upper-case hex", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = "z".repeat(32)), "referral_id not hex", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = long(MIB)), "referral_id of 1 MiB", bad(&["referral_id"])),
        row(Get(|r| r.referral_id = UNKNOWN_ID.into()), "referral_id unknown", refused(Code::NotFound, "REFERRAL_NOT_FOUND", &[])),
    ]
}

#[tokio::test]
async fn referral_service_bad_fields() {
    let (gw, fx) = setup().await;
    let mut alpha = ReferralServiceClient::new(gw.channel(ALPHA).await);
    let mut beta = ReferralServiceClient::new(gw.channel(BETA).await);
    let mut report = Report::default();
    for row in referral_table() {
        let (rpc, got) = match row.call {
            ReferralCall::Create(m) => {
                let mut r = create_req("user-1", BETA, "room-1");
                m(&mut r);
                ("CreateReferral", alpha.create_referral(r).await.map(drop))
            }
            ReferralCall::Redeem(m) => {
                let mut r = redeem_req(&fx.token, "b-user-1");
                m(&mut r);
                ("RedeemReferral", beta.redeem_referral(r).await.map(drop))
            }
            ReferralCall::Get(m) => {
                let mut r = GetReferralRequest {
                    referral_id: fx.referral_id.clone(),
                };
                m(&mut r);
                ("GetReferral", alpha.get_referral(r).await.map(drop))
            }
        };
        report.check(rpc, row.what, got, row.want);
    }
    report.finish("ReferralService");
}

// === TagService ===

enum TagCall {
    Publish(Mutate<PublishTagsRequest>),
    Read(Mutate<GetReferredUserTagsRequest>),
    OptOut(Mutate<OptOutRequest>),
}

fn tag(ns: &str, value: &str) -> Tag {
    Tag {
        namespace: ns.into(),
        value: value.into(),
        ttl: None,
    }
}

/// `n` distinct values of `[a-z]+`.
fn words(n: usize) -> Vec<Tag> {
    (0..n)
        .map(|i| {
            let w: String = [i / 26 / 26, i / 26 % 26, i % 26]
                .iter()
                .map(|d| char::from(b'a' + *d as u8))
                .collect();
            tag("room-style", &w)
        })
        .collect()
}

#[rustfmt::skip]
fn tag_table() -> Vec<Row<TagCall>> {
    use TagCall::{OptOut, Publish, Read};
    vec![
        // PublishTags, as alpha: tag-user, [iab-audience/354, room-style/loft].
        row(Publish(|_| {}), "valid base request", OK),
        row(Publish(|r| r.tags[0].ttl = ttl(3600, 0)), "ttl of max_ttl_secs (the limit)", OK),
        row(Publish(|r| r.tags = words(100)), "100 tags (the limit)", OK),
        row(Publish(|r| r.tags[1].value = "l".repeat(128)), "value of 128 bytes (the limit)", OK),
        row(Publish(|r| r.subject.clear()), "subject empty", bad(&["subject"])),
        row(Publish(|r| r.subject = long(257)), "subject too long (257)", bad(&["subject"])),
        row(Publish(|r| r.subject = "a\u{85}b".into()), "subject with a C1 control", bad(&["subject"])),
        row(Publish(|r| r.tags.clear()), "no tags", bad(&["tags"])),
        row(Publish(|r| r.tags = words(101)), "101 tags", bad(&["tags"])),
        row(Publish(|r| r.tags[0].namespace.clear()), "namespace empty", bad(&["tags[0].namespace"])),
        row(Publish(|r| r.tags[0].namespace = "zodiac".into()), "namespace unknown", bad(&["tags[0].namespace"])),
        row(Publish(|r| r.tags[0].namespace = "IAB-AUDIENCE".into()), "namespace upper case", bad(&["tags[0].namespace"])),
        row(Publish(|r| r.tags[0].namespace = long(MIB)), "namespace of 1 MiB", bad(&["tags[0].namespace"])),
        row(Publish(|r| r.tags[0] = tag("health", "flu")), "namespace sensitive", bad(&["tags[0].namespace"])),
        row(Publish(|r| r.tags[1].namespace = "zodiac".into()), "second tag's namespace unknown", bad(&["tags[1].namespace"])),
        row(Publish(|r| r.tags[0].value.clear()), "value empty", bad(&["tags[0].value"])),
        row(Publish(|r| r.tags[0].value = "999999".into()), "value not an IAB id", bad(&["tags[0].value"])),
        row(Publish(|r| r.tags[0].value = "0354".into()), "IAB value with a leading zero", bad(&["tags[0].value"])),
        row(Publish(|r| r.tags[0].value = "12345678901".into()), "IAB value of 11 digits", bad(&["tags[0].value"])),
        row(Publish(|r| r.tags[0].value = "abc".into()), "IAB value not decimal", bad(&["tags[0].value"])),
        row(Publish(|r| r.tags[1].value = "Loft".into()), "value outside the pattern", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[1].value = "l".repeat(129)), "value too long (129)", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[1].value = "lo\nft".into()), "value with a newline", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[1] = tag("life-stage", "teen")), "value not listed", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[1] = tag("life-stage", "expecting")), "value sensitive", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[1] = r.tags[0].clone()), "the same tag twice", bad(&["tags[1].value"])),
        row(Publish(|r| r.tags[0].ttl = ttl(-1, 0)), "ttl negative", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.tags[0].ttl = ttl(10, 5)), "ttl not whole seconds", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.tags[0].ttl = ttl(0, -1)), "ttl of negative nanos", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.tags[0].ttl = ttl(3601, 0)), "ttl over max_ttl_secs", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.tags[0].ttl = ttl(i64::MAX, 0)), "ttl of i64::MAX seconds", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.tags[0].ttl = ttl(i64::MIN, 0)), "ttl of i64::MIN seconds", bad(&["tags[0].ttl"])),
        row(Publish(|r| r.request_id = "r".repeat(129)), "request_id too long (129)", bad(&["request_id"])),
        row(Publish(|r| r.request_id = "a b".into()), "request_id with a space", bad(&["request_id"])),
        row(
            Publish(|r| {
                r.subject.clear();
                r.request_id = "?".into();
                r.tags[0].namespace.clear();
                r.tags[1].ttl = ttl(-5, 0);
            }),
            "every field bad at once",
            bad(&["subject", "request_id", "tags[0].namespace", "tags[1].ttl"]),
        ),
        // GetReferredUserTags, as beta: the fixture's referral.
        row(Read(|_| {}), "valid base request", OK),
        row(Read(|r| r.referral_id.clear()), "referral_id empty", bad(&["referral_id"])),
        row(Read(|r| r.referral_id = "0".repeat(31)), "referral_id too short", bad(&["referral_id"])),
        row(Read(|r| r.referral_id = r.referral_id.to_uppercase()), "referral_id upper-case hex", bad(&["referral_id"])),
        row(Read(|r| r.referral_id = "-".repeat(32)), "referral_id not hex", bad(&["referral_id"])),
        row(Read(|r| r.referral_id = long(MIB)), "referral_id of 1 MiB", bad(&["referral_id"])),
        row(Read(|r| r.referral_id = UNKNOWN_ID.into()), "referral_id unknown", refused(Code::NotFound, "REFERRAL_NOT_FOUND", &[])),
        // OptOut, as alpha: optout-user.
        row(OptOut(|_| {}), "valid base request", OK),
        row(OptOut(|r| r.subject.clear()), "subject empty", bad(&["subject"])),
        row(OptOut(|r| r.subject = long(257)), "subject too long (257)", bad(&["subject"])),
        row(OptOut(|r| r.subject = long(MIB)), "subject of 1 MiB", bad(&["subject"])),
        row(OptOut(|r| r.subject = "a\rb".into()), "subject with CR", bad(&["subject"])),
        row(OptOut(|r| r.subject = "   ".into()), "subject only spaces", bad(&["subject"])),
    ]
}

#[tokio::test]
async fn tag_service_bad_fields() {
    let (gw, fx) = setup().await;
    let mut alpha = TagServiceClient::new(gw.channel(ALPHA).await);
    let mut beta = TagServiceClient::new(gw.channel(BETA).await);
    let mut report = Report::default();
    for row in tag_table() {
        let (rpc, got) = match row.call {
            TagCall::Publish(m) => {
                let mut r = PublishTagsRequest {
                    subject: "tag-user".into(),
                    tags: vec![tag("iab-audience", "354"), tag("room-style", "loft")],
                    request_id: String::new(),
                };
                m(&mut r);
                ("PublishTags", alpha.publish_tags(r).await.map(drop))
            }
            TagCall::Read(m) => {
                let mut r = GetReferredUserTagsRequest {
                    referral_id: fx.referral_id.clone(),
                };
                m(&mut r);
                (
                    "GetReferredUserTags",
                    beta.get_referred_user_tags(r).await.map(drop),
                )
            }
            TagCall::OptOut(m) => {
                let mut r = OptOutRequest {
                    subject: "optout-user".into(),
                };
                m(&mut r);
                ("OptOut", alpha.opt_out(r).await.map(drop))
            }
        };
        report.check(rpc, row.what, got, row.want);
    }
    report.finish("TagService");
}

// === ConversionService ===

enum ConversionCall {
    Report(Mutate<ReportConversionRequest>),
    Update(Mutate<UpdateConversionRequest>),
    Get(Mutate<GetConversionRequest>),
    /// As the operator.
    Release(Mutate<ReleaseConversionRequest>),
}

#[rustfmt::skip]
fn conversion_table() -> Vec<Row<ConversionCall>> {
    use ConversionCall::{Get, Release, Report, Update};
    const AMOUNT: &[&str] = &["amount_minor"];
    const CURRENCY: &[&str] = &["currency"];
    const CATEGORY: &[&str] = &["category"];
    const OCCURRED: &[&str] = &["occurred_at"];
    const ORDER: &[&str] = &["order_id"];
    vec![
        // ReportConversion, as beta: a fresh order id per row, 10000 CNY of
        // toys, now, no referral_id.
        row(Report(|_| {}), "valid base request", OK),
        row(Report(|r| r.amount_minor = 1_000_000_000_000_000), "amount of 1e15 (the limit)", OK),
        row(Report(|r| r.amount_minor = 1), "amount of 1", OK),
        row(Report(|r| r.currency = "JPY".into()), "currency without minor units", OK),
        row(Report(|r| r.category = "c".repeat(64)), "category of 64 bytes (the limit)", OK),
        row(Report(|r| r.order_id = "o".repeat(128)), "order_id of 128 bytes (the limit)", OK),
        row(Report(|r| r.occurred_at = Some(ts(now_ms() + 4 * 60_000))), "occurred_at 4 min ahead", OK),
        row(Report(|r| r.occurred_at = Some(ts(now_ms() - 89 * DAY_MS))), "occurred_at 89 days old", OK),
        row(Report(|r| r.order_id.clear()), "order_id empty", bad(ORDER)),
        row(Report(|r| r.order_id = "o".repeat(129)), "order_id too long (129)", bad(ORDER)),
        row(Report(|r| r.order_id = long(MIB)), "order_id of 1 MiB", bad(ORDER)),
        row(Report(|r| r.order_id = "order 1".into()), "order_id with a space", bad(ORDER)),
        row(Report(|r| r.order_id = "order/1".into()), "order_id with '/'", bad(ORDER)),
        row(Report(|r| r.order_id = "订单1".into()), "order_id not ASCII", bad(ORDER)),
        row(Report(|r| r.subject.clear()), "subject empty", bad(&["subject"])),
        row(Report(|r| r.subject = long(257)), "subject too long (257)", bad(&["subject"])),
        row(Report(|r| r.subject = "a\u{7}b".into()), "subject with BEL", bad(&["subject"])),
        row(Report(|r| r.amount_minor = 0), "amount zero", bad(AMOUNT)),
        row(Report(|r| r.amount_minor = -1), "amount negative", bad(AMOUNT)),
        row(Report(|r| r.amount_minor = i64::MIN), "amount i64::MIN", bad(AMOUNT)),
        row(Report(|r| r.amount_minor = i64::MAX), "amount i64::MAX", bad(AMOUNT)),
        row(Report(|r| r.amount_minor = 1_000_000_000_000_001), "amount 1e15 + 1", bad(AMOUNT)),
        row(Report(|r| r.currency.clear()), "currency empty", bad(CURRENCY)),
        row(Report(|r| r.currency = "XXY".into()), "currency unknown", bad(CURRENCY)),
        row(Report(|r| r.currency = "cny".into()), "currency lower case", bad(CURRENCY)),
        row(Report(|r| r.currency = "CN".into()), "currency too short", bad(CURRENCY)),
        row(Report(|r| r.currency = "CNYY".into()), "currency too long", bad(CURRENCY)),
        row(Report(|r| r.currency = long(MIB)), "currency of 1 MiB", bad(CURRENCY)),
        row(Report(|r| r.currency = "XAU".into()), "currency without a minor unit (gold)", bad(CURRENCY)),
        row(Report(|r| r.currency = "HRK".into()), "currency withdrawn", bad(CURRENCY)),
        row(Report(|r| r.currency = "C Y".into()), "currency with a space", bad(CURRENCY)),
        row(Report(|r| r.category.clear()), "category empty", bad(CATEGORY)),
        row(Report(|r| r.category = "c".repeat(65)), "category too long (65)", bad(CATEGORY)),
        row(Report(|r| r.category = "Toys".into()), "category upper case", bad(CATEGORY)),
        row(Report(|r| r.category = "toys!".into()), "category with '!'", bad(CATEGORY)),
        row(Report(|r| r.category = "玩具".into()), "category not ASCII", bad(CATEGORY)),
        row(Report(|r| r.occurred_at = None), "occurred_at missing", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = Some(ts(now_ms() + 6 * 60_000))), "occurred_at 6 min ahead", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = Some(ts(now_ms() + 100 * 365 * DAY_MS))), "occurred_at a century ahead", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = Some(ts(now_ms() - 91 * DAY_MS))), "occurred_at 91 days old", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(0, 0)), "occurred_at the Unix epoch", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(-62_135_596_800, 0)), "occurred_at year 1", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(253_402_300_800, 0)), "occurred_at year 10000", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(i64::MAX, 0)), "occurred_at i64::MAX seconds", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(i64::MIN, 0)), "occurred_at i64::MIN seconds", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(1_700_000_000, -1)), "occurred_at negative nanos", bad(OCCURRED)),
        row(Report(|r| r.occurred_at = ts_raw(1_700_000_000, 1_000_000_000)), "occurred_at nanos of 1e9", bad(OCCURRED)),
        row(Report(|r| r.referral_id = "0".repeat(31)), "referral_id too short", bad(&["referral_id"])),
        row(Report(|r| r.referral_id = "0".repeat(33)), "referral_id too long", bad(&["referral_id"])),
        row(Report(|r| r.referral_id = "F".repeat(32)), "referral_id upper-case hex", bad(&["referral_id"])),
        row(Report(|r| r.referral_id = "q".repeat(32)), "referral_id not hex", bad(&["referral_id"])),
        row(Report(|r| r.referral_id = UNKNOWN_ID.into()), "referral_id unknown", refused(Code::FailedPrecondition, "REFERRAL_NOT_A_TOUCH", &[])),
        row(
            Report(|r| {
                r.order_id.clear();
                r.subject.clear();
                r.amount_minor = -1;
                r.currency = "xxx".into();
                r.category.clear();
                r.occurred_at = None;
                r.referral_id = "x".into();
            }),
            "every field bad at once",
            bad(&[
                "order_id",
                "subject",
                "amount_minor",
                "currency",
                "category",
                "occurred_at",
                "referral_id",
            ]),
        ),
        row(
            Report(|r| {
                r.order_id.clear();
                r.amount_minor = 0;
                r.occurred_at = ts_raw(0, -5);
            }),
            "an invalid timestamp among other bad fields",
            bad(&["order_id", "amount_minor", "occurred_at"]),
        ),
        // UpdateConversion, as beta: confirm the fixture's order.
        row(Update(|_| {}), "valid base request", OK),
        row(Update(|_| {}), "valid base request again (a replay)", OK),
        row(Update(|r| r.order_id.clear()), "order_id empty", bad(ORDER)),
        row(Update(|r| r.order_id = "o".repeat(129)), "order_id too long (129)", bad(ORDER)),
        row(Update(|r| r.order_id = "a b".into()), "order_id with a space", bad(ORDER)),
        row(Update(|r| r.order_id = "no-such-order".into()), "order_id unknown", refused(Code::NotFound, "CONVERSION_NOT_FOUND", &[])),
        row(Update(|r| r.status = ConversionStatus::Unspecified as i32), "status unspecified", bad(&["status"])),
        row(Update(|r| r.status = ConversionStatus::Pending as i32), "status PENDING", bad(&["status"])),
        row(Update(|r| r.status = 99), "status not in the enum", bad(&["status"])),
        row(Update(|r| r.status = -1), "status negative", bad(&["status"])),
        row(Update(|r| r.refund_minor = 5), "refund_minor with CONFIRMED", bad(&["refund_minor"])),
        row(
            Update(|r| {
                r.status = ConversionStatus::Cancelled as i32;
                r.refund_minor = i64::MAX;
            }),
            "refund_minor i64::MAX with CANCELLED",
            bad(&["refund_minor"]),
        ),
        row(
            Update(|r| {
                r.status = ConversionStatus::Refunded as i32;
                r.refund_minor = -1;
            }),
            "refund_minor negative",
            bad(&["refund_minor"]),
        ),
        row(
            Update(|r| {
                r.status = ConversionStatus::Refunded as i32;
                r.refund_minor = i64::MIN;
            }),
            "refund_minor i64::MIN",
            bad(&["refund_minor"]),
        ),
        row(
            Update(|r| {
                r.status = ConversionStatus::Refunded as i32;
                r.refund_minor = BASE_AMOUNT + 1;
            }),
            "refund_minor over the order amount",
            refused(Code::FailedPrecondition, "REFUND_EXCEEDS_REMAINING", &[]),
        ),
        row(
            Update(|r| {
                r.status = ConversionStatus::Refunded as i32;
                r.refund_minor = i64::MAX;
            }),
            "refund_minor i64::MAX",
            refused(Code::FailedPrecondition, "REFUND_EXCEEDS_REMAINING", &[]),
        ),
        row(Update(|r| r.request_id = "r".repeat(129)), "request_id too long (129)", bad(&["request_id"])),
        row(Update(|r| r.request_id = "a\tb".into()), "request_id with a tab", bad(&["request_id"])),
        row(
            Update(|r| {
                r.order_id.clear();
                r.status = 0;
                r.request_id = "a b".into();
            }),
            "every field bad at once",
            bad(&["order_id", "status", "request_id"]),
        ),
        // GetConversion, as beta: the fixture's order.
        row(Get(|_| {}), "valid base request", OK),
        row(Get(|r| r.order_id.clear()), "order_id empty", bad(ORDER)),
        row(Get(|r| r.order_id = "o".repeat(129)), "order_id too long (129)", bad(ORDER)),
        row(Get(|r| r.order_id = long(MIB)), "order_id of 1 MiB", bad(ORDER)),
        row(Get(|r| r.order_id = "a;b".into()), "order_id with ';'", bad(ORDER)),
        row(Get(|r| r.order_id = "no-such-order".into()), "order_id unknown", refused(Code::NotFound, "CONVERSION_NOT_FOUND", &[])),
        // ReleaseConversion, as the operator: the fixture's held order. The
        // first row releases it; later valid ids find it no longer held.
        row(Release(|_| {}), "valid base request", OK),
        row(
            Release(|r| r.note = "n".repeat(256)),
            "note of 256 bytes (the limit) on a released conversion",
            refused(Code::FailedPrecondition, "NOT_HELD", &[]),
        ),
        row(Release(|r| r.conversion_id.clear()), "conversion_id empty", bad(&["conversion_id"])),
        row(Release(|r| r.conversion_id = "0".repeat(31)), "conversion_id too short", bad(&["conversion_id"])),
        row(Release(|r| r.conversion_id = r.conversion_id.to_uppercase()), "conversion_id upper-case hex", bad(&["conversion_id"])),
        row(Release(|r| r.conversion_id = "x".repeat(32)), "conversion_id not hex", bad(&["conversion_id"])),
        row(Release(|r| r.conversion_id = long(MIB)), "conversion_id of 1 MiB", bad(&["conversion_id"])),
        row(Release(|r| r.conversion_id = UNKNOWN_ID.into()), "conversion_id unknown", refused(Code::NotFound, "CONVERSION_NOT_FOUND", &[])),
        row(Release(|r| r.note = "n".repeat(257)), "note too long (257)", bad(&["note"])),
        row(Release(|r| r.note = "line\nbreak".into()), "note with a newline", bad(&["note"])),
        row(Release(|r| r.note = "vérifié".into()), "note not ASCII", bad(&["note"])),
        row(
            Release(|r| {
                r.conversion_id.clear();
                r.note = "\u{7f}".into();
            }),
            "every field bad at once",
            bad(&["conversion_id", "note"]),
        ),
    ]
}

#[tokio::test]
async fn conversion_service_bad_fields() {
    let (gw, fx) = setup().await;
    let mut beta = ConversionServiceClient::new(gw.channel(BETA).await);
    let mut ops = ConversionServiceClient::new(gw.channel(&format!("operator-{OPS}")).await);
    let mut report = Report::default();
    for (i, row) in conversion_table().into_iter().enumerate() {
        let (rpc, got) = match row.call {
            ConversionCall::Report(m) => {
                let mut r = ReportConversionRequest {
                    order_id: format!("bf-{i}"),
                    subject: "buyer-1".into(),
                    amount_minor: BASE_AMOUNT,
                    currency: "CNY".into(),
                    category: "toys".into(),
                    occurred_at: Some(ts(now_ms())),
                    referral_id: String::new(),
                };
                m(&mut r);
                (
                    "ReportConversion",
                    beta.report_conversion(r).await.map(drop),
                )
            }
            ConversionCall::Update(m) => {
                let mut r = UpdateConversionRequest {
                    order_id: fx.order_id.clone(),
                    status: ConversionStatus::Confirmed as i32,
                    refund_minor: 0,
                    request_id: String::new(),
                };
                m(&mut r);
                (
                    "UpdateConversion",
                    beta.update_conversion(r).await.map(drop),
                )
            }
            ConversionCall::Get(m) => {
                let mut r = GetConversionRequest {
                    order_id: fx.order_id.clone(),
                };
                m(&mut r);
                ("GetConversion", beta.get_conversion(r).await.map(drop))
            }
            ConversionCall::Release(m) => {
                let mut r = ReleaseConversionRequest {
                    conversion_id: fx.held_id.clone(),
                    note: "checked by ops".into(),
                };
                m(&mut r);
                (
                    "ReleaseConversion",
                    ops.release_conversion(r).await.map(drop),
                )
            }
        };
        report.check(rpc, row.what, got, row.want);
    }
    report.finish("ConversionService");
}

// === LedgerService ===

enum LedgerCall {
    Receipt(Mutate<GetReceiptRequest>),
    Consistency(Mutate<GetConsistencyProofRequest>),
    List(Mutate<ListEntriesRequest>),
}

fn by_order(order_id: String) -> Option<get_receipt_request::Entry> {
    Some(get_receipt_request::Entry::OrderId(order_id))
}

fn by_index(index: u64) -> Option<get_receipt_request::Entry> {
    Some(get_receipt_request::Entry::Index(index))
}

#[rustfmt::skip]
fn ledger_table() -> Vec<Row<LedgerCall>> {
    use LedgerCall::{Consistency, List, Receipt};
    const TOKEN: &[&str] = &["page_token"];
    vec![
        // GetReceipt, as beta: by the index of the fixture's report.
        row(Receipt(|_| {}), "valid base request", OK),
        row(Receipt(|r| r.entry = by_order("bf-setup".into())), "by a known order_id", OK),
        row(Receipt(|r| r.entry = None), "entry missing", bad(&["entry"])),
        row(Receipt(|r| r.entry = by_index(u64::MAX)), "index u64::MAX", bad(&["index"])),
        row(Receipt(|r| r.entry = by_index(1 << 63)), "index 2^63", bad(&["index"])),
        row(Receipt(|r| r.entry = by_index(1_000_000)), "index past the end", refused(Code::NotFound, "NO_SUCH_ENTRY", &[])),
        row(Receipt(|r| r.entry = by_order(String::new())), "order_id empty", bad(&["order_id"])),
        row(Receipt(|r| r.entry = by_order("o".repeat(129))), "order_id too long (129)", bad(&["order_id"])),
        row(Receipt(|r| r.entry = by_order(long(MIB))), "order_id of 1 MiB", bad(&["order_id"])),
        row(Receipt(|r| r.entry = by_order("bf setup".into())), "order_id with a space", bad(&["order_id"])),
        row(Receipt(|r| r.entry = by_order("订单".into())), "order_id not ASCII", bad(&["order_id"])),
        row(Receipt(|r| r.entry = by_order("no-such-order".into())), "order_id unknown", refused(Code::NotFound, "NO_SUCH_ORDER", &[])),
        // GetConsistencyProof: from 1 to the latest checkpoint.
        row(Consistency(|_| {}), "valid base request", OK),
        row(Consistency(|r| r.from_size = 0), "from_size 0", bad(&["from_size"])),
        row(Consistency(|r| r.from_size = u64::MAX), "from_size u64::MAX", bad(&["from_size"])),
        row(Consistency(|r| r.to_size = u64::MAX), "to_size u64::MAX", refused(Code::NotFound, "NO_SUCH_CHECKPOINT", &[])),
        row(Consistency(|r| r.to_size = 1_000_000), "to_size never signed", refused(Code::NotFound, "NO_SUCH_CHECKPOINT", &[])),
        // ListEntries, as beta: from 0, pages of 10.
        row(List(|_| {}), "valid base request", OK),
        row(List(|r| r.page_size = 0), "page_size 0 (the default)", OK),
        row(List(|r| r.page_size = 1000), "page_size 1000 (the limit)", OK),
        row(List(|r| r.since_index = (1 << 63) - 1), "since_index 2^63 - 1", OK),
        row(List(|r| r.page_token = "i0".into()), "page_token of index 0", OK),
        row(List(|r| r.page_size = 1001), "page_size 1001", bad(&["page_size"])),
        row(List(|r| r.page_size = u32::MAX), "page_size u32::MAX", bad(&["page_size"])),
        row(List(|r| r.since_index = 1 << 63), "since_index 2^63", bad(&["since_index"])),
        row(List(|r| r.since_index = u64::MAX), "since_index u64::MAX", bad(&["since_index"])),
        row(List(|r| r.page_token = "garbage".into()), "page_token garbage", bad(TOKEN)),
        row(List(|r| r.page_token = "i".into()), "page_token without a number", bad(TOKEN)),
        row(List(|r| r.page_token = "i-1".into()), "page_token negative", bad(TOKEN)),
        row(List(|r| r.page_token = "i+5".into()), "page_token with a sign", bad(TOKEN)),
        row(List(|r| r.page_token = "i05".into()), "page_token with a leading zero", bad(TOKEN)),
        row(List(|r| r.page_token = "i 5".into()), "page_token with a space", bad(TOKEN)),
        row(List(|r| r.page_token = "i9223372036854775808".into()), "page_token 2^63", bad(TOKEN)),
        row(List(|r| r.page_token = "i18446744073709551616".into()), "page_token past u64", bad(TOKEN)),
        row(List(|r| r.page_token = format!("i{}", "9".repeat(MIB))), "page_token of 1 MiB", bad(TOKEN)),
    ]
}

#[tokio::test]
async fn ledger_service_bad_fields() {
    let (gw, fx) = setup().await;
    let mut beta = LedgerServiceClient::new(gw.channel(BETA).await);
    let mut report = Report::default();
    for row in ledger_table() {
        let (rpc, got) = match row.call {
            LedgerCall::Receipt(m) => {
                let mut r = GetReceiptRequest {
                    entry: by_index(fx.index),
                };
                m(&mut r);
                ("GetReceipt", beta.get_receipt(r).await.map(drop))
            }
            LedgerCall::Consistency(m) => {
                let mut r = GetConsistencyProofRequest {
                    from_size: 1,
                    to_size: 0,
                };
                m(&mut r);
                (
                    "GetConsistencyProof",
                    beta.get_consistency_proof(r).await.map(drop),
                )
            }
            LedgerCall::List(m) => {
                let mut r = ListEntriesRequest {
                    since_index: 0,
                    page_size: 10,
                    page_token: String::new(),
                };
                m(&mut r);
                ("ListEntries", beta.list_entries(r).await.map(drop))
            }
        };
        report.check(rpc, row.what, got, row.want);
    }
    report.finish("LedgerService");
}

// === QuotaService ===

enum QuotaCall {
    AsPartner(Mutate<GetQuotaStatusRequest>),
    AsOperator(Mutate<GetQuotaStatusRequest>),
}

#[rustfmt::skip]
fn quota_table() -> Vec<Row<QuotaCall>> {
    use QuotaCall::{AsOperator, AsPartner};
    const PARTNER: &[&str] = &["partner"];
    vec![
        // As alpha: partner empty (its own).
        row(AsPartner(|_| {}), "valid base request", OK),
        row(AsPartner(|r| r.partner = ALPHA.into()), "partner naming itself", OK),
        row(AsPartner(|r| r.partner = BETA.into()), "partner naming another partner", refused(Code::PermissionDenied, "OTHER_PARTNER", &[])),
        row(AsPartner(|r| r.partner = "zeta".into()), "partner naming an unknown partner", refused(Code::PermissionDenied, "OTHER_PARTNER", &[])),
        row(AsPartner(|r| r.partner = "Alpha".into()), "partner upper case", bad(PARTNER)),
        row(AsPartner(|r| r.partner = long(MIB)), "partner of 1 MiB", bad(PARTNER)),
        // As the operator: partner alpha.
        row(AsOperator(|_| {}), "valid base request", OK),
        row(AsOperator(|r| r.partner.clear()), "partner empty", refused(Code::InvalidArgument, "PARTNER_REQUIRED", PARTNER)),
        row(AsOperator(|r| r.partner = "zeta".into()), "partner unknown", refused(Code::InvalidArgument, "UNKNOWN_PARTNER", PARTNER)),
        row(AsOperator(|r| r.partner = "a".repeat(64)), "partner too long (64)", bad(PARTNER)),
        row(AsOperator(|r| r.partner = long(MIB)), "partner of 1 MiB", bad(PARTNER)),
        row(AsOperator(|r| r.partner = "ALPHA".into()), "partner upper case", bad(PARTNER)),
        row(AsOperator(|r| r.partner = "al pha".into()), "partner with a space", bad(PARTNER)),
        row(AsOperator(|r| r.partner = "alphä".into()), "partner not ASCII", bad(PARTNER)),
        row(AsOperator(|r| r.partner = "-alpha".into()), "partner starts with '-'", bad(PARTNER)),
    ]
}

#[tokio::test]
async fn quota_service_bad_fields() {
    let (gw, _fx) = setup().await;
    let mut alpha = QuotaServiceClient::new(gw.channel(ALPHA).await);
    let mut ops = QuotaServiceClient::new(gw.channel(&format!("operator-{OPS}")).await);
    let mut report = Report::default();
    for row in quota_table() {
        let got = match row.call {
            QuotaCall::AsPartner(m) => {
                let mut r = GetQuotaStatusRequest {
                    partner: String::new(),
                };
                m(&mut r);
                alpha.get_quota_status(r).await.map(drop)
            }
            QuotaCall::AsOperator(m) => {
                let mut r = GetQuotaStatusRequest {
                    partner: ALPHA.into(),
                };
                m(&mut r);
                ops.get_quota_status(r).await.map(drop)
            }
        };
        let rpc = match row.call {
            QuotaCall::AsPartner(_) => "GetQuotaStatus as a partner",
            QuotaCall::AsOperator(_) => "GetQuotaStatus as an operator",
        };
        report.check(rpc, row.what, got, row.want);
    }
    report.finish("QuotaService");
}

/// The tables themselves: every row names at least one RPC outcome, and
/// descriptions are unique per RPC so a failure report is unambiguous.
#[test]
fn rows_are_distinct() {
    fn distinct<C>(rows: &[Row<C>], rpc: impl Fn(&C) -> usize) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        rows.iter()
            .filter(|r| !seen.insert((rpc(&r.call), r.what)))
            .map(|r| r.what.to_owned())
            .collect()
    }
    let mut dups = Vec::new();
    dups.extend(distinct(&referral_table(), |c| match c {
        ReferralCall::Create(_) => 0,
        ReferralCall::Redeem(_) => 1,
        ReferralCall::Get(_) => 2,
    }));
    dups.extend(distinct(&tag_table(), |c| match c {
        TagCall::Publish(_) => 0,
        TagCall::Read(_) => 1,
        TagCall::OptOut(_) => 2,
    }));
    dups.extend(distinct(&conversion_table(), |c| match c {
        ConversionCall::Report(_) => 0,
        ConversionCall::Update(_) => 1,
        ConversionCall::Get(_) => 2,
        ConversionCall::Release(_) => 3,
    }));
    dups.extend(distinct(&ledger_table(), |c| match c {
        LedgerCall::Receipt(_) => 0,
        LedgerCall::Consistency(_) => 1,
        LedgerCall::List(_) => 2,
    }));
    dups.extend(distinct(&quota_table(), |c| match c {
        QuotaCall::AsPartner(_) => 0,
        QuotaCall::AsOperator(_) => 1,
    }));
    assert!(dups.is_empty(), "duplicate row descriptions: {dups:?}");
}

// === below the generated clients: malformed protobuf ===

/// Sends hand-made request bytes: generated clients cannot send a string
/// field that is not UTF-8, or a field with the wrong wire type, but a
/// partner's own encoder (or an attacker) can.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Status> {
        use prost::bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, message).
fn ld(tag: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3 | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field.
fn vi(tag: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3, &mut out);
    varint(v, &mut out);
    out
}

/// One wire row: the method, what is wrong, the request bytes, the caller.
struct WireRow {
    path: &'static str,
    what: &'static str,
    body: Vec<u8>,
    caller: &'static str,
    want: Want,
}

/// A message that does not decode, naming the outermost field prost's
/// decode error names (the proposed answer; today it is INTERNAL).
const fn malformed(fields: &'static [&'static str]) -> Want {
    Want::Refused {
        code: Code::InvalidArgument,
        reason: "MALFORMED_MESSAGE",
        fields,
    }
}

#[rustfmt::skip]
fn wire_table() -> Vec<WireRow> {
    const CREATE: &str = "/crossflow.v1.ReferralService/CreateReferral";
    const PUBLISH: &str = "/crossflow.v1.TagService/PublishTags";
    const REPORT: &str = "/crossflow.v1.ConversionService/ReportConversion";
    const RECEIPT: &str = "/crossflow.v1.LedgerService/GetReceipt";
    const QUOTA: &str = "/crossflow.v1.QuotaService/GetQuotaStatus";
    let create = |subject: &[u8], to: &[u8], target: &[u8]| {
        [ld(1, subject), ld(2, to), ld(3, target)].concat()
    };
    let w = |path, what, body, caller, want| WireRow {
        path,
        what,
        body,
        caller,
        want,
    };
    vec![
        w(CREATE, "hand-encoded valid request", create(b"user-1", b"beta", b"room-1"), ALPHA, OK),
        w(CREATE, "subject not UTF-8 (0xff)", create(b"\xff", b"beta", b"room-1"), ALPHA, malformed(&["subject"])),
        w(CREATE, "to_partner overlong UTF-8", create(b"user-1", b"\xc0\xaf", b"room-1"), ALPHA, malformed(&["to_partner"])),
        w(CREATE, "target a UTF-16 surrogate", create(b"user-1", b"beta", b"\xed\xa0\x80"), ALPHA, malformed(&["target"])),
        w(CREATE, "subject sent as a varint", [vi(1, 7), ld(2, b"beta"), ld(3, b"room-1")].concat(), ALPHA, malformed(&["subject"])),
        w(CREATE, "truncated field", [ld(1, b"user-1"), vec![0x12, 0x0a, b'b']].concat(), ALPHA, malformed(&["to_partner"])),
        w(
            PUBLISH,
            "tag namespace not UTF-8",
            [
                ld(1, b"tag-user"),
                ld(2, &[ld(1, b"\xfe"), ld(2, b"354")].concat()),
            ]
            .concat(),
            ALPHA,
            malformed(&["tags"]),
        ),
        w(
            REPORT,
            "currency not UTF-8",
            [
                ld(1, b"o-1"),
                ld(2, b"buyer"),
                vi(3, 100),
                ld(4, b"\x80NY"),
                ld(5, b"toys"),
            ]
            .concat(),
            BETA,
            malformed(&["currency"]),
        ),
        w(
            REPORT,
            "amount_minor sent as bytes",
            [
                ld(1, b"o-2"),
                ld(2, b"buyer"),
                ld(3, b"100"),
                ld(4, b"CNY"),
                ld(5, b"toys"),
            ]
            .concat(),
            BETA,
            malformed(&["amount_minor"]),
        ),
        // prost names the oneof, not its member.
        w(RECEIPT, "order_id not UTF-8", ld(2, b"bf-\xff"), BETA, malformed(&["entry"])),
        w(QUOTA, "partner not UTF-8", ld(1, b"\xe2\x28\xa1"), ALPHA, malformed(&["partner"])),
    ]
}

/// The servers' codec (`crossflow_proto::codec`) answers a request that does
/// not decode INVALID_ARGUMENT `MALFORMED_MESSAGE`, naming the outermost
/// field prost names (tonic-prost's own codec answered INTERNAL, no details).
#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let (gw, _fx) = setup().await;
    wire_rows(&gw, wire_table(), "malformed protobuf").await;
}

/// tonic refuses a request over the 4 MiB limit on its length prefix, before
/// any codec runs, with OUT_OF_RANGE and no details; the gateway's oversize
/// layer (`services/gateway/src/oversize.rs`) answers RESOURCE_EXHAUSTED
/// `MESSAGE_TOO_LARGE` instead, as gRPC's status table says, with the limit
/// in the ErrorInfo metadata. A message of exactly 4 MiB is decoded (and
/// refused for its 4 MiB subject), so the limit is where the metadata says.
#[tokio::test]
async fn oversized_request_is_resource_exhausted() {
    const LIMIT: usize = 4 * MIB;
    let (gw, _fx) = setup().await;
    // CreateReferral whose subject makes the message exactly `size` bytes.
    let create = |size: usize| {
        let rest = [ld(2, b"beta"), ld(3, b"room-1")].concat();
        // Tag byte and a 4-byte varint length: right for subjects of 2-256 MiB.
        let body = [ld(1, &vec![b'x'; size - rest.len() - 5]), rest].concat();
        assert_eq!(body.len(), size);
        body
    };
    let path = "/crossflow.v1.ReferralService/CreateReferral";
    let rows = vec![
        WireRow {
            path,
            what: "message of exactly 4 MiB (the limit; its subject is too long)",
            body: create(LIMIT),
            caller: ALPHA,
            want: bad(&["subject"]),
        },
        WireRow {
            path,
            what: "message one byte over 4 MiB",
            body: create(LIMIT + 1),
            caller: ALPHA,
            want: refused(Code::ResourceExhausted, "MESSAGE_TOO_LARGE", &[]),
        },
        WireRow {
            path,
            what: "5 MiB message",
            body: create(5 * MIB),
            caller: ALPHA,
            want: refused(Code::ResourceExhausted, "MESSAGE_TOO_LARGE", &[]),
        },
    ];
    wire_rows(&gw, rows, "oversized request").await;

    // The metadata names the limit and the size the request declared.
    let mut grpc = tonic::client::Grpc::new(gw.channel(ALPHA).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(create(LIMIT + 1)),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .unwrap_err();
    let r = Refusal::from_status(&status);
    assert_eq!(
        r.metadata.get("limit_bytes").map(String::as_str),
        Some("4194304")
    );
    assert_eq!(
        r.metadata.get("size_bytes").map(String::as_str),
        Some("4194305")
    );
    assert!(r.message.contains("4194304"), "{}", r.message);
}

/// Sends each row's bytes as its caller; fails listing every failing row.
async fn wire_rows(gw: &TestGateway, rows: Vec<WireRow>, table: &str) {
    let mut report = Report::default();
    for row in rows {
        let mut grpc = tonic::client::Grpc::new(gw.channel(row.caller).await);
        grpc.ready().await.unwrap();
        let got = grpc
            .unary(
                tonic::Request::new(row.body),
                tonic::codegen::http::uri::PathAndQuery::from_static(row.path),
                RawCodec,
            )
            .await
            .map(drop);
        report.check(row.path, row.what, got, row.want);
    }
    report.finish(table);
}
