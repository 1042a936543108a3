//! `crossflow demo`: a whole federation in one process. A gateway on a fresh
//! dev PKI and keys, and three partner platforms driving it as real gRPC
//! clients over mTLS through a day of traffic exchange.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, sync::Arc};

use crossflow_api::clock::OffsetClock;

use crossflow_proto::v1::{
    CreateReferralRequest, CreateReferralResponse, RedeemReferralRequest,
    referral_service_client::ReferralServiceClient,
};
use tonic::{Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{server, testbed::Testbed};

mod conversions;
mod finance;
mod quotas;
mod tags;

const MOMBABY: &str = "mombaby-live";
const HOMEDECOR: &str = "homedecor-live";
const BEAUTY: &str = "beauty-live";
const FEDERATION: &str = "crossflow.example";
/// 2026-10-30T18:00:00+08:00, when the demo's day of traffic begins.
const DEMO_START_MS: i64 = 1_793_354_400_000;

/// Partners and agreements of the demo federation. mombaby-live and
/// beauty-live have no agreement: a viewer can only reach beauty-live from
/// mombaby-live onward through homedecor-live.
pub const DEMO_BODY: &str = r#"
[[partners]]
id = "mombaby-live"
name = "Mom & Baby Live"

[[partners]]
id = "homedecor-live"
name = "Home Decor Live"

[[partners]]
id = "beauty-live"
name = "Beauty Live"

[[agreements]]
id = "mombaby-homedecor"
between = ["mombaby-live", "homedecor-live"]
max_hops = 2
token_ttl_secs = 900
upstream_share_bps = 2000

[[agreements.flows]]
from = "mombaby-live"
to = "homedecor-live"
tag_scopes = ["iab-audience", "life-stage"]
commission = { default_bps = 500, categories = { home-textiles = 700 } }

[[agreements.flows]]
from = "homedecor-live"
to = "mombaby-live"
tag_scopes = ["iab-audience"]
commission = { default_bps = 400 }

[[agreements]]
id = "homedecor-beauty"
between = ["homedecor-live", "beauty-live"]
max_hops = 2
token_ttl_secs = 900
upstream_share_bps = 1500

[[agreements.flows]]
from = "homedecor-live"
to = "beauty-live"
tag_scopes = ["iab-audience"]
commission = { default_bps = 600, categories = { skincare = 800 } }

[[agreements.flows]]
from = "beauty-live"
to = "homedecor-live"
tag_scopes = ["iab-audience"]
commission = { default_bps = 500 }

[tags]
sensitive = ["iab-audience/381"]
[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"
[[tags.namespaces]]
name = "life-stage"
values = ["expecting", "newborn", "toddler"]
[[tags.namespaces]]
name = "budget-band"
values = ["value", "premium"]
"#;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Testbed(#[from] crate::testbed::TestbedError),
    #[error("{0}")]
    Serve(#[from] server::ServeError),
    #[error("unexpected answer from the gateway: {0}")]
    Rpc(#[from] Status),
    #[error("the demo expected {expected} but saw {seen}")]
    Unexpected { expected: String, seen: String },
}

/// The demo saw `seen` where it expected `expected`.
fn unexpected(expected: impl Into<String>, seen: impl std::fmt::Display) -> DemoError {
    DemoError::Unexpected {
        expected: expected.into(),
        seen: seen.to_string(),
    }
}

#[derive(Default)]
struct Tally {
    out: BTreeMap<&'static str, u64>,
    landed: BTreeMap<&'static str, u64>,
    onward: BTreeMap<&'static str, u64>,
    refused: BTreeMap<String, u64>,
}

struct Platform {
    id: &'static str,
    client: ReferralServiceClient<Channel>,
}

/// Runs the demo; with `keep`, everything it made stays in that directory.
pub async fn run(keep: Option<&Path>) -> Result<String, DemoError> {
    let bed = Testbed::create(
        keep,
        FEDERATION,
        "127.0.0.1:7443",
        &[MOMBABY, HOMEDECOR, BEAUTY],
        &["finance"],
        DEMO_BODY,
    )?;
    // The demo lives through a month-end in seconds: its clock starts on the
    // evening of 2026-10-30 in Shanghai and later jumps forward (see
    // `finance`), so periods can be closed and settled.
    let clock = Arc::new(OffsetClock::starting_at(DEMO_START_MS));
    let gw = server::start_with_clock(
        bed.settings()?,
        Some(
            "127.0.0.1:0"
                .parse()
                .map_err(|_| unexpected("a loopback address", "none"))?,
        ),
        clock.clone(),
    )
    .await?;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "crossflow demo: federation {FEDERATION} on {} (mTLS, embedded store in {})",
        gw.addr,
        bed.dir.join("data").display()
    );

    let mut p = Vec::new();
    for id in [MOMBABY, HOMEDECOR, BEAUTY] {
        p.push(Platform {
            id,
            client: ReferralServiceClient::new(bed.channel(gw.addr, id).await?),
        });
    }
    let [a, b, c] =
        <[Platform; 3]>::try_from(p).map_err(|_| unexpected("three platforms", "fewer"))?;
    let mut t = Tally::default();

    // Morning: mombaby-live sends viewers of its baby-care streams to a
    // home-decor nursery room; some of them move on to a beauty stream.
    let mut a_to_b = Vec::new();
    for i in 0..120 {
        let (tok, _) = mint(
            &a,
            &mut t,
            &format!("mb-user-{i}"),
            HOMEDECOR,
            "room/nursery-makeover",
            "",
        )
        .await?;
        let landing = redeem(&b, &mut t, &tok, &format!("hd-user-{i}")).await?;
        a_to_b.push((i, landing));
    }
    for (i, parent) in a_to_b.iter().take(40) {
        let (tok, _) = mint(
            &b,
            &mut t,
            &format!("hd-user-{i}"),
            BEAUTY,
            "room/new-mom-skincare",
            parent,
        )
        .await?;
        *t.onward.entry(HOMEDECOR).or_default() += 1;
        redeem(&c, &mut t, &tok, &format!("bt-user-{i}")).await?;
    }
    // Afternoon: traffic flows back the other way too.
    for i in 0..60 {
        let (tok, _) = mint(
            &b,
            &mut t,
            &format!("hd-user-b{i}"),
            MOMBABY,
            "room/baby-sleep-live",
            "",
        )
        .await?;
        redeem(&a, &mut t, &tok, &format!("mb-user-b{i}")).await?;
    }
    for i in 0..45 {
        let (tok, _) = mint(
            &c,
            &mut t,
            &format!("bt-user-c{i}"),
            HOMEDECOR,
            "room/vanity-corner",
            "",
        )
        .await?;
        redeem(&b, &mut t, &tok, &format!("hd-user-c{i}")).await?;
    }

    // Evening: what the gateway refuses.
    for i in 0..5 {
        // No agreement between mombaby-live and beauty-live.
        expect_refusal(
            &mut t,
            a.client
                .clone()
                .create_referral(create(&format!("mb-user-{i}"), BEAUTY, "room/x", ""))
                .await,
            "NO_AGREEMENT",
        )?;
    }
    for i in 0..3 {
        let (tok, _) = mint(
            &a,
            &mut t,
            &format!("mb-user-f{i}"),
            HOMEDECOR,
            "room/forged",
            "",
        )
        .await?;
        let forged = forge(&tok, i);
        expect_refusal(
            &mut t,
            b.client
                .clone()
                .redeem_referral(RedeemReferralRequest {
                    token: forged,
                    subject: "hd-forger".into(),
                })
                .await,
            "TOKEN_INVALID",
        )?;
        // The wrong destination cannot redeem it either.
        expect_refusal(
            &mut t,
            c.client
                .clone()
                .redeem_referral(RedeemReferralRequest {
                    token: tok.clone(),
                    subject: "bt-thief".into(),
                })
                .await,
            "WRONG_DESTINATION",
        )?;
        redeem(&b, &mut t, &tok, &format!("hd-user-f{i}")).await?;
        // Replayed for another user: refused; for the same user: same answer.
        expect_refusal(
            &mut t,
            b.client
                .clone()
                .redeem_referral(RedeemReferralRequest {
                    token: tok.clone(),
                    subject: "hd-someone-else".into(),
                })
                .await,
            "ALREADY_REDEEMED",
        )?;
        b.client
            .clone()
            .redeem_referral(RedeemReferralRequest {
                token: tok,
                subject: format!("hd-user-f{i}"),
            })
            .await?;
    }
    // beauty-live tries to extend an onward hop past max_hops = 2.
    let (tok, _) = mint(&b, &mut t, "hd-user-0", BEAUTY, "room/deep", &a_to_b[0].1).await?;
    let deep = redeem(&c, &mut t, &tok, "bt-deep").await?;
    expect_refusal(
        &mut t,
        c.client
            .clone()
            .create_referral(create("bt-deep", HOMEDECOR, "room/again", &deep))
            .await,
        "MAX_HOPS_EXCEEDED",
    )?;
    // And nobody extends a hop they did not receive.
    expect_refusal(
        &mut t,
        c.client
            .clone()
            .create_referral(create("bt-user-0", HOMEDECOR, "room/x", &a_to_b[1].1))
            .await,
        "PARENT_NOT_REDEEMED",
    )?;

    report.push_str(&summary(&t));
    conversions::run(&bed, gw.addr, clock.as_ref(), &mut report).await?;
    // Before the quota section, which exhausts the partners' quotas.
    tags::run(&bed, gw.addr, &mut report).await?;
    quotas::run(&bed, gw.addr, &mut report).await?;
    // Last: finance closes the months, exports, verifies and settles.
    finance::run(&bed, &gw, &clock, keep, &mut report).await?;
    gw.shutdown().await?;
    if let Some(dir) = keep {
        let _ = writeln!(
            report,
            "\nEverything is kept in {}: pki/, keys/, data/, crossflow.toml, the 2026-11 export in export/ and the log's key in ledger.vkey.",
            dir.display()
        );
        let _ = writeln!(
            report,
            "Verify the export again by hand with:\n  crossflow ledger verify {} --vkey {}",
            dir.join("export").display(),
            dir.join("ledger.vkey").display()
        );
        let _ = writeln!(
            report,
            "Start the same federation with:\n  crossflow serve --config {}",
            dir.join("crossflow.toml").display()
        );
    }
    Ok(report)
}

fn create(subject: &str, to: &str, target: &str, parent: &str) -> CreateReferralRequest {
    CreateReferralRequest {
        subject: subject.into(),
        to_partner: to.into(),
        target: target.into(),
        parent_referral_id: parent.into(),
        request_id: String::new(),
    }
}

async fn mint(
    p: &Platform,
    t: &mut Tally,
    subject: &str,
    to: &str,
    target: &str,
    parent: &str,
) -> Result<(String, CreateReferralResponse), DemoError> {
    let r = p
        .client
        .clone()
        .create_referral(create(subject, to, target, parent))
        .await?
        .into_inner();
    *t.out.entry(p.id).or_default() += 1;
    Ok((r.token.clone(), r))
}

async fn redeem(
    p: &Platform,
    t: &mut Tally,
    token: &str,
    subject: &str,
) -> Result<String, DemoError> {
    let r = p
        .client
        .clone()
        .redeem_referral(RedeemReferralRequest {
            token: token.into(),
            subject: subject.into(),
        })
        .await?
        .into_inner();
    *t.landed.entry(p.id).or_default() += 1;
    Ok(r.referral.map(|r| r.referral_id).unwrap_or_default())
}

/// Flips one character in the middle of the token, as a forger would.
fn forge(token: &str, salt: usize) -> String {
    let mut bytes: Vec<char> = token.chars().collect();
    let i = (bytes.len() / 2 + salt * 7) % bytes.len().max(1);
    bytes[i] = if bytes[i] == 'A' { 'B' } else { 'A' };
    bytes.into_iter().collect()
}

fn expect_refusal<T>(t: &mut Tally, r: Result<T, Status>, reason: &str) -> Result<(), DemoError> {
    match r {
        Ok(_) => Err(unexpected(
            format!("a refusal with reason {reason}"),
            "success",
        )),
        Err(s) => {
            let seen = s
                .get_details_error_info()
                .map(|i| i.reason)
                .unwrap_or_default();
            if seen != reason {
                return Err(unexpected(
                    reason,
                    format_args!("{:?} {seen}: {}", s.code(), s.message()),
                ));
            }
            *t.refused
                .entry(format!("{:?} {seen}", s.code()))
                .or_default() += 1;
            Ok(())
        }
    }
}

fn summary(t: &Tally) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nReferral hops by partner");
    let _ = writeln!(
        s,
        "  {:<16} {:>8} {:>8} {:>8}",
        "partner", "hops out", "onward", "landings"
    );
    for id in [MOMBABY, HOMEDECOR, BEAUTY] {
        let g = |m: &BTreeMap<&'static str, u64>| m.get(id).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "  {:<16} {:>8} {:>8} {:>8}",
            id,
            g(&t.out),
            g(&t.onward),
            g(&t.landed)
        );
    }
    let _ = writeln!(s, "\nRefusals by reason");
    for (reason, n) in &t.refused {
        let _ = writeln!(s, "  {reason:<40} {n:>4}");
    }
    s
}
