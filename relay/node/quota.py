"""The per-mailbox quota of unread bytes (`[limits] mailbox_unread_bytes`).

Invariants:
- The check runs inside the write transaction that would deliver, against the
  counter that transaction sees (storage keeps it beside the inbox rows), so
  two deliveries at once cannot both slip under the quota.
- A submit that would take a mailbox past its quota refuses the whole write
  with 503 `busy` and Retry-After: nothing is stored, and the client retries.
- A federation batch defers only the items for a full mailbox (`split_unread`):
  they are left out of the signed results, which a sender reads as "not
  taken, send again" (protocol.md §12), and the answer carries Retry-After.
  Item results cannot say "later": every `rejected:<code>` is final.
- A mailbox with nothing unread takes any delivery, so a message larger than
  the quota is delivered once the mailbox is read, never retried forever.
- Every refusal logs one `quota_refused` line naming mailbox, peer and rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relay.errors import Busy
from relay.logs import event
from relay.storage.interface import WriteTx
from relay.storage.records import NewEnvelope

log = logging.getLogger("relay.quota")

RULE = "limits.mailbox_unread_bytes"
RETRY_AFTER_S = 30  # a mailbox is read by a person or an application, not in a second


def stored_size(item: NewEnvelope) -> int:
    """What an unread message counts against its mailbox: payload and header bytes, as
    the storage's `unread` counter sums them (so an empty payload is not free)."""
    return item.env.header.size + len(item.env.header_bytes)


async def check_unread(quota: int, tx: WriteTx, items: Sequence[NewEnvelope], peer: str) -> None:
    """Raise Busy if delivering `items` would take a mailbox past `quota` unread bytes.

    `quota` 0 means no quota; `peer` names the sender in the log ("local" for a submit).
    """
    if quota <= 0:
        return
    incoming: dict[str, int] = {}
    for it in items:
        for mailbox in it.mailboxes:
            incoming[mailbox] = incoming.get(mailbox, 0) + stored_size(it)
    if not incoming:
        return
    unread = await tx.unread_bytes(list(incoming))
    for mailbox, adding in incoming.items():
        have = unread[mailbox]
        if have and have + adding > quota:
            event(
                log,
                "quota_refused",
                logging.WARNING,
                mailbox=mailbox,
                peer=peer,
                rule=RULE,
                unread=have,
                incoming=adding,
                quota=quota,
            )
            raise Busy(
                f"mailbox {mailbox} holds {have} unread bytes and {adding} more would pass"
                f" its quota of {quota} ({RULE}); retry later",
                retry_after=RETRY_AFTER_S,
            )


async def split_unread(
    quota: int, tx: WriteTx, items: Sequence[NewEnvelope], peer: str
) -> tuple[list[NewEnvelope], list[NewEnvelope]]:
    """`items` split, in order, into those that fit their mailboxes' quota and those deferred.

    An item fits if every mailbox it goes to has nothing unread yet (counting
    the items before it that fit) or stays within `quota` with it. One
    `quota_refused` line per mailbox that deferred anything.
    """
    if quota <= 0:
        return list(items), []
    names = sorted({m for it in items for m in it.mailboxes})
    if not names:
        return list(items), []
    have = await tx.unread_bytes(names)
    fits: list[NewEnvelope] = []
    deferred: list[NewEnvelope] = []
    held: dict[str, tuple[int, int]] = {}  # mailbox -> (items, bytes) deferred
    for it in items:
        size = stored_size(it)
        full = [m for m in it.mailboxes if have[m] and have[m] + size > quota]
        if full:
            deferred.append(it)
            for m in full:
                n, b = held.get(m, (0, 0))
                held[m] = (n + 1, b + size)
            continue
        fits.append(it)
        for m in it.mailboxes:
            have[m] += size
    for mailbox, (n, b) in held.items():
        event(
            log,
            "quota_refused",
            logging.WARNING,
            mailbox=mailbox,
            peer=peer,
            rule=RULE,
            unread=have[mailbox],
            deferred=n,
            incoming=b,
            quota=quota,
        )
    return fits, deferred
