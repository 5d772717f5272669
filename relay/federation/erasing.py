"""Erasure across the federation (docs/protocol.md "Erasure", docs/erasure.md).

The origin writes one `erasure` envelope per erased message envelope that it
handed to another node, and queues it for that node (`send_requests`). A node
that accepts one (`take`, inside the batch's commit) erases its copy, queues
the request on to the node it handed the message to, and answers the node it
came from with an `erasure-receipt` naming that next node. When the next
node's answer arrives, the node keeps it and answers again with it nested;
at the origin the answers are kept for `relay status` (relay.node.erasure).

Invariants:
- The request follows the recorded path of the message (`envelopes.hop`),
  whatever the routes say now; it goes on only where the message went, and
  only if the forward check still allows that node.
- An erasure names a message of its own origin: a request about a message
  this node holds from another origin is `rejected:not_origin`, nothing
  erased. A node with no copy answers `unknown` and sends nothing on.
- Answers go back hop by hop along the request's path, each to the node the
  request came from (over the routes toward it, like receipts); a node keeps
  only the latest answer of each node downstream and passes it on as signed.
- Queued envelopes are sent and retried like mail (relay.federation.outbound).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from relay.errors import ItemRejected
from relay.federation import relaying
from relay.logs import event
from relay.node.state import NodeState
from relay.policy.residency import check_accept
from relay.policy.routing import next_hop
from relay.protocol.batch import BatchItem
from relay.protocol.envelope import Envelope, Header, open_envelope, seal
from relay.protocol.erasure import (
    ERASED,
    ERASURE,
    ERASURE_RECEIPT,
    HELD,
    UNKNOWN,
    ErasureAnswer,
    ErasureRequest,
    Onward,
    answer_header,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    judge_erasure,
    request_header,
)
from relay.protocol.inbound import ItemFacts, ItemRefused, Passed
from relay.protocol.keystr import public_key_string
from relay.storage.erasure import (
    EraseOrder,
    Erasure,
    ErasureTarget,
    StoredAnswer,
    StoredRequest,
)
from relay.storage.interface import WriteTx
from relay.storage.records import NewEnvelope

log = logging.getLogger("relay.erasure")

MAX_LIFETIME_MS = 30 * 24 * 3600 * 1000


def handles(kind: str, dest: str, here: str) -> bool:
    """True for the items this module judges and takes: every `erasure` (it follows
    the message's path, not the routes) and `erasure-receipt`s for this node."""
    return kind == ERASURE or (kind == ERASURE_RECEIPT and dest == here)


async def after_commit(
    state: NodeState, headers: Sequence[Header], results: Mapping[bytes, str]
) -> None:
    """After a batch's commit: if it erased a copy here, scrub the storage's files."""
    if any(h.kind == ERASURE and results.get(h.id) == "accepted" for h in headers):
        event(log, "storage_scrubbed", detail=await state.store.scrub())


def _lifetime(state: NodeState) -> int:
    return min(state.config.node.queue_lifetime_ms, MAX_LIFETIME_MS)


# --- at the origin -----------------------------------------------------------------


async def send_requests(
    state: NodeState,
    tx: WriteTx,
    targets: Sequence[ErasureTarget],
    records: Sequence[Erasure],
    now: int,
) -> list[tuple[bytes, str]]:
    """Queue an erasure request for each fresh erasure of an envelope that went to a hop;
    the (request id, hop) pairs."""
    new: list[NewEnvelope] = []
    links: list[tuple[str, bytes, bytes]] = []
    for t, rec in zip(targets, records, strict=True):
        if not rec.fresh or t.hop is None:
            continue
        source = "mailbox" if rec.source == "mailbox" else "admin"
        payload = encode_request(ErasureRequest(t.id, source, rec.reason, rec.at))
        header = request_header(
            id=state.random(16),
            origin=state.name,
            key_id=state.key_id,
            target_origin=t.origin,
            dest=t.dest,
            residency=t.residency.split(","),
            created=now,
            expires=now + _lifetime(state),
            payload=payload,
        )
        new.append(NewEnvelope(seal(header, payload, state.key), (), None, t.hop))
        links.append((t.origin, t.id, header.id))
        state.note_hop(tx, t.hop)
    await tx.insert_envelopes(new, now)
    await tx.link_requests(links)
    return [(n.env.header.id, n.hop or "") for n in new]


# --- judging an item (no database) ---------------------------------------------------


def judge(state: NodeState, env: Envelope, item: BatchItem) -> Passed | ItemRefused:
    """The verdict on an item `handles` accepts, from this node's trust and policy."""
    h = env.header
    origin = state.trust.node(h.origin)
    holders = [(n, state.trust.jurisdiction(n)) for n in item.trace]
    facts = ItemFacts(
        accept=check_accept(state.policy, h.residency, holders=holders),
        origin_keys=origin.keys if origin else None,
    )
    return judge_erasure(env, facts)


# --- taking items, inside the batch's commit --------------------------------------


async def take(
    state: NodeState, tx: WriteTx, fresh: Sequence[NewEnvelope], peer: str, now: int
) -> tuple[list[NewEnvelope], dict[bytes, str]]:
    """Act on the erasure items among `fresh` (new to this node, from `peer`): the
    envelopes to store (with the answers and forwards they cause) and the items
    refused instead (id -> item code)."""
    out: list[NewEnvelope] = []
    refused: dict[bytes, str] = {}
    for new in fresh:
        h = new.env.header
        if not handles(h.kind, h.dest, state.name):
            out.append(new)
            continue
        if h.kind == ERASURE:
            taken = await _take_request(state, tx, new, peer, now)
        else:
            taken = await _take_answer(state, tx, new, peer, now)
        if isinstance(taken, str):
            refused[h.id] = taken
        else:
            out.extend(taken)
    return out, refused


async def _take_request(
    state: NodeState, tx: WriteTx, new: NewEnvelope, peer: str, now: int
) -> list[NewEnvelope] | str:
    h = new.env.header
    req = decode_request(new.env.payload)  # judged already: it decodes
    copies = await tx.envelope_copies(req.target)
    targets = [t for t in copies if t.origin == h.origin]
    if not targets and copies:  # the id is stored, but as another origin's
        event(
            log,
            "erasure_refused",
            logging.WARNING,
            peer=peer,
            envelope=h.id,
            origin=h.origin,
            msg=req.target.hex(),
            rule="not_origin",
        )
        return "not_origin"
    order = EraseOrder(
        source="peer",
        actor=h.origin,
        reason=req.reason,
        hold_ms=state.config.retention.content_min_days * 86_400_000,
        request=h.id,
        upstream=peer,
    )
    records = await tx.erase(targets, order, now) if targets else []
    state.note_inbox(tx, sorted({mb for r in records for mb in r.mailboxes}))
    hop = _onward(state, new, targets[0].hop if targets else None)
    stored = replace(new, hop=hop)
    status = _status(records[0] if records else None)
    answer = _answer(state, tx, new.env, peer, req.target, status, hop, None, now)
    event(
        log,
        "erasure_taken",
        peer=peer,
        envelope=h.id,
        origin=h.origin,
        msg=req.target.hex(),
        status=status[0],
        hold_until=status[1],
        next=hop or "",
    )
    if hop is not None:
        state.note_hop(tx, hop)
    return [stored, answer]


def _onward(state: NodeState, new: NewEnvelope, hop: str | None) -> str | None:
    """Where the request goes on: where the message went, if the forward check allows it."""
    if hop is None or hop in new.trace or hop == state.name:
        return None
    try:
        decision = relaying.forward_decision(state, new.env.header, hop)
    except ItemRejected as e:
        event(log, "erasure_not_forwarded", envelope=new.env.header.id, peer=hop, rule=e.item_code)
        return None
    if not decision.allowed:
        event(
            log, "erasure_not_forwarded", envelope=new.env.header.id, peer=hop, rule=decision.rule
        )
        return None
    return hop


def _status(rec: Erasure | None) -> tuple[str, int, str, int]:
    """(status, hold_until, rule, at) an answer states for this node's record."""
    if rec is None:
        return UNKNOWN, 0, "", 0
    if rec.status == HELD:
        return HELD, rec.hold_until, "retention.content_min_days", rec.at
    return ERASED, 0, "", rec.done or rec.at


def _answer(
    state: NodeState,
    tx: WriteTx,
    request: Envelope,
    to_node: str,
    target: bytes,
    status: tuple[str, int, str, int],
    hop: str | None,
    downstream: StoredAnswer | None,
    now: int,
) -> NewEnvelope:
    """This node's signed answer to `request`, for `to_node` (the node it came from),
    queued toward it over the routes, as receipts travel."""
    onward: tuple[Onward, ...] = ()
    if hop is not None:
        node = state.trust.node(hop)
        keys = tuple(sorted(public_key_string(k) for k in node.keys.values())) if node else ()
        onward = (Onward(hop, keys[:8]),) if keys else ()
    nested = (
        ((downstream.header, downstream.signature, downstream.payload),)
        if downstream is not None and onward
        else ()
    )
    name, hold_until, rule, at = status
    payload = encode_answer(
        ErasureAnswer(
            request=request.header.id,
            target=target,
            status=name,
            at=at or now,
            hold_until=hold_until,
            rule=rule,
            jurisdiction=state.config.node.jurisdiction,
            next=onward,
            downstream=nested,
        )
    )
    header = answer_header(
        id=state.random(16),
        writer=state.name,
        key_id=state.key_id,
        to_node=to_node,
        residency=request.header.residency,
        created=now,
        expires=now + _lifetime(state),
        payload=payload,
    )
    route = next_hop(state.config.routes, to_node)
    state.note_hop(tx, route)
    event(
        log,
        "erasure_answered",
        peer=to_node,
        envelope=header.id,
        request=request.header.id,
        status=name,
        next=hop or "",
        nested=len(nested),
    )
    return NewEnvelope(seal(header, payload, state.key), (), None, route)


async def _take_answer(
    state: NodeState, tx: WriteTx, new: NewEnvelope, peer: str, now: int
) -> list[NewEnvelope] | str:
    """An answer from the node this one sent a request to: keep it, and answer upstream
    again with it nested (unless this node is the request's origin)."""
    h = new.env.header
    answer = decode_answer(new.env.payload)  # judged already: it decodes, its chain verifies
    request = (await tx.erasure_requests([answer.request])).get(answer.request)
    if request is None or request.hop != h.origin or answer.target != _target(request):
        event(
            log,
            "erasure_answer_ignored",
            logging.WARNING,
            peer=peer,
            envelope=h.id,
            writer=h.origin,
            request=answer.request,
        )
        return "not_for_us"
    kept = StoredAnswer(
        answer.request,
        h.origin,
        h.created,
        new.env.header_bytes,
        new.env.signature,
        new.env.payload,
    )
    if not await tx.save_erasure_answer(kept):
        return [new]  # an older answer than the one kept: nothing to pass on
    if request.from_peer is None:
        event(log, "erasure_proof", writer=h.origin, request=answer.request, status=answer.status)
        return [new]
    own = await tx.erasure_records([(request.origin, answer.target)])
    rec = own.get((request.origin, answer.target))
    req_env = _request_env(request)
    again = _answer(
        state, tx, req_env, request.from_peer, answer.target, _status(rec), h.origin, kept, now
    )
    return [new, again]


def _target(request: StoredRequest) -> bytes:
    return decode_request(request.payload).target


def _request_env(request: StoredRequest) -> Envelope:
    return open_envelope(request.header, request.signature, request.payload)


async def answer_settled(
    state: NodeState, tx: WriteTx, settled: Sequence[Erasure], now: int
) -> None:
    """A hold ended: answer the node each settled erasure came from again, now `erased`
    (with the latest answer from downstream, if any)."""
    asked = [
        (rec, req, upstream)
        for rec in settled
        if (req := rec.request) is not None and (upstream := rec.upstream) is not None
    ]
    if not asked:
        return
    ids = [req for _, req, _ in asked]
    requests = await tx.erasure_requests(ids)
    answers = await tx.erasure_answers(ids)
    new: list[NewEnvelope] = []
    for rec, req, upstream in asked:
        request = requests.get(req)
        if request is None:
            continue
        kept = next((a for a in answers.get(request.id, []) if a.writer == request.hop), None)
        new.append(
            _answer(
                state,
                tx,
                _request_env(request),
                upstream,
                rec.id,
                _status(rec),
                request.hop,
                kept,
                now,
            )
        )
    await tx.insert_envelopes(new, now)
