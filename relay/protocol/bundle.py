"""The audit bundle (`relay audit export`, docs/audit.md): one self-contained file. Pure.

Invariants:
- A bundle is one strict-msgpack map. `entries` are the exact bytes of the log
  entries `first`, `first`+1, ...; `before` and `after` are the leaf hashes of
  every other entry up to the size of the latest head, so a verifier rebuilds
  the whole tree and checks every head against it without the node.
- `context` holds the last config entry before `first` (the keys, peers and
  jurisdiction in force when the range starts), checked against `before`.
- `heads` are signed heads as [head bytes, signature] arrays; `envelopes` the
  headers and signatures of the envelopes the entries name, with the payload
  only for receipts (a receipt's payload is ids and a status, never content).
- decode_bundle raises MalformedError naming what is wrong; it checks shapes,
  not signatures or hashes (relay.protocol.auditcheck does).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.errors import MalformedError
from relay.protocol.merkle import HASH_SIZE
from relay.protocol.names import valid_node_name
from relay.protocol.strict import fields, int_field, pack, str_field, strict_unpack, value_kind

BUNDLE_KIND = "relay-audit-bundle"
BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 1 << 31


@dataclass(frozen=True, slots=True)
class ExportedEnvelope:
    """An envelope's header bytes and signature, and a receipt's payload."""

    header: bytes
    signature: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    """A decoded audit bundle."""

    node: str
    since: int
    until: int
    first: int
    entries: tuple[bytes, ...]
    before: tuple[bytes, ...]
    after: tuple[bytes, ...]
    context: tuple[bytes, ...]
    heads: tuple[bytes, ...]
    envelopes: tuple[ExportedEnvelope, ...]


_KEYS = frozenset(
    {
        "v",
        "kind",
        "node",
        "since",
        "until",
        "first",
        "entries",
        "before",
        "after",
        "context",
        "heads",
        "envelopes",
    }
)


def encode_bundle(b: Bundle) -> bytes:
    """The bytes of a bundle."""
    return pack(
        {
            "v": BUNDLE_VERSION,
            "kind": BUNDLE_KIND,
            "node": b.node,
            "since": b.since,
            "until": b.until,
            "first": b.first,
            "entries": list(b.entries),
            "before": _join(b.before),
            "after": _join(b.after),
            "context": list(b.context),
            "heads": list(b.heads),
            "envelopes": [[e.header, e.signature, e.payload] for e in b.envelopes],
        }
    )


def _join(hashes: tuple[bytes, ...]) -> bytes:
    # leaf hashes travel as one bin: a million of them stay one object
    return b"".join(hashes)


def _split(blob: object, key: str) -> tuple[bytes, ...]:
    if type(blob) is not bytes or len(blob) % HASH_SIZE:
        raise MalformedError(f"bundle: {key}: expected a bin of 32-byte hashes")
    return tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE))


def _bins(value: object, key: str) -> tuple[bytes, ...]:
    if type(value) is not list or any(type(v) is not bytes for v in value):
        raise MalformedError(f"bundle: {key}: expected an array of bin, got {value_kind(value)}")
    return tuple(value)


def decode_bundle(data: bytes) -> Bundle:
    """Strictly decode a bundle's shape; MalformedError."""
    w = "bundle"
    top = strict_unpack(data, w)
    if type(top) is dict and top.get("kind") != BUNDLE_KIND:
        raise MalformedError(f"{w}: this is not a relay audit bundle")
    m = fields(top, w, _KEYS)
    if int_field(m, "v", w) != BUNDLE_VERSION:
        raise MalformedError(f"{w}: v: only version {BUNDLE_VERSION} is known")
    node = str_field(m, "node", w)
    if not valid_node_name(node):
        raise MalformedError(f"{w}: node: {node[:64]!r} is not a node name")
    envelopes = []
    raw = m["envelopes"]
    if type(raw) is not list:
        raise MalformedError(f"{w}: envelopes: expected an array")
    for i, item in enumerate(raw):
        if type(item) is not list or len(item) != 3 or any(type(v) is not bytes for v in item):
            raise MalformedError(f"{w}: envelope {i}: expected [header, signature, payload]")
        envelopes.append(ExportedEnvelope(item[0], item[1], item[2]))
    return Bundle(
        node=node,
        since=int_field(m, "since", w),
        until=int_field(m, "until", w),
        first=int_field(m, "first", w),
        entries=_bins(m["entries"], "entries"),
        before=_split(m["before"], "before"),
        after=_split(m["after"], "after"),
        context=_bins(m["context"], "context"),
        heads=_bins(m["heads"], "heads"),
        envelopes=tuple(envelopes),
    )
