"""The unread counter's statements ([limits] mailbox_unread_bytes), one text for both backends.

Invariants:
- `unread.bytes` of a mailbox is the weight of its unacked inbox rows: the
  payload size and the header length of each row's envelope, or the header
  alone once the envelope is erased (a tombstone). `relay storage copy`
  recounts it with the same weight (relay.storage.transfer.DERIVED).
- The writer keeps it, in the transaction that changes the inbox rows, with
  one statement per batch of rows: `ADD` after rows are inserted, `TAKE`
  before rows are acked or deleted (it reads the rows still unacked). No
  trigger: a trigger ran a lookup and an upsert per row (7-8 of the inbox
  insert's 10 µs per message).
- Each takes a condition on `i` (inbox) naming the rows, in the backend's
  parameter style; nothing else in the text varies.
- An ack by id finds its rows once: its UPDATE of `inbox` returns each acked
  row's weight (`ACKED_WEIGHT`), and `take_weight` subtracts their sum, in the
  same transaction, instead of a `TAKE` that looked the rows up by id first.
"""

from __future__ import annotations

WEIGHT = "CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)"

_ROWS = (
    "SELECT i.mailbox AS mailbox, sum(" + WEIGHT + ") AS bytes"
    " FROM inbox i JOIN envelopes e ON e.rid = i.rid"
    " WHERE i.acked IS NULL AND ({where}) GROUP BY i.mailbox"
)


def add(where: str) -> str:
    """Add the weight of the unacked inbox rows `where` names to their mailboxes' counters."""
    return (
        "INSERT INTO unread (mailbox, bytes) " + _ROWS.format(where=where) + " ON CONFLICT"
        " (mailbox) DO UPDATE SET bytes = unread.bytes + excluded.bytes"
    )


def take(where: str) -> str:
    """Take the weight of the unacked inbox rows `where` names off their mailboxes' counters
    (run it before those rows are acked or deleted)."""
    return (
        "UPDATE unread SET bytes = unread.bytes - g.bytes FROM ("
        + _ROWS.format(where=where)
        + ") AS g WHERE unread.mailbox = g.mailbox"
    )


# RETURNING clause for an UPDATE of `inbox` that acks rows: each row's weight.
ACKED_WEIGHT = " RETURNING (SELECT " + WEIGHT + " FROM envelopes e WHERE e.rid = inbox.rid)"


def take_weight(param: str) -> str:
    """Take a weight (the sum of an ack's ACKED_WEIGHT rows) off one mailbox's counter;
    `param` is the backend's placeholder, the weight first and then the mailbox."""
    return f"UPDATE unread SET bytes = unread.bytes - {param} WHERE mailbox = {param}"
