//! ReferralService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, services, split};
use crossflow_proto::v1::{self as pb, referral_service_server::ReferralService};
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
                if let Ok(m) = pb::CreateReferralRequest::decode(body) {
                    check(ReferralService::create_referral(&s.referrals, request(m, who)).await);
                }
            }
            1 => {
                if let Ok(m) = pb::RedeemReferralRequest::decode(body) {
                    check(ReferralService::redeem_referral(&s.referrals, request(m, who)).await);
                }
            }
            2 => {
                if let Ok(m) = pb::GetReferralRequest::decode(body) {
                    check(ReferralService::get_referral(&s.referrals, request(m, who)).await);
                }
            }
            _ => {
                // Mint, then redeem the fresh token as its destination: lets
                // the fuzzer past the AEAD into redemption proper.
                let Ok(m) = pb::CreateReferralRequest::decode(body) else {
                    return;
                };
                let (to, subject) = (m.to_partner.clone(), m.subject.clone());
                let Ok(created) =
                    ReferralService::create_referral(&s.referrals, request(m, who)).await
                else {
                    return;
                };
                let token = created.into_inner().token;
                let redeem = pb::RedeemReferralRequest { token, subject };
                let as_to = Some(crossflow_api::Caller::Partner(to));
                check(ReferralService::redeem_referral(&s.referrals, request(redeem, as_to)).await);
            }
        }
    });
});
