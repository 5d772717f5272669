"""The audit log's storage side, shared by both backends (docs/audit.md).

Invariants:
- Entries are appended inside the write job that did what they record, so an
  entry commits exactly when its event does; the group commit carries them.
- `seq` is the next after the largest stored, taken inside the transaction:
  the writer (one per SQLite file; the schema's write lock on PostgreSQL)
  makes seqs contiguous, without gaps, in commit order, as the Merkle tree
  needs (leaf i is entry seq i).
- The storage derives the entries of what passes through it (envelopes
  stored, decisions, purges) from the records it is given, so a caller that
  records a decision cannot forget its entry; the node adds the events only
  it knows (forwards, receipts, config) through `append_audit`.
- The SQL is the same text on both backends; `?` marks become `%s` on
  PostgreSQL (AuditSql._sql).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.protocol.audit import (
    DECISION,
    DELETED,
    FORWARDED,
    PURGED,
    RECEIPT,
    RESULT,
    STORED,
    FieldValue,
    encode_entry,
    entry_leaf,
)
from relay.protocol.bundle import ExportedEnvelope
from relay.protocol.strict import MAX_INT
from relay.storage.records import Counts, DecisionRecord, NewEnvelope


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing to log: its time, kind and fields (relay.protocol.audit)."""

    at: int
    kind: str
    fields: Mapping[str, FieldValue]
    envelope: bytes | None = None  # the envelope it is about, for look-ups by id


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored entry: its seq, exact bytes and leaf hash."""

    seq: int
    at: int
    kind: str
    entry: bytes
    leaf: bytes


@dataclass(frozen=True, slots=True)
class StoredHead:
    """A signed tree head as stored: size, time and the [head, signature] array."""

    size: int
    at: int
    wire: bytes


# What a Relay-Tree-Proof showed about a witnessed head (docs/protocol.md §19).
PROOF_CONSISTENT = "consistent"  # it extends the kept head of `proof_from` entries
PROOF_FORKED = "forked"  # the peer's own proof shows it does not


@dataclass(frozen=True, slots=True)
class WitnessedHead:
    """A tree head a peer sent, when this node saw it, what the consistency proof
    sent with it showed against the kept head of `proof_from` entries ("" if none),
    and the size of the kept head it contradicted when it came (`evidence`: a
    conflict, a shrink or a forked proof; None if it showed nothing)."""

    peer: str
    size: int
    at: int
    wire: bytes
    seen: int
    proof_from: int | None = None
    proof: str = ""
    evidence: int | None = None


def stored_events(
    items: Sequence[NewEnvelope], now: int, digests: Sequence[bytes]
) -> list[AuditEvent]:
    """The `stored` entries of envelopes being inserted; `digests` are their
    headers' digests (header_digest), which the envelope rows hold too."""
    out = []
    for it, digest in zip(items, digests, strict=True):
        h = it.env.header
        out.append(
            AuditEvent(
                now,
                STORED,
                {
                    "envelope": h.id,
                    "origin": h.origin,
                    "type": h.kind,
                    "residency": h.residency,
                    "from": it.from_peer or "",
                    "hop": it.hop or "",
                    "local": len(it.mailboxes),
                    "header": digest,
                    "rule": it.rule_id,
                    "policy": it.policy_hash,
                },
                h.id,
            )
        )
    return out


def decision_events(decisions: Sequence[DecisionRecord]) -> list[AuditEvent]:
    """The `decision` entries of residency decisions being recorded."""
    out = []
    for d in decisions:
        values: dict[str, FieldValue] = {
            "point": d.point,
            "outcome": d.outcome,
            "rule": d.rule,
            "reason": d.reason,
            "peer": d.peer,
            "policy": d.policy_hash,
        }
        if d.envelope is not None:
            values["envelope"] = d.envelope
        out.append(AuditEvent(d.at, DECISION, values, d.envelope))
    return out


def forwarded_event(
    at: int, envelope: bytes, origin: str, residency: str, hop: str, jurisdiction: str, rule: str
) -> AuditEvent:
    """The `forwarded` entry of an envelope the next hop `hop` accepted; `jurisdiction`
    is the one this node trusts `hop` for, `rule` the forward check that let it go."""
    return AuditEvent(
        at,
        FORWARDED,
        {
            "envelope": envelope,
            "origin": origin,
            "residency": tuple(residency.split(",")) if residency else (),
            "to": hop,
            "jurisdiction": jurisdiction,
            "rule": rule,
        },
        envelope,
    )


def receipt_event(
    at: int, envelope: bytes, receipt: bytes, by: str, status: str, reason: str, jurisdiction: str
) -> AuditEvent:
    """The `receipt` entry of one envelope a signed receipt (id `receipt`, written by
    `by`, which says it stores in `jurisdiction`) reported on."""
    return AuditEvent(
        at,
        RECEIPT,
        {
            "envelope": envelope,
            "receipt": receipt,
            "by": by,
            "status": status,
            "reason": reason,
            "jurisdiction": jurisdiction,
        },
        envelope,
    )


def delivered_event(
    at: int, envelope: bytes, batch: bytes, by: str, jurisdiction: str
) -> AuditEvent:
    """The `receipt` entry of one envelope a peer's signed batch result (batch
    `batch`, delivery-v1) stated as delivered by `by`, which stores in `jurisdiction`."""
    ev = receipt_event(at, envelope, batch, by, "delivered", "", jurisdiction)
    return AuditEvent(at, RECEIPT, {**ev.fields, "via": "result"}, envelope)


def result_event(at: int, peer: str, batch: bytes, result: bytes, signature: bytes) -> AuditEvent:
    """The `result` entry keeping a peer's signed batch result (delivery-v1): the
    proof its `receipt` entries (`via` result) stand on."""
    return AuditEvent(
        at,
        RESULT,
        {"peer": peer, "batch": batch, "result": result, "signature": signature},
    )


def deleted_event(at: int, envelopes: Sequence[bytes], by: str, reason: str) -> AuditEvent:
    """The `deleted` entry of envelopes an admin took out of the queue."""
    return AuditEvent(at, DELETED, {"envelopes": tuple(envelopes), "by": by, "reason": reason})


def purge_event(now: int, source: str, counts: Counts) -> AuditEvent:
    """The `purged` entry of one purge or admin delete."""
    values: dict[str, FieldValue] = {"source": source}
    values.update(counts.as_dict())
    return AuditEvent(now, PURGED, values)


def audit_rows(first: int, events: Sequence[AuditEvent]) -> list[tuple[Any, ...]]:
    """Rows (seq, at, kind, envelope, entry, leaf) for `events` numbered from `first`."""
    rows = []
    for seq, ev in enumerate(events, first):
        entry = encode_entry(seq, ev.at, ev.kind, ev.fields)
        rows.append((seq, ev.at, ev.kind, ev.envelope, entry, entry_leaf(entry)))
    return rows


_INSERT = "INSERT INTO audit_log (seq, at, kind, envelope, entry, leaf) VALUES (?,?,?,?,?,?)"
_HEAD_UPSERT = (
    "INSERT INTO audit_heads (size, at, head) VALUES (?, ?, ?) ON CONFLICT (size)"
    " DO UPDATE SET at = excluded.at, head = excluded.head WHERE excluded.at > audit_heads.at"
)
_WITNESS = (
    "INSERT INTO audit_witnessed (peer, size, at, head, seen, proof_from, proof, evidence)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (peer, size, at) DO UPDATE"
    " SET proof_from = excluded.proof_from, proof = excluded.proof,"
    " evidence = coalesce(audit_witnessed.evidence, excluded.evidence)"
    " WHERE audit_witnessed.proof = '' AND excluded.proof <> ''"
)
# Heads seen before a time, but neither the peer's last (largest, then latest:
# the next head is compared with it) nor evidence: a head that contradicted a
# kept one, or the kept head one contradicted, or the head a forked proof was
# from (a head both a conflict and a forked proof names only the conflict).
_PRUNE_WITNESSED = (
    "DELETE FROM audit_witnessed WHERE (peer, size, at) IN ("
    " SELECT w.peer, w.size, w.at FROM audit_witnessed w WHERE w.seen < ?"
    " AND w.evidence IS NULL"
    " AND (w.size, w.at) <> (SELECT m.size, m.at FROM audit_witnessed m"
    "  WHERE m.peer = w.peer ORDER BY m.size DESC, m.at DESC LIMIT 1)"
    " AND NOT EXISTS (SELECT 1 FROM audit_witnessed e"
    "  WHERE e.peer = w.peer AND e.evidence = w.size)"
    " AND NOT EXISTS (SELECT 1 FROM audit_witnessed f"
    "  WHERE f.peer = w.peer AND f.proof = 'forked' AND f.proof_from = w.size)"
    " LIMIT ?) RETURNING peer"
)

_WITNESSED_SELECT = (
    "SELECT peer, size, at, head, seen, proof_from, proof, evidence FROM audit_witnessed"
)


def _witnessed_where(peer: str | None, size: int | None) -> tuple[str, tuple[Any, ...]]:
    terms = [(t, v) for t, v in (("peer = ?", peer), ("size = ?", size)) if v is not None]
    where = " WHERE " + " AND ".join(t for t, _ in terms) if terms else ""
    return where, tuple(v for _, v in terms)


def _witnessed_row(r: Mapping[str, Any]) -> WitnessedHead:
    return WitnessedHead(
        str(r["peer"]),
        int(r["size"]),
        int(r["at"]),
        bytes(r["head"]),
        int(r["seen"]),
        None if r["proof_from"] is None else int(r["proof_from"]),
        str(r["proof"]),
        None if r["evidence"] is None else int(r["evidence"]),
    )


class AuditSql:
    """The SQL both backends share; each supplies the three primitives below."""

    _mark = "?"

    def _sql(self, text: str) -> str:
        return text if self._mark == "?" else text.replace("?", self._mark)

    async def _audit_rows(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        raise NotImplementedError

    async def _audit_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError


class AuditWrites(AuditSql):
    """The WriteTx methods of the audit log.

    `audit_next` is the next seq, read once per transaction: the store sets it
    to None when a transaction begins and when a job rolls back (its seqs are
    free again), so it never runs ahead of what the transaction holds.
    """

    audit_next: int | None = None

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append entries for `events`, numbered after the last stored one."""
        if not events:
            return
        first = self.audit_next
        if first is None:
            found = await self._audit_rows(
                self._sql("SELECT coalesce(max(seq), -1) AS last FROM audit_log"), ()
            )
            first = int(found[0]["last"]) + 1 if found else 0
        await self._audit_many(self._sql(_INSERT), audit_rows(first, events))
        self.audit_next = first + len(events)

    async def save_tree_head(self, head: StoredHead) -> None:
        """Keep a signed head; a later head of the same size replaces an earlier one."""
        await self._audit_many(self._sql(_HEAD_UPSERT), [(head.size, head.at, head.wire)])

    async def save_witnessed(self, heads: Sequence[WitnessedHead]) -> None:
        """Keep heads peers sent. A head already kept stays as it was, except that a
        proof's outcome fills in one kept without any (it came again, with a proof)."""
        await self._audit_many(
            self._sql(_WITNESS),
            [
                (h.peer, h.size, h.at, h.wire, h.seen, h.proof_from, h.proof, h.evidence)
                for h in heads
            ],
        )

    async def prune_witnessed(self, before: int, limit: int) -> int:
        """Delete at most `limit` heads seen before `before` that are neither a peer's
        last nor evidence (WitnessedHead.evidence, both sides); how many went."""
        return len(await self._audit_rows(self._sql(_PRUNE_WITNESSED), (before, limit)))


class AuditReads(AuditSql):
    """The Reads methods of the audit log."""

    async def audit_size(self) -> int:
        """Entries in the log."""
        found = await self._audit_rows("SELECT count(*) AS n FROM audit_log", ())
        return int(found[0]["n"]) if found else 0

    async def audit_entries(self, first: int, end: int) -> list[AuditRow]:
        """Entries with `first` <= seq < `end`, in seq order."""
        found = await self._audit_rows(
            self._sql(
                "SELECT seq, at, kind, entry, leaf FROM audit_log"
                " WHERE seq >= ? AND seq < ? ORDER BY seq"
            ),
            (first, end),
        )
        return [
            AuditRow(
                int(r["seq"]), int(r["at"]), str(r["kind"]), bytes(r["entry"]), bytes(r["leaf"])
            )
            for r in found
        ]

    async def audit_leaves(self, first: int, end: int) -> list[bytes]:
        """Leaf hashes of entries `first` <= seq < `end`, in seq order."""
        found = await self._audit_rows(
            self._sql("SELECT leaf FROM audit_log WHERE seq >= ? AND seq < ? ORDER BY seq"),
            (first, end),
        )
        return [bytes(r["leaf"]) for r in found]

    async def audit_span(self, since: int, until: int) -> tuple[int, int]:
        """(first, end): the seqs of entries written `since` <= at <= `until`; (0, 0) if none."""
        found = await self._audit_rows(
            self._sql(
                "SELECT min(seq) AS lo, max(seq) AS hi FROM audit_log WHERE at >= ? AND at <= ?"
            ),
            (since, until),
        )
        if not found or found[0]["lo"] is None:
            return (0, 0)
        return (int(found[0]["lo"]), int(found[0]["hi"]) + 1)

    async def audit_last(self, kind: str, before: int) -> AuditRow | None:
        """The last entry of `kind` with seq < `before`, if any."""
        found = await self._audit_rows(
            self._sql(
                "SELECT seq, at, kind, entry, leaf FROM audit_log"
                " WHERE kind = ? AND seq < ? ORDER BY seq DESC LIMIT 1"
            ),
            (kind, before),
        )
        if not found:
            return None
        r = found[0]
        return AuditRow(
            int(r["seq"]), int(r["at"]), str(r["kind"]), bytes(r["entry"]), bytes(r["leaf"])
        )

    async def audit_seqs(self, envelope: bytes) -> list[int]:
        """The seqs of entries about `envelope`, in order."""
        found = await self._audit_rows(
            self._sql("SELECT seq FROM audit_log WHERE envelope = ? ORDER BY seq"), (envelope,)
        )
        return [int(r["seq"]) for r in found]

    async def tree_heads(self) -> list[StoredHead]:
        """Every kept signed head, by size."""
        found = await self._audit_rows("SELECT size, at, head FROM audit_heads ORDER BY size", ())
        return [StoredHead(int(r["size"]), int(r["at"]), bytes(r["head"])) for r in found]

    async def latest_tree_head(self, below: int | None = None) -> StoredHead | None:
        """The kept signed head of the largest size (below `below`, if given), if any."""
        found = await self._audit_rows(
            self._sql(
                "SELECT size, at, head FROM audit_heads WHERE size < ? ORDER BY size DESC LIMIT 1"
            ),
            (MAX_INT if below is None else below,),
        )
        if not found:
            return None
        return StoredHead(int(found[0]["size"]), int(found[0]["at"]), bytes(found[0]["head"]))

    async def witnessed_heads(
        self, peer: str | None, size: int | None = None
    ) -> list[WitnessedHead]:
        """Heads peers sent (of `peer`, or all; of `size` entries, or any), by peer,
        size and time."""
        where, params = _witnessed_where(peer, size)
        found = await self._audit_rows(
            self._sql(f"{_WITNESSED_SELECT}{where} ORDER BY peer, size, at"), params
        )
        return [_witnessed_row(r) for r in found]

    async def last_witnessed(self, peer: str) -> WitnessedHead | None:
        """The head of the largest size `peer` sent (the latest of that size), if any."""
        found = await self._audit_rows(
            self._sql(f"{_WITNESSED_SELECT} WHERE peer = ? ORDER BY size DESC, at DESC LIMIT 1"),
            (peer,),
        )
        return _witnessed_row(found[0]) if found else None

    async def audit_envelopes(self, ids: Sequence[bytes]) -> list[ExportedEnvelope]:
        """The stored envelopes among `ids` (headers, signatures, receipts' payloads)."""
        out: list[ExportedEnvelope] = []
        wanted = sorted(set(ids))
        for i in range(0, len(wanted), 400):
            chunk = wanted[i : i + 400]
            marks = ", ".join(self._mark for _ in chunk)
            found = await self._audit_rows(
                "SELECT e.header, e.signature, e.kind, p.body FROM envelopes e"
                " LEFT JOIN payloads p ON p.sha = e.payload_sha"
                f" WHERE e.id IN ({marks}) ORDER BY e.rid",
                chunk,
            )
            for r in found:
                body = r["body"] if r["kind"] == "receipt" and r["body"] is not None else b""
                out.append(ExportedEnvelope(bytes(r["header"]), bytes(r["signature"]), bytes(body)))
        return out
