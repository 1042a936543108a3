"""Tags published by a user's owner, read by the partner it referred them to.

Runs against the real `crossflow serve` of the `gateway` fixture (conftest.py),
over mTLS with each partner's own certificate. The demo config's flow
mombaby-live -> homedecor-live has `tag_scopes = ["iab-audience", "life-stage"]`;
`budget-band` is a declared namespace outside that scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from crossflow.v1 import referral_pb2, referral_pb2_grpc
from crossflow.v1 import tag_pb2 as pb
from crossflow.v1 import tag_pb2_grpc as pb_grpc
from support import ERROR_DOMAIN, RPC_TIMEOUT_SECS, error_info, new_subject

if TYPE_CHECKING:
    from conftest import Gateway

ORIGIN = "mombaby-live"
DESTINATION = "homedecor-live"
OUTSIDER = "beauty-live"  # no agreement with mombaby-live, not the destination

IN_SCOPE = [("iab-audience", "354"), ("life-stage", "expecting")]
OUT_OF_SCOPE = ("budget-band", "premium")


def tags(gateway: Gateway, partner: str) -> pb_grpc.TagServiceStub:
    return pb_grpc.TagServiceStub(gateway.channel(partner))


def referrals(gateway: Gateway, partner: str) -> referral_pb2_grpc.ReferralServiceStub:
    return referral_pb2_grpc.ReferralServiceStub(gateway.channel(partner))


def referred_user(gateway: Gateway):
    """Publishes tags for a fresh mombaby-live user and sends it to homedecor-live.

    Returns (referral_id, RedeemReferralResponse).
    """
    subject = new_subject("mb")
    published = tags(gateway, ORIGIN).PublishTags(
        pb.PublishTagsRequest(
            subject=subject,
            tags=[pb.Tag(namespace=ns, value=v) for ns, v in [*IN_SCOPE, OUT_OF_SCOPE]],
        ),
        timeout=RPC_TIMEOUT_SECS,
    )
    assert [(t.namespace, t.value) for t in published.tags] == [*IN_SCOPE, OUT_OF_SCOPE]

    created = referrals(gateway, ORIGIN).CreateReferral(
        referral_pb2.CreateReferralRequest(
            subject=subject, to_partner=DESTINATION, target="live-room-42"
        ),
        timeout=RPC_TIMEOUT_SECS,
    )
    redeemed = referrals(gateway, DESTINATION).RedeemReferral(
        referral_pb2.RedeemReferralRequest(token=created.token, subject=new_subject("hd")),
        timeout=RPC_TIMEOUT_SECS,
    )
    assert redeemed.referral.state == referral_pb2.REFERRAL_STATE_REDEEMED
    return created.referral.referral_id, redeemed


def test_destination_reads_tags_in_scope_of_a_referral_it_redeemed(gateway: Gateway):
    referral_id, redeemed = referred_user(gateway)

    got = tags(gateway, DESTINATION).GetReferredUserTags(
        pb.GetReferredUserTagsRequest(referral_id=referral_id),
        timeout=RPC_TIMEOUT_SECS,
    )

    # Ordered by namespace then value; budget-band is withheld.
    assert [(t.namespace, t.value) for t in got.tags] == IN_SCOPE
    assert OUT_OF_SCOPE[0] not in {t.namespace for t in got.tags}
    assert list(got.scopes) == ["iab-audience", "life-stage"]
    for t in got.tags:
        assert t.HasField("expires_at")
    # The reader's pairwise pseudonym, the same RedeemReferral gave it.
    assert got.pseudonym.value
    assert got.pseudonym.epoch == 1  # fresh key directory
    assert got.pseudonym == redeemed.pseudonym
    assert list(got.previous_pseudonyms) == []
    assert got.origin_partner == ORIGIN
    assert got.agreement_id == gateway.agreement(ORIGIN, DESTINATION)["id"]


def test_only_the_destination_may_read(gateway: Gateway):
    referral_id, _ = referred_user(gateway)

    for reader in (OUTSIDER, ORIGIN):
        with pytest.raises(grpc.RpcError) as caught:
            tags(gateway, reader).GetReferredUserTags(
                pb.GetReferredUserTagsRequest(referral_id=referral_id),
                timeout=RPC_TIMEOUT_SECS,
            )
        err = caught.value
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (reader, err.details())
        info = error_info(err)
        assert info.reason == "NOT_DESTINATION", reader
        assert info.domain == ERROR_DOMAIN
        assert info.metadata.get("referral_id") == referral_id
