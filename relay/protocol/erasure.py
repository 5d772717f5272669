"""Erasure requests and erasure receipts (docs/protocol.md "Erasure"). Pure.

Two envelope kinds, both in the postmaster shape of a receipt (from
`postmaster@<origin>`, to exactly `[postmaster@<dest>]`):

- `erasure`: written and signed by the origin of a message; `dest` and
  `residency` are the message envelope's, the payload names it (`target`).
  It travels intact along the message's path: each node sends it on to the
  node it handed the message to.
- `erasure-receipt`: each node that got the request answers the node it got
  it from (`dest`), never the origin directly. The answer says what the
  writer did to its copy and names the node it sent the request on to, with
  the keys the writer trusts for it (`next`); once that node answers, the
  writer answers again with that answer, exactly as signed, in
  `downstream`. The origin pins only its first hop, and verifies every
  further answer with the keys the answer before it named.

Invariants:
- Every decoder of network bytes returns a value or raises MalformedError
  (ItemRejected("signature") for a nested answer whose signature fails).
- encode_* run their output through decode_*, so this node never sends what
  a peer would refuse.
- read_chain follows `next` from one answer to the next: each nested answer
  must be written by the node its predecessor named, to that predecessor,
  under one of the keys it named, about the same request and target; a node
  appears once; the chain is at most MAX_CHAIN answers long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.errors import ItemRejected, MalformedError
from relay.protocol.envelope import (
    ID_SIZE,
    MAX_HOPS,
    POSTMASTER_KINDS,
    Envelope,
    Header,
    check_payload,
    make_header,
    open_envelope,
    verify_envelope,
)
from relay.protocol.inbound import ItemFacts, ItemRefused, Passed, check_origin
from relay.protocol.keystr import key_id, parse_public_key
from relay.protocol.names import valid_jurisdiction, valid_node_name
from relay.protocol.strict import (
    bin_field,
    fields,
    int_field,
    pack,
    show,
    str_array,
    str_field,
    strict_unpack,
)

ERASURE = "erasure"
ERASURE_RECEIPT = "erasure-receipt"
ERASURE_CTYPE = POSTMASTER_KINDS[ERASURE]
ERASURE_RECEIPT_CTYPE = POSTMASTER_KINDS[ERASURE_RECEIPT]
ERASURE_KINDS = frozenset({ERASURE, ERASURE_RECEIPT})

SOURCES = frozenset({"mailbox", "admin"})
ERASED = "erased"
HELD = "held"
UNKNOWN = "unknown"  # the writer holds no copy of the target (never had, or purged)
STATUSES = frozenset({ERASED, HELD, UNKNOWN})
MAX_REASON_BYTES = 500
MAX_CHAIN = MAX_HOPS  # answers in one chain: a path has at most max_hops nodes
MAX_NEXT_KEYS = 8

# --- the request -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """The payload of an `erasure` envelope."""

    target: bytes  # the id of the message envelope to erase (same origin as the request)
    source: str  # who asked at the origin: "mailbox" (the sender) or "admin"
    reason: str  # why, as recorded at the origin ("" allowed); at most 500 UTF-8 bytes
    at: int  # when the origin was asked, unix ms


_REQUEST_KEYS = frozenset({"target", "source", "reason", "at"})


def encode_request(r: ErasureRequest) -> bytes:
    """Pack a request payload (keys in this order); MalformedError if invalid."""
    data = pack({"target": r.target, "source": r.source, "reason": r.reason, "at": r.at})
    decode_request(data)
    return data


def decode_request(data: bytes) -> ErasureRequest:
    """Strictly decode and check a request payload; MalformedError."""
    w = "erasure"
    m = fields(strict_unpack(data, w), w, _REQUEST_KEYS)
    source = str_field(m, "source", w)
    if source not in SOURCES:
        raise MalformedError(f"erasure: source: {show(source)} is not mailbox or admin")
    reason = str_field(m, "reason", w)
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise MalformedError(f"erasure: reason: over {MAX_REASON_BYTES} bytes")
    return ErasureRequest(bin_field(m, "target", w, ID_SIZE), source, reason, int_field(m, "at", w))


def request_header(
    *,
    id: bytes,
    origin: str,
    key_id: str,
    target_origin: str,
    dest: str,
    residency: Sequence[str],
    created: int,
    expires: int,
    payload: bytes,
) -> Header:
    """The header of the `erasure` envelope about a message envelope of `target_origin`
    to `dest` with `residency`: only its origin writes one."""
    if target_origin != origin:
        raise MalformedError(f"erasure: only {target_origin} erases its message envelopes")
    return _postmaster_header(
        ERASURE, id, origin, key_id, dest, residency, created, expires, payload
    )


def _postmaster_header(
    kind: str,
    id: bytes,
    origin: str,
    key_id: str,
    dest: str,
    residency: Sequence[str],
    created: int,
    expires: int,
    payload: bytes,
) -> Header:
    return make_header(
        id=id,
        kind=kind,
        origin=origin,
        key_id=key_id,
        sender=f"postmaster@{origin}",
        to=[f"postmaster@{dest}"],
        dest=dest,
        created=created,
        expires=expires,
        residency=residency,
        ctype=POSTMASTER_KINDS[kind],
        payload=payload,
        max_hops=MAX_HOPS,
    )


# --- the answer --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Onward:
    """A node the writer sent the request on to, and the keys the writer trusts for it."""

    node: str
    keys: tuple[str, ...]  # key strings (`ed25519:...`), 1..MAX_NEXT_KEYS


@dataclass(frozen=True, slots=True)
class ErasureAnswer:
    """The payload of an `erasure-receipt` envelope."""

    request: bytes  # id of the `erasure` envelope answered
    target: bytes  # its target, the message envelope's id
    status: str  # erased | held | unknown
    at: int  # when the writer erased (or held, or looked up) its copy, unix ms
    hold_until: int  # when held content will be erased; 0 unless held
    rule: str  # the retention rule that holds it; "" unless held
    jurisdiction: str  # the writer's
    next: tuple[Onward, ...]  # 0..1: where the writer sent the request on
    downstream: tuple[tuple[bytes, bytes, bytes], ...]  # the latest answer of each `next`


_ANSWER_KEYS = frozenset(
    {"request", "target", "status", "at", "hold_until", "rule", "jurisdiction"}
    | {"next", "downstream"}
)


def encode_answer(a: ErasureAnswer) -> bytes:
    """Pack an answer payload (keys in this order); MalformedError if invalid."""
    data = pack(
        {
            "request": a.request,
            "target": a.target,
            "status": a.status,
            "at": a.at,
            "hold_until": a.hold_until,
            "rule": a.rule,
            "jurisdiction": a.jurisdiction,
            "next": [[o.node, list(o.keys)] for o in a.next],
            "downstream": [list(t) for t in a.downstream],
        }
    )
    decode_answer(data)
    return data


def decode_answer(data: bytes) -> ErasureAnswer:
    """Strictly decode and check an answer payload (not its nested answers); MalformedError."""
    w = "erasure-receipt"
    m = fields(strict_unpack(data, w), w, _ANSWER_KEYS)
    status = str_field(m, "status", w)
    if status not in STATUSES:
        raise MalformedError(f"{w}: status: {show(status)} is not erased, held or unknown")
    hold_until = int_field(m, "hold_until", w)
    rule = str_field(m, "rule", w)
    if (status == HELD) != (hold_until > 0) or (status == HELD) != bool(rule):
        raise MalformedError(f"{w}: hold_until and rule are set exactly when held")
    jurisdiction = str_field(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(f"{w}: jurisdiction: {show(jurisdiction)} is not a country code")
    onward = _onward(m["next"])
    downstream = _downstream(m["downstream"])
    if len(downstream) > len(onward):
        raise MalformedError(f"{w}: downstream: more answers than next nodes")
    return ErasureAnswer(
        request=bin_field(m, "request", w, ID_SIZE),
        target=bin_field(m, "target", w, ID_SIZE),
        status=status,
        at=int_field(m, "at", w),
        hold_until=hold_until,
        rule=rule,
        jurisdiction=jurisdiction,
        next=onward,
        downstream=downstream,
    )


def _onward(raw: object) -> tuple[Onward, ...]:
    w = "erasure-receipt: next"
    if type(raw) is not list or len(raw) > 1:
        raise MalformedError(f"{w}: expected an array of at most one [node, [key, ...]]")
    out: list[Onward] = []
    for entry in raw:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str:
            raise MalformedError(f"{w}: expected [node, [key, ...]]")
        if not valid_node_name(entry[0]):
            raise MalformedError(f"{w}: {show(entry[0])} is not a node name")
        keys = str_array(entry[1], w)
        if not 1 <= len(keys) <= MAX_NEXT_KEYS:
            raise MalformedError(f"{w}: expected 1..{MAX_NEXT_KEYS} keys")
        for k in keys:
            try:
                parse_public_key(k)
            except MalformedError as e:
                raise MalformedError(f"{w}: {e.detail}") from None
        out.append(Onward(entry[0], keys))
    return tuple(out)


def _downstream(raw: object) -> tuple[tuple[bytes, bytes, bytes], ...]:
    w = "erasure-receipt: downstream"
    if type(raw) is not list or len(raw) > 1:
        raise MalformedError(f"{w}: expected an array of at most one answer")
    out: list[tuple[bytes, bytes, bytes]] = []
    for entry in raw:
        if type(entry) is not list or len(entry) != 3 or any(type(b) is not bytes for b in entry):
            raise MalformedError(f"{w}: expected [header_bytes, signature, payload]")
        out.append((entry[0], entry[1], entry[2]))
    return tuple(out)


def answer_header(
    *,
    id: bytes,
    writer: str,
    key_id: str,
    to_node: str,
    residency: Sequence[str],
    created: int,
    expires: int,
    payload: bytes,
) -> Header:
    """The header of an `erasure-receipt` from `writer` to the node it got the request from."""
    return _postmaster_header(
        ERASURE_RECEIPT, id, writer, key_id, to_node, residency, created, expires, payload
    )


# --- following the chain -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """One node of an erasure's path as the origin learns it: its answer, or None
    while the node before it named it and it has not answered yet."""

    node: str
    answer: ErasureAnswer | None
    signed: tuple[bytes, bytes, bytes] | None = None  # the answer envelope, as signed


def read_chain(writer: str, first: ErasureAnswer) -> list[Link]:
    """The answers nested in `first` (written by `writer`, already verified), in path
    order, each verified with the keys its predecessor named; the last Link has no
    answer if the last node named has not answered. MalformedError or
    ItemRejected("signature") if any nested answer is not what its predecessor
    vouched for."""
    links = [Link(writer, first)]
    seen = {writer}
    prev_node, prev = writer, first
    while prev.next:
        onward = prev.next[0]
        if onward.node in seen:
            raise MalformedError(f"erasure-receipt: next: {onward.node} is already in the chain")
        if len(links) >= MAX_CHAIN:
            raise MalformedError(f"erasure-receipt: a chain of more than {MAX_CHAIN} answers")
        seen.add(onward.node)
        if not prev.downstream:
            links.append(Link(onward.node, None))
            break
        signed = prev.downstream[0]
        answer = _nested(signed, onward, prev_node, first)
        links.append(Link(onward.node, answer, signed))
        prev_node, prev = onward.node, answer
    return links


def _nested(
    signed: tuple[bytes, bytes, bytes], onward: Onward, to_node: str, first: ErasureAnswer
) -> ErasureAnswer:
    w = f"erasure-receipt: downstream answer of {onward.node}"
    env: Envelope = open_envelope(*signed)
    h = env.header
    if h.kind != ERASURE_RECEIPT or h.origin != onward.node or h.dest != to_node:
        raise MalformedError(f"{w}: not an erasure-receipt from {onward.node} to {to_node}")
    key = next((k for k in onward.keys if key_id(k) == h.key), None)
    if key is None:
        raise ItemRejected("signature", f"{w}: signed with key {h.key!r}, not one {to_node} named")
    verify_envelope(env, parse_public_key(key))
    check_payload(env)
    answer = decode_answer(env.payload)
    if answer.request != first.request or answer.target != first.target:
        raise MalformedError(f"{w}: it answers another request")
    return answer


# --- judging an item ---------------------------------------------------------------


def judge_erasure(env: Envelope, facts: ItemFacts) -> Passed | ItemRefused:
    """The item checks of an `erasure`, or of an `erasure-receipt` for this node, after
    open_item: a trusted origin's signature, residency at accept, a payload that
    decodes, and for an answer, every nested answer verified along its chain. Where
    the request goes next, and whether it names a message of its origin, needs the
    store (relay.federation.erasing)."""
    if (bad := check_origin(env, facts)) is not None:
        return bad
    accept = facts.accept
    if not accept.allowed:
        return ItemRefused("residency", accept.reason, accept.rule)
    try:
        if env.header.kind == ERASURE:
            decode_request(env.payload)
        else:
            read_chain(env.header.origin, decode_answer(env.payload))
    except MalformedError as e:
        return ItemRefused("malformed", e.detail)
    except ItemRejected as e:
        return ItemRefused.of(e)
    audit = accept if accept.outcome == "audit" else None
    return Passed(env, accept.rule, audit=audit)
