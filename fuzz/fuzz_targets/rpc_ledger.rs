//! LedgerService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{rpc, services, split};
use crossflow_proto::v1::ledger_service_server::LedgerService as Svc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    let svc = &s.ledger;
    s.rt.block_on(async {
        match sel % 5 {
            0 => rpc(body, who, |r| Svc::get_checkpoint(svc, r)).await,
            1 => rpc(body, who, |r| Svc::get_receipt(svc, r)).await,
            2 => rpc(body, who, |r| Svc::get_consistency_proof(svc, r)).await,
            3 => rpc(body, who, |r| Svc::list_entries(svc, r)).await,
            _ => rpc(body, who, |r| Svc::get_log_key(svc, r)).await,
        }
    });
});
