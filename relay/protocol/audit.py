"""Audit log entries and signed tree heads (docs/audit.md, docs/protocol.md). Pure.

Invariants:
- An entry is one strict-msgpack map: `seq` (its index in the log, from 0),
  `at` (unix ms), `kind`, then the kind's fields in sorted key order. Values
  are str, int, bin or arrays of str or bin: ids, hashes, names and counts,
  never message content, so erasing content never changes an entry.
- The log is the RFC 9162 Merkle tree (relay.protocol.merkle) whose leaf `seq`
  is leaf_hash(entry bytes). The bytes are hashed as stored; decoding is only
  for reading them, so an entry need not re-encode to the same bytes.
- A tree head is a strict map {v, node, size, root, at, key}, signed by the
  node key named by `key` over TREE_HEAD_DOMAIN + head bytes. It travels as
  the two-element array [head bytes, signature], like a certificate.
- A tree proof is the strict array [from_size, [hash...]]: the RFC 9162
  consistency proof from the sender's head of `from_size` entries to the head
  it travels with. Its decoder checks shape and bounds (1 <= from_size, 1 to
  MAX_PROOF_HASHES hashes of 32 bytes); whether it proves anything is
  merkle.verify_consistency's business.
- Decoders raise MalformedError; a signature that does not verify raises
  ProofFailed. Unknown entry kinds decode (later versions add kinds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay.errors import MalformedError, ProofFailed
from relay.protocol import ed25519
from relay.protocol.merkle import HASH_SIZE, leaf_hash
from relay.protocol.names import valid_node_name
from relay.protocol.sfv import b64, b64_canonical
from relay.protocol.strict import (
    bin_field,
    fields,
    int_field,
    pack,
    signed_pair,
    str_field,
    strict_unpack,
    value_kind,
)

TREE_HEAD_DOMAIN = b"relay-tree-head-v1\x00"
TREE_HEAD_HEADER = "Relay-Tree-Head"  # the optional batch header (docs/protocol.md §19)
TREE_HEAD_VERSION = 1
TREE_PROOF_HEADER = "Relay-Tree-Proof"  # the consistency proof beside it (protocol.md §19)
# A consistency proof holds at most one hash per level of the later tree plus one:
# 64 for any size below 2**63 (strict msgpack's largest int).
MAX_PROOF_HASHES = 64

# The kinds this version writes (docs/audit.md lists their fields).
DECISION = "decision"  # a residency decision: point, outcome, rule, reason, peer, policy
STORED = "stored"  # an envelope stored here: envelope, origin, residency, from, header
FORWARDED = "forwarded"  # an envelope handed to the next node: envelope, to, jurisdiction
RECEIPT = "receipt"  # a signed receipt applied: envelope, status, by, jurisdiction, receipt
PURGED = "purged"  # a retention purge or admin delete: source, envelopes, counts
CONFIG = "config"  # the node started or reloaded: policy hash, keys, jurisdiction
DELETED = "deleted"  # an admin took envelopes out of the queue: envelopes, by, reason
RESULT = "result"  # a peer's signed batch result stating delivery: peer, batch, result, signature
KINDS = frozenset({DECISION, STORED, FORWARDED, RECEIPT, PURGED, CONFIG, DELETED, RESULT})

_KIND_RE = re.compile(r"[a-z][a-z_]{0,31}\Z")
_RESERVED = frozenset({"seq", "at", "kind"})
FieldValue = str | int | bytes | tuple[str, ...] | tuple[bytes, ...]
_PACKER = msgpack.Packer(use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded audit entry."""

    seq: int
    at: int
    kind: str
    fields: Mapping[str, FieldValue]

    def text(self, key: str) -> str:
        """A str field, "" when absent."""
        value = self.fields.get(key, "")
        return value if isinstance(value, str) else ""

    def blob(self, key: str) -> bytes:
        """A bin field, b"" when absent."""
        value = self.fields.get(key, b"")
        return value if isinstance(value, bytes) else b""

    def names(self, key: str) -> tuple[str, ...]:
        """An array-of-str field, () when absent."""
        value = self.fields.get(key, ())
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, tuple) else ()


def encode_entry(seq: int, at: int, kind: str, values: Mapping[str, FieldValue]) -> bytes:
    """The bytes of one entry; MalformedError for a bad kind or field."""
    if kind not in KINDS and not _KIND_RE.match(kind):
        raise MalformedError(f"audit entry: kind {kind!r} is not a lowercase word")
    body: dict[str, object] = {"seq": seq, "at": at, "kind": kind}
    for key in sorted(values):
        if key in _RESERVED:
            raise MalformedError(f"audit entry: field {key!r} is reserved")
        value = values[key]
        body[key] = list(value) if type(value) is tuple else value
    try:
        data: bytes = _PACKER.pack(body)  # one packer: entries are written per envelope
    except (OverflowError, TypeError, ValueError) as e:
        _PACKER.reset()
        raise MalformedError(f"audit entry: a field cannot be packed: {e}") from None
    return data


def decode_entry(data: bytes) -> Entry:
    """Strictly decode an entry; MalformedError naming what is wrong."""
    w = "audit entry"
    m = strict_unpack(data, w)
    if type(m) is not dict:
        raise MalformedError(f"{w}: expected a map, got {value_kind(m)}")
    for key in ("seq", "at", "kind"):
        if key not in m:
            raise MalformedError(f"{w}: missing key {key}")
    seq, at, kind = int_field(m, "seq", w), int_field(m, "at", w), str_field(m, "kind", w)
    w = f"audit entry {seq}"
    if not _KIND_RE.match(kind):
        raise MalformedError(f"{w}: kind {kind!r} is not a lowercase word")
    values: dict[str, FieldValue] = {}
    for key, value in m.items():
        if type(key) is not str:
            raise MalformedError(f"{w}: a key is not a str")
        if key in _RESERVED:
            continue
        if type(value) in (str, int, bytes):
            values[key] = value
        elif type(value) is list and (
            all(type(v) is str for v in value) or all(type(v) is bytes for v in value)
        ):
            values[key] = tuple(value)
        else:
            raise MalformedError(f"{w}: {key}: {value_kind(value)} is not an entry value")
    return Entry(seq=seq, at=at, kind=kind, fields=values)


def entry_leaf(data: bytes) -> bytes:
    """The Merkle leaf hash of an entry's bytes."""
    return leaf_hash(data)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A decoded tree head: the log of `node` had `size` entries with `root` at `at`."""

    node: str
    size: int
    root: bytes
    at: int
    key: str  # key id of the node key that signed


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A tree head with its exact bytes and signature."""

    head: TreeHead
    head_bytes: bytes
    signature: bytes

    def wire(self) -> bytes:
        """The array [head bytes, signature] it travels and is stored as."""
        return pack([self.head_bytes, self.signature])


_HEAD_KEYS = frozenset({"v", "node", "size", "root", "at", "key"})


def encode_head(head: TreeHead) -> bytes:
    """The bytes of a tree head, checked by decode_head."""
    data = pack(
        {
            "v": TREE_HEAD_VERSION,
            "node": head.node,
            "size": head.size,
            "root": head.root,
            "at": head.at,
            "key": head.key,
        }
    )
    decode_head(data)
    return data


def decode_head(data: bytes) -> TreeHead:
    """Strictly decode a tree head; MalformedError."""
    w = "tree head"
    m = fields(strict_unpack(data, w), w, _HEAD_KEYS)
    if int_field(m, "v", w) != TREE_HEAD_VERSION:
        raise MalformedError(f"{w}: v: only version {TREE_HEAD_VERSION} is known")
    node = str_field(m, "node", w)
    if not valid_node_name(node):
        raise MalformedError(f"{w}: node: {node[:64]!r} is not a node name")
    key = str_field(m, "key", w)
    if not 1 <= len(key) <= 16:
        raise MalformedError(f"{w}: key: expected a key id")
    return TreeHead(
        node=node,
        size=int_field(m, "size", w),
        root=bin_field(m, "root", w, HASH_SIZE),
        at=int_field(m, "at", w),
        key=key,
    )


def sign_head(head: TreeHead, key: Ed25519PrivateKey) -> SignedHead:
    """Encode `head` and sign it with `key` (whose key id `head.key` names)."""
    data = encode_head(head)
    return SignedHead(head, data, ed25519.sign(key, TREE_HEAD_DOMAIN + data))


def decode_signed_head(blob: bytes) -> SignedHead:
    """The [head bytes, signature] array, decoded (the signature is not checked)."""
    data, signature = signed_pair(blob, "signed tree head")
    return SignedHead(decode_head(data), data, signature)


def verify_head(signed: SignedHead, pub: Ed25519PublicKey) -> None:
    """ProofFailed unless `pub` signed this head."""
    if not ed25519.verify(pub, signed.signature, TREE_HEAD_DOMAIN + signed.head_bytes):
        h = signed.head
        raise ProofFailed(
            f"tree head of {h.node} (size {h.size}, at {h.at}): "
            f"the signature does not verify under key {h.key}"
        )


def tree_head_header(signed: SignedHead) -> str:
    """The Relay-Tree-Head value: an RFC 8941 byte sequence of the [head, signature] array."""
    return f":{b64(signed.wire())}:"


def parse_tree_head_header(value: str) -> SignedHead:
    """A Relay-Tree-Head value, decoded (the signature is not checked); MalformedError."""
    return decode_signed_head(_byte_sequence(value, TREE_HEAD_HEADER))


@dataclass(frozen=True, slots=True)
class TreeProof:
    """A consistency proof from the sender's tree of `from_size` entries to the head
    it is sent with (RFC 9162 §2.1.4)."""

    from_size: int
    hashes: tuple[bytes, ...]


def encode_tree_proof(proof: TreeProof) -> bytes:
    """The strict array [from_size, [hash...]], checked by decode_tree_proof."""
    data = pack([proof.from_size, list(proof.hashes)])
    decode_tree_proof(data)
    return data


def decode_tree_proof(data: bytes) -> TreeProof:
    """Strictly decode a tree proof; MalformedError naming what is wrong."""
    w = "tree proof"
    value = strict_unpack(data, w)
    if type(value) is not list or len(value) != 2:
        raise MalformedError(f"{w}: expected the array [from_size, [hash...]]")
    from_size, hashes = value
    if type(from_size) is not int or from_size < 1:
        raise MalformedError(f"{w}: from_size: expected an int of at least 1")
    if type(hashes) is not list:
        raise MalformedError(f"{w}: expected an array of hashes, got {value_kind(hashes)}")
    if not 1 <= len(hashes) <= MAX_PROOF_HASHES:
        raise MalformedError(f"{w}: {len(hashes)} hashes; a proof holds 1 to {MAX_PROOF_HASHES}")
    for i, h in enumerate(hashes):
        if type(h) is not bytes or len(h) != HASH_SIZE:
            raise MalformedError(f"{w}: hash {i}: expected bin of {HASH_SIZE} bytes")
    return TreeProof(from_size, tuple(hashes))


def tree_proof_header(proof: TreeProof) -> str:
    """The Relay-Tree-Proof value: an RFC 8941 byte sequence of the proof array."""
    return f":{b64(encode_tree_proof(proof))}:"


def parse_tree_proof_header(value: str) -> TreeProof:
    """A Relay-Tree-Proof value, decoded (not yet checked against any head); MalformedError."""
    return decode_tree_proof(_byte_sequence(value, TREE_PROOF_HEADER))


def _byte_sequence(value: str, header: str) -> bytes:
    text = value.strip(" \t")
    raw = b64_canonical(text[1:-1]) if len(text) > 2 and text[0] == text[-1] == ":" else None
    if raw is None:
        raise MalformedError(
            f"{header}: not a byte sequence of canonical padded base64 between colons"
        )
    return raw
