"""The life of one message at this node, from what its database keeps (`relay trace`).

Invariants:
- Only stored rows are used (relay.storage.trace_sql): the envelopes of the
  message, its recipients' statuses at the origin, the queue, the inbox,
  decisions, receipts owed and receipts stored, and the audit log's entries
  for deliveries a destination's signed batch result stated (protocol.md
  §22). No log file is read.
- Each event has a time, a short name a script can match, and one line of
  text; the timeline is in time order, ties in the order things happen.
- Each delivery attempt is listed with its next hop and outcome (the
  `attempts` table); an envelope keeps its latest MAX_ATTEMPTS_KEPT, so a
  long outage shows the queue's attempt count beside fewer attempt lines.
- What the database does not keep is said, not guessed: a purge keeps counts,
  not ids (so a purged message looks like one never seen), and an erasure
  takes the attempts of what it erased with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.errors import MalformedError
from relay.policy.certs import format_ms
from relay.protocol.audit import decode_entry
from relay.protocol.receipt import decode_receipt
from relay.storage.erasure import Erasure
from relay.storage.records import (
    AllowRecord,
    Attempt,
    DecisionRecord,
    TracedEnvelope,
    TraceRows,
)


@dataclass(frozen=True, slots=True)
class Event:
    """One step in a message's life at this node."""

    at: int  # ms since the epoch; 0 when the database keeps no time for it
    what: str  # submitted, received, decision, queued, attempt, receipt_*, status, inbox_*, ...
    text: str
    envelope: str = ""  # hex id of the envelope it concerns

    def as_json(self) -> dict[str, object]:
        return {"at": self.at, "event": self.what, "envelope": self.envelope, "text": self.text}


_ORDER = {
    "submitted": 0,
    "received": 0,
    "decision": 1,
    "queued": 2,
    "attempt": 3,
    "inbox_delivered": 4,
    "receipt_owed": 5,
    "receipt_written": 6,
    "receipt_received": 6,
    "delivery_stated": 6,
    "status": 7,
    "inbox_read": 8,
    "erased": 9,
    "erasure_held": 9,
    "content_removed": 10,
}


def timeline(
    me: str,
    rows: TraceRows,
    decisions: Sequence[DecisionRecord],
    allows: Sequence[AllowRecord],
    erasures: Sequence[Erasure] = (),
) -> list[Event]:
    """Every event the rows (and the erasure records, kept after a purge) show,
    in time order."""
    events: list[Event] = []
    by_rid = {e.rid: e for e in rows.envelopes}
    traced = {e.id for e in rows.envelopes if e.kind == "message"}
    rule_of = {(a.envelope, a.point): a for a in allows}
    erased = {er.id for er in erasures if er.done}
    for e in rows.envelopes:
        ident = e.id.hex()
        if e.kind != "message":
            continue
        to = f"{e.dest}"
        if e.from_peer is None:
            allow = rule_of.get((e.id, "submit"))
            rule = f", rule {allow.rule}" if allow is not None and allow.rule else ""
            events.append(
                Event(
                    e.received,
                    "submitted",
                    f"submitted by {e.sender} for {to}: {e.size} bytes, residency"
                    f" {e.residency}{rule}",
                    ident,
                )
            )
        else:
            rule = f", rule {e.rule_id}" if e.rule_id else ""
            events.append(
                Event(
                    e.received,
                    "received",
                    f"received from {e.from_peer}: {e.sender} to {to}, {e.size} bytes,"
                    f" residency {e.residency}{rule}",
                    ident,
                )
            )
        if not e.has_content and e.id not in erased:  # an erasure says so itself
            events.append(
                Event(
                    0, "content_removed", "content no longer stored (retention or erasure)", ident
                )
            )
    for d in decisions:
        peer = f" peer {d.peer}" if d.peer else ""
        reason = f": {d.reason}" if d.reason else ""
        events.append(
            Event(
                d.at,
                "decision",
                f"decision at {d.point}: {d.outcome}, rule {d.rule or '-'}{peer}{reason}",
                d.envelope.hex() if d.envelope else "",
            )
        )
    for qe in rows.queue:
        env = by_rid.get(qe.rid)
        held = ", on hold" if qe.held else ""
        last = f"; last error: {qe.last_error}" if qe.last_error else ""
        events.append(
            Event(
                qe.enqueued,
                "queued",
                f"queued for {qe.hop}{held}: {qe.attempts} attempt(s) so far{last}",
                env.id.hex() if env else "",
            )
        )
    events.extend(
        Event(a.started, "attempt", attempt_text(a), _hex(by_rid.get(a.rid))) for a in rows.attempts
    )
    for rc in rows.recipients:
        env = by_rid.get(rc.rid)
        reason = f" ({rc.reason})" if rc.reason else ""
        events.append(
            Event(
                rc.at, "status", f"{rc.address}: {rc.status}{reason}", env.id.hex() if env else ""
            )
        )
    for i in rows.inbox:
        env = by_rid.get(i.rid)
        ident = env.id.hex() if env else ""
        events.append(Event(i.delivered, "inbox_delivered", f"in mailbox {i.mailbox}", ident))
        if i.acked is not None:
            events.append(
                Event(i.acked, "inbox_read", f"read and acknowledged by {i.mailbox}", ident)
            )
    events.extend(
        Event(
            p.at,
            "receipt_owed",
            f"receipt {p.status}{f' ({p.reason})' if p.reason else ''} owed to {p.origin},"
            " not written yet",
            p.id.hex(),
        )
        for p in rows.pending_receipts
    )
    for r in rows.receipts:
        try:
            receipt = decode_receipt(r.payload)
        except MalformedError:
            continue
        for entry, recipients in receipt.entries:
            if entry not in traced:
                continue
            reason = f" ({receipt.reason})" if receipt.reason else ""
            who = ", ".join(recipients)
            if r.writer == me:
                what, text = "receipt_written", f"receipt to {r.dest}: {receipt.status}{reason}"
            else:
                what, text = (
                    "receipt_received",
                    f"receipt from {r.writer}: {receipt.status}{reason}",
                )
            events.append(Event(r.received, what, f"{text} for {who}", entry.hex()))
    for st in rows.statements:
        try:
            logged = decode_entry(st.entry)
        except MalformedError:
            continue
        if logged.text("via") != "result":  # a receipt's: its envelope is shown above
            continue
        events.append(
            Event(
                st.at,
                "delivery_stated",
                f"{logged.text('by')}'s signed batch result {logged.blob('receipt').hex()}: "
                f"{logged.text('status')} in {logged.text('jurisdiction')}",
                logged.blob("envelope").hex(),
            )
        )
    for er in erasures:
        why = f": {er.reason}" if er.reason else ""
        who = f"asked by {er.actor} ({er.source}){why}"
        if er.done:
            events.append(Event(er.done, "erased", f"content erased, {who}", er.id.hex()))
        else:
            events.append(
                Event(
                    er.at,
                    "erasure_held",
                    f"erasure {who}; content held until {format_ms(er.hold_until)}"
                    " by a minimum retention",
                    er.id.hex(),
                )
            )
    events.sort(key=lambda ev: (ev.at == 0, ev.at, _ORDER.get(ev.what, 9)))
    return events


def attempt_text(a: Attempt) -> str:
    """One attempt as a line: the hop, the outcome with its code or error, the batch."""
    code = f" {a.code}" if a.code else ""
    error = f": {a.error}" if a.error else ""
    took = max(a.ended - a.started, 0)
    return f"to {a.hop}: {a.outcome}{code}{error} (batch of {a.batch_size}, {took} ms)"


def _hex(env: TracedEnvelope | None) -> str:
    return env.id.hex() if env is not None else ""
