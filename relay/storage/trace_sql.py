"""What `relay trace` reads about one id, one SQL text for every backend.

The id is a message id (what `relay send` prints: the recipients rows of the
origin carry it as `msg`) or an envelope id. Each query takes the named
parameter `:ident` (and the receipt scan `:since` and `:limit`); SQLite runs
the text as written, PostgreSQL through `purge_sql.pyformat`. The rows become
a TraceRows through `trace_rows`, the same for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from relay.storage.records import (
    Attempt,
    TracedEnvelope,
    TracedInbox,
    TracedPendingReceipt,
    TracedQueue,
    TracedReceipt,
    TracedRecipient,
    TracedStatement,
    TraceRows,
)
from relay.storage.rowmaps import Row

T = TypeVar("T")

RIDS = (
    "(SELECT rid FROM envelopes WHERE id = :ident"
    " UNION SELECT rid FROM recipients WHERE msg = :ident)"
)
ENVELOPES = (
    "SELECT rid, id, origin, kind, sender, dest, created, expires, received, size, residency,"
    " from_peer, rule_id, payload_sha IS NOT NULL AS has_content"
    f" FROM envelopes WHERE rid IN {RIDS} ORDER BY rid"
)
RECIPIENTS = (
    "SELECT address, rid, mailbox, status, reason, at FROM recipients"
    " WHERE msg = :ident ORDER BY address"
)
ATTEMPTS = (
    "SELECT rid, hop, started, ended, outcome, code, error, batch_size FROM attempts"
    f" WHERE rid IN {RIDS} ORDER BY seq"
)
QUEUE = f"SELECT rid, hop, enqueued, attempts, last_error, held FROM queue WHERE rid IN {RIDS}"
INBOX = f"SELECT rid, mailbox, delivered, acked FROM inbox WHERE rid IN {RIDS} ORDER BY seq"
PENDING_RECEIPTS = (
    "SELECT id, origin, status, reason, at FROM pending_receipts"
    f" WHERE id IN (SELECT id FROM envelopes WHERE rid IN {RIDS}) ORDER BY seq"
)
# receipts stored since the traced envelopes arrived; the caller keeps those
# whose payload names one of them (a receipt's entries are inside its payload)
RECEIPTS = (
    "SELECT e.origin AS writer, e.dest, e.received, p.body AS payload FROM envelopes e"
    " JOIN payloads p ON p.sha = e.payload_sha"
    " WHERE e.kind = 'receipt' AND e.received >= :since ORDER BY e.rid LIMIT :limit"
)

# the audit log's `receipt` entries about the traced envelopes: for mail a
# destination's signed batch result stated delivered (protocol.md §22), the
# only record of that delivery besides the status. The log has no index on
# `envelope`: this scans it, which an admin's trace of one message can afford.
STATEMENTS = (
    "SELECT at, entry FROM audit_log WHERE kind = 'receipt'"
    " AND envelope IN (SELECT id FROM envelopes WHERE rid IN " + RIDS + ") ORDER BY seq"
)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "bytes": bytes,
    "str": str,
    "bool": bool,
    "int | None": lambda v: None if v is None else int(v),
    "str | None": lambda v: None if v is None else str(v),
}


def _records(cls: type[T], rows: Sequence[Row]) -> tuple[T, ...]:
    """Each row as a `cls`, its columns named like the fields (SQLite's ints and
    PostgreSQL's booleans alike become the field's type)."""
    convert = [(f.name, _CONVERT[str(f.type)]) for f in fields(cls)]  # type: ignore[arg-type]
    return tuple(cls(**{name: conv(r[name]) for name, conv in convert}) for r in rows)


# runs one of the texts above with its named parameters (each backend's own reads)
Fetch = Callable[[str, dict[str, object]], Awaitable[Sequence[Row]]]


async def read_trace(fetch: Fetch, ident: bytes, receipt_limit: int) -> TraceRows:
    """Everything stored about `ident`, through `fetch`: the per-id queries, then the
    receipts stored since its envelopes arrived (up to `receipt_limit`) and, if any
    envelope is here, the audit statements."""
    named: dict[str, object] = {"ident": ident}
    envelopes, recipients, queue, inbox, pending, attempts = [
        await fetch(query, named)
        for query in (ENVELOPES, RECIPIENTS, QUEUE, INBOX, PENDING_RECEIPTS, ATTEMPTS)
    ]
    since = min((int(r["received"]) for r in envelopes), default=None)
    receipts = (
        [] if since is None else await fetch(RECEIPTS, {"since": since, "limit": receipt_limit})
    )
    statements = await fetch(STATEMENTS, named) if envelopes else []
    return trace_rows(envelopes, recipients, queue, inbox, pending, receipts, attempts, statements)


def trace_rows(
    envelopes: Sequence[Row],
    recipients: Sequence[Row],
    queue: Sequence[Row],
    inbox: Sequence[Row],
    pending: Sequence[Row],
    receipts: Sequence[Row],
    attempts: Sequence[Row] = (),
    statements: Sequence[Row] = (),
) -> TraceRows:
    """The rows of the queries above as records."""
    return TraceRows(
        envelopes=_records(TracedEnvelope, envelopes),
        recipients=_records(TracedRecipient, recipients),
        queue=_records(TracedQueue, queue),
        inbox=_records(TracedInbox, inbox),
        pending_receipts=_records(TracedPendingReceipt, pending),
        receipts=_records(TracedReceipt, receipts),
        statements=_records(TracedStatement, statements),
        attempts=_records(Attempt, attempts),
    )
