//! QuotaService: arbitrary protobuf bytes, decoded by prost into the request
//! type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{rpc, services, split};
use crossflow_proto::v1::quota_service_server::QuotaService as Svc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((_, who, body)) = split(data) else {
        return;
    };
    let s = services();
    s.rt.block_on(rpc(body, who, |r| Svc::get_quota_status(&s.quota, r)));
});
