"""Queue lifetime for destinations that are backing off (DESIGN §5 "Sending").

A sender ends the envelopes past `expires` or the queue lifetime when it
fetches them (`Sender._drop_dead`). A sender backing off from a dead peer
fetches nothing until its next try, which may be up to `retry_max` (1 h by
default) away; this sweep ends those envelopes on time instead.

Invariants:
- Only queue rows whose hop's persisted `peer_state.next_try` is still in
  the future are touched, and that is checked inside the writing
  transaction. Such a hop's sender is waiting, not posting (it posts only
  once `next_try` has passed and writes a future `next_try` only after the
  attempt ended), so no batch in flight carries an envelope ended here: an
  envelope the peer accepted is never also called `expired`.
- An envelope leaves the queue in the same transaction that ends it as
  `expired`, through `relay.node.queue_end` as the sender does: the status
  at the origin, a pending `expired` receipt to the origin otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from relay.errors import RelayError
from relay.logs import event
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.expiry")

SWEEP_INTERVAL_S = 30.0  # how late an expiry may be noticed at a backing-off hop
CHUNK = 500


async def sweep(state: NodeState) -> int:
    """End every queued envelope past its lifetime at a backing-off hop; return how many."""
    total = 0
    while True:
        n = await state.store.write(functools.partial(_sweep_some, state, state.now_ms()))
        total += n
        if n < CHUNK:
            return total


async def _sweep_some(state: NodeState, now: int, tx: WriteTx) -> int:
    lifetime = state.config.node.queue_lifetime_ms
    items = await tx.queued_past_lifetime(now, now - lifetime, CHUNK)
    endings = [
        Ending(it, "expired", "expires", "expires passed before delivery")
        if it.expires <= now
        else Ending(it, "expired", "queue_lifetime", "queue lifetime passed before delivery")
        for it in items
    ]
    await end_queued(tx, state.name, endings, now, by="sweep")
    return len(items)


async def run_sweeper(state: NodeState) -> None:
    """Sweep every SWEEP_INTERVAL_S until the node stops."""
    while not state.stopping:
        try:
            await sweep(state)
        except RelayError as e:
            event(log, "expiry_sweep_failed", logging.ERROR, detail=e.detail)
        await asyncio.sleep(SWEEP_INTERVAL_S)
