//! The demo's tag exchange: mombaby-live publishes coarse tags about the
//! viewers it sends; homedecor-live reads what the mombaby-live ->
//! homedecor-live flow allows, under its own pseudonyms; the onward hop to
//! beauty-live shows the chain rule; one viewer opts out.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use crossflow_proto::v1::{
    CreateReferralRequest, GetReferredUserTagsRequest, OptOutRequest, PublishTagsRequest,
    RedeemReferralRequest, Tag, referral_service_client::ReferralServiceClient,
    tag_service_client::TagServiceClient,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use super::{BEAUTY, DemoError, HOMEDECOR, MOMBABY, unexpected};
use crate::testbed::Testbed;

const VIEWERS: usize = 24;
const ONWARD: usize = 8;

fn tag(namespace: &str, value: &str) -> Tag {
    Tag {
        namespace: namespace.into(),
        value: value.into(),
        ttl: None,
    }
}

async fn hop(
    from: &mut ReferralServiceClient<Channel>,
    to_client: &mut ReferralServiceClient<Channel>,
    subject: &str,
    to: &str,
    dest_subject: &str,
    parent: &str,
) -> Result<String, DemoError> {
    let made = from
        .create_referral(CreateReferralRequest {
            subject: subject.into(),
            to_partner: to.into(),
            target: "room/nursery-makeover".into(),
            parent_referral_id: parent.into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let r = to_client
        .redeem_referral(RedeemReferralRequest {
            token: made.token,
            subject: dest_subject.into(),
        })
        .await?
        .into_inner();
    Ok(r.referral.map(|r| r.referral_id).unwrap_or_default())
}

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Runs the tag exchange and appends its summary to `report`.
pub async fn run(bed: &Testbed, addr: SocketAddr, report: &mut String) -> Result<(), DemoError> {
    let mut mb_tags = TagServiceClient::new(bed.channel(addr, MOMBABY).await?);
    let mut hd_tags = TagServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    let mut bt_tags = TagServiceClient::new(bed.channel(addr, BEAUTY).await?);
    let mut mb = ReferralServiceClient::new(bed.channel(addr, MOMBABY).await?);
    let mut hd = ReferralServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    let mut bt = ReferralServiceClient::new(bed.channel(addr, BEAUTY).await?);

    let stages = ["expecting", "newborn", "toddler"];
    let mut published = 0usize;
    let mut landed = Vec::new();
    for i in 0..VIEWERS {
        let subject = format!("mb-tagged-{i}");
        let tags = vec![
            // Interest | Family and Relationships | Parenting Babies and Toddlers
            tag("iab-audience", "354"),
            // Interest | Home & Garden
            tag("iab-audience", "457"),
            tag("life-stage", stages[i % stages.len()]),
            // No flow scopes budget-band: it never leaves mombaby-live.
            tag("budget-band", if i % 2 == 0 { "premium" } else { "value" }),
        ];
        published += tags.len();
        mb_tags
            .publish_tags(PublishTagsRequest {
                subject: subject.clone(),
                tags,
                request_id: format!("demo-tags-{i}"),
            })
            .await?;
        let rid = hop(
            &mut mb,
            &mut hd,
            &subject,
            HOMEDECOR,
            &format!("hd-tagged-{i}"),
            "",
        )
        .await?;
        landed.push(rid);
    }
    // A health segment is sensitive: refused whatever the agreements say.
    let sensitive = mb_tags
        .publish_tags(PublishTagsRequest {
            subject: "mb-tagged-0".into(),
            // Interest | Health and Medical Services | ... | Health Care and Physicians
            tags: vec![tag("iab-audience", "386")],
            request_id: String::new(),
        })
        .await
        .err()
        .map(|s| format!("{:?} {}", s.code(), reason(&s)))
        .unwrap_or_else(|| "accepted (unexpected)".into());

    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut pseudonyms = Vec::new();
    let mut scopes = Vec::new();
    for rid in &landed {
        let r = hd_tags
            .get_referred_user_tags(GetReferredUserTagsRequest {
                referral_id: rid.clone(),
            })
            .await?
            .into_inner();
        for t in &r.tags {
            *seen.entry(t.namespace.clone()).or_default() += 1;
        }
        pseudonyms.extend(r.pseudonym.map(|p| p.value));
        scopes = r.scopes;
    }
    let distinct: std::collections::BTreeSet<&String> = pseudonyms.iter().collect();

    // Onward: homedecor-live sends some of them to beauty-live.
    let mut onward_refusals: BTreeMap<String, u64> = BTreeMap::new();
    for (i, parent) in landed.iter().take(ONWARD).enumerate() {
        let rid = hop(
            &mut hd,
            &mut bt,
            &format!("hd-tagged-{i}"),
            BEAUTY,
            &format!("bt-tagged-{i}"),
            parent,
        )
        .await?;
        match bt_tags
            .get_referred_user_tags(GetReferredUserTagsRequest { referral_id: rid })
            .await
        {
            Ok(r) => {
                *onward_refusals
                    .entry(format!("read {} tags", r.get_ref().tags.len()))
                    .or_default() += 1
            }
            Err(s) => {
                *onward_refusals
                    .entry(format!("{:?} {}", s.code(), reason(&s)))
                    .or_default() += 1
            }
        }
    }

    // One viewer opts out at mombaby-live.
    let out = mb_tags
        .opt_out(OptOutRequest {
            subject: "mb-tagged-1".into(),
        })
        .await?
        .into_inner();
    let after = hd_tags
        .get_referred_user_tags(GetReferredUserTagsRequest {
            referral_id: landed[1].clone(),
        })
        .await;
    let after = match after {
        Ok(_) => {
            return Err(unexpected("NO_TAG_ACCESS after the opt-out", "tags"));
        }
        Err(s) if s.code() == Code::PermissionDenied => reason(&s),
        Err(s) => return Err(s.into()),
    };

    let s = report;
    let _ = writeln!(s, "\nTag exchange (pseudonymized, per agreement scope)");
    let _ = writeln!(
        s,
        "  mombaby-live published {published} tags about {VIEWERS} viewers (iab-audience, life-stage, budget-band)"
    );
    let _ = writeln!(
        s,
        "  sensitive iab-audience/386 (health) refused: {sensitive}"
    );
    let _ = writeln!(
        s,
        "  homedecor-live read {} viewers under {} distinct pseudonyms; scopes {:?}",
        landed.len(),
        distinct.len(),
        scopes
    );
    for (ns, n) in &seen {
        let _ = writeln!(s, "    {ns:<14} {n:>4} tags disclosed");
    }
    let _ = writeln!(
        s,
        "    {:<14} {:>4} tags disclosed (not in the flow's tag_scopes: filtered out)",
        "budget-band", 0
    );
    let _ = writeln!(
        s,
        "  onward mombaby-live -> homedecor-live -> beauty-live: the chain alone would allow \
         {{iab-audience, life-stage}} ∩ {{iab-audience}} = {{iab-audience}}, but mombaby-live \
         has no agreement with beauty-live, so nothing:"
    );
    for (what, n) in &onward_refusals {
        let _ = writeln!(s, "    {what:<40} {n:>4}");
    }
    let _ = writeln!(
        s,
        "  opt-out of one viewer: {} tags removed; homedecor-live's next read: {after}",
        out.tags_removed
    );
    let _ = writeln!(
        s,
        "  every disclosure is audited: crossflow audit disclosures --partner {MOMBABY} --since <date> --config <dir>/crossflow.toml"
    );
    Ok(())
}
