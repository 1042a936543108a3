//! What is checked after each restart. Every check is counted; a failed one
//! is described and fails the run.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use crossflow_store::sql::{ConnExt as _, RowExt as _};

use crossflow_api::rng::SplitMix64;
use crossflow_ledger::{Verifier, merkle};
use crossflow_proto::v1::{
    Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest, GetConversionRequest,
    GetConversionResponse, GetReceiptRequest, GetReferralRequest, GetReferredUserTagsRequest,
    LedgerEntryRef, ListEntriesRequest, ReferralState, get_receipt_request,
};

use crate::{
    BoxError,
    load::{Acked, Answer, B, Book, Clients, Op, Seen},
    storage::Storage,
};

/// Acknowledged writes of each kind resent per cycle (from any cycle).
const RESEND_PER_KIND: usize = 8;
/// Receipts fetched and verified per cycle.
const RECEIPTS_PER_CYCLE: usize = 5;

/// What the checks of one cycle found.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: u64,
    pub failures: Vec<String>,
    /// Lost writes resent and acknowledged.
    pub retried: u64,
    /// Of those, reports and updates whose first retry answered `replayed`:
    /// durable before the kill, only the answer was lost.
    pub replayed: u64,
    /// Writes refused with `STORE_UNAVAILABLE`, resent and acknowledged.
    pub refused_retried: u64,
    /// Of those, reports and updates whose first retry answered `replayed`:
    /// written after all (the refusal said nothing was).
    pub refused_replayed: u64,
    /// Acknowledged writes resent to compare answers.
    pub resent: u64,
    pub ledger_size: u64,
    pub checkpoints_proven: u64,
}

// === impl Report ===

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
        ok
    }
}

/// What the checks need besides the clients.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub clients: &'a Clients,
    /// The replica whose checkpoint the log checks read (ListEntries stops
    /// at a replica's latest checkpoint, which followers read back from the
    /// store a little after the leader signs it).
    pub home: usize,
    pub config: &'a Path,
    pub storage: &'a Storage,
    pub bin: &'a Path,
    pub verifier: &'a Verifier,
    pub origin: &'a str,
}

fn entry_of(a: &Answer) -> Option<&LedgerEntryRef> {
    match a {
        Answer::Report(r) => r.entry.as_ref(),
        Answer::Update(r) => r.entry.as_ref(),
        _ => None,
    }
}

/// Whether `again` (a resend) gives the same answer as `first`.
fn same_answer(first: &Answer, again: &Answer) -> Result<(), String> {
    let ok = match (first, again) {
        (Answer::Create(a), Answer::Create(b)) => {
            a.referral.as_ref().map(|r| &r.referral_id)
                == b.referral.as_ref().map(|r| &r.referral_id)
        }
        (Answer::Redeem(a), Answer::Redeem(b)) => {
            a.referral == b.referral && a.pseudonym == b.pseudonym
        }
        (Answer::Publish(a), Answer::Publish(b)) => a.tags == b.tags,
        (Answer::Report(a), Answer::Report(b)) => {
            b.replayed
                && a.entry == b.entry
                && a.conversion.as_ref().map(|c| &c.conversion_id)
                    == b.conversion.as_ref().map(|c| &c.conversion_id)
        }
        (Answer::Update(a), Answer::Update(b)) => b.replayed && a.entry == b.entry,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("first answer {first:?}, resend answered {again:?}"))
    }
}

/// Resends every write whose answer was lost (or that was refused with
/// `STORE_UNAVAILABLE`), twice: the first must succeed, the second must
/// give the same answer (nothing applied twice).
pub async fn retry_lost(ctx: &Ctx<'_>, book: &mut Book, cycle: u32, r: &mut Report) {
    let lost = std::mem::take(&mut book.lost)
        .into_iter()
        .map(|op| (op, false));
    let refused = std::mem::take(&mut book.refused)
        .into_iter()
        .map(|op| (op, true));
    for (op, refused) in lost.chain(refused) {
        let what = if refused { "refused" } else { "lost" };
        let first = match ctx.clients.send(&op).await {
            Ok(a) => a,
            Err(s) => {
                r.check(false, || {
                    format!(
                        "retry of {what} {} {op:?}: {:?} {}",
                        op.kind(),
                        s.code(),
                        s.message()
                    )
                });
                continue;
            }
        };
        r.check(true, String::new);
        if matches!(&first, Answer::Report(a) if a.replayed)
            || matches!(&first, Answer::Update(a) if a.replayed)
        {
            if refused {
                r.refused_replayed += 1;
            } else {
                r.replayed += 1;
            }
        }
        match ctx.clients.send(&op).await {
            Ok(again) => {
                let same = same_answer(&first, &again);
                r.check(same.is_ok(), || {
                    format!(
                        "second retry of {what} {}: {}",
                        op.kind(),
                        same.err().unwrap_or_default()
                    )
                });
            }
            Err(s) => {
                r.check(false, || {
                    format!(
                        "second retry of {what} {}: {:?} {}",
                        op.kind(),
                        s.code(),
                        s.message()
                    )
                });
            }
        }
        if refused {
            r.refused_retried += 1;
        } else {
            r.retried += 1;
        }
        book.acked.push(Acked {
            op,
            answer: first,
            cycle,
            retried: true,
        });
    }
}

/// Resends a sample of acknowledged writes: same answer as the first time.
pub async fn resend_acked(ctx: &Ctx<'_>, book: &Book, rng: &mut SplitMix64, r: &mut Report) {
    for kind in ["create", "redeem", "publish", "report", "update"] {
        let all: Vec<&Acked> = book.acked.iter().filter(|a| a.op.kind() == kind).collect();
        for _ in 0..RESEND_PER_KIND.min(all.len()) {
            let a = all[rng.below(all.len())];
            match ctx.clients.send(&a.op).await {
                Ok(again) => {
                    let same = same_answer(&a.answer, &again);
                    r.check(same.is_ok(), || {
                        format!(
                            "resent acknowledged {kind}: {}",
                            same.err().unwrap_or_default()
                        )
                    });
                }
                Err(s) => {
                    r.check(false, || {
                        format!(
                            "resent acknowledged {kind} {:?}: {:?} {}",
                            a.op,
                            s.code(),
                            s.message()
                        )
                    });
                }
            }
            r.resent += 1;
        }
    }
}

/// Waits for a signed checkpoint covering every acknowledged ledger entry
/// and every entry stored (ListEntries, which [`ledger`] reads, stops at the
/// latest checkpoint: a stray entry past it would go unseen), then proves
/// every checkpoint seen before the crash consistent with it.
pub async fn checkpoints(
    ctx: &Ctx<'_>,
    book: &Book,
    seen: &[Seen],
    r: &mut Report,
) -> Result<Option<Seen>, BoxError> {
    let acked = book
        .acked
        .iter()
        .filter_map(|a| entry_of(&a.answer))
        .map(|e| e.index + 1)
        .max()
        .unwrap_or(0);
    let need = acked.max(stored_entries(ctx.storage).await?);
    let mut ops = ctx.clients.at(ctx.home).operator.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let latest = loop {
        let c = ops
            .get_checkpoint(GetCheckpointRequest {})
            .await?
            .into_inner()
            .checkpoint
            .unwrap_or_default();
        if c.size >= need || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !r.check(latest.size >= need, || {
        format!(
            "30 s after restart the newest checkpoint covers {} entries, but {acked} were acknowledged and {need} are stored or acknowledged",
            latest.size
        )
    }) {
        return Ok(None);
    }
    r.check(signed(ctx, &latest), || {
        format!("newest checkpoint does not verify: {:?}", latest.note)
    });
    for s in seen {
        r.check(signed_note(ctx, &s.note, s.size, &s.root), || {
            format!(
                "checkpoint of size {} seen before the crash does not verify",
                s.size
            )
        });
        let res = ops
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: s.size,
                to_size: latest.size,
            })
            .await;
        let p = match res {
            Ok(p) => p.into_inner(),
            Err(e) => {
                r.check(false, || {
                    format!(
                        "GetConsistencyProof {} -> {}: {:?} {}",
                        s.size,
                        latest.size,
                        e.code(),
                        e.message()
                    )
                });
                continue;
            }
        };
        let from_root = p.from_checkpoint.map(|c| c.root_hash).unwrap_or_default();
        r.check(from_root == s.root, || {
            format!(
                "after restart the checkpoint of size {} has another root than before the crash",
                s.size
            )
        });
        let proof: Result<Vec<merkle::Hash>, _> = p
            .proof
            .iter()
            .map(|h| <merkle::Hash>::try_from(h.as_slice()))
            .collect();
        let verified = match proof {
            Ok(proof) => {
                merkle::verify_consistency(s.size, latest.size, &proof, &s.root, &latest.root_hash)
                    .map_err(|e| e.to_string())
            }
            Err(_) => Err("a proof hash is not 32 bytes".to_owned()),
        };
        if r.check(verified.is_ok(), || {
            format!(
                "checkpoint {} (before the crash) -> {} (after): {}",
                s.size,
                latest.size,
                verified.err().unwrap_or_default()
            )
        }) {
            r.checkpoints_proven += 1;
        }
    }
    Ok(Some(Seen {
        size: latest.size,
        root: latest.root_hash,
        note: latest.note,
    }))
}

fn signed(ctx: &Ctx<'_>, c: &Checkpoint) -> bool {
    signed_note(ctx, &c.note, c.size, &c.root_hash)
}

fn signed_note(ctx: &Ctx<'_>, note: &str, size: u64, root: &[u8]) -> bool {
    let Ok(body) = ctx.verifier.verify_note(note) else {
        return false;
    };
    crossflow_ledger::Checkpoint::parse_body(body)
        .is_ok_and(|c| c.size == size && c.root.as_slice() == root && c.origin == ctx.origin)
}

/// The whole log as the operator sees it: contiguous, every acknowledged
/// entry at its index with its bytes, one `reported` entry per order and one
/// entry per acknowledged update, nothing else.
pub async fn ledger(ctx: &Ctx<'_>, book: &Book, r: &mut Report) -> Result<(), BoxError> {
    let mut ops = ctx.clients.at(ctx.home).operator.clone();
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops
            .list_entries(ListEntriesRequest {
                since_index: 0,
                page_size: 1000,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        let n = page.entries.len();
        entries.extend(page.entries);
        if n == 0 || page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    r.ledger_size = entries.len() as u64;
    let contiguous = entries.iter().enumerate().all(|(i, e)| e.index == i as u64);
    r.check(contiguous, || {
        "ListEntries indices are not 0, 1, 2, ...".to_owned()
    });
    let hashed = entries
        .iter()
        .all(|e| merkle::leaf_hash(&e.entry).as_slice() == e.leaf_hash.as_slice());
    r.check(hashed, || {
        "an entry's leaf hash is not SHA-256(0x00 || entry)".to_owned()
    });

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut writes = 0u64;
    for a in &book.acked {
        let Some(e) = entry_of(&a.answer) else {
            continue;
        };
        writes += 1;
        let at = usize::try_from(e.index).ok().and_then(|i| entries.get(i));
        r.check(
            at.is_some_and(|x| x.entry == e.entry && x.leaf_hash == e.leaf_hash),
            || {
                format!(
                    "acknowledged {} entry {} is not in the log as answered",
                    a.op.kind(),
                    e.index
                )
            },
        );
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&e.entry)
            && let Some(id) = v["conversion_id"].as_str()
        {
            *expected.entry(id.to_owned()).or_default() += 1;
        }
    }
    r.check(entries.len() as u64 == writes, || {
        format!(
            "the log holds {} entries but {writes} writes were acknowledged (every lost one was retried)",
            entries.len()
        )
    });
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for e in &entries {
        let v: serde_json::Value = serde_json::from_slice(&e.entry).unwrap_or_default();
        let id = v["conversion_id"].as_str().unwrap_or_default().to_owned();
        if v["event"] == "reported" {
            // By order, not by id: a second report of one order would get an
            // id of its own (ids start with the recording time).
            let order = format!("{}/{}", v["reporter"], v["order_id"]);
            *reported.entry(order).or_default() += 1;
        }
        *found.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = reported.iter().filter(|(_, n)| **n != 1).collect();
    r.check(twice.is_empty(), || {
        format!("orders reported more than once: {twice:?}")
    });
    r.check(found == expected, || {
        let keys: BTreeSet<&String> = found.keys().chain(expected.keys()).collect();
        let diff: Vec<_> = keys
            .into_iter()
            .filter(|k| found.get(*k) != expected.get(*k))
            .take(5)
            .map(|k| (k, found.get(k), expected.get(k)))
            .collect();
        format!("entries per conversion (in the log, acknowledged) differ, e.g. {diff:?}")
    });
    Ok(())
}

/// GetConversion of `order_id` as party `by`.
async fn conversion(
    ctx: &Ctx<'_>,
    by: usize,
    order_id: &str,
) -> Result<tonic::Response<GetConversionResponse>, tonic::Status> {
    ctx.clients.any().parties[by]
        .conversions
        .clone()
        .get_conversion(GetConversionRequest {
            order_id: order_id.to_owned(),
        })
        .await
}

/// Reads back this cycle's acknowledged writes through the API.
pub async fn read_back(
    ctx: &Ctx<'_>,
    book: &Book,
    cycle: u32,
    rng: &mut SplitMix64,
    r: &mut Report,
) -> Result<(), BoxError> {
    let mine: Vec<&Acked> = book.acked.iter().filter(|a| a.cycle == cycle).collect();
    for a in &mine {
        match (&a.op, &a.answer) {
            (Op::Redeem(by, _), Answer::Redeem(ans)) => {
                let want = ans.referral.clone().unwrap_or_default();
                let got = ctx.clients.any().parties[*by]
                    .referrals
                    .clone()
                    .get_referral(GetReferralRequest {
                        referral_id: want.referral_id.clone(),
                    })
                    .await;
                let ok = got.as_ref().is_ok_and(|g| {
                    g.get_ref().referral.as_ref().is_some_and(|g| {
                        g.referral_id == want.referral_id
                            && g.from_partner == want.from_partner
                            && g.to_partner == want.to_partner
                            && g.chain == want.chain
                            && g.hop == want.hop
                            && g.parent_referral_id == want.parent_referral_id
                            && g.state == ReferralState::Redeemed as i32
                    })
                });
                r.check(ok, || {
                    format!("GetReferral {} after restart: {got:?}", want.referral_id)
                });
            }
            (Op::Report(by, req), Answer::Report(ans)) => {
                let got = conversion(ctx, *by, &req.order_id).await;
                let want = ans.conversion.clone().unwrap_or_default();
                let ok = got.as_ref().is_ok_and(|g| {
                    g.get_ref().conversion.as_ref().is_some_and(|c| {
                        c.conversion_id == want.conversion_id
                            && c.report_index == want.report_index
                            && c.amount_minor == req.amount_minor
                    })
                });
                r.check(ok, || {
                    format!("GetConversion {} after restart: {got:?}", req.order_id)
                });
            }
            (Op::Update(by, req), Answer::Update(ans)) => {
                let got = conversion(ctx, *by, &req.order_id).await;
                let idx = ans.entry.as_ref().map_or(u64::MAX, |e| e.index);
                let ok = got.as_ref().is_ok_and(|g| {
                    g.get_ref().conversion.as_ref().is_some_and(|c| {
                        c.latest_index >= idx
                            && c.status == ans.conversion.as_ref().map_or(0, |c| c.status)
                    })
                });
                r.check(ok, || {
                    format!("GetConversion {} after its update: {got:?}", req.order_id)
                });
            }
            (Op::Publish(_, req, referral), Answer::Publish(_)) => {
                let got = ctx.clients.any().parties[B]
                    .tags
                    .clone()
                    .get_referred_user_tags(GetReferredUserTagsRequest {
                        referral_id: referral.clone(),
                    })
                    .await;
                let ok = got.as_ref().is_ok_and(|g| {
                    req.tags.iter().all(|t| {
                        g.get_ref()
                            .tags
                            .iter()
                            .any(|s| s.namespace == t.namespace && s.value == t.value)
                    })
                });
                r.check(ok, || {
                    format!("tags of {} after restart: {got:?}", req.subject)
                });
            }
            _ => {}
        }
    }
    let entries: Vec<(usize, &LedgerEntryRef)> = mine
        .iter()
        .filter_map(|a| {
            let by = match &a.op {
                Op::Report(by, _) | Op::Update(by, _) => *by,
                _ => return None,
            };
            Some((by, entry_of(&a.answer)?))
        })
        .collect();
    for _ in 0..RECEIPTS_PER_CYCLE.min(entries.len()) {
        let (by, e) = entries[rng.below(entries.len())];
        let got = ctx.clients.any().parties[by]
            .ledger
            .clone()
            .get_receipt(GetReceiptRequest {
                entry: Some(get_receipt_request::Entry::Index(e.index)),
            })
            .await;
        let verified = match &got {
            Ok(g) => {
                let g = g.get_ref();
                if g.entry.as_ref().is_some_and(|x| x.entry == e.entry) {
                    crossflow_ledger::verify_receipt(&g.receipt, &e.entry, ctx.verifier, ctx.origin)
                        .map(|_| ())
                        .map_err(|x| x.to_string())
                } else {
                    Err("receipt is for other entry bytes".to_owned())
                }
            }
            Err(s) => Err(format!("{:?} {}", s.code(), s.message())),
        };
        r.check(verified.is_ok(), || {
            format!(
                "receipt of entry {}: {}",
                e.index,
                verified.err().unwrap_or_default()
            )
        });
    }
    Ok(())
}

/// The store's ledger entries.
pub async fn stored_entries(storage: &Storage) -> Result<u64, BoxError> {
    let n = storage
        .read(|c| c.query_int("SELECT COUNT(*) FROM ledger_entries", &[]))
        .await?;
    Ok(u64::try_from(n)?)
}

/// The rows [`stored`] compares with the book, read in one snapshot.
#[derive(Debug, Default)]
struct Rows {
    /// Referral ids (hex) of the landings.
    landings: BTreeSet<String>,
    /// Ledger index -> leaf hash.
    leaves: BTreeMap<i64, Vec<u8>>,
    /// (reporter, order id, report index, report leaf) of each conversion.
    conversions: Vec<(String, String, i64, Vec<u8>)>,
    /// (entry index, leaf hash) of each conversion update.
    updates: Vec<(i64, Vec<u8>)>,
}

/// Reads [`Rows`]; the same SQL on SQLite and PostgreSQL.
fn rows(c: &dyn crossflow_store::sql::Conn) -> Result<Rows, crossflow_store::StoreError> {
    Ok(Rows {
        landings: c
            .query_vec("SELECT referral_id FROM landings", &[], |row| {
                Ok(hex::encode(row.bytes(0)?))
            })?
            .into_iter()
            .collect(),
        leaves: c
            .query_vec("SELECT idx, leaf_hash FROM ledger_entries", &[], |row| {
                Ok((row.int(0)?, row.bytes(1)?.to_vec()))
            })?
            .into_iter()
            .collect(),
        conversions: c.query_vec(
            "SELECT reporter, order_id, report_index, report_leaf FROM conversions",
            &[],
            |row| {
                Ok((
                    row.string(0)?,
                    row.string(1)?,
                    row.int(2)?,
                    row.bytes(3)?.to_vec(),
                ))
            },
        )?,
        updates: c.query_vec(
            "SELECT entry_index, leaf_hash FROM conversion_updates",
            &[],
            |row| Ok((row.int(0)?, row.bytes(1)?.to_vec())),
        )?,
    })
}

/// Reads the store directly (the SQLite file read-only, or the replicas'
/// PostgreSQL database, in one snapshot, while the gateways run): rows are
/// exactly the acknowledged writes, and every conversion row and its ledger
/// entry exist together or not at all.
pub async fn stored(ctx: &Ctx<'_>, book: &Book, r: &mut Report) -> Result<(), BoxError> {
    let Rows {
        landings,
        leaves,
        conversions: conversion_rows,
        updates: update_rows,
    } = ctx.storage.snapshot(rows).await?;

    let redeemed: BTreeSet<String> = book
        .acked
        .iter()
        .filter_map(|a| match &a.answer {
            Answer::Redeem(r) => r.referral.as_ref().map(|x| x.referral_id.clone()),
            _ => None,
        })
        .collect();
    r.check(landings == redeemed, || {
        format!(
            "{} landing rows, {} acknowledged redemptions; {} missing, {} extra",
            landings.len(),
            redeemed.len(),
            redeemed.difference(&landings).count(),
            landings.difference(&redeemed).count()
        )
    });

    // Every ledger row must be claimed by exactly one conversion or update
    // row with the same leaf, and every such row must have its ledger row.
    let mut claims: BTreeMap<i64, u32> = BTreeMap::new();
    let mut orphans = 0u64;
    let mut conversions: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (reporter, order, idx, leaf) in conversion_rows {
        if leaves.get(&idx) != Some(&leaf) {
            orphans += 1;
        }
        *claims.entry(idx).or_default() += 1;
        conversions.insert((reporter, order), idx);
    }
    let mut updates: BTreeSet<i64> = BTreeSet::new();
    for (idx, leaf) in update_rows {
        if leaves.get(&idx) != Some(&leaf) {
            orphans += 1;
        }
        *claims.entry(idx).or_default() += 1;
        updates.insert(idx);
    }
    r.check(orphans == 0, || {
        format!("{orphans} conversion/update rows without their ledger entry")
    });
    let unclaimed = leaves.keys().filter(|i| claims.get(i) != Some(&1)).count();
    r.check(unclaimed == 0, || {
        format!("{unclaimed} ledger entries not claimed by exactly one conversion or update row")
    });

    let mut want_reports: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut want_updates: BTreeSet<i64> = BTreeSet::new();
    for a in &book.acked {
        match (&a.op, &a.answer) {
            (Op::Report(by, req), Answer::Report(ans)) => {
                let idx = ans
                    .entry
                    .as_ref()
                    .map_or(-1, |e| i64::try_from(e.index).unwrap_or(-1));
                want_reports.insert(
                    (crate::load::PARTNERS[*by].to_owned(), req.order_id.clone()),
                    idx,
                );
            }
            (Op::Update(..), Answer::Update(ans)) => {
                want_updates.insert(
                    ans.entry
                        .as_ref()
                        .map_or(-1, |e| i64::try_from(e.index).unwrap_or(-1)),
                );
            }
            _ => {}
        }
    }
    r.check(conversions == want_reports, || {
        format!(
            "{} conversion rows, {} acknowledged reports (or their ledger indices differ)",
            conversions.len(),
            want_reports.len()
        )
    });
    r.check(updates == want_updates, || {
        format!(
            "{} update rows, {} acknowledged updates (or their ledger indices differ)",
            updates.len(),
            want_updates.len()
        )
    });
    Ok(())
}

/// Runs the real `crossflow ledger fsck`.
pub fn fsck(ctx: &Ctx<'_>, r: &mut Report) -> Result<(), BoxError> {
    let out = std::process::Command::new(ctx.bin)
        .args(["ledger", "fsck", "--config"])
        .arg(ctx.config)
        .output()?;
    r.check(out.status.success(), || {
        format!(
            "crossflow ledger fsck: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Ok(())
}
