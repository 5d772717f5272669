"""`POST /federation/v1/batch`: the receiving side of DESIGN §5.

The order of the checks and each item's verdict are decided by
`relay.protocol.inbound` (Reception, open_item, judge_item); this shell reads
the body when it is told it may, looks up trust, policy and ledger facts,
commits, and answers.

Order of request-level checks (each refusal stores nothing):
413 too_large (before the body is read) -> 401 unknown_sender / unknown_key /
bad_signature -> 429 rate_limited (per verified peer) / 503 busy (no write
slot free, relay.node.backpressure), both with Retry-After and before the body
is read -> 400 digest_mismatch / wrong_destination / clock_skew / replay /
malformed. Then each item is judged on its own (`rejected:<code>`), the
survivors are committed together with the nonce and the batch results, and
only after that commit is the signed result sent; a store failure there is
503 `store` with Retry-After, nothing acknowledged.

An item whose `dest` is another node is relayed (relay.federation.relaying):
its origin's signature is always verified and it is queued for its next hop.
A sender neither pinned nor already certified here is introduced by the
certificates in its `Relay-Certificate` header, before any body byte is read.
Without that header (a sender of an earlier version) its body is read before
the 401 checks to find a certificate, but at most `[limits]
unauthenticated_body_bytes` of it, and at most two such bodies at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from relay.errors import (
    ItemRejected,
    MalformedError,
    RelayError,
    Replay,
    TooLarge,
)
from relay.federation import erasing, relaying, witness
from relay.logs import event, id_fields
from relay.node import backpressure, certificates, quota
from relay.node.decisions import decision_record, refusal
from relay.node.http import UNREAD_BODY, error_response, read_capped, refuse_declared
from relay.node.state import NodeState
from relay.policy.keyring import unknown_key_detail
from relay.policy.residency import Decision, Policy, check_accept
from relay.policy.trust import Trust
from relay.protocol import httpsig
from relay.protocol.batch import (
    DELIVERY_HEADER,
    Batch,
    BatchItem,
    BatchResult,
    Delivered,
    decode_batch,
    sign_result,
    wants_delivery,
)
from relay.protocol.envelope import (
    Envelope,
    PeekedHeader,
    header_digest,
)
from relay.protocol.inbound import (
    Admit,
    AnswerStored,
    FindStoredResults,
    Introduce,
    ItemContext,
    ItemFacts,
    ItemRefused,
    ReadBodyToIntroduce,
    Reception,
    judge_item,
    open_item,
    proceed,
    too_large,
)
from relay.protocol.receipt import Receipt
from relay.protocol.sealing import SealInfo
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord, NewEnvelope, PendingReceipt

log = logging.getLogger("relay.federation.in")

BATCH_PATH = "/federation/v1/batch"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item that passed every check that needs no database."""

    env: Envelope
    trace: tuple[str, ...]
    mailboxes: tuple[str, ...]
    rule_id: str
    policy_hash: str
    audit: Decision | None = None  # a would-be denial let through in audit mode
    hop: str | None = None  # next hop when this node relays it, else None (it is ours)
    receipt: Receipt | None = None  # a receipt for this node, decoded when it was judged


@dataclass(frozen=True, slots=True)
class Refusal:
    ident: bytes
    error: ItemRejected
    origin: str
    rule: str = ""


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most `limit` bytes (Reception.head refused a longer declared length)."""
    body = await read_capped(request.content, limit)
    if body is None:
        raise TooLarge(f"body is over this node's limit of {limit} bytes")
    return body


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` with 413 at once when the body is too large.

    aiohttp calls this before the app's middleware, so it answers itself.
    """
    state: NodeState = request.app[NodeState.KEY]
    try:
        refuse_declared(request, state.config.node.max_body_bytes, too_large)
    except TooLarge as e:
        return error_response(e, {"Connection": "close"})
    expect = request.headers.get("Expect", "").lower()
    if request.version >= (1, 1) and expect == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def handle_batch(request: web.Request) -> web.StreamResponse:
    """The batch endpoint; a refusal is logged here and answered by the app's middleware."""
    state: NodeState = request.app[NodeState.KEY]
    peer = request.headers.get("Relay-Origin", "")
    try:
        body, deferred = await receive(state, request)
    except RelayError as e:
        state.metrics.batch_refused(e.code)
        event(
            log,
            "batch_refused",
            logging.WARNING,
            peer=peer,
            status=e.status,
            code=e.code,
            detail=e.detail,
        )
        if isinstance(e, TooLarge):
            request[UNREAD_BODY] = True
        raise
    finally:
        backpressure.release(state, request)
    # Items left out of the results (a full mailbox here) are sent again; not before this.
    later = {"Retry-After": str(quota.RETRY_AFTER_S)} if deferred else None
    return web.Response(body=body, content_type="application/msgpack", headers=later)


async def receive(state: NodeState, request: web.Request) -> tuple[bytes, int]:
    """The signed result of a batch, and how many of its items it leaves out for now."""
    cfg = state.config
    limit = cfg.node.max_body_bytes
    rx = Reception(
        here=state.name,
        max_body=limit,
        has_authorities=state.trust.has_authorities,
        intro_body=cfg.limits.unauthenticated_body_bytes,
    )
    sreq = proceed(
        rx.head(
            method=request.method,
            raw_path=request.raw_path,
            headers=request.headers,
            content_length=request.content_length,
        )
    ).request
    peer = state.trust.node(sreq.origin)
    unknown_key = unknown_key_detail(cfg, sreq.origin, sreq.key_id)
    body: bytes | None = None
    step = proceed(rx.sender(peer.keys if peer else None, unknown_key=unknown_key))
    if isinstance(step, Introduce):  # its certificates, from Relay-Certificate
        peer = relaying.introduce(state, sreq.origin, step.certificates)
        step = proceed(rx.sender(peer.keys if peer else None, unknown_key=unknown_key))
    elif isinstance(step, ReadBodyToIntroduce):
        # A sender of an earlier version presents its certificate with its own
        # envelopes (item fifth element) only; the signature is checked next.
        state.backpressure.take_unauthenticated(request)
        body = await read_capped(request.content, step.limit)
        if body is None:
            raise TooLarge(
                f"{sreq.origin!r} is not a node this node trusts, and its body is over the"
                f" {step.limit} bytes read to find its certificate: send it in the"
                " Relay-Certificate header"
            )
        with contextlib.suppress(MalformedError):
            peer = relaying.introduce_carried(state, sreq.origin, decode_batch(body).items)
        step = proceed(rx.sender(peer.keys if peer else None, unknown_key=unknown_key))
    if peer is None or not isinstance(step, Admit):
        raise RelayError(f"inbound: unexpected step {type(step).__name__}")
    state.peer_contacted(peer.name)  # its signature verified: a backoff towards it ends
    await witness.observe(state, peer, request.headers)  # its tree head, if it sent one
    charged = body is None and request.content_length is not None
    if charged:  # 429 before the body is read
        state.limits.peer_body(peer.name, request.content_length or 0)
    backpressure.admit_batch(state, peer.name, request)  # 429 / 503 busy before the body is read
    proceed(rx.admitted())
    if body is None:
        body = await read_body(request, limit)
    if not charged:  # sent chunked, or read to find a certificate: charged as read
        state.limits.peer_body(peer.name, len(body))
    proceed(rx.body(body, now_s=state.now_ms() // 1000))
    if not state.claim_nonce(peer.name, sreq.nonce) or await state.store.nonce_seen(
        peer.name, sreq.nonce
    ):
        state.release_nonce(peer.name, sreq.nonce)
        proceed(rx.nonce(seen=True))
    try:
        size = len(body)  # a large body is decoded and judged off the event loop
        found = proceed(await state.backpressure.decode(size, lambda: rx.nonce(seen=False)))
        delivery = wants_delivery(request.headers.getall(DELIVERY_HEADER, []))
        return await _answer(state, peer.name, sreq, rx, found, size, delivery)
    finally:
        state.release_nonce(peer.name, sreq.nonce)


async def _answer(
    state: NodeState,
    peer: str,
    sreq: httpsig.SignedRequest,
    rx: Reception,
    found: FindStoredResults,
    size: int,
    delivery: bool,
) -> tuple[bytes, int]:
    """`delivery`: the sender asked for delivery-v1 (protocol.md §22)."""
    batch, ids = found.batch, list(found.ids)
    now = state.now_ms()
    stored = await state.store.stored_results(peer, batch.batch_id)
    step = rx.stored(stored)
    if isinstance(step, AnswerStored):
        earlier = dict(step.results)

        async def note_nonce(tx: WriteTx) -> tuple[bytes, ...] | None:
            if not await tx.record_nonce(peer, sreq.nonce, now):
                raise Replay(f"nonce {sreq.nonce} from {peer} was already used")
            return await _stored_deliveries(state, tx, peer, earlier) if delivery else None

        again = await state.store.write(note_nonce)
        event(log, "batch_repeat", peer=peer, batch=batch.batch_id, envelopes=len(ids))
        answer = BatchResult(batch.batch_id, sreq.nonce, earlier, _delivered(state, again, now))
        return sign_result(answer, state.key), len(ids) - len(earlier)

    relaying.learn_carried(state, batch.items)  # origins' certificates, before any judging
    ctx = ItemContext(here=state.name, peer=peer, now_ms=now)

    def judge_all() -> tuple[list[Candidate], list[Refusal]]:
        candidates: list[Candidate] = []
        refusals: list[Refusal] = []
        accepts = AcceptMemo()
        for ident, item, head in zip(ids, batch.items, found.heads, strict=True):
            judged = judge(state, ctx, item, head, accepts)
            if isinstance(judged, Candidate):
                candidates.append(judged)
            else:
                error = ItemRejected(judged.code, judged.detail)
                refusals.append(Refusal(ident, error, _origin_hint(item), judged.rule))
        return candidates, refusals

    candidates, refusals = await state.backpressure.decode(size, judge_all)

    results, delivered = await state.store.write(
        lambda tx: _commit(
            state, tx, peer, sreq.nonce, batch, candidates, refusals, now, delivery=delivery
        )
    )
    if state.faults.exit_after_commit:
        os._exit(70)
    await erasing.after_commit(state, [c.env.header for c in candidates], results)
    state.metrics.inbound_batch(peer, results, refusals, candidates)
    accepted = sum(1 for r in results.values() if r == "accepted")
    event(
        log,
        "batch_received",
        peer=peer,
        batch=batch.batch_id,
        envelopes=len(ids),
        **id_fields(ids),
        accepted=accepted,
        rejected=len(refusals),
        duplicate=len(results) - accepted - len(refusals),
        deferred=len(ids) - len(results),
        **({} if delivered is None else {"delivered": len(delivered)}),  # stated (§22)
    )
    for r in refusals:
        event(
            log,
            "envelope_refused",
            logging.WARNING,
            peer=peer,
            envelope=r.ident,
            origin=r.origin,
            code=r.error.item_code,
            rule=r.rule,
            detail=r.error.detail,
        )
    answer = BatchResult(batch.batch_id, sreq.nonce, results, _delivered(state, delivered, now))
    return sign_result(answer, state.key), len(ids) - len(results)


def _delivered(state: NodeState, ids: Sequence[bytes] | None, now: int) -> Delivered | None:
    """The `delivered` statement of a result (None: the sender did not ask for one)."""
    if ids is None:
        return None
    return Delivered(now, state.config.node.jurisdiction, state.policy.mode, tuple(ids))


def _held_here(state: NodeState, kind: str, dest: str, hop: str | None) -> bool:
    """A message for this node's own mailboxes, not relayed on: one whose signed
    result may stand for its `delivered` receipt when its origin sent it here itself."""
    return kind == "message" and dest == state.name and hop is None


def _deliverable(state: NodeState, peer: str, c: Candidate) -> bool:
    """An item of this batch the signed result states as delivered (`_held_here`, sent
    by its origin)."""
    h = c.env.header
    return c.trace == (peer,) and _held_here(state, h.kind, h.dest, c.hop)


async def _stored_deliveries(
    state: NodeState, tx: WriteTx, peer: str, results: dict[bytes, str]
) -> tuple[bytes, ...]:
    """Of a stored result's accepted and duplicate ids, the messages of `peer` this
    node holds for its own mailboxes: a repeated batch states their delivery again,
    since no receipt was written for them the first time."""
    stored = [i for i, r in results.items() if r in ("accepted", "duplicate")]
    found = await tx.sent_envelopes(peer, stored)  # of origin `peer`: sent by their origin
    return tuple(
        i
        for i in stored
        if (e := found.get(i)) is not None and _held_here(state, e.kind, e.dest, e.hop)
    )


def _origin_hint(item: BatchItem) -> str:
    return item.trace[0] if item.trace else ""


class AcceptMemo:
    """The accept decisions of one batch's items, by (residency, trace): most items of
    a batch ask the same question. Each is kept with the policy and trust it was
    taken under and answered afresh when either was replaced (a reload)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[
            tuple[tuple[str, ...], tuple[str, ...]], tuple[Policy, Trust, Decision]
        ] = {}

    def accept(
        self, state: NodeState, residency: tuple[str, ...], trace: tuple[str, ...]
    ) -> Decision:
        """check_accept of an item with this residency set and trace, at this node now."""
        policy, trust = state.policy, state.trust
        got = self._seen.get((residency, trace))
        if got is not None and got[0] is policy and got[1] is trust:
            return got[2]
        holders = [(n, trust.jurisdiction(n)) for n in trace]
        decision = check_accept(policy, residency, holders=holders)
        self._seen[residency, trace] = (policy, trust, decision)
        return decision


def judge(
    state: NodeState,
    ctx: ItemContext,
    item: BatchItem,
    head: PeekedHeader | None = None,
    accepts: AcceptMemo | None = None,
) -> Candidate | ItemRefused:
    """One item's verdict before the database (relay.protocol.inbound), from this node's facts.

    `head`: the item's header as the request's checks peeked it (open_item);
    `accepts`: the batch's accept decisions so far.
    """
    opened = open_item(ctx, item, head)
    if isinstance(opened, ItemRefused):
        return opened
    h = opened.header
    if erasing.handles(h.kind, h.dest, state.name):  # follows the message's path
        passed = erasing.judge(state, opened, item)
        if isinstance(passed, ItemRefused):
            return passed
        audit_pass = passed.audit if isinstance(passed.audit, Decision) else None
        return Candidate(passed.env, item.trace, (), passed.rule, state.policy_hash, audit_pass)
    hop: str | ItemRejected | None = None
    forward: Decision | ItemRejected | None = None
    if h.dest != state.name:  # for another node: relay it, if [relay] allows
        try:
            hop = relaying.plan_relay(state, h, item.trace)
        except ItemRejected as e:
            hop = e
        else:
            try:
                forward = relaying.forward_decision(state, h, hop)
            except ItemRejected as e:
                forward = e
    origin = state.trust.node(h.origin)
    accept = (accepts or AcceptMemo()).accept(state, h.residency, item.trace)
    cfg = state.config
    key_known = origin is not None and h.key in origin.keys
    facts = ItemFacts(
        accept=accept,
        origin_keys=origin.keys if origin else None,
        hop=hop,
        forward=forward,
        unknown_key="" if key_known else unknown_key_detail(cfg, h.origin, h.key),
        mailboxes=frozenset(
            local
            for local, _, _ in (a.partition("@") for a in h.to)  # checked when decoded
            if cfg.mailbox(local) is not None
        ),
        seal_keys=state.sealer.opening_keys(),
        seal_key_why=_seal_key_why(state, h.seal),
        deks=state.sealer.deks,
    )
    verdict = judge_item(ctx, opened, facts)
    if isinstance(verdict, ItemRefused):
        return verdict
    audit = accept if verdict.audit is not None else None
    return Candidate(
        verdict.env,
        item.trace,
        verdict.mailboxes,
        verdict.rule,
        state.policy_hash,
        audit,
        verdict.hop,
        verdict.receipt,
    )


def _seal_key_why(state: NodeState, seal: SealInfo | None) -> str:
    if seal is None or seal.key in state.sealer.opening_keys():
        return ""
    return state.sealer.why_missing(seal.key)


async def _commit(
    state: NodeState,
    tx: WriteTx,
    peer: str,
    nonce: str,
    batch: Batch,
    candidates: Sequence[Candidate],
    refusals: Sequence[Refusal],
    now: int,
    *,
    delivery: bool,
) -> tuple[dict[bytes, str], tuple[bytes, ...] | None]:
    """The batch's results, and (when the sender asked for delivery-v1) the ids
    the signed result states as delivered: no receipt is written for those."""
    if not await tx.record_nonce(peer, nonce, now):
        raise Replay(f"nonce {nonce} from {peer} was already used")
    # The same batch id may have been committed by a concurrent request (a
    # retry racing the original): answer what that one stored, write nothing.
    earlier = await tx.stored_results(peer, batch.batch_id)
    if earlier is not None:
        again = await _stored_deliveries(state, tx, peer, earlier) if delivery else None
        return earlier, again
    results: dict[bytes, str] = {r.ident: r.error.result for r in refusals}
    existing = await tx.existing_digests(
        [(c.env.header.origin, c.env.header.id) for c in candidates]
    )
    fresh: list[NewEnvelope] = []
    decisions: list[DecisionRecord] = []
    for c in candidates:
        h = c.env.header
        known = existing.get((h.origin, h.id))
        if known is None:
            results[h.id] = "accepted"
            if c.audit is not None:
                decisions.append(
                    decision_record(
                        "accept",
                        c.audit,
                        at=now,
                        envelope=h.id,
                        peer=peer,
                        policy_hash=c.policy_hash,
                    )
                )
            fresh.append(
                NewEnvelope(
                    env=c.env,
                    trace=c.trace,
                    from_peer=peer,
                    hop=c.hop,
                    mailboxes=c.mailboxes,
                    rule_id=c.rule_id,
                    policy_hash=c.policy_hash,
                )
            )
        elif known == header_digest(c.env.header_bytes):
            results[h.id] = "duplicate"
        else:
            results[h.id] = "rejected:id_conflict"
    fresh, deferred = await quota.split_unread(
        state.config.limits.mailbox_unread_bytes, tx, fresh, peer
    )
    if deferred:  # left out of the results: the sender keeps them and sends them again
        later = {d.env.header.id for d in deferred}
        for ident in later:
            del results[ident]
        decisions = [d for d in decisions if d.envelope not in later]
    fresh, refused_here = await erasing.take(state, tx, fresh, peer, now)
    for ident, code in refused_here.items():
        results[ident] = f"rejected:{code}"
    await tx.insert_envelopes(fresh, now)
    delivered: tuple[bytes, ...] | None = None
    if delivery:
        delivered = tuple(
            c.env.header.id
            for c in candidates
            if results.get(c.env.header.id) in ("accepted", "duplicate")
            and _deliverable(state, peer, c)
        )
    stated = frozenset(delivered or ())
    if learned := state.trust.take_unsaved():
        await tx.save_certificates(certificates.records(learned), now)
    receipts: list[PendingReceipt] = []
    decoded = {c.env.header.id: c.receipt for c in candidates if c.receipt is not None}
    for new in fresh:
        h = new.env.header
        if new.hop is not None:  # relayed: the destination writes the receipt
            state.note_hop(tx, new.hop)
        elif erasing.handles(h.kind, h.dest, state.name) or new.from_peer is None:
            continue  # taken by relay.federation.erasing (with the answers it wrote)
        elif h.kind == "message":
            if h.id in stated:  # the signed result says it (delivery-v1)
                continue
            receipts.append(
                PendingReceipt(
                    origin=h.origin,
                    status="delivered",
                    reason="",
                    residency=",".join(h.residency),
                    id=h.id,
                    recipients=h.to,
                )
            )
        else:
            await state.apply_receipt(tx, new.env, now, decoded.get(h.id))
    await tx.add_pending_receipts(receipts, now)
    decisions.extend(
        decision_record(
            "accept",
            refusal(r.rule, r.error.detail),
            at=now,
            envelope=r.ident,
            peer=peer,
            policy_hash=state.policy_hash,
        )
        for r in refusals
        if r.error.item_code == "residency"
    )
    await tx.record_decisions(decisions)
    await tx.record_batch(peer, batch.batch_id, results, now)
    state.note_inbox(tx, [m for new in fresh for m in new.mailboxes])
    return results, delivered
