"""Helpers for Python client tests of crossflow (imported by test files)."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# `google.rpc.ErrorInfo.domain` of every crossflow error.
ERROR_DOMAIN = "crossflow.v1"
# Deadline of every RPC a test makes (pass it as `timeout=`).
RPC_TIMEOUT_SECS = 10.0


def new_subject(prefix: str = "user") -> str:
    """A partner-side user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def rich_status(err: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status from the grpc-status-details-bin trailer."""
    status = rpc_status.from_call(err)
    assert status is not None, f"{err.code()} without rich details: {err.details()}"
    return status


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail every crossflow error carries."""
    infos = []
    for any_detail in rich_status(err).details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"want one ErrorInfo, got {infos}"
    return infos[0]
