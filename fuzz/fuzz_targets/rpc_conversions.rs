//! ConversionService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, services, split};
use crossflow_proto::v1::{self as pb, conversion_service_server::ConversionService};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    s.rt.block_on(async {
        match sel % 4 {
            0 => {
                if let Ok(m) = pb::ReportConversionRequest::decode(body) {
                    check(
                        ConversionService::report_conversion(&s.conversions, request(m, who)).await,
                    );
                }
            }
            1 => {
                if let Ok(m) = pb::UpdateConversionRequest::decode(body) {
                    check(
                        ConversionService::update_conversion(&s.conversions, request(m, who)).await,
                    );
                }
            }
            2 => {
                if let Ok(m) = pb::GetConversionRequest::decode(body) {
                    check(ConversionService::get_conversion(&s.conversions, request(m, who)).await);
                }
            }
            _ => {
                if let Ok(m) = pb::ReleaseConversionRequest::decode(body) {
                    check(
                        ConversionService::release_conversion(&s.conversions, request(m, who))
                            .await,
                    );
                }
            }
        }
    });
});
