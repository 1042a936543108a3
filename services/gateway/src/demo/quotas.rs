//! The demo's quota scene: operations put a rate limit on beauty-live by
//! editing the config file (applied live), beauty-live bursts past it and is
//! refused with the quota and a retry hint, then operations raise the limit
//! and the same connection goes through.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crossflow_proto::v1::{
    CreateReferralRequest, GetQuotaStatusRequest, quota_service_client::QuotaServiceClient,
    referral_service_client::ReferralServiceClient,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use super::{BEAUTY, DemoError, HOMEDECOR, unexpected};
use crate::testbed::Testbed;

/// Where beauty-live's quota table goes in the demo file.
const ANCHOR: &str = "name = \"Beauty Live\"\n";
/// Longest wait for the gateway to pick up an edited file.
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

pub(super) async fn run(
    bed: &Testbed,
    addr: SocketAddr,
    report: &mut String,
) -> Result<(), DemoError> {
    let _ = writeln!(
        report,
        "\nQuotas, changed live in {}:",
        bed.config_path().display()
    );
    let original = std::fs::read_to_string(bed.config_path()).map_err(io)?;
    let ch = bed.channel(addr, BEAUTY).await?;
    let mut referrals = ReferralServiceClient::new(ch.clone());
    let mut quotas = QuotaServiceClient::new(ch);

    let took = set_quota(bed, &original, &mut quotas, 2, 3).await?;
    let _ = writeln!(
        report,
        "  ops set beauty-live referrals to 2/s, burst 3: applied after {} ms, no restart",
        took.as_millis()
    );

    let mut ok = 0;
    let mut refusal = None;
    for i in 0..6 {
        match referrals.create_referral(hop(i)).await {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                refusal = Some(s);
                break;
            }
            Err(s) => return Err(s.into()),
        }
    }
    let s = refusal.ok_or_else(|| {
        unexpected(
            "a RESOURCE_EXHAUSTED after the burst",
            format_args!("{ok} hops minted"),
        )
    })?;
    let quota = s
        .get_details_quota_failure()
        .and_then(|q| q.violations.into_iter().next())
        .map(|v| format!("{} ({})", v.subject, v.description))
        .unwrap_or_default();
    let retry = s
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_default();
    let _ = writeln!(
        report,
        "  beauty-live bursts: {ok} hops minted, then RESOURCE_EXHAUSTED\n    quota {quota}\n    retry in {} ms",
        retry.as_millis()
    );

    let took = set_quota(bed, &original, &mut quotas, 50, 20).await?;
    let _ = writeln!(
        report,
        "  ops raise it to 50/s, burst 20: applied after {} ms",
        took.as_millis()
    );
    let mut minted = 0;
    for i in 10..25 {
        referrals.create_referral(hop(i)).await?;
        minted += 1;
    }
    let _ = writeln!(
        report,
        "  beauty-live bursts again on the same connection: {minted} of {minted} hops minted"
    );
    let status = quotas
        .get_quota_status(GetQuotaStatusRequest::default())
        .await?
        .into_inner();
    for q in status.quotas {
        let _ = writeln!(
            report,
            "  GetQuotaStatus: {} limit {} remaining {}",
            q.quota, q.limit, q.remaining
        );
    }
    Ok(())
}

fn hop(i: usize) -> CreateReferralRequest {
    CreateReferralRequest {
        subject: format!("bt-user-q{i}"),
        to_partner: HOMEDECOR.to_owned(),
        target: "room/vanity-corner".to_owned(),
        parent_referral_id: String::new(),
        request_id: String::new(),
    }
}

/// Writes the file with beauty-live's referral quota and waits until the
/// gateway reports it; returns how long that took.
async fn set_quota(
    bed: &Testbed,
    original: &str,
    quotas: &mut QuotaServiceClient<Channel>,
    rate: u32,
    burst: u32,
) -> Result<Duration, DemoError> {
    let table =
        format!("{ANCHOR}[partners.quotas.referrals]\nrate_per_sec = {rate}\nburst = {burst}\n");
    if !original.contains(ANCHOR) {
        return Err(unexpected(
            format!("{ANCHOR:?} in the demo config"),
            "no such line",
        ));
    }
    std::fs::write(bed.config_path(), original.replacen(ANCHOR, &table, 1)).map_err(io)?;
    let start = Instant::now();
    loop {
        let s = quotas
            .get_quota_status(GetQuotaStatusRequest::default())
            .await?
            .into_inner();
        if s.quotas
            .iter()
            .any(|q| q.rate_per_sec == rate && q.limit == u64::from(burst))
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > RELOAD_DEADLINE {
            return Err(unexpected(
                format!("the quota {rate}/s applied within {RELOAD_DEADLINE:?}"),
                format_args!("{:?}", s.quotas),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn io(e: std::io::Error) -> DemoError {
    DemoError::Testbed(e.into())
}
