//! TagService: arbitrary protobuf bytes, decoded by prost into each request
//! type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, services, split};
use crossflow_proto::v1::{self as pb, tag_service_server::TagService};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    s.rt.block_on(async {
        match sel % 3 {
            0 => {
                if let Ok(m) = pb::PublishTagsRequest::decode(body) {
                    check(TagService::publish_tags(&s.tags, request(m, who)).await);
                }
            }
            1 => {
                if let Ok(m) = pb::GetReferredUserTagsRequest::decode(body) {
                    check(TagService::get_referred_user_tags(&s.tags, request(m, who)).await);
                }
            }
            _ => {
                if let Ok(m) = pb::OptOutRequest::decode(body) {
                    check(TagService::opt_out(&s.tags, request(m, who)).await);
                }
            }
        }
    });
});
