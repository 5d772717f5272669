"""Envelopes, receipts, batch bodies, batch results and certificates (DESIGN §4, §5, §7).

Pure: bytes in, values out; no aiohttp, asyncio, sqlite, clock or randomness.

Invariants:
- Every decoder of network bytes returns a value or raises a RelayError
  subclass (MalformedError for bytes that are not what the protocol says,
  BadSignature for a signature that does not verify); it gets there by
  checking types and bounds, never by catching everything.
- Strict msgpack everywhere: one object, no trailing bytes; map keys are str
  (the batch result's `results` map alone is keyed by bin16 ids) and never
  repeated; str is the str family with valid UTF-8, bin the bin family; ints
  in 0..2^63-1; no float, nil, bool or ext (DESIGN lists no bool anywhere, so
  a bool is refused like the others); containers nest at most MAX_DEPTH deep.
- Signatures cover the exact bytes that travel, behind a domain prefix per
  purpose (envelope, result, certificate), never a re-encoding. Encoders write
  map keys in the DESIGN's order, which reproduces the golden vectors; decoders
  accept any key order.
- Functions that sign (seal, sign_result, sign_certificate) and make_header,
  encode_receipt first run their output through the matching decoder, so this
  node never signs or sends what a peer would have to refuse.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import ITEM_CODES, BadSignature, ItemRejected, MalformedError
from relay.protocol.keystr import parse_public_key

ENVELOPE_DOMAIN = b"relay-envelope-v1\x00"
RESULT_DOMAIN = b"relay-result-v1\x00"
CERT_DOMAIN = b"relay-cert-v1\x00"
RECEIPT_CTYPE = "application/vnd.relay.receipt+msgpack"
MAX_INT = 2**63 - 1
MAX_RECIPIENTS = 100
MAX_HOPS = 16
MAX_LIFETIME_MS = 30 * 24 * 3600 * 1000
MAX_RECEIPT_ENTRIES = 1000
MAX_DEPTH = 32
ID_SIZE = 16
SIGNATURE_SIZE = 64

KINDS = frozenset({"message", "receipt"})
RECEIPT_STATUSES = frozenset({"delivered", "rejected", "expired"})
MODES = frozenset({"enforce", "audit"})

# --- strict msgpack ---------------------------------------------------------


class _RepeatedKey(Exception):
    """Raised from inside the unpacker; turned into MalformedError by strict_unpack."""

    def __init__(self, key: str | bytes) -> None:
        super().__init__(key)
        self.key = key


class _Refused(Exception):
    """A value the strict subset refuses; `path` is filled in on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _pairs_to_dict(pairs: list[tuple[str | bytes, object]]) -> dict[str | bytes, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str | bytes] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return d


def _kind(value: object) -> str:
    """The msgpack-level name of a decoded value, for error sentences."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    names = {str: "str", bytes: "bin", int: "int", float: "float", list: "array", dict: "map"}
    return names.get(type(value), "ext")


def _walk(value: object, depth: int) -> None:
    if type(value) is str or type(value) is bytes:
        return
    if type(value) is int:
        if value < 0 or value > MAX_INT:
            raise _Refused(f"int {value} is outside 0..2^63-1")
        return
    if type(value) is list:
        if depth >= MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH}")
        for i, item in enumerate(value):
            try:
                _walk(item, depth + 1)
            except _Refused as e:
                e.path.append(f"[{i}]")
                raise
        return
    if type(value) is dict:
        if depth >= MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH}")
        for key, item in value.items():
            try:
                _walk(item, depth + 1)
            except _Refused as e:
                e.path.append(f".{key[:64]}" if type(key) is str else f"[{_show(key)}]")
                raise
        return
    raise _Refused(f"{_kind(value)} is not allowed")


def strict_unpack(data: bytes, what: str) -> object:
    """Decode exactly one msgpack object of the strict subset, or raise MalformedError.

    Maps come back as dicts keyed by str or bytes, arrays as lists, str as str,
    bin as bytes, ints as int. `what` starts every error sentence.
    """
    try:
        value: object = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_pairs_to_dict,
        )
    except msgpack.ExtraData:
        raise MalformedError(f"{what}: trailing bytes after the msgpack object") from None
    except msgpack.StackError:
        raise MalformedError(f"{what}: containers nested too deep") from None
    except msgpack.FormatError:
        raise MalformedError(f"{what}: reserved msgpack type byte") from None
    except UnicodeDecodeError:
        raise MalformedError(f"{what}: a str is not valid UTF-8") from None
    except _RepeatedKey as e:
        raise MalformedError(f"{what}: map key {_show(e.key)} is repeated") from None
    except ValueError as e:
        reason = str(e)
        if "incomplete input" in reason:
            reason = "truncated: the data ends inside an object"
        elif "exceeds max_" in reason:
            reason = "a declared length runs past the end of the data"
        elif "not allowed for map key" in reason:
            reason = "a map key is not a str"
        raise MalformedError(f"{what}: not strict msgpack: {reason}") from None
    try:
        _walk(value, 0)
    except _Refused as e:
        where = "".join(reversed(e.path)) or "top level"
        raise MalformedError(f"{what}: {e.reason} (at {where})") from None
    return value


def pack(obj: object) -> bytes:
    """Encode with the str/bin distinction kept (msgpack spec 2.0).

    An int outside msgpack's range is a MalformedError, like any other value
    the decoders would refuse (e.g. a client's absurd ttl).
    """
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except OverflowError:
        raise MalformedError("an integer is outside the range msgpack can carry") from None
    return data


# --- field access -----------------------------------------------------------


def _show(value: object, limit: int = 64) -> str:
    """repr() cut short, so hostile input cannot blow up an error detail."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fields(value: object, what: str, keys: frozenset[str]) -> dict[str, object]:
    if type(value) is not dict:
        raise MalformedError(f"{what}: expected a map, got {_kind(value)}")
    if value.keys() != keys:
        unknown = [_show(k) for k in value if k not in keys]
        if unknown:
            raise MalformedError(f"{what}: unknown key {', '.join(sorted(unknown))}")
        missing = sorted(k for k in keys if k not in value)
        raise MalformedError(f"{what}: missing key {', '.join(missing)}")
    return value


def _str(m: dict[str, object], key: str, what: str) -> str:
    value = m[key]
    if type(value) is not str:
        raise MalformedError(f"{what}: {key}: expected str, got {_kind(value)}")
    return value


def _bin(m: dict[str, object], key: str, what: str, size: int) -> bytes:
    value = m[key]
    if type(value) is not bytes:
        raise MalformedError(f"{what}: {key}: expected bin, got {_kind(value)}")
    if len(value) != size:
        raise MalformedError(f"{what}: {key}: expected {size} bytes, got {len(value)}")
    return value


def _int(m: dict[str, object], key: str, what: str) -> int:
    value = m[key]
    if type(value) is not int:
        raise MalformedError(f"{what}: {key}: expected int, got {_kind(value)}")
    return value


def _str_array(value: object, what: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise MalformedError(f"{what}: expected an array, got {_kind(value)}")
    for item in value:
        if type(item) is not str:
            raise MalformedError(f"{what}: expected an array of str, found {_kind(item)}")
    return tuple(value)


# --- names --------------------------------------------------------------------

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAILBOX_RE = re.compile(r"[a-z0-9_+-][a-z0-9._+-]{0,63}")
_JURISDICTION_RE = re.compile(r"[A-Z]{2}")


def valid_node_name(s: str) -> bool:
    """Lowercase ASCII DNS-style name: 1..253 chars, labels of [a-z0-9-], each
    1..63 chars, not starting or ending with '-'."""
    if not 1 <= len(s) <= 253:
        return False
    return all(_LABEL_RE.fullmatch(label) for label in s.split("."))


def valid_mailbox(s: str) -> bool:
    """Mailbox (local part): 1..64 chars of [a-z0-9._+-], not starting with '.'."""
    return _MAILBOX_RE.fullmatch(s) is not None


def valid_jurisdiction(s: str) -> bool:
    """Two uppercase ASCII letters (ISO 3166-1 alpha-2 shape; the list is not checked)."""
    return _JURISDICTION_RE.fullmatch(s) is not None


def split_address(addr: str) -> tuple[str, str]:
    """Split `mailbox@node` into its parts; MalformedError if either is invalid."""
    mailbox, at, node = addr.partition("@")
    if not at:
        raise MalformedError(f"address {_show(addr)} has no '@'")
    if not valid_mailbox(mailbox):
        raise MalformedError(f"address {_show(addr)}: invalid mailbox {_show(mailbox)}")
    if not valid_node_name(node):
        raise MalformedError(f"address {_show(addr)}: invalid node name {_show(node)}")
    return mailbox, node


# --- header ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded envelope header (DESIGN §4). `sender` is the wire key `from`."""

    id: bytes
    kind: str
    origin: str
    key: str
    sender: str
    to: tuple[str, ...]
    dest: str
    created: int
    expires: int
    residency: tuple[str, ...]
    ctype: str
    size: int
    sha256: bytes
    max_hops: int = 8
    v: int = 1


_HEADER_KEYS = frozenset(
    {"v", "id", "kind", "origin", "key", "from", "to", "dest", "created", "expires"}
    | {"residency", "ctype", "size", "sha256", "max_hops"}
)


def encode_header(h: Header) -> bytes:
    """Pack a header, keys in the DESIGN's order. No checks: see make_header/seal."""
    return pack(
        {
            "v": h.v,
            "id": h.id,
            "kind": h.kind,
            "origin": h.origin,
            "key": h.key,
            "from": h.sender,
            "to": list(h.to),
            "dest": h.dest,
            "created": h.created,
            "expires": h.expires,
            "residency": list(h.residency),
            "ctype": h.ctype,
            "size": h.size,
            "sha256": h.sha256,
            "max_hops": h.max_hops,
        }
    )


def decode_header(data: bytes) -> Header:
    """Strictly decode and check header bytes (every check of DESIGN §4's table).

    Receipts are held to their shape as well: from postmaster@origin, to
    exactly [postmaster@dest], ctype RECEIPT_CTYPE.
    """
    w = "header"
    m = _fields(strict_unpack(data, w), w, _HEADER_KEYS)
    v = _int(m, "v", w)
    if v != 1:
        raise MalformedError(f"header: v: version {v} is not supported (expected 1)")
    h = Header(
        v=v,
        id=_bin(m, "id", w, ID_SIZE),
        kind=_str(m, "kind", w),
        origin=_str(m, "origin", w),
        key=_str(m, "key", w),
        sender=_str(m, "from", w),
        to=_str_array(m["to"], "header: to"),
        dest=_str(m, "dest", w),
        created=_int(m, "created", w),
        expires=_int(m, "expires", w),
        residency=_str_array(m["residency"], "header: residency"),
        ctype=_str(m, "ctype", w),
        size=_int(m, "size", w),
        sha256=_bin(m, "sha256", w, 32),
        max_hops=_int(m, "max_hops", w),
    )
    _check_header(h)
    return h


def _check_header(h: Header) -> None:
    if h.kind not in KINDS:
        raise MalformedError(f"header: kind: {_show(h.kind)} is not message or receipt")
    if not valid_node_name(h.origin):
        raise MalformedError(f"header: origin: {_show(h.origin)} is not a valid node name")
    if not valid_node_name(h.dest):
        raise MalformedError(f"header: dest: {_show(h.dest)} is not a valid node name")
    if not h.key:
        raise MalformedError("header: key: the key id is empty")
    if _address_node(h.sender, "from") != h.origin:
        raise MalformedError(f"header: from: {_show(h.sender)} is not at origin {h.origin!r}")
    if not 1 <= len(h.to) <= MAX_RECIPIENTS:
        raise MalformedError(f"header: to: {len(h.to)} recipients, expected 1..{MAX_RECIPIENTS}")
    for rcpt in h.to:
        if _address_node(rcpt, "to") != h.dest:
            raise MalformedError(f"header: to: {_show(rcpt)} is not at dest {h.dest!r}")
    if len(set(h.to)) != len(h.to):
        raise MalformedError("header: to: a recipient is listed twice")
    if not h.created < h.expires <= h.created + MAX_LIFETIME_MS:
        raise MalformedError(
            f"header: expires: must be after created and at most 30 days later "
            f"(created {h.created}, expires {h.expires})"
        )
    _check_residency(h.residency)
    if not h.ctype:
        raise MalformedError("header: ctype: the content type is empty")
    if not 1 <= h.max_hops <= MAX_HOPS:
        raise MalformedError(f"header: max_hops: {h.max_hops} is outside 1..{MAX_HOPS}")
    if h.kind == "receipt":
        if h.sender != f"postmaster@{h.origin}":
            raise MalformedError(f"header: from: a receipt comes from postmaster@{h.origin}")
        if h.to != (f"postmaster@{h.dest}",):
            raise MalformedError(f"header: to: a receipt goes to postmaster@{h.dest} only")
        if h.ctype != RECEIPT_CTYPE:
            raise MalformedError(f"header: ctype: a receipt's content type is {RECEIPT_CTYPE}")


def _address_node(addr: str, field: str) -> str:
    try:
        return split_address(addr)[1]
    except MalformedError as e:
        raise MalformedError(f"header: {field}: {e.detail}") from None


def _check_residency(codes: tuple[str, ...]) -> None:
    if not codes:
        raise MalformedError("header: residency: the set is empty")
    for code in codes:
        if not valid_jurisdiction(code):
            raise MalformedError(
                f"header: residency: {_show(code)} is not two uppercase ASCII letters"
            )
    if any(a >= b for a, b in pairwise(codes)):
        raise MalformedError("header: residency: codes are not strictly ascending")


def make_header(
    *,
    id: bytes,
    kind: str,
    origin: str,
    key_id: str,
    sender: str,
    to: Sequence[str],
    dest: str,
    created: int,
    expires: int,
    residency: Sequence[str],
    ctype: str,
    payload: bytes,
    max_hops: int = 8,
) -> Header:
    """Build a checked header for `payload`: size and sha256 computed, residency
    sorted and deduplicated. MalformedError if decode_header would refuse it."""
    h = Header(
        id=id,
        kind=kind,
        origin=origin,
        key=key_id,
        sender=sender,
        to=tuple(to),
        dest=dest,
        created=created,
        expires=expires,
        residency=tuple(sorted(set(residency))),
        ctype=ctype,
        size=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        max_hops=max_hops,
    )
    return decode_header(encode_header(h))


def peek_id(header_bytes: bytes) -> bytes:
    """Return the 16-byte `id` of header bytes that strictly decode to a map.

    MalformedError otherwise: such an item cannot be answered by id, so the
    whole batch fails (DESIGN §5).
    """
    value = strict_unpack(header_bytes, "header")
    if type(value) is not dict:
        raise MalformedError(f"header: expected a map, got {_kind(value)}")
    env_id = value.get("id")
    if type(env_id) is not bytes or len(env_id) != ID_SIZE:
        raise MalformedError("header: no 16-byte bin id")
    return env_id


# --- envelope -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """The three byte strings that travel, and the header decoded from the first."""

    header_bytes: bytes
    signature: bytes
    payload: bytes
    header: Header


def seal(header: Header, payload: bytes, key: Ed25519PrivateKey) -> Envelope:
    """Encode the header and sign ENVELOPE_DOMAIN + header_bytes with the origin key.

    MalformedError if the header is invalid or does not describe `payload`.
    """
    header_bytes = encode_header(header)
    checked = decode_header(header_bytes)
    env = Envelope(header_bytes, key.sign(ENVELOPE_DOMAIN + header_bytes), payload, checked)
    try:
        check_payload(env)
    except ItemRejected as e:
        raise MalformedError(f"seal: {e.detail}") from None
    return env


def open_envelope(header_bytes: bytes, signature: bytes, payload: bytes) -> Envelope:
    """Decode the header strictly and check the signature's length (not its validity)."""
    header = decode_header(header_bytes)
    if len(signature) != SIGNATURE_SIZE:
        raise MalformedError(f"signature: expected 64 bytes, got {len(signature)}")
    return Envelope(header_bytes, signature, payload, header)


def verify_envelope(env: Envelope, pub: Ed25519PublicKey) -> None:
    """Verify the origin's signature over the exact header bytes; ItemRejected("signature")."""
    try:
        pub.verify(env.signature, ENVELOPE_DOMAIN + env.header_bytes)
    except InvalidSignature:
        raise ItemRejected(
            "signature", f"envelope {env.header.id.hex()}: signature does not verify"
        ) from None


def check_payload(env: Envelope) -> None:
    """ItemRejected("size") or ("digest") unless the payload matches the header."""
    h = env.header
    if len(env.payload) != h.size:
        raise ItemRejected(
            "size",
            f"envelope {h.id.hex()}: payload is {len(env.payload)} bytes, header says {h.size}",
        )
    if hashlib.sha256(env.payload).digest() != h.sha256:
        raise ItemRejected("digest", f"envelope {h.id.hex()}: payload sha256 does not match header")


def header_digest(header_bytes: bytes) -> bytes:
    """sha256 of the exact header bytes (with (origin, id), the dedupe key)."""
    return hashlib.sha256(header_bytes).digest()


# --- receipt payload ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt payload: one status for 1..1000 (envelope id, recipients) entries."""

    status: str
    reason: str
    at: int
    jurisdiction: str
    mode: str
    entries: tuple[tuple[bytes, tuple[str, ...]], ...]


_RECEIPT_KEYS = frozenset({"status", "reason", "at", "jurisdiction", "mode", "envelopes"})


def encode_receipt(r: Receipt) -> bytes:
    """Pack a receipt payload in the DESIGN's key order; MalformedError if invalid."""
    data = pack(
        {
            "status": r.status,
            "reason": r.reason,
            "at": r.at,
            "jurisdiction": r.jurisdiction,
            "mode": r.mode,
            "envelopes": [[env_id, list(rcpts)] for env_id, rcpts in r.entries],
        }
    )
    decode_receipt(data)
    return data


def decode_receipt(data: bytes) -> Receipt:
    """Strictly decode and check a receipt payload; MalformedError."""
    w = "receipt"
    m = _fields(strict_unpack(data, w), w, _RECEIPT_KEYS)
    status = _str(m, "status", w)
    if status not in RECEIPT_STATUSES:
        raise MalformedError(f"receipt: status: {_show(status)} is not delivered|rejected|expired")
    reason = _str(m, "reason", w)
    if status == "delivered" and reason:
        raise MalformedError("receipt: reason: must be empty when delivered")
    jurisdiction = _str(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(f"receipt: jurisdiction: {_show(jurisdiction)} is not a country code")
    mode = _str(m, "mode", w)
    if mode not in MODES:
        raise MalformedError(f"receipt: mode: {_show(mode)} is not enforce or audit")
    raw = m["envelopes"]
    if type(raw) is not list or not 1 <= len(raw) <= MAX_RECEIPT_ENTRIES:
        raise MalformedError(f"receipt: envelopes: expected an array of 1..{MAX_RECEIPT_ENTRIES}")
    entries = tuple(_receipt_entry(entry, i) for i, entry in enumerate(raw))
    if len({env_id for env_id, _ in entries}) != len(entries):
        raise MalformedError("receipt: envelopes: an envelope id is listed twice")
    return Receipt(status, reason, _int(m, "at", w), jurisdiction, mode, entries)


def _receipt_entry(entry: object, i: int) -> tuple[bytes, tuple[str, ...]]:
    w = f"receipt: envelopes[{i}]"
    if type(entry) is not list or len(entry) != 2:
        raise MalformedError(f"{w}: expected [bin16 id, [recipient, ...]]")
    env_id = entry[0]
    if type(env_id) is not bytes or len(env_id) != ID_SIZE:
        raise MalformedError(f"{w}: the id is not a 16-byte bin")
    rcpts = _str_array(entry[1], w)
    if not 1 <= len(rcpts) <= MAX_RECIPIENTS or len(set(rcpts)) != len(rcpts):
        raise MalformedError(f"{w}: expected 1..{MAX_RECIPIENTS} distinct recipients")
    for rcpt in rcpts:
        try:
            split_address(rcpt)
        except MalformedError as e:
            raise MalformedError(f"{w}: {e.detail}") from None
    return env_id, rcpts


# --- batch body -----------------------------------------------------------------


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
    m = _fields(strict_unpack(data, w), w, _BATCH_KEYS)
    batch_id = _bin(m, "batch", w, ID_SIZE)
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
    trace = _str_array(item[3], f"{w}: trace")
    certificates: tuple[bytes, ...] | None = None
    if len(item) == 5:
        raw = item[4]
        if type(raw) is not list or any(type(c) is not bytes for c in raw):
            raise MalformedError(f"{w}: certificates: expected an array of bin")
        certificates = tuple(raw)
    return BatchItem(header_bytes, signature, payload, trace, certificates)


def batch_ids(b: Batch) -> tuple[bytes, ...]:
    """Peek every item's id; MalformedError if one has none or two share one (DESIGN §5)."""
    seen: dict[bytes, int] = {}
    for i, item in enumerate(b.items):
        try:
            env_id = peek_id(item.header_bytes)
        except MalformedError as e:
            raise MalformedError(f"batch body: items[{i}]: {e.detail}") from None
        if env_id in seen:
            raise MalformedError(
                f"batch body: items[{i}]: id {env_id.hex()} repeats items[{seen[env_id]}]"
            )
        seen[env_id] = i
    return tuple(seen)


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
            raise ItemRejected("malformed", f"trace: {_show(name)} is not a valid node name")
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
class BatchResult:
    """The receiver's answer: per envelope id, accepted | duplicate | rejected:<code>."""

    batch_id: bytes
    nonce: str
    results: dict[bytes, str]


_RESULT_KEYS = frozenset({"batch", "nonce", "results"})
_RESULT_VALUES = frozenset({"accepted", "duplicate"} | {f"rejected:{c}" for c in ITEM_CODES})


def encode_result(r: BatchResult) -> bytes:
    """Pack result_bytes, keys in the DESIGN's order."""
    return pack({"batch": r.batch_id, "nonce": r.nonce, "results": r.results})


def sign_result(r: BatchResult, key: Ed25519PrivateKey) -> bytes:
    """The response body: pack([result_bytes, signature over RESULT_DOMAIN + result_bytes])."""
    result_bytes = encode_result(r)
    _decode_result(result_bytes)
    return pack([result_bytes, key.sign(RESULT_DOMAIN + result_bytes)])


def open_result(body: bytes, pub: Ed25519PublicKey) -> BatchResult:
    """Check a response body against the receiver's key, then decode it strictly.

    MalformedError for framing, BadSignature for a signature that does not verify.
    """
    result_bytes, signature = _signed_pair(body, "batch result")
    try:
        pub.verify(signature, RESULT_DOMAIN + result_bytes)
    except InvalidSignature:
        raise BadSignature(
            "batch result: signature does not verify with the receiver's key"
        ) from None
    return _decode_result(result_bytes)


def _decode_result(result_bytes: bytes) -> BatchResult:
    w = "batch result"
    m = _fields(strict_unpack(result_bytes, w), w, _RESULT_KEYS)
    batch_id = _bin(m, "batch", w, ID_SIZE)
    nonce = _str(m, "nonce", w)
    if not nonce:
        raise MalformedError("batch result: nonce: empty")
    raw = m["results"]
    if type(raw) is not dict:
        raise MalformedError(f"batch result: results: expected a map, got {_kind(raw)}")
    for env_id, outcome in raw.items():
        if type(env_id) is not bytes or len(env_id) != ID_SIZE:
            raise MalformedError("batch result: results: a key is not a 16-byte bin id")
        if type(outcome) is not str or outcome not in _RESULT_VALUES:
            raise MalformedError(f"batch result: results: {_show(outcome)} is not a known outcome")
    return BatchResult(batch_id, nonce, raw)


def _signed_pair(blob: bytes, what: str) -> tuple[bytes, bytes]:
    value = strict_unpack(blob, what)
    if type(value) is not list or len(value) != 2:
        raise MalformedError(f"{what}: expected the array [bytes, signature]")
    data, signature = value
    if type(data) is not bytes or type(signature) is not bytes:
        raise MalformedError(f"{what}: both elements must be bin")
    if len(signature) != SIGNATURE_SIZE:
        raise MalformedError(f"{what}: signature: expected 64 bytes, got {len(signature)}")
    return data, signature


# --- certificates ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """An authority's statement of a node's keys, jurisdiction and URL (DESIGN §7)."""

    name: str
    keys: tuple[str, ...]
    jurisdiction: str
    url: str
    not_before: int
    not_after: int
    authority: str
    v: int = 1


_CERT_KEYS = frozenset(
    {"v", "name", "keys", "jurisdiction", "url", "not_before", "not_after", "authority"}
)
_URL_RE = re.compile(r"https?://[\x21-\x7e]+")


def encode_certificate(c: Certificate) -> bytes:
    """Pack cert_bytes, keys in the DESIGN's order."""
    return pack(
        {
            "v": c.v,
            "name": c.name,
            "keys": list(c.keys),
            "jurisdiction": c.jurisdiction,
            "url": c.url,
            "not_before": c.not_before,
            "not_after": c.not_after,
            "authority": c.authority,
        }
    )


def sign_certificate(c: Certificate, key: Ed25519PrivateKey) -> bytes:
    """The certificate blob: pack([cert_bytes, signature over CERT_DOMAIN + cert_bytes])."""
    cert_bytes = encode_certificate(c)
    _decode_certificate(cert_bytes)
    return pack([cert_bytes, key.sign(CERT_DOMAIN + cert_bytes)])


def open_certificate(blob: bytes) -> tuple[Certificate, bytes, bytes]:
    """Strictly decode a certificate blob to (cert, cert_bytes, signature); no verification."""
    cert_bytes, signature = _signed_pair(blob, "certificate")
    return _decode_certificate(cert_bytes), cert_bytes, signature


def verify_certificate(blob: bytes, authority_pub: Ed25519PublicKey) -> Certificate:
    """Decode a certificate and verify the authority's signature; BadSignature on mismatch.

    Validity window, revocation and whether the authority is trusted for the
    jurisdiction are the caller's to judge.
    """
    cert, cert_bytes, signature = open_certificate(blob)
    try:
        authority_pub.verify(signature, CERT_DOMAIN + cert_bytes)
    except InvalidSignature:
        raise BadSignature(
            f"certificate for {cert.name!r}: signature does not verify with the authority key"
        ) from None
    return cert


def _decode_certificate(cert_bytes: bytes) -> Certificate:
    w = "certificate"
    m = _fields(strict_unpack(cert_bytes, w), w, _CERT_KEYS)
    v = _int(m, "v", w)
    if v != 1:
        raise MalformedError(f"certificate: v: version {v} is not supported (expected 1)")
    name = _str(m, "name", w)
    if not valid_node_name(name):
        raise MalformedError(f"certificate: name: {_show(name)} is not a valid node name")
    keys = _str_array(m["keys"], "certificate: keys")
    if not keys or len(set(keys)) != len(keys):
        raise MalformedError("certificate: keys: expected one or more distinct key strings")
    for i, key in enumerate(keys):
        try:
            parse_public_key(key)
        except MalformedError as e:
            raise MalformedError(f"certificate: keys[{i}]: {e.detail}") from None
    jurisdiction = _str(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(
            f"certificate: jurisdiction: {_show(jurisdiction)} is not a country code"
        )
    url = _str(m, "url", w)
    if not _URL_RE.fullmatch(url):
        raise MalformedError(f"certificate: url: {_show(url)} is not an http(s) URL")
    not_before = _int(m, "not_before", w)
    not_after = _int(m, "not_after", w)
    if not_before >= not_after:
        raise MalformedError("certificate: not_after must be later than not_before")
    authority = _str(m, "authority", w)
    if not authority:
        raise MalformedError("certificate: authority: empty")
    return Certificate(name, keys, jurisdiction, url, not_before, not_after, authority, v)
