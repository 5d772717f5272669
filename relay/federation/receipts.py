"""Writing receipts (DESIGN §4 "Receipts").

Outcomes to report are recorded as `pending_receipts` rows in the same
transaction that decided them. A flusher turns them, every receipt window,
into receipt envelopes: one per (origin, status, reason, residency) group and
at most MAX_ENTRIES entries each, queued toward the origin. The pending rows
are deleted in the same transaction, so no id ever appears in two receipts of
the same status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from relay.errors import StoreError
from relay.logs import event
from relay.node.state import NodeState
from relay.policy.routing import next_hop
from relay.protocol.envelope import RECEIPT_CTYPE, header_for, seal
from relay.protocol.receipt import Receipt, encode_receipt
from relay.storage.interface import WriteTx
from relay.storage.records import NewEnvelope

log = logging.getLogger("relay.receipts")

MAX_ENTRIES = 1000
SCAN = 5000


async def flush(state: NodeState) -> int:
    """Write every pending receipt now; return how many receipts were written."""
    written = 0
    while True:
        n, more = await state.store.write(lambda tx: _flush_some(state, tx))
        written += n
        if not more:
            return written


async def _flush_some(state: NodeState, tx: WriteTx) -> tuple[int, bool]:
    pending = await tx.pending_receipts(SCAN)
    if not pending:
        return 0, False
    # group -> envelope id -> recipients (merged, so an id appears once per receipt)
    groups: dict[tuple[str, str, str, str], dict[bytes, list[str]]] = defaultdict(dict)
    for p in pending:
        per_id = groups[(p.origin, p.status, p.reason, p.residency)].setdefault(p.id, [])
        for r in p.recipients:
            if r not in per_id:
                per_id.append(r)
    now = state.now_ms()
    lifetime = min(state.config.node.queue_lifetime_ms, 30 * 24 * 3600 * 1000)
    new: list[NewEnvelope] = []
    for (origin, status, reason, residency), by_id in groups.items():
        entries = [(ident, tuple(rs)) for ident, rs in by_id.items()]
        for start in range(0, len(entries), MAX_ENTRIES):
            chunk = entries[start : start + MAX_ENTRIES]
            receipt = Receipt(
                status=status,
                reason=reason,
                at=now,
                jurisdiction=state.config.node.jurisdiction,
                mode=state.policy.mode,
                entries=tuple(chunk),
            )
            payload = encode_receipt(receipt)
            header = header_for(  # seal checks it
                id=state.random(16),
                kind="receipt",
                origin=state.name,
                key_id=state.key_id,
                sender=f"postmaster@{state.name}",
                to=[f"postmaster@{origin}"],
                dest=origin,
                created=now,
                expires=now + lifetime,
                residency=residency.split(","),
                ctype=RECEIPT_CTYPE,
                payload=payload,
            )
            env = seal(header, payload, state.key)
            hop = next_hop(state.config.routes, origin)  # receipts travel the routes too
            new.append(NewEnvelope(env=env, trace=(), from_peer=None, hop=hop))
            state.note_hop(tx, hop)
            event(
                log,
                "receipt_written",
                peer=origin,
                envelope=header.id,
                status=status,
                reason=reason,
                entries=len(chunk),
            )
    await tx.insert_envelopes(new, now)
    await tx.delete_pending_receipts([p.seq for p in pending])
    return len(new), len(pending) == SCAN


async def run_flusher(state: NodeState) -> None:
    """Flush pending receipts every receipt window until the node stops."""
    window = state.config.federation.receipt_window_ms / 1000
    while not state.stopping:
        await asyncio.sleep(window)
        try:
            await flush(state)
        except StoreError as e:
            event(log, "receipt_flush_failed", logging.ERROR, detail=e.detail)
