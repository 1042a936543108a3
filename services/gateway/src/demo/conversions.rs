//! The demo's evening sales: the platforms that received viewers report what
//! those viewers bought, a few orders are refunded or cancelled, and the
//! report shows what each partner owes and earns, read back from the ledger
//! entries the gateway answered with.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use crossflow_api::clock::Clock;
use crossflow_proto::v1::{
    ConversionStatus, GetLogKeyRequest, GetReceiptRequest, ReportConversionRequest,
    UpdateConversionRequest, conversion_service_client::ConversionServiceClient,
    get_receipt_request, ledger_service_client::LedgerServiceClient,
};
use tonic::transport::Channel;

use super::{BEAUTY, DemoError, HOMEDECOR, MOMBABY, unexpected};
use crate::testbed::Testbed;

/// Sums of postings per account, in minor units, from entry bytes.
#[derive(Default)]
struct Books {
    accounts: BTreeMap<String, i64>,
    reported: u64,
    attributed: u64,
    refunds: u64,
    cancels: u64,
}

impl Books {
    fn add(&mut self, entry: &[u8]) -> Result<(), DemoError> {
        let v: serde_json::Value =
            serde_json::from_slice(entry).map_err(|e| unexpected("a JSON ledger entry", e))?;
        for p in v["postings"].as_array().into_iter().flatten() {
            let account = p["account"].as_str().unwrap_or_default().to_owned();
            *self.accounts.entry(account).or_default() += p["amount_minor"].as_i64().unwrap_or(0);
        }
        Ok(())
    }

    fn get(&self, partner: &str, side: &str) -> i64 {
        self.accounts
            .get(&format!("partner:{partner}:{side}"))
            .copied()
            .unwrap_or(0)
    }
}

pub(super) fn order(
    clock: &dyn Clock,
    id: String,
    subject: String,
    amount_minor: i64,
    category: &str,
) -> ReportConversionRequest {
    let ms = clock.now_ms();
    ReportConversionRequest {
        order_id: id,
        subject,
        amount_minor,
        currency: "CNY".into(),
        category: category.into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        referral_id: String::new(),
    }
}

/// Reports the evening's orders on the landings the day made and appends the
/// commissions table to `report`.
pub(super) async fn run(
    bed: &Testbed,
    addr: SocketAddr,
    clock: &dyn Clock,
    report: &mut String,
) -> Result<(), DemoError> {
    let homedecor = ConversionServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    let beauty = ConversionServiceClient::new(bed.channel(addr, BEAUTY).await?);
    let mombaby = ConversionServiceClient::new(bed.channel(addr, MOMBABY).await?);
    let mut books = Books::default();

    // Nursery shoppers sent by mombaby-live buy at homedecor-live: textiles
    // at 7 %, the rest at 5 %.
    let mut first = None;
    for i in 0..30 {
        let category = if i % 3 == 0 {
            "home-textiles"
        } else {
            "furniture"
        };
        let amount = 19_900 + 1_337 * i64::from(i);
        let req = order(
            clock,
            format!("hd-order-{i}"),
            format!("hd-user-{i}"),
            amount,
            category,
        );
        first.get_or_insert_with(|| req.clone());
        sell(&homedecor, &mut books, req).await?;
    }
    // Viewers who went on to beauty-live (mombaby -> homedecor -> beauty)
    // buy skincare: homedecor-live earns 8 %, 15 % of it passed upstream to
    // mombaby-live.
    for i in 0..20 {
        sell(
            &beauty,
            &mut books,
            order(
                clock,
                format!("bt-order-{i}"),
                format!("bt-user-{i}"),
                35_800,
                "skincare",
            ),
        )
        .await?;
    }
    // The afternoon's reverse traffic converts too.
    for i in 0..10 {
        sell(
            &mombaby,
            &mut books,
            order(
                clock,
                format!("mb-order-{i}"),
                format!("mb-user-b{i}"),
                12_800,
                "baby-care",
            ),
        )
        .await?;
        sell(
            &homedecor,
            &mut books,
            order(
                clock,
                format!("hd-vanity-{i}"),
                format!("hd-user-c{i}"),
                56_600,
                "vanity",
            ),
        )
        .await?;
    }
    // An order from a viewer nobody sent: recorded, owes nothing.
    sell(
        &homedecor,
        &mut books,
        order(
            clock,
            "hd-walk-in-1".into(),
            "hd-walk-in".into(),
            9_900,
            "furniture",
        ),
    )
    .await?;
    // A retry of the first order is answered from the ledger, not recorded
    // twice.
    // The very same request, as a client retrying after a lost answer would.
    let (replayed, first_entry) = match first {
        Some(req) => {
            let r = homedecor.clone().report_conversion(req).await?.into_inner();
            (r.replayed, r.entry)
        }
        None => (false, None),
    };
    let receipt = match first_entry {
        Some(e) => verify_receipt(bed, addr, e.index, &e.entry).await?,
        None => "no entry to prove".to_owned(),
    };

    // Returns: a partial refund, a full refund, a cancellation.
    for (id, status, refund) in [
        ("hd-order-1", ConversionStatus::Refunded, 5_000),
        ("hd-order-2", ConversionStatus::Refunded, 0),
        ("hd-order-4", ConversionStatus::Cancelled, 0),
    ] {
        let r = homedecor
            .clone()
            .update_conversion(UpdateConversionRequest {
                order_id: id.into(),
                status: status as i32,
                refund_minor: refund,
                request_id: format!("{id}-{}", status.as_str_name()),
            })
            .await?
            .into_inner();
        if let Some(e) = r.entry {
            books.add(&e.entry)?;
        }
        if status == ConversionStatus::Cancelled {
            books.cancels += 1;
        } else {
            books.refunds += 1;
        }
    }
    for i in [0, 3, 5] {
        homedecor
            .clone()
            .update_conversion(UpdateConversionRequest {
                order_id: format!("hd-order-{i}"),
                status: ConversionStatus::Confirmed as i32,
                refund_minor: 0,
                request_id: String::new(),
            })
            .await?;
    }

    let _ = writeln!(
        report,
        "\nConversions: {} orders reported ({} attributed), {} refunds, {} cancellation; retry answered from the ledger: {}",
        books.reported,
        books.attributed,
        books.refunds,
        books.cancels,
        if replayed { "yes" } else { "no" }
    );
    let _ = writeln!(report, "  {receipt}");
    let _ = writeln!(report, "\nCommissions per partner (net of refunds)");
    let _ = writeln!(report, "  {:<16} {:>14} {:>14}", "partner", "owes", "earns");
    for id in [MOMBABY, HOMEDECOR, BEAUTY] {
        let _ = writeln!(
            report,
            "  {:<16} {:>14} {:>14}",
            id,
            crossflow_conversions::money::format(-books.get(id, "payable"), "CNY"),
            crossflow_conversions::money::format(books.get(id, "receivable"), "CNY"),
        );
    }
    let total: i64 = books.accounts.values().sum();
    if total != 0 {
        return Err(unexpected("postings summing to zero", total));
    }
    Ok(())
}

async fn sell(
    client: &ConversionServiceClient<Channel>,
    books: &mut Books,
    req: ReportConversionRequest,
) -> Result<(), DemoError> {
    let r = client.clone().report_conversion(req).await?.into_inner();
    books.reported += 1;
    if r.conversion.as_ref().is_some_and(|c| c.attributed) {
        books.attributed += 1;
    }
    if let Some(e) = r.entry {
        books.add(&e.entry)?;
    }
    Ok(())
}

/// Fetches homedecor-live's receipt for its first order's ledger entry and
/// verifies it offline against the log's key, as a partner's finance team
/// would: leaf hash from the entry bytes, inclusion proof, signed checkpoint.
async fn verify_receipt(
    bed: &Testbed,
    addr: SocketAddr,
    index: u64,
    entry: &[u8],
) -> Result<String, DemoError> {
    let mut ledger = LedgerServiceClient::new(bed.channel(addr, HOMEDECOR).await?);
    let key = ledger.get_log_key(GetLogKeyRequest {}).await?.into_inner();
    let receipt = ledger
        .get_receipt(GetReceiptRequest {
            entry: Some(get_receipt_request::Entry::Index(index)),
        })
        .await?
        .into_inner()
        .receipt;
    const VERIFIES: &str = "a receipt that verifies";
    let verifier = crossflow_ledger::Verifier::parse(&key.verifier_key)
        .map_err(|e| unexpected(VERIFIES, e))?;
    let checkpoint = crossflow_ledger::verify_receipt(&receipt, entry, &verifier, &key.origin)
        .map_err(|e| unexpected(VERIFIES, e))?;
    Ok(format!(
        "receipt for ledger entry #{index} verified offline against checkpoint {} (size {}, key {})",
        checkpoint.origin,
        checkpoint.size,
        verifier.name()
    ))
}
