"""Tests of examples/verify_export.py, the partner-side reference verifier.

Which tests use what:

* RFC 6962 vectors (`services/ledger/testdata/rfc6962`, the same files the
  Rust Merkle code is tested against): inclusion and consistency checks, and
  the multi-proof walk against the vectors' audit paths.
* The Go signed-note reference vector (golang.org/x/mod/sumdb/note).
* A SYNTHETIC export built here from the spec (docs/LEDGER.md), signed with a
  throwaway Ed25519 key. Everything in it -- tree, proofs, signatures and the
  expected statement.csv/settlement.csv -- is produced by code and literals in
  this file, not by the verifier, so the verifier is checked against an
  independent reading of the spec. Each tamper case must be caught, naming
  the right file and line.
* REAL GATEWAY OUTPUT (marked `real_gateway` in the names):
  - a receipt fetched over gRPC from the `gateway` fixture (conftest.py);
  - `target/finance-export/federation`, written by the Rust finance e2e test,
    and the demo's kept export (`crossflow demo --keep DIR` -> DIR/export);
    each is skipped, saying why, while it does not exist.
  - the `crossflow` binary's own verifiers on the synthetic files, so both
    implementations agree on the formats.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if TYPE_CHECKING:
    from conftest import Gateway

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VERIFIER = ROOT / "examples" / "verify_export.py"
VECTORS = ROOT / "services" / "ledger" / "testdata" / "rfc6962"
FINANCE_EXPORT = ROOT / "target" / "finance-export"

_spec = importlib.util.spec_from_file_location("verify_export", VERIFIER)
assert _spec is not None and _spec.loader is not None
vx = importlib.util.module_from_spec(_spec)
sys.modules["verify_export"] = vx
_spec.loader.exec_module(vx)


def run_verifier(*args: object) -> subprocess.CompletedProcess:
    """The verifier as a partner runs it: a separate process."""
    return subprocess.run(
        [sys.executable, str(VERIFIER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# =============================================================================
# RFC 6962 vectors
# =============================================================================


def _vectors(kind: str) -> list[tuple[str, dict]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


INCLUSION = _vectors("inclusion")
CONSISTENCY = _vectors("consistency")


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def test_vectors_are_there():
    # The Rust test asserts the same floor: a moved directory must not make
    # the parametrized tests below silently vanish.
    assert len(INCLUSION) > 40 and len(CONSISTENCY) > 40, (
        len(INCLUSION),
        len(CONSISTENCY),
    )


@pytest.mark.parametrize("name,v", INCLUSION, ids=[n for n, _ in INCLUSION])
def test_rfc6962_inclusion_vector(name: str, v: dict):
    proof = [_b(h) for h in v["proof"] or []]
    try:
        vx.verify_inclusion(v["leafIdx"], v["treeSize"], _b(v["leafHash"]), proof, _b(v["root"]))
        failed = None
    except vx.VerifyError as e:
        failed = e
    assert (failed is not None) == v["wantErr"], f"{name}: {failed}"


@pytest.mark.parametrize("name,v", CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_rfc6962_consistency_vector(name: str, v: dict):
    proof = [_b(h) for h in v["proof"] or []]
    try:
        vx.verify_consistency(v["size1"], v["size2"], proof, _b(v["root1"]), _b(v["root2"]))
        failed = None
    except vx.VerifyError as e:
        failed = e
    assert (failed is not None) == v["wantErr"], f"{name}: {failed}"


# The leaves of the reference tree the vectors' passing cases come from.
REFERENCE_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]


def test_multiproof_of_one_leaf_is_its_audit_path():
    """For a single exported leaf the multi-proof holds exactly the inclusion
    proof's hashes (in tree order rather than leaf-first). The audit paths
    come from this file's RFC 9162 PATH(), itself checked against the
    passing vectors of the reference tree."""
    leaves = [vx.leaf_hash(e) for e in REFERENCE_LEAVES]
    compared = 0
    for name, v in INCLUSION:
        size, index = v["treeSize"], v["leafIdx"]
        if v["wantErr"] or size > 8 or _b(v["leafHash"]) != leaves[index]:
            continue  # single-entry vectors use a leaf outside the tree
        assert vx.merkle_root(leaves[:size]) == _b(v["root"]), name
        assert path(index, leaves[:size]) == [_b(h) for h in v["proof"] or []], name
        compared += 1
    assert compared == 3, compared  # inclusion/{0,1,2}/happy-path.json
    for size in range(1, 9):
        root = vx.merkle_root(leaves[:size])
        for index in range(size):
            audit = path(index, leaves[:size])
            vx.verify_inclusion(index, size, leaves[index], audit, root)
            hashes = vx.multiproof_hashes(size, leaves[:size], [index])
            assert sorted(hashes) == sorted(audit), (size, index)
            assert vx.multiproof_root(size, {index: leaves[index]}, hashes) == (
                root,
                len(hashes),
            )


def test_multiproof_walk_for_every_subset_of_small_trees():
    leaves = [vx.leaf_hash(bytes([i])) for i in range(11)]
    for size in range(1, 12):
        root = vx.merkle_root(leaves[:size])
        for mask in range(1 << size):
            exported = [i for i in range(size) if mask >> i & 1]
            hashes = vx.multiproof_hashes(size, leaves[:size], exported)
            got = vx.multiproof_root(size, {i: leaves[i] for i in exported}, hashes)
            assert got == (root, len(hashes)), (size, exported)
            if exported:
                # A wrong leaf changes the root; one hash fewer runs out.
                wrong = {i: leaves[i] for i in exported}
                wrong[exported[0]] = vx.leaf_hash(b"forged")
                assert vx.multiproof_root(size, wrong, hashes)[0] != root
            if hashes:
                with pytest.raises(vx.VerifyError):
                    vx.multiproof_root(size, {i: leaves[i] for i in exported}, hashes[:-1])


def test_docs_worked_example():
    """The hashes, note and receipt quoted in docs/LEDGER.md ("Hashing",
    "Checkpoints and signed notes", "Receipts")."""
    leaves = [vx.leaf_hash(e) for e in (b"e0", b"e1", b"e2")]
    assert [h.hex()[:8] for h in leaves] == ["956ae51b", "d38b823b", "e76eb1b9"]
    n01 = vx.node_hash(leaves[0], leaves[1])
    root = vx.merkle_root(leaves)
    assert (n01.hex()[:8], vx.b64(root)) == (
        "718fa036",
        "ZLJJxOBgbj2XQsSb/VfNHj6xcPXM76JuoEXKGT1kp18=",
    )
    vx.verify_inclusion(2, 3, leaves[2], [n01], root)
    vx.verify_inclusion(0, 3, leaves[0], leaves[1:], root)
    vx.verify_consistency(2, 3, [leaves[2]], n01, root)
    assert vx.multiproof_hashes(3, leaves, [2]) == [n01]
    assert vx.multiproof_hashes(3, leaves, [0, 2]) == [leaves[1]]
    signer = Signer("crossflow-ledger", 7)
    assert signer.vkey == "crossflow-ledger+4ef5eedb+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs"
    note = signer.checkpoint("crossflow.example/ledger", 3, root)
    assert note.endswith(
        "\n— crossflow-ledger TvXu20pZD95fmpINYtgRIc4otNif7AvKC+3sSNiX5/iW4tAG+AkZGZoG42yzw3/ixlRMwFScttxB2l5109N/7jvz6AY=\n"
    )
    receipt = f"c2sp.org/tlog-proof@v1\nindex 2\n{vx.b64(n01)}\n\n{note}"
    key = vx.VerifierKey.parse(signer.vkey)
    _, cp = vx.verify_receipt(receipt, b"e2", key, "crossflow.example/ledger")
    assert (cp.size, cp.root) == (3, root)


# =============================================================================
# Signed notes
# =============================================================================

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_go_reference_note_verifies():
    key = vx.VerifierKey.parse(GO_VKEY)
    assert (key.name, key.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert vx.verify_note(f"{GO_TEXT}\n{GO_SIG}", key) == GO_TEXT


@pytest.mark.parametrize(
    "note,line",
    [
        (f"{GO_TEXT.replace('problem,', 'problem;')}\n{GO_SIG}", 4),  # text changed
        (f"{GO_TEXT}\n{GO_SIG.replace('x08go', 'x08gp')}", 4),  # signature changed
        (f"{GO_TEXT}\n", 4),  # no signature block
        (f"{GO_TEXT}\n- PeterNeumann x08go\n", 4),  # ASCII dash
        (
            f"{GO_TEXT}\n— Someone x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
            4,
        ),
        (f"{GO_TEXT}\x07\n{GO_SIG}", 3),  # control character
    ],
)
def test_bad_notes_are_rejected_with_their_line(note: str, line: int):
    with pytest.raises(vx.NoteError) as e:
        vx.verify_note(note, vx.VerifierKey.parse(GO_VKEY))
    assert e.value.line == line, str(e.value)


def test_unknown_signatures_are_ignored():
    other = Signer("witness.example", 3)
    note = f"{GO_TEXT}\n{GO_SIG}" + other.sign(GO_TEXT)[len(GO_TEXT) + 1 :]
    assert vx.verify_note(note, vx.VerifierKey.parse(GO_VKEY)) == GO_TEXT
    assert vx.verify_note(note, vx.VerifierKey.parse(other.vkey)) == GO_TEXT


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key id does not match
        GO_VKEY.replace("+ARpc", "+AhpC"),  # not Ed25519 (type byte 0x02)
        GO_VKEY[:-1],  # truncated base64
        "PeterNeumann+c74f20a3",
    ],
)
def test_bad_verifier_keys_are_rejected(vkey: str):
    with pytest.raises(vx.VerifyError):
        vx.VerifierKey.parse(vkey)


# =============================================================================
# A producer written from the spec, independent of the verifier
# =============================================================================


class Signer:
    """An Ed25519 note signer (a throwaway key from a fixed seed)."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        typed = b"\x01" + self.key.public_key().public_bytes_raw()
        self.key_id = hashlib.sha256(name.encode() + b"\n" + typed).digest()[:4]
        self.vkey = f"{name}+{self.key_id.hex()}+{base64.b64encode(typed).decode()}"

    def sign(self, body: str) -> str:
        sig = base64.b64encode(self.key_id + self.key.sign(body.encode())).decode()
        return f"{body}\n— {self.name} {sig}\n"

    def checkpoint(self, origin: str, size: int, root: bytes) -> str:
        return self.sign(f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n")


def lh(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def nh(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, on leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = k_of(len(leaves))
    return nh(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n]): the inclusion proof, leaf's sibling first."""
    if len(leaves) == 1:
        return []
    k = k_of(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = k_of(n)
    if m <= k:
        return subproof(m, leaves[:k], whole) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def multiproof(leaves: list[bytes], exported: set[int]) -> list[bytes]:
    """docs/LEDGER.md `proof.txt`: every maximal subtree without an exported leaf."""
    out: list[bytes] = []

    def walk(lo: int, hi: int) -> None:
        if not any(lo <= i < hi for i in exported):
            out.append(mth(leaves[lo:hi]))
        elif hi - lo > 1:
            k = k_of(hi - lo)
            walk(lo, lo + k)
            walk(lo + k, hi)

    walk(0, len(leaves))
    return out


SHANGHAI = timezone(timedelta(hours=8))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ms(rfc3339: str) -> int:
    return (datetime.fromisoformat(rfc3339) - EPOCH) // timedelta(milliseconds=1)


DAY_MS = 86_400_000
B, H, M = "beauty-live", "homedecor-live", "mombaby-live"
ORIGIN = "test.example/ledger"


def conversion_id(reporter: str, order_id: str) -> str:
    return (
        hashlib.sha256(f"crossflow/conversion\0{reporter}\0{order_id}".encode()).digest()[:16].hex()
    )


def touch(
    frm: str,
    chain: list[str],
    weight: int,
    rate_bps: int,
    shares: list[tuple[str, str, int]],
) -> dict:
    return {
        "referral_id": hashlib.sha256(
            "".join(chain).encode() + bytes([weight, rate_bps % 256])
        ).hexdigest()[:32],
        "agreement_id": f"{frm}-x",
        "from": frm,
        "chain": chain,
        "redeemed_at_ms": ms("2026-10-01T00:00:00.000+08:00"),
        "weight": weight,
        "rate_bps": rate_bps,
        "boosts": [],
        "commission_minor": sum(a for _, _, a in shares),
        "upstream_share_bps": 1500,
        "shares": [{"partner": p, "role": r, "amount_minor": a} for p, r, a in shares],
    }


class Scenario:
    """A small ledger: October entries 0-4 (previous anchor 5), November 5-13."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.reports: dict[str, int] = {}

    def add(
        self,
        event: str,
        reporter: str,
        order: str,
        amount: int,
        currency: str,
        exponent: int,
        category: str,
        occurred: str,
        recorded: str,
        status: str,
        postings: list[tuple[str, str, int]],
        **extra: object,
    ) -> None:
        e: dict = {
            "v": 1,
            "type": "conversion",
            "event": event,
            "salt": base64.b64encode(
                hashlib.sha256(f"{order}/{event}".encode()).digest()[:16]
            ).decode(),
            "conversion_id": conversion_id(reporter, order),
            "reporter": reporter,
            "order_id": order,
            "amount_minor": amount,
            "currency": currency,
            "exponent": exponent,
            "category": category,
            "occurred_at_ms": ms(occurred),
            "recorded_at_ms": ms(recorded),
            "status": status,
        }
        if event == "reported":
            self.reports[order] = len(self.entries)
        else:
            e["report_index"] = self.reports[order]
        e.update(extra)
        e["postings"] = [
            {"account": f"partner:{p}:{side}", "amount_minor": a, "currency": currency}
            for p, side, a in postings
        ]
        self.entries.append(json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode())


def build_scenario() -> Scenario:
    s = Scenario()
    # 0, 1: o1, confirmed in October with a 30-day lock: paid in November.
    o1 = dict(
        reporter=B,
        order="ord-1",
        amount=35800,
        currency="CNY",
        exponent=2,
        category="skincare",
        occurred="2026-10-20T10:00:00.000+08:00",
    )
    s.add(
        "reported",
        **o1,
        recorded="2026-10-20T10:00:00.120+08:00",
        status="pending",
        attribution={
            "model": "last_touch",
            "commission_minor": 2864,
            "touches": [touch(H, [M, H], 1, 800, [(M, "upstream", 429), (H, "direct", 2435)])],
        },
        postings=[
            (B, "payable", -2864),
            (M, "receivable", 429),
            (H, "receivable", 2435),
        ],
    )
    s.add(
        "confirmed",
        **o1,
        recorded="2026-10-21T09:00:00.000+08:00",
        status="confirmed",
        refunded_total_minor=0,
        payable_at_ms=ms("2026-10-21T09:00:00.000+08:00") + 30 * DAY_MS,
        postings=[],
    )
    # 2: o2, unattributed and pending: nothing to settle, so not exported.
    s.add(
        "reported",
        reporter=H,
        order="ord-2",
        amount=10000,
        currency="CNY",
        exponent=2,
        category="home",
        occurred="2026-10-22T08:00:00.000+08:00",
        recorded="2026-10-22T08:00:01.000+08:00",
        status="pending",
        attribution={"model": "last_touch", "commission_minor": 0, "touches": []},
        postings=[],
    )
    # 3, 4: o3, paid in October; its November refund (5) settles in November.
    o3 = dict(
        reporter=M,
        order="ord-3",
        amount=20000,
        currency="CNY",
        exponent=2,
        category="toys",
        occurred="2026-10-02T12:00:00.000+08:00",
    )
    s.add(
        "reported",
        **o3,
        recorded="2026-10-02T12:00:00.500+08:00",
        status="pending",
        attribution={
            "model": "last_touch",
            "commission_minor": 2000,
            "touches": [touch(H, [H], 1, 1000, [(H, "direct", 2000)])],
        },
        postings=[(M, "payable", -2000), (H, "receivable", 2000)],
    )
    s.add(
        "confirmed",
        **o3,
        recorded="2026-10-05T00:00:00.000+08:00",
        status="confirmed",
        refunded_total_minor=0,
        payable_at_ms=ms("2026-10-12T00:00:00.000+08:00"),
        postings=[],
    )
    # ---- previous anchor: size 5 ----
    s.add(
        "refunded",
        **o3,
        recorded="2026-11-02T15:30:00.250+08:00",
        status="confirmed",
        refund_minor=5000,
        refunded_total_minor=5000,
        postings=[(H, "receivable", -500), (M, "payable", 500)],
    )
    # 6: o4, JPY, linear over two touches; homedecor is direct in one and
    # upstream in the other. Pending.
    s.add(
        "reported",
        reporter=B,
        order="ord-4",
        amount=9800,
        currency="JPY",
        exponent=0,
        category="snacks",
        occurred="2026-11-03T14:05:00.123+08:00",
        recorded="2026-11-03T14:05:00.456+08:00",
        status="pending",
        attribution={
            "model": "linear",
            "commission_minor": 490,
            "touches": [
                touch(H, [H], 1, 500, [(H, "direct", 245)]),
                touch(M, [H, M], 1, 500, [(H, "upstream", 36), (M, "direct", 209)]),
            ],
        },
        postings=[(B, "payable", -490), (H, "receivable", 281), (M, "receivable", 209)],
    )
    # 7, 8: o5, confirmed in November with a 14-day lock: pays in December.
    o5 = dict(
        reporter=H,
        order="ord-5",
        amount=50000,
        currency="CNY",
        exponent=2,
        category="home",
        occurred="2026-11-27T20:00:00.000+08:00",
    )
    s.add(
        "reported",
        **o5,
        recorded="2026-11-27T20:00:00.010+08:00",
        status="pending",
        attribution={
            "model": "last_touch",
            "commission_minor": 3000,
            "touches": [touch(B, [B], 1, 600, [(B, "direct", 3000)])],
        },
        postings=[(H, "payable", -3000), (B, "receivable", 3000)],
    )
    s.add(
        "confirmed",
        **o5,
        recorded="2026-11-28T10:00:00.000+08:00",
        status="confirmed",
        refunded_total_minor=0,
        payable_at_ms=ms("2026-11-28T10:00:00.000+08:00") + 14 * DAY_MS,
        postings=[],
    )
    # 9, 10: o6, reported and cancelled in November.
    o6 = dict(
        reporter=B,
        order="ord-6",
        amount=1000,
        currency="CNY",
        exponent=2,
        category="skincare",
        occurred="2026-11-10T11:00:00.000+08:00",
    )
    s.add(
        "reported",
        **o6,
        recorded="2026-11-10T11:00:00.001+08:00",
        status="pending",
        attribution={
            "model": "last_touch",
            "commission_minor": 80,
            "touches": [touch(H, [M, H], 1, 800, [(M, "upstream", 12), (H, "direct", 68)])],
        },
        postings=[(B, "payable", -80), (M, "receivable", 12), (H, "receivable", 68)],
    )
    s.add(
        "cancelled",
        **o6,
        recorded="2026-11-11T11:00:00.000+08:00",
        status="cancelled",
        refunded_total_minor=0,
        postings=[(M, "receivable", -12), (H, "receivable", -68), (B, "payable", 80)],
    )
    # 11-13: o7, held at report, confirmed without a lock, released: pays now.
    o7 = dict(
        reporter=M,
        order="ord-7",
        amount=3000,
        currency="CNY",
        exponent=2,
        category="toys",
        occurred="2026-11-09T09:00:00.000+08:00",
    )
    hold = {"reason": "AMOUNT_OVER_CAP"}
    s.add(
        "reported",
        **o7,
        recorded="2026-11-09T09:00:00.000+08:00",
        status="pending",
        hold=hold,
        attribution={
            "model": "last_touch",
            "commission_minor": 300,
            "touches": [touch(H, [H], 1, 1000, [(H, "direct", 300)])],
        },
        postings=[],
    )
    s.add(
        "confirmed",
        **o7,
        recorded="2026-11-10T09:00:00.000+08:00",
        status="confirmed",
        refunded_total_minor=0,
        payable_at_ms=ms("2026-11-10T09:00:00.000+08:00"),
        postings=[],
    )
    s.add(
        "released",
        **o7,
        recorded="2026-11-12T09:00:00.000+08:00",
        status="confirmed",
        hold=hold,
        refunded_total_minor=0,
        released_by="operator/alice",
        note="checked",
        postings=[(H, "receivable", 300), (M, "payable", -300)],
    )
    return s


PREVIOUS_ANCHOR, ANCHOR = 5, 14
EXPORTED = [0, 1, 3, 4, *range(5, 14)]  # index 2 has no row and is in October

# What docs/LEDGER.md says the two CSVs must be, worked out by hand.
STATEMENT_ROWS = """\
period,entry_index,order_id,conversion_id,event,occurred_at,recorded_at,payer,payee,role,model,weight,category,currency,exponent,order_amount_minor,commission_minor,amount_minor,amount,status,payable,leaf_hash
2026-11,0,ord-1,{c1},conversion,2026-10-20T10:00:00.000+08:00,2026-10-20T10:00:00.120+08:00,beauty-live,mombaby-live,upstream,last_touch,1/1,skincare,CNY,2,35800,2864,429,4.29,confirmed,yes,{h0}
2026-11,0,ord-1,{c1},conversion,2026-10-20T10:00:00.000+08:00,2026-10-20T10:00:00.120+08:00,beauty-live,homedecor-live,direct,last_touch,1/1,skincare,CNY,2,35800,2864,2435,24.35,confirmed,yes,{h0}
2026-11,5,ord-3,{c3},refund,2026-10-02T12:00:00.000+08:00,2026-11-02T15:30:00.250+08:00,mombaby-live,homedecor-live,direct,last_touch,1/1,toys,CNY,2,20000,2000,-500,-5.00,confirmed,yes,{h5}
2026-11,6,ord-4,{c4},conversion,2026-11-03T14:05:00.123+08:00,2026-11-03T14:05:00.456+08:00,beauty-live,homedecor-live,direct+upstream,linear,2/2,snacks,JPY,0,9800,490,281,281,pending,pending,{h6}
2026-11,6,ord-4,{c4},conversion,2026-11-03T14:05:00.123+08:00,2026-11-03T14:05:00.456+08:00,beauty-live,mombaby-live,direct,linear,1/2,snacks,JPY,0,9800,490,209,209,pending,pending,{h6}
2026-11,7,ord-5,{c5},conversion,2026-11-27T20:00:00.000+08:00,2026-11-27T20:00:00.010+08:00,homedecor-live,beauty-live,direct,last_touch,1/1,home,CNY,2,50000,3000,3000,30.00,confirmed,locked,{h7}
2026-11,9,ord-6,{c6},conversion,2026-11-10T11:00:00.000+08:00,2026-11-10T11:00:00.001+08:00,beauty-live,mombaby-live,upstream,last_touch,1/1,skincare,CNY,2,1000,80,12,0.12,cancelled,cancelled,{h9}
2026-11,9,ord-6,{c6},conversion,2026-11-10T11:00:00.000+08:00,2026-11-10T11:00:00.001+08:00,beauty-live,homedecor-live,direct,last_touch,1/1,skincare,CNY,2,1000,80,68,0.68,cancelled,cancelled,{h9}
2026-11,10,ord-6,{c6},cancel,2026-11-10T11:00:00.000+08:00,2026-11-11T11:00:00.000+08:00,beauty-live,mombaby-live,upstream,last_touch,1/1,skincare,CNY,2,1000,80,-12,-0.12,cancelled,cancelled,{h10}
2026-11,10,ord-6,{c6},cancel,2026-11-10T11:00:00.000+08:00,2026-11-11T11:00:00.000+08:00,beauty-live,homedecor-live,direct,last_touch,1/1,skincare,CNY,2,1000,80,-68,-0.68,cancelled,cancelled,{h10}
2026-11,13,ord-7,{c7},release,2026-11-09T09:00:00.000+08:00,2026-11-12T09:00:00.000+08:00,mombaby-live,homedecor-live,direct,last_touch,1/1,toys,CNY,2,3000,300,300,3.00,confirmed,yes,{h13}
"""

SETTLEMENT_ROWS = """\
period,kind,partner,counterparty,currency,exponent,owes_minor,owed_minor,net_minor,owes,owed,net,conversions
2026-11,pair,beauty-live,homedecor-live,CNY,2,2435,0,-2435,24.35,0.00,-24.35,1
2026-11,pair,beauty-live,mombaby-live,CNY,2,429,0,-429,4.29,0.00,-4.29,1
2026-11,pair,homedecor-live,beauty-live,CNY,2,0,2435,2435,0.00,24.35,24.35,1
2026-11,pair,homedecor-live,mombaby-live,CNY,2,0,-200,-200,0.00,-2.00,-2.00,2
2026-11,pair,mombaby-live,beauty-live,CNY,2,0,429,429,0.00,4.29,4.29,1
2026-11,pair,mombaby-live,homedecor-live,CNY,2,-200,0,200,-2.00,0.00,2.00,2
2026-11,total,beauty-live,,CNY,2,2864,0,-2864,28.64,0.00,-28.64,1
2026-11,total,homedecor-live,,CNY,2,0,2235,2235,0.00,22.35,22.35,3
2026-11,total,mombaby-live,,CNY,2,-200,429,629,-2.00,4.29,6.29,3
"""


def write_synthetic_export(out: Path, signer: Signer, partner: str | None = None) -> None:
    """The federation export, or with `partner` that partner's view: only the
    entries of conversions it is a party to, and its own settlement rows."""
    s = build_scenario()
    exported = EXPORTED
    statement, settlement = (
        STATEMENT_ROWS.splitlines(True),
        SETTLEMENT_ROWS.splitlines(True),
    )
    if partner is not None:
        parties = {
            i: {json.loads(s.entries[i])["reporter"]}
            | {p["account"].split(":")[1] for p in json.loads(s.entries[i])["postings"]}
            for i in s.reports.values()
        }
        exported = [
            i
            for i in EXPORTED
            if partner in parties[json.loads(s.entries[i]).get("report_index", i)]
        ]
        statement = statement[:1] + [r for r in statement[1:] if int(r.split(",")[1]) in exported]
        settlement = settlement[:1] + [r for r in settlement[1:] if r.split(",")[2] == partner]
    assert len(s.entries) == ANCHOR
    leaves = [lh(e) for e in s.entries]
    out.mkdir(parents=True)
    (out / "export.json").write_text(
        json.dumps(
            {
                "format": "crossflow-ledger-export@v1",
                "origin": ORIGIN,
                "period": "2026-11",
                "timezone": "Asia/Shanghai",
                "period_start": "2026-11-01T00:00:00.000+08:00",
                "period_start_ms": ms("2026-11-01T00:00:00.000+08:00"),
                "period_end": "2026-12-01T00:00:00.000+08:00",
                "period_end_ms": ms("2026-12-01T00:00:00.000+08:00"),
                "view": f"partner:{partner}" if partner else "federation",
                "previous_anchor_size": PREVIOUS_ANCHOR,
                "anchor_size": ANCHOR,
                "entries": len(exported),
            },
            indent=1,
        )
        + "\n"
    )
    with (out / "entries.jsonl").open("wb") as f:
        for i in exported:
            f.write(b'{"index":%d,"entry":%s}\n' % (i, s.entries[i]))
    anchor = signer.checkpoint(ORIGIN, ANCHOR, mth(leaves))
    (out / "checkpoint.txt").write_text(anchor)
    previous = signer.checkpoint(ORIGIN, PREVIOUS_ANCHOR, mth(leaves[:PREVIOUS_ANCHOR]))
    proof = subproof(PREVIOUS_ANCHOR, leaves, True)
    (out / "consistency.txt").write_text(
        f"crossflow-consistency@v1\nold {PREVIOUS_ANCHOR}\nnew {ANCHOR}\n"
        + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        + "\n"
        + previous
    )
    hashes = multiproof(leaves, set(exported))
    (out / "proof.txt").write_text(
        f"crossflow-multiproof@v1\nsize {ANCHOR}\n"
        + "".join(base64.b64encode(h).decode() + "\n" for h in hashes)
    )
    fill = {f"h{i}": leaves[i].hex() for i in exported}
    for order in (1, 3, 4, 5, 6, 7):
        fill[f"c{order}"] = conversion_id(
            json.loads(s.entries[s.reports[f"ord-{order}"]])["reporter"], f"ord-{order}"
        )
    for name, text in (
        ("statement.csv", "".join(statement)),
        ("settlement.csv", "".join(settlement)),
    ):
        (out / name).write_bytes(text.format(**fill).replace("\n", "\r\n").encode())
    (out / "README.txt").write_text("synthetic export for tests of examples/verify_export.py\n")
    (out / "ledger.vkey").write_text(signer.vkey + "\n")
    # Extras for the receipt tests: entry 6 and its receipt at the anchor.
    (out / "entry6.json").write_bytes(s.entries[6])
    (out / "receipt6.txt").write_text(
        "c2sp.org/tlog-proof@v1\nindex 6\n"
        + "".join(base64.b64encode(h).decode() + "\n" for h in path(6, leaves))
        + "\n"
        + anchor
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic export (not gateway output) in `<tmp>/export`."""
    out = tmp_path_factory.mktemp("synthetic") / "export"
    write_synthetic_export(out, Signer(ORIGIN, 7))
    return out


def tampered(src: Path, tmp_path: Path, mutate: Callable[[Path], None]) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    mutate(dst)
    return dst


def edit_line(name: str, line: int, fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Changes 1-based line `line` of file `name` (`None` from fn drops it)."""

    def mutate(d: Path) -> None:
        raw = (d / name).read_bytes()
        sep = b"\r\n" if name.endswith(".csv") else b"\n"
        lines = raw.split(sep)
        new = fn(lines[line - 1])
        lines[line - 1 : line] = [] if new is None else [new]
        (d / name).write_bytes(sep.join(lines))

    return mutate


def resign(
    name: str, signer: Signer, body_fn: Callable[[str], str] = lambda b: b
) -> Callable[[Path], None]:
    """Replaces the note in `name` (whole file, or after the first blank line)."""

    def mutate(d: Path) -> None:
        text = (d / name).read_text()
        head, note = ("", text) if name == "checkpoint.txt" else text.split("\n\n", 1)
        body = note[: note.rfind("\n\n") + 1]
        (d / name).write_text((head + "\n\n" if head else "") + signer.sign(body_fn(body)))

    return mutate


def flip_b64(line: bytes) -> bytes:
    raw = bytearray(base64.b64decode(line))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw))


OTHER = Signer(ORIGIN, 8)  # same name, another key

SYNTHETIC_TAMPERS = {
    # name: (mutation, file and line the verdict must name)
    # Line n of entries.jsonl is index n - 1 up to line 2, index n from line 3.
    "entry byte (order id)": (
        edit_line("entries.jsonl", 6, lambda line: line.replace(b'"ord-4"', b'"ord-5"')),
        "entries.jsonl:6",
    ),
    "entry byte (salt)": (
        edit_line("entries.jsonl", 13, lambda line: line.replace(b'"salt":"', b'"salt":"/', 1)),
        "entries.jsonl:13",
    ),
    # Index 12 (a confirm) has no statement row to point at the changed entry:
    # the multi-proof fails and cannot tell an entry from a hash.
    "entry byte without a row": (
        edit_line("entries.jsonl", 12, lambda line: line.replace(b'"salt":"', b'"salt":"/', 1)),
        "proof.txt:3",
    ),
    "entry amount unbalanced": (
        edit_line("entries.jsonl", 1, lambda line: line.replace(b"429,", b"428,", 1)),
        "entries.jsonl:1",
    ),
    "entry not JSON": (
        edit_line("entries.jsonl", 3, lambda line: line.replace(b'"v":1', b'"v":1,,', 1)),
        "entries.jsonl:3",
    ),
    "entry wrapper spaced": (
        edit_line("entries.jsonl", 5, lambda line: line.replace(b'{"index":5,', b'{"index": 5,')),
        "entries.jsonl:5",
    ),
    "entry of the period dropped": (
        edit_line("entries.jsonl", 8, lambda line: None),
        "entries.jsonl:8",
    ),
    "earlier entry dropped": (
        edit_line("entries.jsonl", 1, lambda line: None),
        "entries.jsonl:13",
    ),
    "statement amount": (
        edit_line("statement.csv", 3, lambda line: line.replace(b",2435,24.35,", b",2436,24.36,")),
        "statement.csv:3",
    ),
    "statement row dropped": (
        edit_line("statement.csv", 9, lambda line: None),
        "statement.csv:9",
    ),
    "statement LF line end": (
        edit_line("statement.csv", 2, lambda line: line + b"\n" + line),
        "statement.csv:2",
    ),
    "settlement net": (
        edit_line("settlement.csv", 10, lambda line: line.replace(b",629,", b",630,")),
        "settlement.csv:10",
    ),
    "settlement last row dropped": (
        edit_line("settlement.csv", 10, lambda line: None),
        "settlement.csv:10",
    ),
    "proof hash": (edit_line("proof.txt", 3, flip_b64), "proof.txt:3"),
    "proof hash dropped": (edit_line("proof.txt", 3, lambda line: None), "proof.txt:"),
    "checkpoint from another key": (
        resign("checkpoint.txt", OTHER),
        "checkpoint.txt:5",
    ),
    "checkpoint size": (
        lambda d: (d / "checkpoint.txt").write_text(
            (d / "checkpoint.txt").read_text().replace(f"\n{ANCHOR}\n", f"\n{ANCHOR + 1}\n")
        ),
        "checkpoint.txt:5",
    ),
    "consistency proof hash": (
        edit_line("consistency.txt", 4, flip_b64),
        "consistency.txt:4",
    ),
    "previous anchor from another key": (
        resign("consistency.txt", OTHER),
        "consistency.txt:",
    ),
    "consistency old size": (
        edit_line("consistency.txt", 2, lambda line: b"old 4"),
        "consistency.txt:2",
    ),
    "export.json period start": (
        lambda d: (d / "export.json").write_text(
            (d / "export.json").read_text().replace("1793462400000", "1793462400001")
        ),
        "export.json:",
    ),
    "export.json entry count": (
        lambda d: (d / "export.json").write_text(
            (d / "export.json").read_text().replace('"entries": 13', '"entries": 12')
        ),
        "entries.jsonl:14",
    ),
    "statement.csv missing": (
        lambda d: (d / "statement.csv").unlink(),
        "statement.csv:0",
    ),
}


def test_synthetic_export_verifies(synthetic: Path):
    res = run_verifier("export", synthetic, "--vkey", synthetic / "ledger.vkey")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("export OK: federation 2026-11, 13 entries"), res.stdout
    assert "11 statement rows (4 payable), 9 settlement rows" in res.stdout, res.stdout


def test_recomputed_csvs_equal_the_hand_worked_ones(synthetic: Path):
    """The verifier's recomputation, compared with this file's hand-worked
    reading of the spec (not with its own output)."""
    key = vx.load_verifier_key(str(synthetic / "ledger.vkey"))
    info = vx.read_export_json(synthetic)
    entries = vx.read_entries(synthetic, info)
    settlement = vx.Settlement(info, entries)
    rows = settlement.statement_rows()
    got = "".join(vx.csv_line(r) for r in [vx.STATEMENT_HEADER, *rows])
    assert got.encode() == (synthetic / "statement.csv").read_bytes()
    matrix = settlement.settlement_rows(rows)
    got = "".join(vx.csv_line(r) for r in [vx.SETTLEMENT_HEADER, *matrix])
    assert got.encode() == (synthetic / "settlement.csv").read_bytes()
    assert vx.check_anchor(synthetic, info, key).size == ANCHOR


@pytest.mark.parametrize("case", list(SYNTHETIC_TAMPERS))
def test_synthetic_tampering_is_caught(synthetic: Path, tmp_path: Path, case: str):
    mutate, where = SYNTHETIC_TAMPERS[case]
    d = tampered(synthetic, tmp_path, mutate)
    res = run_verifier("export", d, "--vkey", synthetic / "ledger.vkey")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith(f"export FAILED: {where}"), res.stdout


@pytest.mark.parametrize("partner,entries,rows", [(M, 11, 10), (B, 7, 9)])
def test_synthetic_partner_view_verifies(tmp_path: Path, partner: str, entries: int, rows: int):
    """A partner's view: the entries it is a party to, every receivable row of
    them (other payees included), and only its own settlement rows."""
    write_synthetic_export(tmp_path / "export", Signer(ORIGIN, 7), partner)
    res = run_verifier("export", tmp_path / "export", "--vkey", Signer(ORIGIN, 7).vkey)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"export OK: partner:{partner} 2026-11, {entries} entries"), (
        res.stdout
    )
    assert f"{rows} statement rows" in res.stdout, res.stdout
    # Its settlement rows only: another partner's row is an error.
    other = (
        (tmp_path / "export" / "settlement.csv").read_bytes()
        + SETTLEMENT_ROWS.splitlines()[7].encode()
        + b"\r\n"
    )
    (tmp_path / "export" / "settlement.csv").write_bytes(other)
    res = run_verifier("export", tmp_path / "export", "--vkey", Signer(ORIGIN, 7).vkey)
    assert res.stdout.startswith("export FAILED: settlement.csv:"), res.stdout


def test_real_export_checks_work_on_the_synthetic_export(synthetic: Path, tmp_path: Path):
    """The helper the real-export tests use, run where it cannot skip."""
    check_real_export(synthetic, synthetic / "ledger.vkey", tmp_path)
    assert len(real_export_tampers(synthetic)) == 6


def test_wrong_vkey_fails_the_export(synthetic: Path):
    res = run_verifier("export", synthetic, "--vkey", OTHER.vkey)
    assert (res.returncode, res.stdout.split(":")[0:2]) == (
        1,
        ["export FAILED", " checkpoint.txt"],
    ), res.stdout


def test_first_close_and_empty_period(tmp_path: Path):
    """`old 0` ends the consistency file; a period without entries has a
    one-hash multi-proof (the root itself) and header-only CSVs."""
    signer = Signer(ORIGIN, 9)
    entries = build_scenario().entries[:5]
    leaves = [lh(e) for e in entries]
    d = tmp_path / "export"
    d.mkdir()
    common = {
        "format": "crossflow-ledger-export@v1",
        "origin": ORIGIN,
        "period": "2026-11",
        "timezone": "Asia/Shanghai",
        "period_start": "2026-11-01T00:00:00.000+08:00",
        "period_start_ms": ms("2026-11-01T00:00:00.000+08:00"),
        "period_end": "2026-12-01T00:00:00.000+08:00",
        "period_end_ms": ms("2026-12-01T00:00:00.000+08:00"),
        "view": "partner:beauty-live",
    }
    (d / "export.json").write_text(
        json.dumps({**common, "previous_anchor_size": 5, "anchor_size": 5, "entries": 0})
    )
    (d / "entries.jsonl").write_bytes(b"")
    (d / "checkpoint.txt").write_text(signer.checkpoint(ORIGIN, 5, mth(leaves)))
    (d / "consistency.txt").write_text(
        "crossflow-consistency@v1\nold 5\nnew 5\n\n" + signer.checkpoint(ORIGIN, 5, mth(leaves))
    )
    (d / "proof.txt").write_text(
        f"crossflow-multiproof@v1\nsize 5\n{base64.b64encode(mth(leaves)).decode()}\n"
    )
    (d / "statement.csv").write_bytes((",".join(vx.STATEMENT_HEADER) + "\r\n").encode())
    (d / "settlement.csv").write_bytes((",".join(vx.SETTLEMENT_HEADER) + "\r\n").encode())
    res = run_verifier("export", d, "--vkey", signer.vkey)
    assert res.returncode == 0, res.stdout
    # The first close: nothing to prove, so the file ends after `new`.
    (d / "export.json").write_text(
        json.dumps({**common, "previous_anchor_size": 0, "anchor_size": 5, "entries": 0})
    )
    (d / "consistency.txt").write_text("crossflow-consistency@v1\nold 0\nnew 5\n")
    assert run_verifier("export", d, "--vkey", signer.vkey).returncode == 0
    (d / "consistency.txt").write_text("crossflow-consistency@v1\nold 0\nnew 5\n\n")
    res = run_verifier("export", d, "--vkey", signer.vkey)
    assert res.stdout.startswith("export FAILED: consistency.txt:4:"), res.stdout


def test_random_byte_changes_fail_cleanly(synthetic: Path, tmp_path: Path):
    """300 random one-byte changes (seeded): the verifier never crashes, and
    only white space in export.json (not signed, not hashed) may still pass."""
    import random

    key = vx.load_verifier_key(str(synthetic / "ledger.vkey"))
    original = json.loads((synthetic / "export.json").read_text())
    files = [
        "export.json",
        "entries.jsonl",
        "checkpoint.txt",
        "consistency.txt",
        "proof.txt",
        "statement.csv",
        "settlement.csv",
    ]
    rng = random.Random(5)
    for n in range(300):
        name = rng.choice(files)
        d = tmp_path / str(n)
        shutil.copytree(synthetic, d)
        raw = bytearray((d / name).read_bytes())
        at = rng.randrange(len(raw))
        op = rng.choice(["change", "insert", "delete"])
        if op == "change":
            raw[at] = (raw[at] + rng.randrange(1, 256)) % 256
        elif op == "insert":
            raw.insert(at, rng.randrange(256))
        elif at + 1 < len(raw) and raw[at] != raw[at + 1]:
            del raw[at]
        else:
            continue  # deleting one of two equal bytes changes nothing else
        (d / name).write_bytes(bytes(raw))
        try:
            vx.verify_export(d, key)
        except vx.ExportFailed:
            pass
        else:
            assert name == "export.json" and json.loads(bytes(raw)) == original, (
                name,
                op,
                at,
            )
        shutil.rmtree(d)


def test_csv_quoting_and_amounts():
    assert (
        vx.csv_line(["a", 'say "hi"', "x,y", "line\nbreak", -5])
        == 'a,"say ""hi""","x,y","line\nbreak",-5\r\n'
    )
    assert [
        vx.format_minor(a, e) for a, e in [(-5, 2), (12345, 2), (7, 0), (-1000, 3), (0, 2)]
    ] == ["-0.05", "123.45", "7", "-1.000", "0.00"]


# =============================================================================
# Receipts
# =============================================================================


def test_synthetic_receipt(synthetic: Path, tmp_path: Path):
    vkey, entry, receipt = (
        synthetic / "ledger.vkey",
        synthetic / "entry6.json",
        synthetic / "receipt6.txt",
    )
    res = run_verifier("receipt", "--vkey", vkey, "--entry", entry, receipt)
    assert res.returncode == 0 and res.stdout.startswith(
        f"receipt OK: entry 6 is in {ORIGIN} at size {ANCHOR}"
    ), res.stdout
    # An entry saved with a trailing newline still matches (only the exact
    # bytes can), a changed one does not, nor another key or origin.
    with_newline = tmp_path / "entry-nl.json"
    with_newline.write_bytes(entry.read_bytes() + b"\n")
    assert run_verifier("receipt", "--vkey", vkey, "--entry", with_newline, receipt).returncode == 0
    changed = tmp_path / "entry-changed.json"
    changed.write_bytes(entry.read_bytes().replace(b"ord-4", b"ord-9"))
    for args in (
        ["--vkey", vkey, "--entry", changed],
        ["--vkey", OTHER.vkey, "--entry", entry],
        ["--vkey", vkey, "--entry", entry, "--origin", "other.example/ledger"],
    ):
        res = run_verifier("receipt", *args, receipt)
        assert res.returncode == 1 and res.stdout.startswith("receipt FAILED: "), res.stdout
    res = run_verifier("checkpoint", "--vkey", vkey, synthetic / "checkpoint.txt")
    assert res.stdout.startswith(f"checkpoint OK: origin {ORIGIN}, size {ANCHOR}, root "), (
        res.stdout
    )


# =============================================================================
# Real gateway output
# =============================================================================


def crossflow_binary() -> Path:
    from conftest import crossflow_bin

    try:
        return crossflow_bin()
    except RuntimeError as e:
        pytest.skip(str(e))


def test_real_gateway_binary_agrees_on_synthetic_files(synthetic: Path):
    """`crossflow verify checkpoint|receipt` accept what this file signs, so
    the Python producer and verifier speak the gateway's formats."""
    binary = crossflow_binary()
    vkey = (synthetic / "ledger.vkey").read_text().strip()
    for args in (
        ["verify", "checkpoint", "--vkey", vkey, synthetic / "checkpoint.txt"],
        [
            "verify",
            "receipt",
            "--vkey",
            vkey,
            "--entry",
            synthetic / "entry6.json",
            synthetic / "receipt6.txt",
        ],
    ):
        res = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{args}: {res.stdout}{res.stderr}"


def test_real_gateway_ledger_verify_accepts_synthetic_export(synthetic: Path):
    """Both verifiers read the spec alike: the Rust one accepts the export
    this file built by hand."""
    binary = crossflow_binary()
    help_text = subprocess.run(
        [binary, "ledger", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    if " verify " not in help_text and "\n  verify" not in help_text:
        pytest.skip("`crossflow ledger verify` does not exist yet (issue 5's Rust side)")
    res = subprocess.run(
        [
            binary,
            "ledger",
            "verify",
            str(synthetic),
            "--vkey",
            str(synthetic / "ledger.vkey"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_real_gateway_receipt(gateway: Gateway, tmp_path: Path):
    """A receipt served by the running gateway verifies, here and in Rust."""
    from crossflow.v1 import (
        conversion_pb2,
        conversion_pb2_grpc,
        ledger_pb2,
        ledger_pb2_grpc,
    )
    from google.protobuf import timestamp_pb2
    from support import RPC_TIMEOUT_SECS, new_subject

    partner = gateway.partners[0]
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    order_id = f"py-receipt-{new_subject('o')}"
    reported = conversion_pb2_grpc.ConversionServiceStub(gateway.channel(partner)).ReportConversion(
        conversion_pb2.ReportConversionRequest(
            order_id=order_id,
            subject=new_subject(),
            amount_minor=12345,
            currency="CNY",
            category="skincare",
            occurred_at=now,
        ),
        timeout=RPC_TIMEOUT_SECS,
    )
    ledger = ledger_pb2_grpc.LedgerServiceStub(gateway.channel(partner))
    key = ledger.GetLogKey(ledger_pb2.GetLogKeyRequest(), timeout=RPC_TIMEOUT_SECS)
    # GetReceipt waits for the next checkpoint (about one interval).
    got = ledger.GetReceipt(ledger_pb2.GetReceiptRequest(index=reported.entry.index), timeout=60)
    assert got.entry.entry == reported.entry.entry
    entry, receipt, vkey = (
        tmp_path / "entry.json",
        tmp_path / "receipt.txt",
        tmp_path / "ledger.vkey",
    )
    entry.write_bytes(got.entry.entry)
    receipt.write_text(got.receipt)
    vkey.write_text(key.verifier_key + "\n")
    res = run_verifier("receipt", "--vkey", vkey, "--entry", entry, "--origin", key.origin, receipt)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"receipt OK: entry {reported.entry.index} is in {key.origin}"), (
        res.stdout
    )
    rust = subprocess.run(
        [
            crossflow_binary(),
            "verify",
            "receipt",
            "--vkey",
            key.verifier_key,
            "--entry",
            str(entry),
            str(receipt),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rust.returncode == 0 and rust.stdout.strip() == res.stdout.strip(), (
        rust.stdout + rust.stderr
    )
    entry.write_bytes(got.entry.entry.replace(b'"amount_minor":12345', b'"amount_minor":12346'))
    res = run_verifier("receipt", "--vkey", vkey, "--entry", entry, receipt)
    assert res.returncode == 1 and res.stdout.startswith("receipt FAILED: "), res.stdout


def real_export_tampers(
    d: Path,
) -> dict[str, tuple[Callable[[Path], None], tuple[str, ...]]]:
    """Tamper cases for an export we did not make: (mutation, acceptable files)."""
    entries = (d / "entries.jsonl").read_bytes().split(b"\n")[:-1]
    statement = (d / "statement.csv").read_bytes().split(b"\r\n")
    cases: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
        "checkpoint from another key": (
            resign("checkpoint.txt", Signer(ORIGIN, 8)),
            ("checkpoint.txt",),
        ),
    }
    if entries:
        # A salt character: valid JSON, balanced, only the leaf hash changes.
        def salt(line: bytes) -> bytes:
            at = line.index(b'"salt":"') + len(b'"salt":"')
            return line[:at] + (b"B" if line[at : at + 1] == b"A" else b"A") + line[at + 1 :]

        n = len(entries)
        cases["one byte in an entry"] = (
            edit_line("entries.jsonl", n, salt),
            ("entries.jsonl", "proof.txt"),
        )
        cases["an entry line dropped"] = (
            edit_line("entries.jsonl", n, lambda line: None),
            ("entries.jsonl",),
        )
    if len(statement) > 2:

        def amount(line: bytes) -> bytes:
            cells = line.split(b",")
            i = vx.STATEMENT_HEADER.index("amount_minor")
            cells[i] = str(int(cells[i]) + 1).encode()
            return b",".join(cells)

        cases["an amount in statement.csv"] = (
            edit_line("statement.csv", 2, amount),
            ("statement.csv",),
        )
        cases["a statement row dropped"] = (
            edit_line("statement.csv", 2, lambda line: None),
            ("statement.csv",),
        )
    if len((d / "proof.txt").read_text().split("\n")) > 3:
        cases["a proof hash"] = (edit_line("proof.txt", 3, flip_b64), ("proof.txt",))
    return cases


REAL_EXPORTS = {
    "finance-e2e": (FINANCE_EXPORT / "federation", FINANCE_EXPORT / "ledger.vkey"),
}


@pytest.mark.parametrize("source", list(REAL_EXPORTS))
def test_real_gateway_export(source: str, tmp_path: Path):
    d, vkey = REAL_EXPORTS[source]
    if not (d / "export.json").exists():
        pytest.skip(
            f"{d} does not exist: the Rust finance e2e test (issue 5) writes it; run `cargo test -p crossflow-tests` first"
        )
    check_real_export(d, vkey, tmp_path)


def test_real_gateway_demo_export(gateway: Gateway, tmp_path: Path):
    """`crossflow demo --keep DIR` leaves the federation export in DIR/export."""
    d, vkey = gateway.dir / "export", gateway.dir / "ledger.vkey"
    if not (d / "export.json").exists():
        pytest.skip(
            f"the demo kept no export in {d} yet (issue 5: `crossflow demo --keep` writes DIR/export)"
        )
    check_real_export(d, vkey, tmp_path)


def check_real_export(d: Path, vkey: Path, tmp_path: Path) -> None:
    res = run_verifier("export", d, "--vkey", vkey)
    assert res.returncode == 0 and res.stdout.startswith("export OK: "), res.stdout + res.stderr
    for n, (case, (mutate, files)) in enumerate(real_export_tampers(d).items()):
        t = tampered(d, tmp_path / str(n), mutate)
        res = run_verifier("export", t, "--vkey", vkey)
        assert res.returncode == 1, f"{case}: {res.stdout}"
        assert any(res.stdout.startswith(f"export FAILED: {f}:") for f in files), (
            f"{case}: {res.stdout}"
        )


def test_vkey_as_file_or_text_is_the_same(synthetic: Path):
    text = (synthetic / "ledger.vkey").read_text()
    assert vx.load_verifier_key(text) == vx.load_verifier_key(str(synthetic / "ledger.vkey"))
    with pytest.raises(vx.VerifyError):
        vx.load_verifier_key(os.devnull)
