#!/usr/bin/env python3
"""Reference verifier for crossflow ledger exports and receipts.

This file is for engineers at partner platforms. It checks what crossflow
hands you -- a period export, a single receipt, a signed checkpoint --
without trusting the operator, and it shows that every format involved is
plain and standard:

* leaf and node hashes are RFC 6962 / RFC 9162 (SHA-256 with a 0x00 prefix
  for entries and a 0x01 prefix for interior nodes);
* checkpoints are c2sp.org/tlog-checkpoint bodies in c2sp.org/signed-note
  notes, signed with Ed25519;
* receipts are c2sp.org/tlog-proof@v1 texts;
* an export is a directory of JSON lines, RFC 4180 CSV and text files, laid
  out in docs/LEDGER.md ("Exports", "Verifying an export").

It needs Python 3.9+ and the `cryptography` package (for Ed25519 only);
everything else is the standard library (zoneinfo reads the system's time
zone database; where there is none, `pip install tzdata`). Usage:

    python3 verify_export.py export DIR --vkey KEY
    python3 verify_export.py receipt --vkey KEY --entry ENTRY_FILE RECEIPT_FILE
    python3 verify_export.py checkpoint --vkey KEY CHECKPOINT_FILE

KEY is the log's verifier key, `<name>+<hex key id>+<base64(0x01 || public
key)>` (GetLogKey returns it; `crossflow demo --keep DIR` writes it to
DIR/ledger.vkey), or a file holding it. Get it from the operator over a
channel you trust: everything else is checked against it.

Each command prints one verdict line and exits 0 (OK) or 1 (FAILED). An
export failure names the first failing file and line: `export FAILED:
<file>:<line>: <reason>`; line 0 means the file as a whole (it is missing,
or something about all of it is wrong).

The same checks are built into the gateway binary (`crossflow verify
checkpoint|receipt`, `crossflow ledger verify`); this file is the
independent second implementation, written from the spec.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python < 3.9
    sys.exit("verify_export.py needs Python 3.9 or newer (for zoneinfo)")

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("verify_export.py needs the `cryptography` package: pip install cryptography")


class VerifyError(ValueError):
    """Something did not verify; the message says what."""


# =============================================================================
# Encodings
# =============================================================================


def b64decode(text: str) -> bytes:
    """Standard, padded base64, canonical only.

    Python's decoder tolerates missing padding and non-zero trailing bits;
    the gateway's does not, so neither do we: one hash has one spelling.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VerifyError(f"not valid base64: {e}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerifyError("not canonical padded base64")
    return raw


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def parse_decimal(text: str) -> Optional[int]:
    """ASCII decimal without sign or leading zeros (`+7` and `007` are not sizes)."""
    if re.fullmatch(r"0|[1-9][0-9]*", text) is None:
        return None
    value = int(text)
    return value if value < 2**64 else None


# =============================================================================
# Merkle tree hashing (RFC 6962 section 2.1, RFC 9162 section 2.1)
# =============================================================================


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry). The entry bytes are hashed exactly as given."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): where RFC 6962 splits."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, straight from the RFC's definition.

    O(n): fine for documentation and tests, not what a log does.
    """
    n = len(leaf_hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hashes[0]
    k = split_point(n)
    return node_hash(merkle_root(leaf_hashes[:k]), merkle_root(leaf_hashes[k:]))


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != 32:
            raise VerifyError(f"proof hash {i} is {len(h)} bytes, a SHA-256 hash is 32")


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2: `leaf` is at `index` in the tree of `size` with `root`.

    `proof` is the audit path, the leaf's sibling first. Raises VerifyError.
    """
    if index >= size:
        raise VerifyError(f"leaf index {index} is outside a tree of size {size}")
    if len(leaf) != 32:
        raise VerifyError(f"leaf hash is {len(leaf)} bytes, a SHA-256 hash is 32")
    _check_proof_hashes(proof)
    r = leaf
    fn, sn = index, size - 1
    for p in proof:
        if sn == 0:
            raise VerifyError("proof has more hashes than a tree of this size needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError("proof has fewer hashes than a tree of this size needs")
    if r != root:
        raise VerifyError("recomputed root does not match the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 section 2.1.4.2: the tree (size2, root2) extends (size1, root1).

    Plus the cases the RFC leaves to the caller: equal sizes need an empty
    proof and equal roots, and size1 = 0 proves nothing, so it is refused.
    """
    if size2 < size1:
        raise VerifyError(f"tree size {size2} is smaller than earlier size {size1}")
    if size1 == 0:
        raise VerifyError("consistency with the empty tree proves nothing")
    _check_proof_hashes(proof)
    if size1 == size2:
        if proof:
            raise VerifyError("equal sizes need an empty proof")
        if root1 != root2:
            raise VerifyError("equal sizes but different roots")
        return
    if not proof:
        raise VerifyError("proof has fewer hashes than the trees need")
    if size1 & (size1 - 1) == 0:
        # A power-of-two first tree is a complete subtree of the second: its
        # root is the starting point, and the proof does not repeat it.
        seed, rest = root1, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = seed
    for c in rest:
        if sn == 0:
            raise VerifyError("proof has more hashes than the trees need")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError("proof has fewer hashes than the trees need")
    if fr != root1:
        raise VerifyError("proof does not lead to the first tree's root")
    if sr != root2:
        raise VerifyError("proof does not lead to the second tree's root")


def multiproof_root(
    size: int, leaves: Dict[int, bytes], proof: Sequence[bytes]
) -> Tuple[bytes, int]:
    """Runs the crossflow-multiproof@v1 walk (docs/LEDGER.md, `proof.txt`).

    `leaves` maps each exported index to its leaf hash. Every maximal subtree
    without an exported leaf takes the next hash of `proof`; subtrees with one
    are recomputed from their children. Returns (root, hashes used); raises
    VerifyError if the proof runs out. The caller compares the root with the
    checkpoint's and checks that every hash was used.
    """
    indexes = sorted(leaves)
    used = 0

    def has_leaf(lo: int, hi: int) -> bool:
        i = bisect.bisect_left(indexes, lo)
        return i < len(indexes) and indexes[i] < hi

    def walk(lo: int, hi: int) -> bytes:
        nonlocal used
        if not has_leaf(lo, hi):
            if used == len(proof):
                raise VerifyError(f"proof ran out of hashes at subtree [{lo}, {hi})")
            used += 1
            return proof[used - 1]
        if hi - lo == 1:
            return leaves[lo]
        k = split_point(hi - lo)
        return node_hash(walk(lo, lo + k), walk(lo + k, hi))

    if size == 0:
        return hashlib.sha256(b"").digest(), 0
    return walk(0, size), used


def multiproof_hashes(
    size: int, leaf_hashes: Sequence[bytes], exported: Iterable[int]
) -> List[bytes]:
    """The hashes a multi-proof for `exported` holds (the producer's side).

    Given every leaf hash of the tree; for documentation and tests.
    """
    wanted = sorted(set(exported))
    out: List[bytes] = []

    def walk(lo: int, hi: int) -> bytes:
        i = bisect.bisect_left(wanted, lo)
        if not (i < len(wanted) and wanted[i] < hi):
            h = merkle_root(leaf_hashes[lo:hi])
            out.append(h)
            return h
        if hi - lo == 1:
            return leaf_hashes[lo]
        k = split_point(hi - lo)
        return node_hash(walk(lo, lo + k), walk(lo + k, hi))

    if size > 0:
        walk(0, size)
    return out


# =============================================================================
# Signed notes and checkpoints (c2sp.org/signed-note, c2sp.org/tlog-checkpoint)
# =============================================================================

SIG_PREFIX = "\u2014 "  # an em dash and a space start every signature line
ALG_ED25519 = 0x01
MAX_SIGNATURES = 100


def key_id(name: str, typed_public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + typed_public_key).digest()[:4]


def _check_key_name(name: str) -> bool:
    """Non-empty, without '+', white space or control characters."""
    return name != "" and not any(
        c == "+" or c.isspace() or unicodedata.category(c) == "Cc" for c in name
    )


@dataclass(frozen=True)
class VerifierKey:
    """A trusted Ed25519 note key: `<name>+<hex key id>+<base64(0x01 || public key)>`."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.split("+", 2)  # only the base64 key may contain '+'
        if len(parts) != 3:
            raise VerifyError("verifier key must be <name>+<key id>+<key>")
        name, hex_id, key_b64 = parts
        if not _check_key_name(name):
            raise VerifyError(f"invalid key name {name!r}")
        if re.fullmatch(r"[0-9a-fA-F]{8}", hex_id) is None:
            raise VerifyError("key id must be 8 hex digits")
        typed = b64decode(key_b64)
        if not typed:
            raise VerifyError("key is empty")
        if typed[0] != ALG_ED25519:
            raise VerifyError(f"unsupported key type 0x{typed[0]:02x}; only Ed25519 (0x01)")
        if len(typed) != 33:
            raise VerifyError("Ed25519 public key must be 32 bytes")
        stated = bytes.fromhex(hex_id)
        computed = key_id(name, typed)
        if stated != computed:
            raise VerifyError(
                f"key states key id {hex_id} but its public key gives {computed.hex()}"
            )
        return cls(name=name, key_id=stated, public_key=typed[1:])

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def load_verifier_key(arg: str) -> VerifierKey:
    """A verifier key given as its text or as the path of a file holding it."""
    try:
        return VerifierKey.parse(arg.strip())
    except VerifyError as as_text:
        path = Path(arg)
        if not path.is_file():
            raise VerifyError(f"{arg!r} is neither a verifier key nor a file: {as_text}") from None
    try:
        return VerifierKey.parse(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError, VerifyError) as e:
        raise VerifyError(f"file {path}: {e}") from None


class NoteError(VerifyError):
    """A note did not verify; `line` is the 1-based line of the note at fault."""

    def __init__(self, reason: str, line: int):
        super().__init__(reason)
        self.line = line


def verify_note(note: str, key: VerifierKey) -> str:
    """Opens a signed note and returns its text (with the final newline).

    The text is everything up to the last blank line; each line after it is
    `— <key name> <base64(key id || signature)>`. Signatures by other keys
    (witnesses, say) are ignored; one by our key that does not verify, or no
    signature by our key at all, rejects the note.
    """
    for offset, c in enumerate(note):
        if ord(c) < 0x20 and c != "\n":
            line = note.count("\n", 0, offset) + 1
            raise NoteError(f"control character U+{ord(c):04X}; only newline is allowed", line)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("no blank line separating the text from the signatures", 1)
    text, sigs = note[: split + 1], note[split + 2 :]
    first_sig_line = text.count("\n") + 2
    if not sigs.endswith("\n") or sigs == "\n" or sigs == "":
        raise NoteError("signature block is empty or does not end with a newline", first_sig_line)
    verified = False
    for n, line in enumerate(sigs[:-1].split("\n")):
        line_no = first_sig_line + n
        if n == MAX_SIGNATURES:
            raise NoteError(f"more than {MAX_SIGNATURES} signatures", line_no)
        if not line.startswith(SIG_PREFIX):
            raise NoteError(
                "signature line must start with an em dash (U+2014) and a space",
                line_no,
            )
        name, sep, sig_b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not _check_key_name(name):
            raise NoteError("signature line must be '— <key name> <base64>'", line_no)
        try:
            blob = b64decode(sig_b64)
        except VerifyError as e:
            raise NoteError(f"signature {e}", line_no) from None
        if len(blob) < 5:
            raise NoteError("signature is shorter than a key id and one byte", line_no)
        if name != key.name or blob[:4] != key.key_id:
            continue  # someone else's signature: not ours to judge
        if not key.verifies(text.encode("utf-8"), blob[4:]):
            raise NoteError(f"signature by {key.name}+{key.key_id.hex()} does not verify", line_no)
        verified = True
    if not verified:
        raise NoteError(f"not signed by {key.name}+{key.key_id.hex()}", first_sig_line)
    return text


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: Tuple[str, ...] = ()


def parse_checkpoint(body: str) -> Checkpoint:
    """Origin line, decimal size line, base64 root line, then extension lines."""
    if not body.endswith("\n"):
        raise NoteError("checkpoint body must end with a newline", 1)
    lines = body[:-1].split("\n")
    if lines[0] == "":
        raise NoteError("origin line is empty", 1)
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root lines", len(lines) + 1)
    size = parse_decimal(lines[1])
    if size is None:
        raise NoteError("tree size must be decimal without sign or leading zeros", 2)
    try:
        root = b64decode(lines[2])
    except VerifyError as e:
        raise NoteError(f"root hash {e}", 3) from None
    if len(root) != 32:
        raise NoteError("root hash must be base64 of 32 bytes", 3)
    for i, ext in enumerate(lines[3:]):
        if ext == "":
            raise NoteError("extension lines must be non-empty", 4 + i)
    return Checkpoint(lines[0], size, root, tuple(lines[3:]))


def verify_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    return parse_checkpoint(verify_note(note, key))


# =============================================================================
# Receipts (c2sp.org/tlog-proof@v1)
# =============================================================================

RECEIPT_HEADER = "c2sp.org/tlog-proof@v1"


@dataclass
class Receipt:
    index: int
    proof: List[bytes]
    checkpoint_note: str
    note_line: int  # line of the receipt where the note starts
    extra: Optional[bytes] = None  # unauthenticated application data


def parse_receipt(text: str) -> Receipt:
    """Header, optional `extra <base64>`, `index <n>`, proof hashes one per line
    (leaf's sibling first), a blank line, then the signed checkpoint verbatim."""
    lines = text.split("\n")
    # The note follows the blank line; everything before it is one line each.
    if len(lines) < 2 or lines[0] != RECEIPT_HEADER:
        raise NoteError(f"first line must be {RECEIPT_HEADER}", 1)
    n = 1
    extra = None
    if lines[n].startswith("extra "):
        try:
            extra = b64decode(lines[n][len("extra ") :])
        except VerifyError as e:
            raise NoteError(f"extra data {e}", n + 1) from None
        n += 1
    if n >= len(lines) - 1 or not lines[n].startswith("index "):
        raise NoteError("expected `index <decimal>`", n + 1)
    index = parse_decimal(lines[n][len("index ") :])
    if index is None:
        raise NoteError("expected `index <decimal>` without leading zeros", n + 1)
    n += 1
    proof = []
    while True:
        if n >= len(lines) - 1:
            raise NoteError("missing blank line before the checkpoint", n + 1)
        if lines[n] == "":
            break
        if len(proof) == 64:
            raise NoteError("inclusion proof has more than 64 hashes", n + 1)
        try:
            h = b64decode(lines[n])
        except VerifyError as e:
            raise NoteError(f"proof hash {e}", n + 1) from None
        if len(h) != 32:
            raise NoteError("proof line must be base64 of a 32-byte hash", n + 1)
        proof.append(h)
        n += 1
    note = "\n".join(lines[n + 1 :])
    if note == "":
        raise NoteError("checkpoint note is missing", n + 2)
    return Receipt(index=index, proof=proof, checkpoint_note=note, note_line=n + 2, extra=extra)


def verify_receipt(
    text: str, entry: bytes, key: VerifierKey, origin: Optional[str] = None
) -> Tuple[Receipt, Checkpoint]:
    """Checks that `entry` (its exact bytes) is in the log `key` signs for.

    Like `crossflow verify receipt`: if `origin` is None the checkpoint's own
    origin is accepted; an entry file that ends in one extra newline (as
    `echo` writes) is tried without it too -- only the exact logged bytes can
    match the leaf hash, so this cannot accept a wrong entry.
    """
    receipt = parse_receipt(text)
    try:
        checkpoint = verify_checkpoint(receipt.checkpoint_note, key)
    except NoteError as e:
        raise NoteError(f"checkpoint: {e}", receipt.note_line + e.line - 1) from None
    if origin is not None and checkpoint.origin != origin:
        raise VerifyError(f"receipt is from log {checkpoint.origin!r}, expected {origin!r}")
    candidates = [entry] + ([entry[:-1]] if entry.endswith(b"\n") else [])
    first_error: Optional[VerifyError] = None
    for candidate in candidates:
        try:
            verify_inclusion(
                receipt.index,
                checkpoint.size,
                leaf_hash(candidate),
                receipt.proof,
                checkpoint.root,
            )
            return receipt, checkpoint
        except VerifyError as e:
            first_error = first_error or e
    raise VerifyError(f"inclusion proof: {first_error}")


# =============================================================================
# Exports: reading and checking the files (docs/LEDGER.md, "Exports")
# =============================================================================

EXPORT_FORMAT = "crossflow-ledger-export@v1"
CONSISTENCY_HEADER = "crossflow-consistency@v1"
MULTIPROOF_HEADER = "crossflow-multiproof@v1"
ENTRY_LINE = re.compile(rb'\{"index":(0|[1-9][0-9]*),"entry":(.*)\}')
ACCOUNT = re.compile(r"partner:([^:]+):(payable|receivable)")
EVENT_COLUMN = {
    "reported": "conversion",
    "confirmed": "confirm",
    "cancelled": "cancel",
    "refunded": "refund",
    "released": "release",
}
STATEMENT_HEADER = (
    "period,entry_index,order_id,conversion_id,event,occurred_at,recorded_at,"
    "payer,payee,role,model,weight,category,currency,exponent,"
    "order_amount_minor,commission_minor,amount_minor,amount,status,payable,leaf_hash"
).split(",")
SETTLEMENT_HEADER = (
    "period,kind,partner,counterparty,currency,exponent,"
    "owes_minor,owed_minor,net_minor,owes,owed,net,conversions"
).split(",")

# Where an entry's period lies relative to the exported period P: all that
# settlement needs, since "settles in P" only ever compares with P.
EARLIER, THIS, LATER = -1, 0, 1


class ExportFailed(Exception):
    """The first failing file and line of an export, and why."""

    def __init__(self, file: str, line: int, reason: str):
        super().__init__(f"{file}:{line}: {reason}")
        self.file, self.line, self.reason = file, line, reason


@dataclass
class ExportInfo:
    """export.json, checked."""

    origin: str
    period: str
    tz: ZoneInfo
    start_ms: int
    end_ms: int
    view: str
    previous_anchor_size: int
    anchor_size: int
    entries: int


@dataclass
class Entry:
    """One line of entries.jsonl: the exact bytes and what they say."""

    line: int
    index: int
    raw: bytes
    leaf: bytes
    data: dict

    def get(self, name: str, kind: type, optional: bool = False):
        value = self.data.get(name)
        if value is None and optional:
            return None
        # bool is an int in Python; the format never uses one for a number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ExportFailed(
                "entries.jsonl",
                self.line,
                f"entry {self.index}: field {name!r} must be a {kind.__name__}",
            )
        return value


def _read(dir: Path, name: str) -> bytes:
    try:
        return (dir / name).read_bytes()
    except OSError as e:
        raise ExportFailed(name, 0, f"cannot read: {e.strerror or e}") from None


def _read_text(dir: Path, name: str) -> str:
    try:
        return _read(dir, name).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportFailed(name, 0, f"not UTF-8 ({e.reason} at byte {e.start})") from None


def rfc3339_ms(ms: int, tz: ZoneInfo) -> str:
    """`2026-11-03T14:05:00.123+08:00`: milliseconds, the zone's UTC offset."""
    secs, millis = divmod(ms, 1000)
    t = datetime.fromtimestamp(secs, tz)
    offset = int(t.utcoffset().total_seconds())  # type: ignore[union-attr]
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{millis:03d}{sign}{hours:02d}:{minutes:02d}"


def _json_line(text: str, key: str) -> int:
    """Line of export.json where `key` appears (1 if nowhere)."""
    for n, line in enumerate(text.split("\n"), 1):
        if f'"{key}"' in line:
            return n
    return 1


def read_export_json(dir: Path) -> ExportInfo:
    name = "export.json"
    text = _read_text(dir, name)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise ExportFailed(name, _json_line(text, dup), f"duplicate key {dup!r}")
        return dict(pairs)

    try:
        doc = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ExportFailed(name, e.lineno, f"not JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise ExportFailed(name, 1, "must be a JSON object")

    def field_(key: str, kind: type):
        value = doc.get(key)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise ExportFailed(
                name,
                _json_line(text, key),
                f"{key!r} must be a {'non-negative integer' if kind is int else kind.__name__}",
            )
        return value

    def bad(key: str, reason: str) -> ExportFailed:
        return ExportFailed(name, _json_line(text, key), reason)

    if field_("format", str) != EXPORT_FORMAT:
        raise bad("format", f"format must be {EXPORT_FORMAT!r}")
    origin = field_("origin", str)
    period = field_("period", str)
    m = re.fullmatch(r"([0-9]{4})-(0[1-9]|1[0-2])", period)
    if m is None:
        raise bad("period", f"period {period!r} is not YYYY-MM")
    tz_name = field_("timezone", str)
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad("timezone", f"unknown time zone {tz_name!r} (is tzdata installed?)") from None
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    start_ms = int(start.timestamp()) * 1000
    end_ms = int(end.timestamp()) * 1000
    for key, want in (("period_start_ms", start_ms), ("period_end_ms", end_ms)):
        if field_(key, int) != want:
            raise bad(key, f"{key} is {doc[key]}, but {period} in {tz_name} gives {want}")
    for key, ms in (("period_start", start_ms), ("period_end", end_ms)):
        if field_(key, str) != rfc3339_ms(ms, tz):
            raise bad(key, f"{key} is {doc[key]!r}, expected {rfc3339_ms(ms, tz)!r}")
    view = field_("view", str)
    if view != "federation" and re.fullmatch(r"partner:[^:]+", view) is None:
        raise bad("view", f"view must be 'federation' or 'partner:<id>', got {view!r}")
    previous = field_("previous_anchor_size", int)
    anchor = field_("anchor_size", int)
    if anchor < previous:
        raise bad(
            "anchor_size",
            f"anchor size {anchor} is smaller than the previous anchor's {previous}",
        )
    return ExportInfo(
        origin,
        period,
        tz,
        start_ms,
        end_ms,
        view,
        previous,
        anchor,
        field_("entries", int),
    )


def check_anchor(dir: Path, info: ExportInfo, key: VerifierKey) -> Checkpoint:
    """Step 1: checkpoint.txt is signed by the key and is the anchor export.json names."""
    name = "checkpoint.txt"
    try:
        cp = verify_checkpoint(_read_text(dir, name), key)
    except NoteError as e:
        raise ExportFailed(name, e.line, str(e)) from None
    if cp.origin != info.origin:
        raise ExportFailed(name, 1, f"origin {cp.origin!r} is not export.json's {info.origin!r}")
    if cp.size != info.anchor_size:
        raise ExportFailed(
            name,
            2,
            f"size {cp.size} is not export.json's anchor_size {info.anchor_size}",
        )
    return cp


def check_consistency(dir: Path, info: ExportInfo, key: VerifierKey, anchor: Checkpoint) -> None:
    """Step 2: the anchor extends the previous period's anchor."""
    name = "consistency.txt"
    lines = _read_text(dir, name).split("\n")
    if lines[0] != CONSISTENCY_HEADER:
        raise ExportFailed(name, 1, f"first line must be {CONSISTENCY_HEADER}")
    sizes = []
    for n, (label, want) in enumerate(
        (("old", info.previous_anchor_size), ("new", info.anchor_size)), 2
    ):
        line = lines[n - 1] if n - 1 < len(lines) else ""
        value = parse_decimal(line[len(label) + 1 :]) if line.startswith(label + " ") else None
        if value is None:
            raise ExportFailed(name, n, f"expected `{label} <decimal>`")
        if value != want:
            raise ExportFailed(name, n, f"{label} size {value} does not match export.json ({want})")
        sizes.append(value)
    old, new = sizes
    if old == 0:
        if lines[3:] != [""]:
            raise ExportFailed(
                name,
                4,
                "the first close has nothing to prove: the file must end after `new`",
            )
        return
    proof: List[bytes] = []
    n = 4
    while n - 1 < len(lines) and lines[n - 1] != "":
        try:
            h = b64decode(lines[n - 1])
        except VerifyError as e:
            raise ExportFailed(name, n, f"proof hash {e}") from None
        if len(h) != 32:
            raise ExportFailed(name, n, "proof line must be base64 of a 32-byte hash")
        proof.append(h)
        n += 1
    if n - 1 >= len(lines):
        raise ExportFailed(name, n, "missing blank line before the previous anchor's note")
    note_start = n + 1
    note = "\n".join(lines[n:])
    try:
        previous = verify_checkpoint(note, key)
    except NoteError as e:
        raise ExportFailed(name, note_start + e.line - 1, f"previous anchor: {e}") from None
    if previous.origin != info.origin:
        raise ExportFailed(name, note_start, f"previous anchor is from log {previous.origin!r}")
    if previous.size != old:
        raise ExportFailed(
            name, note_start + 1, f"previous anchor has size {previous.size}, not {old}"
        )
    try:
        verify_consistency(old, new, proof, previous.root, anchor.root)
    except VerifyError as e:
        raise ExportFailed(name, 4, f"consistency proof {old} -> {new}: {e}") from None


def read_entries(dir: Path, info: ExportInfo) -> List[Entry]:
    """Step 3 and the first half of 4: the wrapper, the indexes, balanced postings."""
    name = "entries.jsonl"
    raw = _read(dir, name)
    if raw and not raw.endswith(b"\n"):
        raise ExportFailed(name, raw.count(b"\n") + 1, "last line does not end with a newline")
    lines = raw.split(b"\n")[:-1] if raw else []
    entries: List[Entry] = []
    for n, line in enumerate(lines, 1):
        m = ENTRY_LINE.fullmatch(line)
        if m is None:
            raise ExportFailed(name, n, 'line is not exactly {"index":N,"entry":<entry bytes>}')
        index, body = int(m.group(1)), m.group(2)
        try:
            data = json.loads(
                body.decode("utf-8"),
                object_pairs_hook=_no_duplicate_keys,
                parse_constant=_no_constants,
            )
        except (UnicodeDecodeError, ValueError) as e:
            raise ExportFailed(name, n, f"entry {index} is not UTF-8 JSON: {e}") from None
        if not isinstance(data, dict):
            raise ExportFailed(name, n, f"entry {index} is not a JSON object")
        if index >= info.anchor_size:
            raise ExportFailed(
                name,
                n,
                f"index {index} is not below the anchor size {info.anchor_size}",
            )
        if entries and index <= entries[-1].index:
            raise ExportFailed(
                name,
                n,
                f"index {index} does not ascend (previous line: {entries[-1].index})",
            )
        if info.view == "federation":
            # Every index of the period, none missing: a dropped line shows here.
            expected = max(info.previous_anchor_size, entries[-1].index + 1 if entries else 0)
            if index >= info.previous_anchor_size and index != expected:
                raise ExportFailed(
                    name,
                    n,
                    f"index {expected} of the period is missing (this line is {index})",
                )
        entry = Entry(n, index, body, leaf_hash(body), data)
        check_postings(entry)
        entries.append(entry)
    if info.view == "federation":
        last = (
            entries[-1].index + 1
            if entries and entries[-1].index >= info.previous_anchor_size
            else info.previous_anchor_size
        )
        if last != info.anchor_size:
            raise ExportFailed(
                name,
                len(lines) + 1,
                f"indexes {last}..{info.anchor_size - 1} of the period are missing",
            )
    if len(entries) != info.entries:
        raise ExportFailed(
            name,
            len(lines) + 1,
            f"{len(entries)} lines, but export.json says {info.entries}",
        )
    return entries


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def check_postings(entry: Entry) -> None:
    """Every posting names a partner account, and they sum to zero per currency."""
    postings = entry.get("postings", list)
    sums: Dict[str, int] = {}
    for p in postings:
        if not isinstance(p, dict):
            raise ExportFailed(
                "entries.jsonl",
                entry.line,
                f"entry {entry.index}: a posting is not an object",
            )
        account, amount, currency = (
            p.get("account"),
            p.get("amount_minor"),
            p.get("currency"),
        )
        if not isinstance(account, str) or ACCOUNT.fullmatch(account) is None:
            raise ExportFailed(
                "entries.jsonl",
                entry.line,
                f"entry {entry.index}: bad posting account {account!r}",
            )
        if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
            raise ExportFailed(
                "entries.jsonl",
                entry.line,
                f"entry {entry.index}: posting needs integer amount_minor and currency",
            )
        sums[currency] = sums.get(currency, 0) + amount
    for currency, total in sorted(sums.items()):
        if total != 0:
            raise ExportFailed(
                "entries.jsonl",
                entry.line,
                f"entry {entry.index}: postings in {currency} sum to {total}, not 0",
            )


def check_multiproof(dir: Path, entries: List[Entry], anchor: Checkpoint) -> None:
    """Step 4, second half: proof.txt proves every exported leaf against the anchor."""
    name = "proof.txt"
    lines = _read_text(dir, name).split("\n")
    if lines[0] != MULTIPROOF_HEADER:
        raise ExportFailed(name, 1, f"first line must be {MULTIPROOF_HEADER}")
    size = (
        parse_decimal(lines[1][len("size ") :])
        if len(lines) > 1 and lines[1].startswith("size ")
        else None
    )
    if size is None:
        raise ExportFailed(name, 2, "expected `size <decimal>`")
    if size != anchor.size:
        raise ExportFailed(name, 2, f"size {size} is not the anchor's {anchor.size}")
    if lines[-1] != "":
        raise ExportFailed(name, len(lines), "last line does not end with a newline")
    hashes = []
    for n, line in enumerate(lines[2:-1], 3):
        try:
            h = b64decode(line)
        except VerifyError as e:
            raise ExportFailed(name, n, f"hash {e}") from None
        if len(h) != 32:
            raise ExportFailed(name, n, "line must be base64 of a 32-byte hash")
        hashes.append(h)
    try:
        root, used = multiproof_root(size, {e.index: e.leaf for e in entries}, hashes)
    except VerifyError as e:
        raise ExportFailed(name, 3 + len(hashes), str(e)) from None
    if used != len(hashes):
        raise ExportFailed(
            name,
            3 + used,
            f"{len(hashes) - used} hash(es) left over; the proof needs {used}",
        )
    if root != anchor.root:
        # The proof and the entries together fail; which one was changed
        # cannot be told from the root alone. statement.csv lists each entry's
        # leaf hash: an entry that disagrees with it is the likelier culprit.
        listed = _statement_leaf_hashes(dir)
        for e in entries:
            if e.index in listed and listed[e.index] != e.leaf.hex():
                raise ExportFailed(
                    "entries.jsonl",
                    e.line,
                    f"entry {e.index} hashes to {e.leaf.hex()}, statement.csv lists {listed[e.index]}, "
                    "and the multi-proof does not lead to the anchor root",
                )
        raise ExportFailed(
            name,
            3,
            f"the {len(hashes)} hash(es) with the {len(entries)} exported entries give root {b64(root)}, the anchor's is {b64(anchor.root)}",
        )


def _statement_leaf_hashes(dir: Path) -> Dict[int, str]:
    """entry_index -> leaf_hash as statement.csv states them (for diagnosis only)."""
    out: Dict[int, str] = {}
    try:
        statement = (dir / "statement.csv").read_bytes()
    except OSError:
        return out
    for line in statement.decode("utf-8", "replace").split("\r\n")[1:]:
        cells = line.split(",")
        if len(cells) == len(STATEMENT_HEADER) and cells[1].isdigit():
            out.setdefault(int(cells[1]), cells[-1])
    return out


# =============================================================================
# Settlement: recomputing statement.csv and settlement.csv from the entries
# (docs/LEDGER.md, "Settlement periods", "statement.csv", "settlement.csv")
# =============================================================================


@dataclass
class Conversion:
    """Everything exported about one order, as of the anchor."""

    entries: List[Entry] = field(default_factory=list)

    def first(self, event: str) -> Optional[Entry]:
        return next((e for e in self.entries if e.data.get("event") == event), None)


def format_minor(amount: int, exponent: int) -> str:
    """Minor units with the currency's decimals: (-5, 2) -> "-0.05", (7, 0) -> "7"."""
    sign = "-" if amount < 0 else ""
    if exponent == 0:
        return f"{sign}{abs(amount)}"
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{frac:0{exponent}d}"


def csv_line(cells: Sequence[object]) -> str:
    """RFC 4180: quote a field only when it holds `,`, `"` or a line break."""
    out = []
    for cell in cells:
        s = str(cell)
        if any(c in s for c in ',"\r\n'):
            s = '"' + s.replace('"', '""') + '"'
        out.append(s)
    return ",".join(out) + "\r\n"


def attribution_of(
    report: Entry,
) -> Tuple[str, int, List[Tuple[int, List[Tuple[str, str]]]]]:
    """(model, commission_minor, [(weight, [(partner, role)...]) per touch]) of a report."""

    def bad(what: str) -> ExportFailed:
        return ExportFailed(
            "entries.jsonl", report.line, f"entry {report.index}: attribution {what}"
        )

    attribution = report.get("attribution", dict)
    model, commission = attribution.get("model"), attribution.get("commission_minor")
    if (
        not isinstance(model, str)
        or not isinstance(commission, int)
        or isinstance(commission, bool)
    ):
        raise bad("needs a string model and an integer commission_minor")
    listed = attribution.get("touches", [])
    if not isinstance(listed, list):
        raise bad("touches must be a list")
    touches = []
    for t in listed:
        weight = t.get("weight") if isinstance(t, dict) else None
        shares = t.get("shares") if isinstance(t, dict) else None
        if not isinstance(weight, int) or isinstance(weight, bool) or not isinstance(shares, list):
            raise bad("touches need an integer weight and a list of shares")
        pairs = []
        for sh in shares:
            if (
                not isinstance(sh, dict)
                or not isinstance(sh.get("partner"), str)
                or sh.get("role") not in ("direct", "upstream")
            ):
                raise bad("shares need a partner and a role (direct or upstream)")
            pairs.append((sh["partner"], sh["role"]))
        touches.append((weight, pairs))
    return model, commission, touches


class Settlement:
    """Decides which postings settle in the exported period, and why not."""

    def __init__(self, info: ExportInfo, entries: List[Entry]):
        self.info = info
        self.by_index = {e.index: e for e in entries}
        self.conversions: Dict[str, Conversion] = {}
        for e in entries:
            self.conversions.setdefault(e.get("conversion_id", str), Conversion()).entries.append(e)

    def period_of_index(self, index: int) -> int:
        """Entries belong to periods by index: [previous anchor, anchor) is P."""
        return EARLIER if index < self.info.previous_anchor_size else THIS

    def period_of_time(self, ms: int) -> int:
        if ms < self.info.start_ms:
            return EARLIER
        return THIS if ms < self.info.end_ms else LATER

    def report(self, e: Entry) -> Entry:
        """The `reported` entry of e's conversion; it must be exported."""
        if e.data.get("event") == "reported":
            return e
        r = self.by_index.get(e.get("report_index", int))
        if (
            r is None
            or r.data.get("event") != "reported"
            or r.data.get("conversion_id") != e.data.get("conversion_id")
        ):
            raise ExportFailed(
                "entries.jsonl",
                e.line,
                f"entry {e.index} has postings but its report (index {e.data['report_index']}) is not exported",
            )
        return r

    def paid(self, c: Conversion, report: Entry) -> Optional[int]:
        """paid(c): max(period of payable_at_ms, of the confirmed entry, of the
        released entry if the report was held); None if never paid as of the anchor."""
        confirmed = c.first("confirmed")
        if confirmed is None:
            return None
        periods = [
            self.period_of_time(confirmed.get("payable_at_ms", int)),
            self.period_of_index(confirmed.index),
        ]
        if "hold" in report.data:
            released = c.first("released")
            if released is None:
                return None
            periods.append(self.period_of_index(released.index))
        return max(periods)

    def why_not_paid(self, c: Conversion, report: Entry) -> str:
        if "hold" in report.data and c.first("released") is None:
            return "held"
        if c.first("cancelled") is not None:
            return "cancelled"
        if c.first("confirmed") is None:
            return "pending"
        return "locked"

    def statement_rows(self) -> List[List[object]]:
        rows = []
        info = self.info
        for e in sorted(self.by_index.values(), key=lambda e: e.index):
            receivables = [
                p for p in e.get("postings", list) if p["account"].endswith(":receivable")
            ]
            if not receivables:
                continue
            report = self.report(e)
            c = self.conversions[e.get("conversion_id", str)]
            paid = self.paid(c, report)
            own_period = self.period_of_index(e.index)
            settles = None if paid is None else max(own_period, paid)
            if own_period != THIS and settles != THIS:
                continue  # an earlier entry that settled, or will settle, elsewhere
            payable = "yes" if settles == THIS else self.why_not_paid(c, report)
            model, commission, touches = attribution_of(report)
            total_weight = sum(weight for weight, _ in touches)
            status = c.entries[-1].get("status", str)
            for p in receivables:
                payee = ACCOUNT.fullmatch(p["account"]).group(1)  # type: ignore[union-attr]
                roles = set()
                weight = 0
                for touch_weight, shares in touches:
                    mine = [role for partner, role in shares if partner == payee]
                    roles.update(mine)
                    weight += touch_weight if mine else 0
                exponent = e.get("exponent", int)
                rows.append(
                    [
                        info.period,
                        e.index,
                        e.get("order_id", str),
                        e.get("conversion_id", str),
                        EVENT_COLUMN.get(e.get("event", str), e.data["event"]),
                        rfc3339_ms(e.get("occurred_at_ms", int), info.tz),
                        rfc3339_ms(e.get("recorded_at_ms", int), info.tz),
                        e.get("reporter", str),
                        payee,
                        "+".join(r for r in ("direct", "upstream") if r in roles),
                        model,
                        f"{weight}/{total_weight}",
                        e.get("category", str),
                        p["currency"],
                        exponent,
                        e.get("amount_minor", int),
                        commission,
                        p["amount_minor"],
                        format_minor(p["amount_minor"], exponent),
                        status,
                        payable,
                        e.leaf.hex(),
                    ]
                )
        return rows

    def settlement_rows(self, statement: List[List[object]]) -> List[List[object]]:
        col = {name: i for i, name in enumerate(STATEMENT_HEADER)}
        # (partner, counterparty, currency) -> [owes, owed, conversion ids]
        pairs: Dict[Tuple[str, str, str], list] = {}
        exponents: Dict[str, int] = {}
        for row in statement:
            if row[col["payable"]] != "yes":
                continue
            payer, payee, currency = (
                row[col["payer"]],
                row[col["payee"]],
                row[col["currency"]],
            )
            amount, conversion = row[col["amount_minor"]], row[col["conversion_id"]]
            exponents[currency] = row[col["exponent"]]
            owes = pairs.setdefault((payer, payee, currency), [0, 0, set()])
            owes[0] += amount
            owes[2].add(conversion)
            owed = pairs.setdefault((payee, payer, currency), [0, 0, set()])
            owed[1] += amount
            owed[2].add(conversion)
        totals: Dict[Tuple[str, str], list] = {}
        for (partner, _, currency), (owes, owed, ids) in pairs.items():
            t = totals.setdefault((partner, currency), [0, 0, set()])
            t[0] += owes
            t[1] += owed
            t[2] |= ids
        view_partner = self.info.view[len("partner:") :] if self.info.view != "federation" else None
        out = []
        for kind, table in (
            ("pair", pairs),
            ("total", {(p, "", c): v for (p, c), v in totals.items()}),
        ):
            for partner, counterparty, currency in sorted(table):
                if view_partner is not None and partner != view_partner:
                    continue
                owes, owed, ids = table[(partner, counterparty, currency)]
                exp = exponents[currency]
                out.append(
                    [
                        self.info.period,
                        kind,
                        partner,
                        counterparty,
                        currency,
                        exp,
                        owes,
                        owed,
                        owed - owes,
                        format_minor(owes, exp),
                        format_minor(owed, exp),
                        format_minor(owed - owes, exp),
                        len(ids),
                    ]
                )
        return out


def compare_csv(dir: Path, name: str, expected: str) -> None:
    """Byte-for-byte comparison, reporting the first line that differs."""
    got = _read(dir, name)
    want = expected.encode("utf-8")
    if got == want:
        return
    got_lines, want_lines = got.split(b"\r\n"), want.split(b"\r\n")
    header = want_lines[0].decode("utf-8").split(",")
    for n, (g, w) in enumerate(zip(got_lines, want_lines), 1):
        if g != w:
            raise ExportFailed(name, n, _difference(header, w, g))
    n = min(len(got_lines), len(want_lines)) + 1
    if len(got_lines) < len(want_lines):
        raise ExportFailed(name, n - 1, f"ends early: row {_show(want_lines[n - 1])} is missing")
    raise ExportFailed(
        name, n - 1, f"has extra content after the last row: {_show(got_lines[n - 1])}"
    )


def _difference(header: List[str], want: bytes, got: bytes) -> str:
    """The first differing column, when both rows are plain; else both rows."""
    w, g = want.split(b","), got.split(b",")
    plain = b'"' not in want + got and len(w) == len(g) == len(header)
    if plain:
        for column, a, b in zip(header, w, g):
            if a != b:
                return f"column {column}: expected {_show(a)}, found {_show(b)} (row {_show(want, 80)})"
    return f"expected {_show(want)}, found {_show(got)}"


def _show(line: bytes, limit: int = 160) -> str:
    text = line.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def verify_export(dir: Path, key: VerifierKey) -> str:
    """Every check of docs/LEDGER.md "Verifying an export", in its order.

    Returns the OK summary; raises ExportFailed at the first failure.
    """
    info = read_export_json(dir)
    anchor = check_anchor(dir, info, key)  # 1
    check_consistency(dir, info, key, anchor)  # 2
    entries = read_entries(dir, info)  # 3, and 4's balanced postings
    check_multiproof(dir, entries, anchor)  # 4
    settlement = Settlement(info, entries)  # 5
    statement = settlement.statement_rows()
    compare_csv(
        dir,
        "statement.csv",
        "".join(csv_line(r) for r in [STATEMENT_HEADER, *statement]),
    )
    matrix = settlement.settlement_rows(statement)
    compare_csv(
        dir,
        "settlement.csv",
        "".join(csv_line(r) for r in [SETTLEMENT_HEADER, *matrix]),
    )
    payable = sum(1 for r in statement if r[STATEMENT_HEADER.index("payable")] == "yes")
    return (
        f"export OK: {info.view} {info.period}, {len(entries)} entries proved against "
        f"{info.origin} size {anchor.size} (root {b64(anchor.root)}, signed by {key.name}), "
        f"extends size {info.previous_anchor_size}; {len(statement)} statement rows "
        f"({payable} payable), {len(matrix)} settlement rows recomputed"
    )


# =============================================================================
# Command line
# =============================================================================


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="verify a `crossflow ledger export` directory")
    p.add_argument("dir", type=Path)
    p.add_argument("--vkey", required=True, help="verifier key text or a file holding it")
    p = sub.add_parser("receipt", help="verify a c2sp.org/tlog-proof@v1 receipt for one entry")
    p.add_argument("receipt", type=Path)
    p.add_argument("--vkey", required=True, help="verifier key text or a file holding it")
    p.add_argument("--entry", required=True, type=Path, help="the entry's bytes, verbatim")
    p.add_argument("--origin", help="require this checkpoint origin")
    p = sub.add_parser("checkpoint", help="verify a signed checkpoint note")
    p.add_argument("file", type=Path)
    p.add_argument("--vkey", required=True, help="verifier key text or a file holding it")
    args = parser.parse_args(argv)

    verdict = args.command
    try:
        key = load_verifier_key(args.vkey)
    except VerifyError as e:
        print(f"{verdict} FAILED: --vkey: {e}")
        return 1
    if args.command == "export":
        try:
            print(verify_export(args.dir, key))
            return 0
        except ExportFailed as e:
            print(f"export FAILED: {e}")
            return 1
    try:
        if args.command == "receipt":
            receipt, cp = verify_receipt(
                args.receipt.read_text(encoding="utf-8"),
                args.entry.read_bytes(),
                key,
                args.origin,
            )
            print(
                f"receipt OK: entry {receipt.index} is in {cp.origin} at size {cp.size} (root {b64(cp.root)})"
            )
        else:
            cp = verify_checkpoint(args.file.read_text(encoding="utf-8"), key)
            print(
                f"checkpoint OK: origin {cp.origin}, size {cp.size}, root {b64(cp.root)}, signed by {key.name}"
            )
        return 0
    except NoteError as e:
        print(f"{verdict} FAILED: line {e.line}: {e}")
    except (VerifyError, OSError, UnicodeDecodeError) as e:
        print(f"{verdict} FAILED: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
