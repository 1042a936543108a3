//! ReferralService: arbitrary protobuf bytes, decoded by prost into each
//! request type, sent by an arbitrary caller to the real service.
#![no_main]

use crossflow_fuzz::{check, request, rpc, services, split};
use crossflow_proto::v1::{self as pb, referral_service_server::ReferralService as Svc};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((sel, who, body)) = split(data) else {
        return;
    };
    let s = services();
    let svc = &s.referrals;
    s.rt.block_on(async {
        match sel % 4 {
            0 => rpc(body, who, |r| Svc::create_referral(svc, r)).await,
            1 => rpc(body, who, |r| Svc::redeem_referral(svc, r)).await,
            2 => rpc(body, who, |r| Svc::get_referral(svc, r)).await,
            _ => {
                // Mint, then redeem the fresh token as its destination: lets
                // the fuzzer past the AEAD into redemption proper.
                let Ok(m) = pb::CreateReferralRequest::decode(body) else {
                    return;
                };
                let (to, subject) = (m.to_partner.clone(), m.subject.clone());
                let Ok(created) = Svc::create_referral(svc, request(m, who)).await else {
                    return;
                };
                let token = created.into_inner().token;
                let redeem = pb::RedeemReferralRequest { token, subject };
                let as_to = Some(crossflow_api::Caller::Partner(to));
                check(Svc::redeem_referral(svc, request(redeem, as_to)).await);
            }
        }
    });
});
