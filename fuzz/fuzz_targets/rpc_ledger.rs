//! LedgerService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, services, split};
use crossflow_proto::v1::{self as pb, ledger_service_server::LedgerService};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    s.rt.block_on(async {
        match sel % 5 {
            0 => {
                if let Ok(m) = pb::GetCheckpointRequest::decode(body) {
                    check(LedgerService::get_checkpoint(&s.ledger, request(m, who)).await);
                }
            }
            1 => {
                if let Ok(m) = pb::GetReceiptRequest::decode(body) {
                    check(LedgerService::get_receipt(&s.ledger, request(m, who)).await);
                }
            }
            2 => {
                if let Ok(m) = pb::GetConsistencyProofRequest::decode(body) {
                    check(LedgerService::get_consistency_proof(&s.ledger, request(m, who)).await);
                }
            }
            3 => {
                if let Ok(m) = pb::ListEntriesRequest::decode(body) {
                    check(LedgerService::list_entries(&s.ledger, request(m, who)).await);
                }
            }
            _ => {
                if let Ok(m) = pb::GetLogKeyRequest::decode(body) {
                    check(LedgerService::get_log_key(&s.ledger, request(m, who)).await);
                }
            }
        }
    });
});
