//! QuotaService: arbitrary protobuf bytes, decoded by prost into the request
//! type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, services, split};
use crossflow_proto::v1::{self as pb, quota_service_server::QuotaService};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((_, who, body)) = split(data) else {
        return;
    };
    let s = services();
    s.rt.block_on(async {
        if let Ok(m) = pb::GetQuotaStatusRequest::decode(body) {
            check(QuotaService::get_quota_status(&s.quota, request(m, who)).await);
        }
    });
});
