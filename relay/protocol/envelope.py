"""Envelope headers and envelopes: encode, decode, seal, verify (DESIGN §4).

Pure: bytes in, values out; no aiohttp, asyncio, sqlite, clock or randomness.
The strict msgpack subset lives in relay.protocol.strict, names and addresses
in relay.protocol.names; receipts, batches and certificates have their own
modules.

Invariants:
- Every decoder of network bytes returns a value or raises a RelayError
  subclass (MalformedError for bytes that are not what the protocol says,
  ItemRejected("signature") for a signature that does not verify); it gets
  there by checking types and bounds, never by catching everything.
- Signatures cover the exact bytes that travel, behind ENVELOPE_DOMAIN, never
  a re-encoding. encode_header writes map keys in the DESIGN's order, which
  reproduces the golden vectors; decode_header accepts any key order.
- seal and make_header hold a Header to every check decode_header makes
  (check_header: the wire types and ranges the strict decoder enforces, then
  the same field checks), so this node never signs or sends what a peer would
  have to refuse. They check the values, not an encode-and-decode round trip
  of them: the same verdict for a third of the CPU.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ParamSpec

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import ItemRejected, MalformedError
from relay.protocol import ed25519
from relay.protocol.names import split_address, valid_jurisdiction, valid_node_name
from relay.protocol.sealing import SealInfo, check_seal, decode_seal_map, seal_map
from relay.protocol.strict import (
    MAX_INT,
    SIGNATURE_SIZE,
    bin_field,
    fields,
    int_field,
    pack,
    show,
    str_array,
    str_field,
    strict_unpack,
    value_kind,
    wrong_type,
)

ENVELOPE_DOMAIN = b"relay-envelope-v1\x00"
RECEIPT_CTYPE = "application/vnd.relay.receipt+msgpack"
MAX_RECIPIENTS = 100
MAX_HOPS = 16
MAX_LIFETIME_MS = 30 * 24 * 3600 * 1000
ID_SIZE = 16
P = ParamSpec("P")

# The kinds a node's postmaster writes, each with the one content type it carries:
# receipts (relay.protocol.receipt), erasure requests and their answers
# (relay.protocol.erasure).
POSTMASTER_KINDS = {
    "receipt": RECEIPT_CTYPE,
    "erasure": "application/vnd.relay.erasure+msgpack",
    "erasure-receipt": "application/vnd.relay.erasure-receipt+msgpack",
}
KINDS = frozenset({"message", *POSTMASTER_KINDS})

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
    seal: SealInfo | None = None  # the sealed-payload extension (protocol §21)


_HEADER_KEYS = frozenset(
    {"v", "id", "kind", "origin", "key", "from", "to", "dest", "created", "expires"}
    | {"residency", "ctype", "size", "sha256", "max_hops"}
)
_OPTIONAL_HEADER_KEYS = frozenset({"seal"})


def encode_header(h: Header) -> bytes:
    """Pack a header, keys in the DESIGN's order (then `seal`, if any). No checks."""
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
        | ({} if h.seal is None else {"seal": seal_map(h.seal)})
    )


@dataclass(frozen=True, slots=True)
class PeekedHeader:
    """Header bytes that strictly unpacked to a map with a 16-byte `id` (peek_header).

    `value` is that map, kept so that decode_header checks it without
    unpacking the same bytes a second time; nothing else is checked yet.
    """

    data: bytes
    id: bytes
    value: dict[str, object]


def decode_header(data: bytes | PeekedHeader) -> Header:
    """Strictly decode and check header bytes (every check of DESIGN §4's table).

    Receipts are held to their shape as well: from postmaster@origin, to
    exactly [postmaster@dest], ctype RECEIPT_CTYPE. Given a PeekedHeader, its
    already unpacked map is checked (the same checks, one unpack fewer).
    """
    w = "header"
    raw = data.value if isinstance(data, PeekedHeader) else strict_unpack(data, w)
    m = fields(raw, w, _HEADER_KEYS, _OPTIONAL_HEADER_KEYS)
    v = int_field(m, "v", w)
    if v != 1:
        raise MalformedError(f"header: v: version {v} is not supported (expected 1)")
    h = Header(
        v=v,
        id=bin_field(m, "id", w, ID_SIZE),
        kind=str_field(m, "kind", w),
        origin=str_field(m, "origin", w),
        key=str_field(m, "key", w),
        sender=str_field(m, "from", w),
        to=str_array(m["to"], "header: to"),
        dest=str_field(m, "dest", w),
        created=int_field(m, "created", w),
        expires=int_field(m, "expires", w),
        residency=str_array(m["residency"], "header: residency"),
        ctype=str_field(m, "ctype", w),
        size=int_field(m, "size", w),
        sha256=bin_field(m, "sha256", w, 32),
        max_hops=int_field(m, "max_hops", w),
        seal=decode_seal_map(m["seal"]) if "seal" in m else None,
    )
    _check_header(h)
    return h


def stored_header(data: bytes) -> Header:
    """A header this node decoded with `decode_header` before storing it, read back.

    Only for bytes from this node's own store, where every stored header was
    strictly decoded and checked on arrival: one plain msgpack unpack (~3 µs
    against ~20 µs for the strict decoder and its checks). An inbox page needs
    fewer fields and reads `stored_fields`. MalformedError if the bytes are not
    a header at all (a damaged database).
    """
    m = stored_fields(data)
    try:
        return Header(
            v=m["v"],
            id=m["id"],
            kind=m["kind"],
            origin=m["origin"],
            key=m["key"],
            sender=m["from"],
            to=tuple(m["to"]),
            dest=m["dest"],
            created=m["created"],
            expires=m["expires"],
            residency=tuple(m["residency"]),
            ctype=m["ctype"],
            size=m["size"],
            sha256=m["sha256"],
            max_hops=m["max_hops"],
            seal=SealInfo(**m["seal"]) if "seal" in m else None,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise MalformedError(f"stored header: not a header ({type(e).__name__}: {e})") from None


def stored_fields(data: bytes) -> dict[str, Any]:
    """The wire map of a header this node stored (see stored_header), with no Header
    built: for reads that show a few of its fields (an inbox page, ~2 µs against ~5).
    Keys are the wire keys (`from`, not `sender`). MalformedError if the bytes are
    not a header's map (a damaged database)."""
    try:
        m = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise MalformedError(f"stored header: not a header ({type(e).__name__}: {e})") from None
    if type(m) is not dict:
        raise MalformedError(f"stored header: not a header (a msgpack {value_kind(m)})")
    if not m.keys() >= _HEADER_KEYS:
        missing = ", ".join(sorted(_HEADER_KEYS - m.keys()))
        raise MalformedError(f"stored header: not a header (missing {missing})")
    return m


_STR_FIELDS = (("kind", "kind"), ("origin", "origin"), ("key", "key"), ("sender", "from"))
_INT_FIELDS = ("v", "created", "expires", "size", "max_hops")


def check_header(h: Header) -> Header:
    """Return `h` if it is what decode_header(encode_header(h)) returns; else MalformedError.

    The strict decoder's own checks, on values: each field of its wire type
    (str, bin of its size, int in 0..2^63-1, arrays of str), version 1; then
    the field checks decode_header makes. Sealing runs this rather than a
    round trip through the encoder and the strict decoder.
    """
    for attr, key in (*_STR_FIELDS, ("dest", "dest"), ("ctype", "ctype")):
        value = getattr(h, attr)
        if type(value) is not str:
            raise wrong_type("header", key, "str", value)
    for key in _INT_FIELDS:
        value = getattr(h, key)
        if type(value) is not int:
            raise wrong_type("header", key, "int", value)
        if not 0 <= value <= MAX_INT:
            raise MalformedError(f"header: {key}: int {value} is outside 0..2^63-1")
    for key, size in (("id", ID_SIZE), ("sha256", 32)):
        value = getattr(h, key)
        if type(value) is not bytes:
            raise wrong_type("header", key, "bin", value)
        if len(value) != size:
            raise MalformedError(f"header: {key}: expected {size} bytes, got {len(value)}")
    for key in ("to", "residency"):
        value = getattr(h, key)
        if type(value) is not tuple or any(type(item) is not str for item in value):
            raise MalformedError(f"header: {key}: expected an array of str")
    if h.v != 1:
        raise MalformedError(f"header: v: version {h.v} is not supported (expected 1)")
    if h.seal is not None:  # the same checks decode_header makes of the seal map
        check_seal(h.seal)
    _check_header(h)
    return h


# The field sets _check_header found valid: (kind, origin, dest, key, from, to,
# residency, ctype) is the same for every message of a batch from one mailbox to
# one destination, so each set is checked once, not per header. Only exact str
# and tuple-of-str values get here (decode_header's and check_header's type
# checks run first), so a set that compares equal is the same set of strings.
# Only sets with few recipients are remembered, and few of them: the memo is
# filled from any header decode_header sees, a peer's included.
_PARTIES_OK: set[tuple[object, ...]] = set()
_MAX_PARTIES = 256
_MAX_REMEMBERED_TO = 8


def _check_header(h: Header) -> None:
    parties = (h.kind, h.origin, h.dest, h.key, h.sender, h.to, h.residency, h.ctype)
    if parties in _PARTIES_OK:
        _check_expires(h)
        _check_max_hops(h)
        _check_unsealed(h)
        return
    # every check, in the order that picks which fault a bad header is named for
    _check_names(h)
    _check_expires(h)
    _check_residency(h.residency)
    if not h.ctype:
        raise MalformedError("header: ctype: the content type is empty")
    _check_max_hops(h)
    _check_postmaster(h)
    _check_unsealed(h)
    if len(h.to) <= _MAX_REMEMBERED_TO:
        if len(_PARTIES_OK) >= _MAX_PARTIES:
            _PARTIES_OK.clear()
        _PARTIES_OK.add(parties)


def _check_names(h: Header) -> None:
    if h.kind not in KINDS:
        kinds = ", ".join(sorted(KINDS))
        raise MalformedError(f"header: kind: {show(h.kind)} is not one of {kinds}")
    if not valid_node_name(h.origin):
        raise MalformedError(f"header: origin: {show(h.origin)} is not a valid node name")
    if not valid_node_name(h.dest):
        raise MalformedError(f"header: dest: {show(h.dest)} is not a valid node name")
    if not h.key:
        raise MalformedError("header: key: the key id is empty")
    if _address_node(h.sender, "from") != h.origin:
        raise MalformedError(f"header: from: {show(h.sender)} is not at origin {h.origin!r}")
    if not 1 <= len(h.to) <= MAX_RECIPIENTS:
        raise MalformedError(f"header: to: {len(h.to)} recipients, expected 1..{MAX_RECIPIENTS}")
    for rcpt in h.to:
        if _address_node(rcpt, "to") != h.dest:
            raise MalformedError(f"header: to: {show(rcpt)} is not at dest {h.dest!r}")
    if len(set(h.to)) != len(h.to):
        raise MalformedError("header: to: a recipient is listed twice")


def _check_expires(h: Header) -> None:
    if not h.created < h.expires <= h.created + MAX_LIFETIME_MS:
        raise MalformedError(
            f"header: expires: must be after created and at most 30 days later "
            f"(created {h.created}, expires {h.expires})"
        )


def _check_max_hops(h: Header) -> None:
    if not 1 <= h.max_hops <= MAX_HOPS:
        raise MalformedError(f"header: max_hops: {h.max_hops} is outside 1..{MAX_HOPS}")


def _postmaster_what(kind: str) -> str:
    return "a receipt" if kind == "receipt" else f"an envelope of kind {kind}"


def _check_postmaster(h: Header) -> None:
    ctype = POSTMASTER_KINDS.get(h.kind)
    if ctype is not None:
        what = _postmaster_what(h.kind)
        if h.sender != f"postmaster@{h.origin}":
            raise MalformedError(f"header: from: {what} comes from postmaster@{h.origin}")
        if h.to != (f"postmaster@{h.dest}",):
            raise MalformedError(f"header: to: {what} goes to postmaster@{h.dest} only")
        if h.ctype != ctype:
            raise MalformedError(f"header: ctype: {what}'s content type is {ctype}")


def _check_unsealed(h: Header) -> None:
    if h.seal is not None and h.kind in POSTMASTER_KINDS:
        raise MalformedError(f"header: seal: {_postmaster_what(h.kind)} is never sealed")


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
                f"header: residency: {show(code)} is not two uppercase ASCII letters"
            )
    if any(a >= b for a, b in pairwise(codes)):
        raise MalformedError("header: residency: codes are not strictly ascending")


def header_for(
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
    sealed: SealInfo | None = None,
) -> Header:
    """Build a header for `payload`: size and sha256 computed, residency sorted
    and deduplicated; with `sealed`, `payload` is the ciphertext
    (relay.protocol.sealing). Unchecked, for a header that goes straight to
    `seal`, which checks it before signing (so the check runs once, not twice);
    make_header is this with the check."""
    return Header(
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
        seal=sealed,
    )


def _with_check(build: Callable[P, Header]) -> Callable[P, Header]:
    # make_header takes header_for's arguments, typed once (ParamSpec); the def
    # inside is named so tracebacks and help() name it, and __wrapped__ gives
    # help() and inspect.signature header_for's parameters
    @functools.wraps(build, assigned=("__module__",))
    def make_header(*args: P.args, **kwargs: P.kwargs) -> Header:
        """header_for's header, checked: MalformedError if decode_header would refuse
        it (check_header)."""
        return check_header(build(*args, **kwargs))

    make_header.__qualname__ = "make_header"
    return make_header


make_header = _with_check(header_for)


def peek_id(header_bytes: bytes) -> bytes:
    """Return the 16-byte `id` of header bytes that strictly decode to a map.

    MalformedError otherwise: such an item cannot be answered by id, so the
    whole batch fails (DESIGN §5).
    """
    return peek_header(header_bytes).id


def peek_header(header_bytes: bytes) -> PeekedHeader:
    """peek_id, keeping the unpacked map for decode_header and open_envelope."""
    value = strict_unpack(header_bytes, "header")
    if type(value) is not dict:
        raise MalformedError(f"header: expected a map, got {value_kind(value)}")
    env_id = value.get("id")
    if type(env_id) is not bytes or len(env_id) != ID_SIZE:
        raise MalformedError("header: no 16-byte bin id")
    return PeekedHeader(header_bytes, env_id, value)


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
    checked = check_header(header)
    header_bytes = encode_header(checked)
    signature = ed25519.sign(key, ENVELOPE_DOMAIN + header_bytes)
    env = Envelope(header_bytes, signature, payload, checked)
    try:
        check_payload(env)
    except ItemRejected as e:
        raise MalformedError(f"seal: {e.detail}") from None
    return env


def open_envelope(header_bytes: bytes | PeekedHeader, signature: bytes, payload: bytes) -> Envelope:
    """Decode the header strictly and check the signature's length (not its validity).

    `header_bytes` may come peeked (peek_header): decoded from its map, not unpacked again.
    """
    header = decode_header(header_bytes)
    if len(signature) != SIGNATURE_SIZE:
        raise MalformedError(f"signature: expected 64 bytes, got {len(signature)}")
    data = header_bytes.data if isinstance(header_bytes, PeekedHeader) else header_bytes
    return Envelope(data, signature, payload, header)


def verify_envelope(env: Envelope, pub: Ed25519PublicKey) -> None:
    """Verify the origin's signature over the exact header bytes; ItemRejected("signature")."""
    if not ed25519.verify(pub, env.signature, ENVELOPE_DOMAIN + env.header_bytes):
        raise ItemRejected(
            "signature", f"envelope {env.header.id.hex()}: signature does not verify"
        )


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
