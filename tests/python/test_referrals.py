"""A hop made by one partner and redeemed by another, from a Python client.

Runs against the real `crossflow serve` of the `gateway` fixture (conftest.py),
over mTLS with each partner's own certificate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from crossflow.v1 import referral_pb2 as pb
from crossflow.v1 import referral_pb2_grpc as pb_grpc
from support import ERROR_DOMAIN, RPC_TIMEOUT_SECS, error_info, new_subject

if TYPE_CHECKING:
    from conftest import Gateway

ORIGIN = "mombaby-live"
DESTINATION = "homedecor-live"
OUTSIDER = "beauty-live"  # no agreement with mombaby-live


def referrals(gateway: Gateway, partner: str) -> pb_grpc.ReferralServiceStub:
    return pb_grpc.ReferralServiceStub(gateway.channel(partner))


def create(gateway: Gateway, origin: str, to: str, subject: str, target: str = "live-room-42"):
    return referrals(gateway, origin).CreateReferral(
        pb.CreateReferralRequest(subject=subject, to_partner=to, target=target),
        timeout=RPC_TIMEOUT_SECS,
    )


def redeem(gateway: Gateway, destination: str, token: str, subject: str):
    return referrals(gateway, destination).RedeemReferral(
        pb.RedeemReferralRequest(token=token, subject=subject),
        timeout=RPC_TIMEOUT_SECS,
    )


def test_hop_is_created_by_one_partner_and_redeemed_by_another(gateway: Gateway):
    origin_user = new_subject("mb")
    created = create(gateway, ORIGIN, DESTINATION, origin_user, target="live-room-42")

    minted = created.referral
    assert len(minted.referral_id) == 32
    assert minted.from_partner == ORIGIN
    assert minted.to_partner == DESTINATION
    assert list(minted.chain) == [ORIGIN]
    assert minted.hop == 1
    assert minted.parent_referral_id == ""
    assert minted.target == "live-room-42"
    assert minted.agreement_id == gateway.agreement(ORIGIN, DESTINATION)["id"]
    assert minted.state == pb.REFERRAL_STATE_MINTED
    assert minted.expires_at.ToDatetime() > minted.issued_at.ToDatetime()
    assert created.token and origin_user not in created.token

    landed_user = new_subject("hd")
    redeemed = redeem(gateway, DESTINATION, created.token, landed_user)

    got = redeemed.referral
    assert got.state == pb.REFERRAL_STATE_REDEEMED
    assert got.referral_id == minted.referral_id
    assert (got.from_partner, got.to_partner) == (ORIGIN, DESTINATION)
    assert list(got.chain) == [ORIGIN]
    assert got.hop == 1
    assert got.HasField("redeemed_at")
    # Fresh key directory from `crossflow keys generate`: epoch 1.
    assert redeemed.pseudonym.epoch == 1
    assert redeemed.pseudonym.value
    assert origin_user not in redeemed.pseudonym.value
    assert landed_user not in redeemed.pseudonym.value

    # Redeeming again with the same subject is idempotent: the same answer.
    again = redeem(gateway, DESTINATION, created.token, landed_user)
    assert again.referral.referral_id == got.referral_id
    assert again.referral.state == pb.REFERRAL_STATE_REDEEMED
    assert again.pseudonym == redeemed.pseudonym

    # Both parties can read it back.
    for party in (ORIGIN, DESTINATION):
        read = referrals(gateway, party).GetReferral(
            pb.GetReferralRequest(referral_id=minted.referral_id),
            timeout=RPC_TIMEOUT_SECS,
        )
        assert read.referral.state == pb.REFERRAL_STATE_REDEEMED
        assert read.referral.referral_id == minted.referral_id


def test_redeeming_with_another_subject_is_already_exists(gateway: Gateway):
    created = create(gateway, ORIGIN, DESTINATION, new_subject("mb"))
    redeem(gateway, DESTINATION, created.token, new_subject("hd"))

    with pytest.raises(grpc.RpcError) as caught:
        redeem(gateway, DESTINATION, created.token, new_subject("hd-other"))

    err = caught.value
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    info = error_info(err)
    assert info.reason == "ALREADY_REDEEMED"
    assert info.domain == ERROR_DOMAIN
    assert info.metadata.get("referral_id") == created.referral.referral_id


def test_pseudonyms_are_pairwise_and_stable(gateway: Gateway):
    # One homedecor-live user sent to both of its partners.
    origin_user = new_subject("hd")
    seen = {}
    for dest in ("mombaby-live", "beauty-live"):
        first = create(gateway, DESTINATION, dest, origin_user)
        second = create(gateway, DESTINATION, dest, origin_user)
        a = redeem(gateway, dest, first.token, new_subject(dest))
        b = redeem(gateway, dest, second.token, new_subject(dest))
        # Stable for one viewer within an epoch, whichever local account lands.
        assert a.pseudonym == b.pseudonym
        seen[dest] = a.pseudonym.value
    # Two partners never see the same pseudonym for one user.
    assert seen["mombaby-live"] != seen["beauty-live"]


def test_no_agreement_and_outsiders_are_refused(gateway: Gateway):
    with pytest.raises(KeyError):
        gateway.agreement(ORIGIN, OUTSIDER)
    with pytest.raises(grpc.RpcError) as caught:
        create(gateway, ORIGIN, OUTSIDER, new_subject("mb"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "NO_AGREEMENT"

    created = create(gateway, ORIGIN, DESTINATION, new_subject("mb"))
    redeem(gateway, DESTINATION, created.token, new_subject("hd"))
    with pytest.raises(grpc.RpcError) as caught:
        referrals(gateway, OUTSIDER).GetReferral(
            pb.GetReferralRequest(referral_id=created.referral.referral_id),
            timeout=RPC_TIMEOUT_SECS,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "NOT_A_PARTY"


def test_subjects_never_reach_disk_or_logs(gateway: Gateway):
    origin_user = new_subject("mb-secret")
    landed_user = new_subject("hd-secret")
    created = create(gateway, ORIGIN, DESTINATION, origin_user)
    redeem(gateway, DESTINATION, created.token, landed_user)
    with pytest.raises(grpc.RpcError):
        redeem(gateway, DESTINATION, created.token, new_subject("hd-secret"))

    # The answer to RedeemReferral is durable, so the landing is on disk now.
    files = [p for p in (gateway.dir / "data").rglob("*") if p.is_file()]
    files.append(gateway.log_path)
    assert len(files) > 1
    for path in files:
        data = path.read_bytes()
        for subject in (origin_user, landed_user):
            assert subject.encode() not in data, f"{subject} in {path}"
