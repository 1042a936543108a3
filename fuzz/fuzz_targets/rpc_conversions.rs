//! ConversionService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{rpc, services, split};
use crossflow_proto::v1::conversion_service_server::ConversionService as Svc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    let svc = &s.conversions;
    s.rt.block_on(async {
        match sel % 4 {
            0 => rpc(body, who, |r| Svc::report_conversion(svc, r)).await,
            1 => rpc(body, who, |r| Svc::update_conversion(svc, r)).await,
            2 => rpc(body, who, |r| Svc::get_conversion(svc, r)).await,
            _ => rpc(body, who, |r| Svc::release_conversion(svc, r)).await,
        }
    });
});
