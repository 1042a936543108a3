//! TagService: arbitrary protobuf bytes, decoded by prost into each request
//! type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{rpc, services, split};
use crossflow_proto::v1::tag_service_server::TagService as Svc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    let svc = &s.tags;
    s.rt.block_on(async {
        match sel % 3 {
            0 => rpc(body, who, |r| Svc::publish_tags(svc, r)).await,
            1 => rpc(body, who, |r| Svc::get_referred_user_tags(svc, r)).await,
            _ => rpc(body, who, |r| Svc::opt_out(svc, r)).await,
        }
    });
});
