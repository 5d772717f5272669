"""Erasing a stored message's copy (issue 14, docs/erasure.md): records and the steps.

Invariants:
- An erasure names envelopes of kind `message` by (origin, id). Erasing one
  takes, in one job's transaction: its inbox rows (read or unread, each
  replaced by one unread tombstone per mailbox that reads as "erased"), its
  queue row (it is not sent on; its recipients at the origin end as
  `rejected:erased`), and its content. Content inside the minimum retention
  (`content_min_days`, a legal hold) is kept, marked for retention's discard
  path, and the erasure is `held` until `hold_until`; `settle_erasures`
  turns it `erased` once retention cleared it.
- Each erasure gets one `erasures` row (kept after the envelope's rows are
  purged: it is the audit trail) and one decision row (point `erase`).
- Idempotent: a copy already erased is not touched again; its first record
  is returned (with `fresh` False).
- The steps are written once here (EraseSteps) over a few primitives each
  backend implements (EraseRows), so both backends erase alike; the lookups,
  the settling of held erasures and erasure across the federation are written
  once too (PathReads, PathSteps), as `:name` SQL each backend runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from relay.storage.chunking import chunks
from relay.storage.records import DecisionRecord, StatusUpdate
from relay.storage.rowmaps import Row

ERASED = "erased"
HELD = "held"
POINT = "erase"
HOLD_RULE = "retention.content_min_days"
ERASED_REASON = "erased"
SOURCES = ("mailbox", "admin", "peer")


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """A stored message envelope an erasure may reach."""

    rid: int
    origin: str
    id: bytes
    sender: str
    dest: str
    hop: str | None  # where this node sent (or would send) it on; None: nowhere
    residency: str
    received: int
    expires: int
    has_content: bool  # the payload is still referenced (not yet purged)
    erased: int | None  # when an earlier erasure reached this copy


@dataclass(frozen=True, slots=True)
class EraseOrder:
    """Who asks for an erasure, why, and the hold the node's retention demands."""

    source: str  # one of SOURCES
    actor: str  # the mailbox, "admin", or the node that sent the request
    reason: str
    hold_ms: int  # content_min_days in ms: content younger than this is held
    request: bytes | None = None  # the erasure envelope received (from a peer)
    upstream: str | None = None  # the node that sent it, which this node answers


@dataclass(frozen=True, slots=True)
class Erasure:
    """The record of one erasure of one copy (the `erasures` row)."""

    origin: str
    id: bytes
    status: str  # ERASED or HELD
    at: int  # when it was asked here
    done: int  # when the content went; 0 while held
    hold_until: int  # 0 unless it was held
    source: str
    actor: str
    reason: str
    request: bytes | None = None  # id of the erasure envelope sent (origin) or received
    upstream: str | None = None  # the node this one answers; None at the origin
    mailboxes: tuple[str, ...] = ()  # inboxes given a tombstone by this call
    fresh: bool = True  # False: an earlier erasure's record, nothing changed now

    def to_json(self) -> dict[str, object]:
        """The record as the admin API, `relay erase` and the audit log show it."""
        return {
            "origin": self.origin,
            "id": self.id.hex(),
            "status": self.status,
            "at": self.at,
            "done": self.done,
            "hold_until": self.hold_until,
            "source": self.source,
            "actor": self.actor,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Stripped:
    """What `strip_copies` took from the envelopes it erased."""

    mailboxes: dict[int, tuple[str, ...]]  # rid -> mailboxes given a tombstone
    dequeued: frozenset[int]  # rids taken out of the outbound queue


class EraseRows(Protocol):
    """The backend primitives EraseSteps is written in (both WriteTx implement them)."""

    async def strip_copies(self, rids: Sequence[int], now: int) -> Stripped:
        """Mark `rids` erased at `now`, replace their inbox rows by tombstones, dequeue them
        and delete their delivery attempts."""
        ...

    async def erasure_records(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], Erasure]:
        """The erasure records of these (origin, id) pairs, where there are any."""
        ...

    async def add_erasures(self, records: Sequence[Erasure]) -> None:
        """Insert erasure records (a pair already recorded keeps its first record)."""
        ...

    async def clear_content(self, rids: Sequence[int]) -> None: ...

    async def mark_discard(self, rids: Sequence[int]) -> None: ...

    async def content_received_before(self, rids: Sequence[int], cut: int) -> dict[int, bytes]: ...

    async def drop_unreferenced_payloads(self, shas: Sequence[bytes]) -> tuple[int, int]: ...

    async def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None: ...

    async def set_status(self, updates: Sequence[StatusUpdate], now: int) -> None: ...


class EraseSteps:
    """`WriteTx.erase`, written once over EraseRows."""

    async def erase(
        self: EraseRows, targets: Sequence[ErasureTarget], order: EraseOrder, now: int
    ) -> list[Erasure]:
        """Erase these copies (see the module's invariants); one record per target."""
        if order.source not in SOURCES:
            raise ValueError(f"unknown erasure source {order.source!r}")
        earlier = await self.erasure_records([(t.origin, t.id) for t in targets])
        todo = [t for t in targets if t.erased is None and (t.origin, t.id) not in earlier]
        held = {t.rid for t in todo if t.has_content and t.received + order.hold_ms > now}
        stripped = await self.strip_copies([t.rid for t in todo], now)
        going = await self.content_received_before([t.rid for t in todo if t.rid not in held], now)
        await self.clear_content(list(going))
        await self.drop_unreferenced_payloads(list(going.values()))
        await self.mark_discard(sorted(held))
        await self.set_status(
            [StatusUpdate(rid, "rejected", ERASED_REASON) for rid in sorted(stripped.dequeued)], now
        )
        out: list[Erasure] = []
        fresh: list[Erasure] = []
        for t in targets:
            old = earlier.get((t.origin, t.id))
            if old is not None:
                out.append(replace(old, fresh=False))
                continue
            if t.erased is not None:  # erased before its record could be kept: say so
                out.append(_unrecorded(t))
                continue
            hold = t.rid in held
            rec = Erasure(
                origin=t.origin,
                id=t.id,
                status=HELD if hold else ERASED,
                at=now,
                done=0 if hold else now,
                hold_until=t.received + order.hold_ms if hold else 0,
                source=order.source,
                actor=order.actor,
                reason=order.reason,
                request=order.request,
                upstream=order.upstream,
                mailboxes=stripped.mailboxes.get(t.rid, ()),
            )
            out.append(rec)
            fresh.append(rec)
        await self.add_erasures(fresh)
        await self.record_decisions([decision_of(r) for r in fresh])
        return out


def _unrecorded(t: ErasureTarget) -> Erasure:
    erased = t.erased or 0
    return Erasure(t.origin, t.id, ERASED, erased, erased, 0, "", "", "", fresh=False)


def decision_of(rec: Erasure) -> DecisionRecord:
    """The decision row of an erasure (point `erase`), for `relay decisions` and audits."""
    why = f"{rec.source} {rec.actor}: {rec.reason}" if rec.reason else f"{rec.source} {rec.actor}"
    return DecisionRecord(
        at=rec.at,
        point=POINT,
        envelope=rec.id,
        peer=rec.actor if rec.source == "peer" else "",
        outcome=rec.status,
        rule=HOLD_RULE if rec.status == HELD else "",
        reason=why,
        policy_hash="",
    )


# The columns `target_of` reads (alias e: envelopes), the same on both backends.
TARGET_COLS = (
    "e.rid, e.origin, e.id, e.sender, e.dest, e.hop, e.residency, e.received, e.expires,"
    " e.payload_sha IS NOT NULL AS has_content, e.erased"
)
RECORD_COLS = "origin, id, status, at, done, hold_until, source, actor, reason, request, upstream"
# Held erasures whose content retention has cleared (or whose envelope is gone), and
# how each is settled; `:name` parameters, as relay.storage.purge_sql's.
HELD_DONE = (
    f"SELECT {RECORD_COLS} FROM erasures x WHERE x.status = '{HELD}' AND NOT EXISTS"
    " (SELECT 1 FROM envelopes e WHERE e.origin = x.origin AND e.id = x.id"
    " AND e.payload_sha IS NOT NULL) ORDER BY x.hold_until LIMIT :limit"
)


def target_of(r: Row) -> ErasureTarget:
    """An ErasureTarget from a row selecting TARGET_COLS."""
    return ErasureTarget(
        rid=int(r["rid"]),
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        sender=str(r["sender"]),
        dest=str(r["dest"]),
        hop=str(r["hop"]) if r["hop"] is not None else None,
        residency=str(r["residency"]),
        received=int(r["received"]),
        expires=int(r["expires"]),
        has_content=bool(r["has_content"]),
        erased=int(r["erased"]) if r["erased"] is not None else None,
    )


def record_of(r: Row) -> Erasure:
    """An Erasure from a row selecting RECORD_COLS."""
    return Erasure(
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        status=str(r["status"]),
        at=int(r["at"]),
        done=int(r["done"]),
        hold_until=int(r["hold_until"]),
        source=str(r["source"]),
        actor=str(r["actor"]),
        reason=str(r["reason"]),
        request=bytes(r["request"]) if r["request"] is not None else None,
        upstream=str(r["upstream"]) if r["upstream"] is not None else None,
        fresh=False,
    )


def record_row(rec: Erasure) -> tuple[object, ...]:
    """The values of an `erasures` row, in RECORD_COLS order."""
    return (
        rec.origin,
        rec.id,
        rec.status,
        rec.at,
        rec.done,
        rec.hold_until,
        rec.source,
        rec.actor,
        rec.reason,
        rec.request,
        rec.upstream,
    )


# --- erasure across the federation (relay.federation.erasing) ------------------------


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """An erasure envelope this node stored: where it came from, where it went."""

    rid: int
    origin: str
    id: bytes
    from_peer: str | None  # None at the origin
    hop: str | None  # the node it was (or is) sent on to
    header: bytes
    signature: bytes
    payload: bytes
    expires: int
    queued: bool  # still waiting for `hop` to accept it
    attempts: int
    last_error: str


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The latest answer of `writer` to request `request`, as it was signed."""

    request: bytes
    writer: str
    created: int
    header: bytes
    signature: bytes
    payload: bytes


# Statements with `:name` parameters, valid on both backends (relay.storage.purge_sql.pyformat
# spells them for psycopg); each backend runs them through `_erasure_rows`. `{ids}` is an
# `in_list`, `{rows}` a `values_list`: set-based, a chunk of ids per statement.
_REQUESTS = (
    "SELECT e.rid, e.origin, e.id, e.from_peer, e.hop, e.header, e.signature,"
    " coalesce(p.body, :empty) AS body, e.expires, q.rid IS NOT NULL AS queued,"
    " coalesce(q.attempts, 0) AS attempts, coalesce(q.last_error, '') AS last_error"
    " FROM envelopes e LEFT JOIN payloads p ON p.sha = e.payload_sha"
    " LEFT JOIN queue q ON q.rid = e.rid WHERE e.kind = 'erasure' AND e.id IN ({ids})"
    " ORDER BY e.rid"
)
_ANSWERS = (
    "SELECT request, writer, created, header, signature, payload FROM erasure_answers"
    " WHERE request IN ({ids}) ORDER BY request, writer"
)
# a row when it inserts or replaces; none when the writer's kept answer is as new
_SAVE_ANSWER = (
    "INSERT INTO erasure_answers (request, writer, created, header, signature, payload)"
    " VALUES (:request, :writer, :created, :header, :signature, :payload)"
    " ON CONFLICT (request, writer) DO UPDATE SET created = excluded.created,"
    " header = excluded.header, signature = excluded.signature, payload = excluded.payload"
    " WHERE excluded.created > erasure_answers.created RETURNING writer"
)
_KEPT_ANSWER = "SELECT header FROM erasure_answers WHERE request = :request AND writer = :writer"
# the envelopes of messages `origin` sent: by message id (its first envelope's id and
# its recipients' `msg`) or by one envelope's own id
_MESSAGE_ENVELOPES = (
    f"SELECT {TARGET_COLS} FROM envelopes e WHERE e.kind = 'message' AND e.origin = :origin"
    " AND (e.id IN ({ids}) OR e.rid IN (SELECT r.rid FROM recipients r WHERE r.msg IN ({ids})))"
)
_BY_SENDER = (
    f"SELECT {TARGET_COLS} FROM envelopes e WHERE e.kind = 'message' AND e.origin = :origin"
    " AND e.sender = :sender AND e.created >= :since AND e.created < :until"
    " ORDER BY e.rid LIMIT :limit"
)
_COPIES = (
    f"SELECT {TARGET_COLS} FROM envelopes e WHERE e.kind = 'message' AND e.id = :id ORDER BY e.rid"
)
# VALUES columns are column1, column2, ... on both backends
_LINK = (
    "UPDATE erasures SET request = v.column3 FROM (VALUES {rows}) AS v"
    " WHERE erasures.origin = v.column1 AND erasures.id = v.column2"
)
_RECORDS = f"SELECT {RECORD_COLS} FROM erasures WHERE (origin, id) IN (VALUES {{rows}})"
_SETTLE = (
    f"UPDATE erasures SET status = '{ERASED}', done = :now WHERE (origin, id) IN (VALUES {{rows}})"
)


class PathRows(Protocol):
    """How PathReads and PathSteps reach the database (each backend's reads and writes)."""

    async def _erasure_rows(self, sql: str, params: dict[str, object]) -> Sequence[Row]: ...


class PathReads:
    """The reads of erasure, written once (Reads and WriteTx)."""

    async def erasure_records(
        self: PathRows, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], Erasure]:
        """The erasure records of these (origin, id) pairs, where there are any."""
        found: dict[tuple[str, bytes], Erasure] = {}
        for chunk in chunks(sorted(set(keys))):
            tuples, named = values_list(chunk)
            for r in await self._erasure_rows(_RECORDS.format(rows=tuples), named):
                rec = record_of(r)
                found[(rec.origin, rec.id)] = rec
        return found

    async def erasure_requests(self: PathRows, ids: Sequence[bytes]) -> dict[bytes, StoredRequest]:
        """The erasure envelopes stored here among `ids`, by id."""
        found: dict[bytes, StoredRequest] = {}
        for r in await _rows_in(self, _REQUESTS, ids, {"empty": b""}):
            found[bytes(r["id"])] = StoredRequest(
                rid=int(r["rid"]),
                origin=str(r["origin"]),
                id=bytes(r["id"]),
                from_peer=str(r["from_peer"]) if r["from_peer"] is not None else None,
                hop=str(r["hop"]) if r["hop"] is not None else None,
                header=bytes(r["header"]),
                signature=bytes(r["signature"]),
                payload=bytes(r["body"]),
                expires=int(r["expires"]),
                queued=bool(r["queued"]),
                attempts=int(r["attempts"]),
                last_error=str(r["last_error"]),
            )
        return found

    async def message_envelopes(self: PathRows, origin: str, ident: bytes) -> list[ErasureTarget]:
        """The envelopes of message (or envelope) `ident` that `origin` sent, by rid: what
        `erasable` finds for one id, read without the writer (status lookups)."""
        return await _erasable(self, origin, [ident])

    async def erasure_answers(
        self: PathRows, requests: Sequence[bytes]
    ) -> dict[bytes, list[StoredAnswer]]:
        """The answers kept for each of `requests` (those with none are left out)."""
        found: dict[bytes, list[StoredAnswer]] = {}
        for r in await _rows_in(self, _ANSWERS, requests, {}):
            answer = StoredAnswer(
                bytes(r["request"]),
                str(r["writer"]),
                int(r["created"]),
                bytes(r["header"]),
                bytes(r["signature"]),
                bytes(r["payload"]),
            )
            found.setdefault(answer.request, []).append(answer)
        return found


class PathSteps(PathReads):
    """The erasure lookups and writes of both WriteTx, written once."""

    async def erasable(self: PathRows, origin: str, ids: Sequence[bytes]) -> list[ErasureTarget]:
        """The stored messages of `origin` that `ids` name (WriteTx.erasable), by rid."""
        return await _erasable(self, origin, ids)

    async def erasable_by_sender(
        self: PathRows, origin: str, sender: str, since: int, until: int, limit: int
    ) -> list[ErasureTarget]:
        """Up to `limit` messages of `origin` from `sender` created in [`since`, `until`)."""
        params: dict[str, object] = {
            "origin": origin,
            "sender": sender,
            "since": since,
            "until": until,
            "limit": limit,
        }
        return [target_of(r) for r in await self._erasure_rows(_BY_SENDER, params)]

    async def settle_erasures(self: PathRows, now: int, limit: int) -> list[Erasure]:
        """Held erasures whose content retention has since cleared, now `erased` at `now`."""
        held = [record_of(r) for r in await self._erasure_rows(HELD_DONE, {"limit": limit})]
        await _each_chunk(self, _SETTLE, [(r.origin, r.id) for r in held], {"now": now})
        return [replace(r, status=ERASED, done=now, fresh=True) for r in held]

    async def save_erasure_answer(self: PathRows, answer: StoredAnswer) -> bool:
        """Keep `answer` unless one of the same writer, created later or at once, is kept;
        True if it was kept (or is the very answer kept already)."""
        params: dict[str, object] = {
            "request": answer.request,
            "writer": answer.writer,
            "created": answer.created,
            "header": answer.header,
            "signature": answer.signature,
            "payload": answer.payload,
        }
        if await self._erasure_rows(_SAVE_ANSWER, params):
            return True
        kept = await self._erasure_rows(
            _KEPT_ANSWER, {"request": answer.request, "writer": answer.writer}
        )
        return any(bytes(r["header"]) == answer.header for r in kept)

    async def envelope_copies(self: PathRows, ident: bytes) -> list[ErasureTarget]:
        """The stored envelopes of kind message with envelope id `ident`, whatever their
        origin, by rid (an erasure request for an id names its origin's copy only)."""
        return [target_of(r) for r in await self._erasure_rows(_COPIES, {"id": ident})]

    async def link_requests(self: PathRows, links: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Record, per (origin, id, request), the erasure envelope sent for that erasure
        (a pair named twice takes its last request)."""
        last = {(origin, ident): request for origin, ident, request in links}
        await _each_chunk(self, _LINK, [(o, i, r) for (o, i), r in last.items()], {})


def in_list(name: str, values: Sequence[object]) -> tuple[str, dict[str, object]]:
    """An IN list of `values` as `:name0, :name1, ...` and its parameters."""
    keys = [f"{name}{i}" for i in range(len(values))]
    return ", ".join(f":{k}" for k in keys), dict(zip(keys, values, strict=True))


def values_list(rows: Sequence[tuple[object, ...]]) -> tuple[str, dict[str, object]]:
    """A VALUES list of `rows` as `(:v0_0, :v0_1), (:v1_0, ...)` and its parameters."""
    params: dict[str, object] = {}
    tuples = []
    for i, row in enumerate(rows):
        keys = [f"v{i}_{j}" for j in range(len(row))]
        params.update(zip(keys, row, strict=True))
        tuples.append("(" + ", ".join(f":{k}" for k in keys) + ")")
    return ", ".join(tuples), params


async def _rows_in(
    db: PathRows, sql: str, ids: Sequence[bytes], params: dict[str, object]
) -> list[Row]:
    """The rows of `sql` for `ids` (deduplicated) as its `{ids}` list, a chunk at a time."""
    out: list[Row] = []
    for chunk in chunks(list(dict.fromkeys(ids))):
        marks, named = in_list("id", chunk)
        out.extend(await db._erasure_rows(sql.format(ids=marks), {**params, **named}))
    return out


async def _each_chunk(
    db: PathRows, sql: str, rows: Sequence[tuple[object, ...]], params: dict[str, object]
) -> None:
    """Run the write `sql` with `rows` as its `{rows}` VALUES list, a chunk at a time."""
    for chunk in chunks(rows):
        tuples, named = values_list(chunk)
        await db._erasure_rows(sql.format(rows=tuples), {**params, **named})


async def _erasable(db: PathRows, origin: str, ids: Sequence[bytes]) -> list[ErasureTarget]:
    found = {
        t.rid: t
        for t in map(target_of, await _rows_in(db, _MESSAGE_ENVELOPES, ids, {"origin": origin}))
    }
    return [found[rid] for rid in sorted(found)]
