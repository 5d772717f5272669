"""Erasing messages this node originated (issue 14, docs/erasure.md): who may ask, and
what happens here.

Called by the client API (`DELETE /v1/messages/{id}`: the sending mailbox) and the
admin API (`POST /admin/v1/erase`: the node's admin, by id or by sender mailbox and
time range). The steps on the stored copy are relay.storage.erasure's.

Invariants:
- Only messages whose origin is this node are erased from here, and a mailbox
  erases only what it sent (Forbidden otherwise, nothing changed).
- The erasure, its decision row and the inbox tombstones commit in one job;
  readers of the mailboxes given a tombstone are woken after the commit.
- After a commit that erased anything, the storage scrubs its files
  (`Storage.scrub`) so the erased payload does not stay in the log.
- Every erasure is logged (`message_erased`) with message, origin, status, who
  asked and why; `records` of an EraseResult are what an audit log records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.config.model import DAY_MS
from relay.errors import BadRequest, Forbidden, NotFound, RelayError
from relay.federation import erasing
from relay.logs import event
from relay.node.state import NodeState
from relay.protocol.erasure import MAX_REASON_BYTES, decode_answer, read_chain
from relay.storage.erasure import EraseOrder, Erasure, ErasureTarget, StoredAnswer
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.erasure")

MAX_BY_SENDER = 10_000  # messages one by-sender erasure reaches; ask again for more


@dataclass(frozen=True, slots=True)
class EraseResult:
    """What one erasure request did: a record per envelope reached, in rid order."""

    records: list[Erasure]
    targets: list[ErasureTarget]  # the envelopes, in the records' order
    unknown: tuple[str, ...]  # ids asked for that name no message originated here
    scrub: str  # what the storage did to its files afterwards

    def to_json(self) -> dict[str, Any]:
        return {
            "erased": [
                {**r.to_json(), "dest": t.dest, "hop": t.hop}
                for r, t in zip(self.records, self.targets, strict=True)
            ],
            "unknown": list(self.unknown),
            "scrub": self.scrub,
        }


def check_reason(reason: object, *, required: bool) -> str:
    """The reason as recorded: one line of at most MAX_REASON_BYTES of UTF-8 (what an
    erasure request carries, relay.protocol.erasure), no control characters."""
    if reason is None and not required:
        return ""
    if not isinstance(reason, str) or (required and not reason.strip()):
        raise BadRequest("'reason' must say why the message is erased (it is recorded)")
    too_long = len(reason.encode()) > MAX_REASON_BYTES
    if too_long or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise BadRequest(f"'reason' must be one line of at most {MAX_REASON_BYTES} bytes (UTF-8)")
    return reason.strip()


def _order(state: NodeState, source: str, actor: str, reason: str) -> EraseOrder:
    hold_ms = state.config.retention.content_min_days * DAY_MS
    return EraseOrder(source=source, actor=actor, reason=reason, hold_ms=hold_ms)


async def erase_for_mailbox(
    state: NodeState, mailbox: str, ident: bytes, reason: str = ""
) -> EraseResult:
    """The sending mailbox erases message `ident` (every envelope of it)."""
    sender = f"{mailbox}@{state.name}"
    order = _order(state, "mailbox", mailbox, reason)

    async def job(tx: WriteTx) -> tuple[list[ErasureTarget], list[Erasure]]:
        targets = await tx.erasable(state.name, [ident])
        if not targets:
            raise NotFound(f"no message {ident.hex()} originated at {state.name}")
        if any(t.sender != sender for t in targets):
            raise Forbidden(
                f"message {ident.hex()} was not sent by {mailbox}; only its sender erases it"
            )
        return targets, await _erase(state, tx, targets, order)

    targets, records = await state.store.write(job, admit=True)
    return await _done(state, targets, records, ())


async def erase_for_admin(state: NodeState, ids: Sequence[bytes], reason: str) -> EraseResult:
    """The admin erases messages originated here, by message or envelope id: `ids` as
    queueops.parse_ids reads them from the admin API (1 to queueops.MAX_IDS, the one
    limit of the admin API's id lists)."""
    order = _order(state, "admin", "admin", reason)

    async def job(tx: WriteTx) -> tuple[list[ErasureTarget], list[Erasure]]:
        targets = await tx.erasable(state.name, ids)
        if not targets:
            raise NotFound(f"none of the {len(ids)} ids names a message originated at {state.name}")
        return targets, await _erase(state, tx, targets, order)

    targets, records = await state.store.write(job)
    return await _done(state, targets, records, _unknown(ids, targets))


async def erase_by_sender(
    state: NodeState, mailbox: str, since: int, until: int, reason: str
) -> EraseResult:
    """The admin erases what `mailbox` sent in [`since`, `until`) (a data subject's request)."""
    if since >= until:
        raise BadRequest("'since' must be before 'until'")
    if state.config.mailbox(mailbox) is None:
        raise NotFound(f"no mailbox {mailbox!r} on {state.name}")
    order = _order(state, "admin", "admin", reason)
    sender = f"{mailbox}@{state.name}"

    async def job(tx: WriteTx) -> tuple[list[ErasureTarget], list[Erasure]]:
        targets = await tx.erasable_by_sender(state.name, sender, since, until, MAX_BY_SENDER)
        return targets, await _erase(state, tx, targets, order)

    targets, records = await state.store.write(job)
    return await _done(state, targets, records, ())


async def _erase(
    state: NodeState, tx: WriteTx, targets: list[ErasureTarget], order: EraseOrder
) -> list[Erasure]:
    now = state.now_ms()
    records = await tx.erase(targets, order, now)
    state.note_inbox(tx, sorted({mb for r in records for mb in r.mailboxes}))
    await erasing.send_requests(state, tx, targets, records, now)
    return records


def _unknown(ids: Sequence[bytes], targets: Sequence[ErasureTarget]) -> tuple[str, ...]:
    # a message id is its first envelope's id, so a message found is among the targets
    found = {t.id for t in targets}
    return tuple(i.hex() for i in ids if i not in found)


async def _done(
    state: NodeState,
    targets: list[ErasureTarget],
    records: list[Erasure],
    unknown: tuple[str, ...],
) -> EraseResult:
    fresh = [r for r in records if r.fresh]
    for r in fresh:
        event(
            log,
            "message_erased",
            msg=r.id.hex(),
            origin=r.origin,
            status=r.status,
            hold_until=r.hold_until,
            source=r.source,
            actor=r.actor,
            reason=r.reason,
            mailboxes=",".join(r.mailboxes),
        )
    scrub = await state.store.scrub() if fresh else "nothing erased now"
    return EraseResult(records, targets, unknown, scrub)


# --- what became of an erasure (GET /v1/messages/{id}, relay status) -----------------


async def erasure_status(state: NodeState, mailbox: str, ident: bytes) -> list[dict[str, Any]]:
    """Per envelope of message `ident` that `mailbox` sent and that was erased: every
    node of its path, as this node (the origin) knows it from the signed answers.
    Empty if the message was not erased."""
    sender = f"{mailbox}@{state.name}"
    if not await state.store.erasure_records([(state.name, ident)]):
        return []  # the message id is its first envelope's: not erased (the common case)

    found = await state.store.message_envelopes(state.name, ident)
    targets = [t for t in found if t.sender == sender]
    records = await state.store.erasure_records([(t.origin, t.id) for t in targets])
    requests = [r.request for r in records.values() if r.request is not None]
    stored = await state.store.erasure_requests(requests)
    answers = await state.store.erasure_answers(requests)
    now = state.now_ms()
    out: list[dict[str, Any]] = []
    for t in targets:
        rec = records.get((t.origin, t.id))
        if rec is None:
            continue
        nodes = [_node_doc(state.name, rec.status, rec.done or rec.at, rec.hold_until, "")]
        req = stored.get(rec.request) if rec.request is not None else None
        if req is not None and req.hop is not None:
            kept = next((a for a in answers.get(req.id, []) if a.writer == req.hop), None)
            ended = None if kept or req.queued else await _ended(state, req.id, req.hop)
            nodes.extend(
                path_nodes(req.hop, kept, req.queued, req.expires, now, req.last_error, ended)
            )
        out.append({"id": t.id.hex(), "dest": t.dest, "nodes": nodes})
    return out


async def _ended(state: NodeState, request: bytes, hop: str) -> tuple[str, str] | None:
    """How the origin's queue ended the request to `hop`, if it did: (status, reason),
    as relay.node.queue_end recorded it."""
    for d in await state.store.decisions(request, None, 10):
        if d.point == "erase" and d.peer == hop:
            return d.outcome, d.reason
    return None


def path_nodes(
    first: str,
    kept: StoredAnswer | None,
    queued: bool,
    expires: int,
    now: int,
    last_error: str,
    ended: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The nodes after the origin: each answer of the chain `first` started, then the
    node named last if it has not answered (pending, or unreachable once the request
    expired). `ended`: how the origin's queue ended the request to `first`, if it
    did without an answer: `rejected` (refused, with its code) or `expired`."""
    late = "unreachable" if now >= expires else "pending"
    if kept is None:
        if ended is not None:
            status = "refused" if ended[0] == "rejected" else "unreachable"
            return [{"node": first, "status": status, "detail": ended[1]}]
        detail = last_error if queued else ""
        return [{"node": first, "status": late, "detail": detail}]
    try:
        links = read_chain(first, decode_answer(kept.payload))
    except RelayError as e:  # verified when it arrived; a damaged row says so
        return [{"node": first, "status": "unverifiable", "detail": e.detail}]
    docs: list[dict[str, Any]] = []
    for link in links:
        a = link.answer
        if a is None:
            docs.append({"node": link.node, "status": late, "detail": ""})
        else:
            docs.append(_node_doc(link.node, a.status, a.at, a.hold_until, a.jurisdiction))
    return docs


def _node_doc(
    node: str, status: str, at: int, hold_until: int, jurisdiction: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {"node": node, "status": status, "at": at}
    if status == "held":
        doc["hold_until"] = hold_until
        doc["rule"] = "retention.content_min_days"
    if jurisdiction:
        doc["jurisdiction"] = jurisdiction
    return doc
