"""Federation batch bodies and the receiver's signed batch result (DESIGN §5). Pure.

Invariants:
- decode_batch checks framing and item shape only; headers are decoded per
  item, so one bad item never fails the batch, but an item without a readable
  id (batch_ids) fails the whole request.
- The batch result is signed over RESULT_DOMAIN + the exact result bytes;
  sign_result decodes its own output first.
- A result carries `delivered` (extension delivery-v1, protocol.md §22) only
  when the request asked for it (DELIVERY_HEADER); every id it lists is a key
  of `results` whose value is accepted or duplicate, and a result that has
  one it was not asked for is malformed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import ITEM_CODES, BadSignature, ItemRejected, MalformedError
from relay.protocol.envelope import ID_SIZE, PeekedHeader, peek_header
from relay.protocol.names import valid_jurisdiction, valid_node_name
from relay.protocol.strict import (
    bin_field,
    fields,
    int_field,
    pack,
    show,
    signed_pair,
    str_array,
    str_field,
    strict_unpack,
    value_kind,
)

RESULT_DOMAIN = b"relay-result-v1\x00"
# Request header of extension delivery-v1 (protocol.md §22): the sender takes
# the signed result's `delivered` statement as delivery, so no receipt is owed.
DELIVERY_HEADER = "Relay-Delivery"
DELIVERY_V1 = "v1"
DELIVERY_MODES = frozenset({"enforce", "audit"})


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One item of a batch body: an envelope, its trace and optional certificates."""

    header_bytes: bytes
    signature: bytes
    payload: bytes
    trace: tuple[str, ...]
    certificates: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A federation batch body: its id and items, headers not yet decoded."""

    batch_id: bytes
    items: tuple[BatchItem, ...]


_BATCH_KEYS = frozenset({"batch", "items"})


def encode_batch(b: Batch) -> bytes:
    """Pack a federation batch body (DESIGN §5)."""
    items: list[list[object]] = []
    for it in b.items:
        item: list[object] = [it.header_bytes, it.signature, it.payload, list(it.trace)]
        if it.certificates is not None:
            item.append(list(it.certificates))
        items.append(item)
    return pack({"batch": b.batch_id, "items": items})


def decode_batch(data: bytes) -> Batch:
    """Strictly decode a batch body: framing and item shape only, headers untouched.

    MalformedError (the whole request is 400 malformed). An empty item list is
    refused: no sender has a reason to send one.
    """
    w = "batch body"
    m = fields(strict_unpack(data, w), w, _BATCH_KEYS)
    batch_id = bin_field(m, "batch", w, ID_SIZE)
    raw = m["items"]
    if type(raw) is not list or not raw:
        raise MalformedError("batch body: items: expected a non-empty array")
    return Batch(batch_id, tuple(_batch_item(item, i) for i, item in enumerate(raw)))


def _batch_item(item: object, i: int) -> BatchItem:
    w = f"batch body: items[{i}]"
    if type(item) is not list or len(item) not in (4, 5):
        raise MalformedError(f"{w}: expected [header, signature, payload, trace(, certificates)]")
    header_bytes, signature, payload = item[0], item[1], item[2]
    if (
        type(header_bytes) is not bytes
        or type(signature) is not bytes
        or type(payload) is not bytes
    ):
        raise MalformedError(f"{w}: header, signature and payload must be bin")
    trace = str_array(item[3], f"{w}: trace")
    certificates: tuple[bytes, ...] | None = None
    if len(item) == 5:
        raw = item[4]
        if type(raw) is not list or any(type(c) is not bytes for c in raw):
            raise MalformedError(f"{w}: certificates: expected an array of bin")
        certificates = tuple(raw)
    return BatchItem(header_bytes, signature, payload, trace, certificates)


def batch_ids(b: Batch) -> tuple[bytes, ...]:
    """Peek every item's id; MalformedError if one has none or two share one (DESIGN §5)."""
    return tuple(p.id for p in peek_headers(b))


def peek_headers(b: Batch) -> tuple[PeekedHeader, ...]:
    """batch_ids, keeping each header's unpacked map, so that it is judged
    (open_envelope) without being unpacked again."""
    seen: dict[bytes, int] = {}
    peeked: list[PeekedHeader] = []
    for i, item in enumerate(b.items):
        try:
            head = peek_header(item.header_bytes)
        except MalformedError as e:
            raise MalformedError(f"batch body: items[{i}]: {e.detail}") from None
        if head.id in seen:
            raise MalformedError(
                f"batch body: items[{i}]: id {head.id.hex()} repeats items[{seen[head.id]}]"
            )
        seen[head.id] = i
        peeked.append(head)
    return tuple(peeked)


def check_trace(
    trace: Sequence[str],
    origin: str,
    sender_node: str,
    max_hops: int,
    *,
    here: str | None = None,
) -> None:
    """Check an arriving trace (DESIGN §4): ItemRejected "malformed", "loop" or "hops".

    `here`, if given, is the receiving node: finding it in the trace is a loop.
    """
    if not trace:
        raise ItemRejected("malformed", "trace is empty")
    for name in trace:
        if not valid_node_name(name):
            raise ItemRejected("malformed", f"trace: {show(name)} is not a valid node name")
    if trace[0] != origin:
        raise ItemRejected("malformed", f"trace starts at {trace[0]!r}, not origin {origin!r}")
    if trace[-1] != sender_node:
        raise ItemRejected("malformed", f"trace ends at {trace[-1]!r}, not sender {sender_node!r}")
    if len(set(trace)) != len(trace):
        raise ItemRejected("loop", "trace names a node twice")
    if here is not None and here in trace:
        raise ItemRejected("loop", f"trace already passed through {here!r}")
    if len(trace) > max_hops:
        raise ItemRejected("hops", f"trace has {len(trace)} nodes, max_hops is {max_hops}")


# --- signed batch result --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver's signed word that it stored these envelopes for local mailboxes
    (delivery-v1): what a `delivered` receipt says, for direct sends."""

    at: int  # unix ms of the commit that stored them (or found them stored)
    jurisdiction: str  # the receiver's own
    mode: str  # its policy mode: enforce | audit
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The receiver's answer: per envelope id, accepted | duplicate | rejected:<code>."""

    batch_id: bytes
    nonce: str
    results: dict[bytes, str]
    delivered: Delivered | None = None  # only when the request carried DELIVERY_HEADER


_RESULT_KEYS = frozenset({"batch", "nonce", "results"})
_DELIVERY_KEY = frozenset({"delivered"})
_DELIVERED_KEYS = frozenset({"at", "jurisdiction", "mode", "ids"})
_RESULT_VALUES = frozenset({"accepted", "duplicate"} | {f"rejected:{c}" for c in ITEM_CODES})
_STORED = frozenset({"accepted", "duplicate"})


def wants_delivery(values: Sequence[str]) -> bool:
    """Whether a request's DELIVERY_HEADER values (each a comma-separated list of
    extension versions; unknown ones ignored) ask for delivery-v1."""
    return any(t.strip() == DELIVERY_V1 for v in values for t in v.split(","))


def encode_result(r: BatchResult) -> bytes:
    """Pack result_bytes, keys in the DESIGN's order (`delivered` last, when present)."""
    m: dict[str, object] = {"batch": r.batch_id, "nonce": r.nonce, "results": r.results}
    if r.delivered is not None:
        d = r.delivered
        m["delivered"] = {
            "at": d.at,
            "jurisdiction": d.jurisdiction,
            "mode": d.mode,
            "ids": list(d.ids),
        }
    return pack(m)


def sign_result(r: BatchResult, key: Ed25519PrivateKey) -> bytes:
    """The response body: pack([result_bytes, signature over RESULT_DOMAIN + result_bytes])."""
    result_bytes = encode_result(r)
    _decode_result(result_bytes, delivery=r.delivered is not None)
    return pack([result_bytes, key.sign(RESULT_DOMAIN + result_bytes)])


def open_result(body: bytes, pub: Ed25519PublicKey, *, delivery: bool = False) -> BatchResult:
    """Check a response body against the receiver's key, then decode it strictly.

    `delivery`: the request carried DELIVERY_HEADER, so a `delivered` key is allowed.
    MalformedError for framing, BadSignature for a signature that does not verify.
    """
    result_bytes, signature = signed_pair(body, "batch result")
    verify_result(result_bytes, signature, pub)
    return _decode_result(result_bytes, delivery=delivery)


def signed_parts(body: bytes) -> tuple[bytes, bytes]:
    """(result_bytes, signature) of a response body; MalformedError for framing."""
    return signed_pair(body, "batch result")


def verify_result(result_bytes: bytes, signature: bytes, pub: Ed25519PublicKey) -> None:
    """BadSignature unless `signature` is the receiver's over RESULT_DOMAIN + result_bytes."""
    try:
        pub.verify(signature, RESULT_DOMAIN + result_bytes)
    except InvalidSignature:
        raise BadSignature(
            "batch result: signature does not verify with the receiver's key"
        ) from None


def decode_result(result_bytes: bytes) -> BatchResult:
    """Strictly decode result_bytes kept as proof (with or without `delivered`); MalformedError."""
    return _decode_result(result_bytes, delivery=True)


def _decode_result(result_bytes: bytes, *, delivery: bool) -> BatchResult:
    w = "batch result"
    m = fields(
        strict_unpack(result_bytes, w), w, _RESULT_KEYS, _DELIVERY_KEY if delivery else frozenset()
    )
    batch_id = bin_field(m, "batch", w, ID_SIZE)
    nonce = str_field(m, "nonce", w)
    if not nonce:
        raise MalformedError("batch result: nonce: empty")
    raw = m["results"]
    if type(raw) is not dict:
        raise MalformedError(f"batch result: results: expected a map, got {value_kind(raw)}")
    for env_id, outcome in raw.items():
        if type(env_id) is not bytes or len(env_id) != ID_SIZE:
            raise MalformedError("batch result: results: a key is not a 16-byte bin id")
        if type(outcome) is not str or outcome not in _RESULT_VALUES:
            raise MalformedError(f"batch result: results: {show(outcome)} is not a known outcome")
    delivered = _delivered(m["delivered"], raw) if "delivered" in m else None
    return BatchResult(batch_id, nonce, raw, delivered)


def _delivered(value: object, results: dict[bytes, str]) -> Delivered:
    w = "batch result: delivered"
    m = fields(value, w, _DELIVERED_KEYS)
    at = int_field(m, "at", w)
    jurisdiction = str_field(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(f"{w}: jurisdiction: {show(jurisdiction)} is not a country code")
    mode = str_field(m, "mode", w)
    if mode not in DELIVERY_MODES:
        raise MalformedError(f"{w}: mode: {show(mode)} is not enforce or audit")
    raw = m["ids"]
    if type(raw) is not list:
        raise MalformedError(f"{w}: ids: expected an array, got {value_kind(raw)}")
    for env_id in raw:
        if type(env_id) is not bytes or len(env_id) != ID_SIZE:
            raise MalformedError(f"{w}: ids: an id is not a 16-byte bin")
        if results.get(env_id) not in _STORED:
            raise MalformedError(
                f"{w}: ids: {env_id.hex()} is not accepted or duplicate in results"
            )
    ids = tuple(raw)
    if len(set(ids)) != len(ids):
        raise MalformedError(f"{w}: ids: an id is listed twice")
    return Delivered(at, jurisdiction, mode, ids)
