//! The demo's month-ends: finance closes October (everything is still
//! pending or locked), lives through November (new orders, a refund, the
//! October confirmations' lock periods ending), closes November, exports the
//! federation's books, verifies the export offline and prints who owes whom.
//!
//! The demo's clock jumps forward between these steps; everything the
//! gateway records (landings, entries, checkpoints) reads that clock.

use std::{fmt::Write as _, net::SocketAddr, path::Path, time::Duration};

use crossflow_api::clock::{Clock, OffsetClock};
use crossflow_ledger::{export, period, settle, verify_export};
use crossflow_proto::v1::{
    ConversionStatus, GetLogKeyRequest, RedeemReferralRequest, UpdateConversionRequest,
    conversion_service_client::ConversionServiceClient, ledger_service_client::LedgerServiceClient,
    referral_service_client::ReferralServiceClient,
};
use crossflow_store::{Database, Store, ledger::LedgerStore};

use super::{BEAUTY, DemoError, HOMEDECOR, MOMBABY, conversions::order, create, unexpected};
use crate::{server::Running, testbed::Testbed};

/// 2026-11-01T00:00:20+08:00: just after October ended in Shanghai.
const NOV_1_MS: i64 = 1_793_462_420_000;
/// 2026-11-20T12:00:00+08:00: mid-November trading.
const NOV_20_MS: i64 = 1_795_147_200_000;
/// 2026-12-01T00:00:20+08:00: just after November ended.
const DEC_1_MS: i64 = 1_796_054_420_000;

pub(super) async fn run(
    bed: &Testbed,
    gw: &Running,
    clock: &OffsetClock,
    keep: Option<&Path>,
    report: &mut String,
) -> Result<(), DemoError> {
    let tz = gw.settings.get().gateway.timezone.clone();
    let _ = writeln!(
        report,
        "\nMonth-ends (the demo's clock jumps forward; periods are months in {tz})"
    );

    // Before October ends, beauty-live and mombaby-live confirm some of the
    // evening's orders too (homedecor-live confirmed three already).
    confirm_october(bed, gw.addr).await?;

    // October ends. Nothing is payable yet: confirmed orders are locked for
    // their agreements' 14 days.
    checkpointed(&gw.store).await?;
    clock.jump_to(NOV_1_MS);
    let oct = close(&gw.store, "2026-10", &tz, clock.now_ms()).await?;
    let _ = writeln!(report, "  {oct}");

    // Mid-November: new viewers go from homedecor-live to beauty-live and
    // buy; beauty-live confirms most of it; homedecor-live refunds part of an
    // October order whose lock ends in November.
    clock.jump_to(NOV_20_MS);
    november(bed, gw.addr, clock).await?;

    // November ends: October's confirmations are payable now, net of the
    // refund; November's are still locked.
    checkpointed(&gw.store).await?;
    clock.jump_to(DEC_1_MS);
    let nov = close(&gw.store, "2026-11", &tz, clock.now_ms()).await?;
    let _ = writeln!(report, "  {nov}");

    let tmp;
    let out = match keep {
        Some(dir) => dir.join("export"),
        None => {
            tmp = tempfile::tempdir().map_err(|e| unexpected("a temporary directory", e))?;
            tmp.path().join("export")
        }
    };
    let out2 = out.clone();
    let summary = gw
        .store
        .read(move |c| {
            export::export(c, "2026-11", export::View::Federation, &out2)
                .map_err(|e| crossflow_store::StoreError::Corrupt(e.to_string()))
        })
        .await
        .map_err(|e| unexpected("an export of 2026-11", e))?;
    // The key a partner's finance team fetches once (GetLogKey) and keeps.
    let key = LedgerServiceClient::new(bed.channel(gw.addr, HOMEDECOR).await?)
        .get_log_key(GetLogKeyRequest {})
        .await?
        .into_inner()
        .verifier_key;
    let verifier = crossflow_ledger::Verifier::parse(&key)
        .map_err(|e| unexpected("the log's verifier key", e))?;
    let verdict = verify_export::verify(&out, &verifier)
        .map_err(|e| unexpected("an export that verifies", e))?;
    let _ = writeln!(
        report,
        "  exported 2026-11 ({} entries) to {}\n  {verdict}",
        summary.entries,
        out.display()
    );
    if let Some(dir) = keep {
        std::fs::write(dir.join("ledger.vkey"), format!("{key}\n"))
            .map_err(|e| unexpected("ledger.vkey written", e))?;
    }
    let _ = writeln!(report, "\nSettlement 2026-11 (who pays whom, net)");
    for line in settle::settlement_table(&summary.settlement).lines() {
        let _ = writeln!(report, "  {line}");
    }
    Ok(())
}

/// Waits until the newest signed checkpoint covers every sequenced entry, so
/// the month's last checkpoint is signed before the clock leaves the month.
async fn checkpointed(store: &Store) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sequenced = store
            .sequenced_size()
            .await
            .map_err(|e| unexpected("the ledger size", e))?;
        let signed = store
            .latest_checkpoint()
            .await
            .map_err(|e| unexpected("a checkpoint", e))?
            .map_or(0, |c| c.size);
        if signed >= sequenced {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(unexpected(
                "a checkpoint covering every entry",
                format!("{signed} of {sequenced}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn close(store: &Store, p: &str, tz: &str, now_ms: i64) -> Result<String, DemoError> {
    let (p, tz) = (p.to_owned(), tz.to_owned());
    // In the writer's transaction, as `period::close` asks.
    store
        .write(move |c| {
            period::close(c, &p, &tz, now_ms)
                .map(|close| close.summary())
                .map_err(|e| crossflow_store::StoreError::Corrupt(e.to_string()))
        })
        .await
        .map_err(|e| unexpected("a period close", e))
}

async fn confirm_october(bed: &Testbed, addr: SocketAddr) -> Result<(), DemoError> {
    for (partner, orders) in [
        (
            BEAUTY,
            (0..12).map(|i| format!("bt-order-{i}")).collect::<Vec<_>>(),
        ),
        (MOMBABY, (0..6).map(|i| format!("mb-order-{i}")).collect()),
    ] {
        let sales = ConversionServiceClient::new(bed.channel(addr, partner).await?);
        for order_id in orders {
            sales
                .clone()
                .update_conversion(UpdateConversionRequest {
                    order_id,
                    status: ConversionStatus::Confirmed as i32,
                    refund_minor: 0,
                    request_id: String::new(),
                })
                .await?;
        }
    }
    Ok(())
}

/// November's trading: ten homedecor-live viewers land at beauty-live and buy
/// skincare (eight confirmed), and homedecor-live refunds part of an order
/// confirmed in October.
async fn november(bed: &Testbed, addr: SocketAddr, clock: &OffsetClock) -> Result<(), DemoError> {
    let mut homedecor = ReferralServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    let mut beauty = ReferralServiceClient::new(bed.channel(addr, BEAUTY).await?);
    let beauty_sales = ConversionServiceClient::new(bed.channel(addr, BEAUTY).await?);
    let homedecor_sales = ConversionServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    for i in 0..10 {
        // Well under the referral rate the quota section left (50/s).
        tokio::time::sleep(Duration::from_millis(60)).await;
        let token = homedecor
            .create_referral(create(
                &format!("hd-nov-{i}"),
                BEAUTY,
                "room/winter-glow",
                "",
            ))
            .await?
            .into_inner()
            .token;
        beauty
            .redeem_referral(RedeemReferralRequest {
                token,
                subject: format!("bt-nov-{i}"),
            })
            .await?;
        let req = order(
            clock,
            format!("bt-nov-order-{i}"),
            format!("bt-nov-{i}"),
            42_000 + 1_000 * i64::from(i),
            "skincare",
        );
        beauty_sales.clone().report_conversion(req).await?;
        if i < 8 {
            beauty_sales
                .clone()
                .update_conversion(UpdateConversionRequest {
                    order_id: format!("bt-nov-order-{i}"),
                    status: ConversionStatus::Confirmed as i32,
                    refund_minor: 0,
                    request_id: String::new(),
                })
                .await?;
        }
    }
    homedecor_sales
        .clone()
        .update_conversion(UpdateConversionRequest {
            order_id: "hd-order-3".into(),
            status: ConversionStatus::Refunded as i32,
            refund_minor: 10_000,
            request_id: "hd-order-3-nov-refund".into(),
        })
        .await?;
    Ok(())
}
