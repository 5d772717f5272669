"""Retention: what the purge job deletes, and when (DESIGN §7 "Retention").

Ages count from `envelopes.received`, the time this node stored the copy.

Invariants:
- Content (an envelope's reference to its payload) goes when the envelope is
  `content_max_days` old, or when a deletion path marked it `discard` and it
  is `content_min_days` old. Deletion paths (re-check) only mark and call
  `drop_content`, which keeps everything younger than `content_min_days`: no
  path deletes content under its minimum.
- A payload row goes only when no envelope references it any more, so a
  payload shared with a younger copy stays.
- Metadata (an envelope row with its inbox and recipients rows) goes when the
  envelope is `metadata_max_days` old, no longer queued, its content gone or
  past its minimum, and its `expires` passed by EXPIRY_MARGIN_MS: the row is
  also the dedupe record, which must outlive the envelope. Decision rows go
  when they are `metadata_max_days` old.
- A queued envelope whose content is due leaves the queue and ends as
  `expired` with reason `retention` (status at the origin, a receipt to it
  otherwise): without its content it can never be delivered.
- Each transaction that deletes anything writes one `purges` row with its
  counts, in the same commit.
- `preview` only reads, with the same predicates as `purge`, so
  `relay purge --dry-run` can run it on a read-only connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from relay.config.model import DAY_MS, RetentionConfig
from relay.errors import RelayError
from relay.federation import erasing
from relay.logs import event
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.storage.erasure import Erasure
from relay.storage.interface import Reads, Storage, WriteTx
from relay.storage.records import Counts, Cutoffs, Due, Preview

__all__ = ["Counts", "Cutoffs", "Due", "Preview", "cutoffs", "drop_content", "preview", "purge"]

log = logging.getLogger("relay.retention")

PURGE_INTERVAL_S = 300.0
EXPIRY_MARGIN_MS = 600_000  # twice the federation clock window: replays are refused as expired
CHUNK = 500  # envelopes per purge transaction, so that other writers are not held up
RETENTION_SCHEMA = 2  # the store migration that added `discard` and `purges`


def cutoffs(r: RetentionConfig, now: int) -> Cutoffs:
    """The cutoffs of `r` at time `now`."""
    return Cutoffs(
        now=now,
        cmax=now - r.content_max_days * DAY_MS,
        cmin=now - r.content_min_days * DAY_MS,
        mmax=now - r.metadata_max_days * DAY_MS,
        mmin=now - r.metadata_min_days * DAY_MS,
        expired=now - EXPIRY_MARGIN_MS,
    )


# --- the purge ---------------------------------------------------------------------


# Called in the purge's transaction with the held erasures it settled (the node
# answers the nodes that asked, relay.federation.erasing.answer_settled).
OnSettled = Callable[[WriteTx, list[Erasure], int], Awaitable[None]]


async def purge(
    store: Storage,
    retention: RetentionConfig,
    here: str,
    now: int,
    *,
    source: str = "job",
    on_settled: OnSettled | None = None,
) -> Counts:
    """Delete what is past its maximum, in transactions of at most CHUNK envelopes.

    `here` is this node's name (to tell origin copies from relayed ones).
    Returns the total; each transaction that deleted something is recorded.

    With `on_settled` (the node's own purge job), held erasures whose content is gone
    turn `erased` and `on_settled` answers the nodes that asked. Without it (`relay
    purge` run from the command line, which cannot sign or send), they stay `held`
    with their content deleted, and the node settles and answers them when its purge
    job next runs (at start, then every 5 minutes): an answer is never skipped.
    """
    total = Counts()
    settled_any = False
    while True:
        counts, more, settled = await store.write(
            lambda tx: _purge_chunk(tx, retention, here, now, source, on_settled)
        )
        total += counts
        settled_any = settled_any or bool(settled)
        for rec in settled:  # a legal hold ended: the held erasure is done now
            event(log, "erasure_settled", origin=rec.origin, msg=rec.id.hex(), at=rec.done)
        if not more:
            break
    if settled_any:  # held content of an erasure went: keep it out of the log too
        event(log, "storage_scrubbed", detail=await store.scrub())
    if total.any():
        event(log, "purged", source=source, **total.as_dict())
    return total


async def prune_witnessed(store: Storage, retention: RetentionConfig, now: int) -> int:
    """Delete the tree heads peers sent more than `witnessed_heads_days` ago, but each
    peer's last and every head that is evidence of a fork (relay.federation.witness),
    in transactions of at most CHUNK; how many went.

    Only the node's purge job calls it (purge_node): the offline `relay purge`
    neither counts nor previews heads, so it leaves them alone."""
    before = now - retention.witnessed_heads_days * DAY_MS

    async def job(tx: WriteTx) -> int:
        return await tx.prune_witnessed(before, CHUNK)

    total = 0
    while (n := await store.write(job)) > 0:
        total += n
        if n < CHUNK:
            break
    if total:
        event(log, "witnessed_pruned", heads=total)
    return total


async def _purge_chunk(
    tx: WriteTx,
    retention: RetentionConfig,
    here: str,
    now: int,
    source: str,
    on_settled: OnSettled | None,
) -> tuple[Counts, bool, list[Erasure]]:
    cut = cutoffs(retention, now)
    content, full = await tx.content_due(cut, CHUNK)
    queued = await tx.queued([c.rid for c in content if c.queued])
    endings = [Ending(it, "expired", "retention", "its content is past retention") for it in queued]
    await end_queued(tx, here, endings, now, by="retention")
    shas = {c.payload_sha for c in content}
    await tx.clear_content([c.rid for c in content])
    settled: list[Erasure] = []
    if on_settled is not None:
        settled = await tx.settle_erasures(now, CHUNK)
        await on_settled(tx, settled, now)

    meta = await tx.metadata_due(cut, CHUNK)
    shas |= {m.payload_sha for m in meta if m.payload_sha is not None}
    deleted = await tx.delete_envelopes([m.rid for m in meta])
    decisions = await tx.delete_decisions_due(cut, CHUNK)

    payloads, payload_bytes = await tx.drop_unreferenced_payloads(sorted(shas))
    counts = Counts(
        contents=len(content),
        payloads=payloads,
        payload_bytes=payload_bytes,
        ended=len(queued),
        envelopes=deleted.envelopes,
        inbox=deleted.inbox,
        recipients=deleted.recipients,
        decisions=decisions,
    )
    await record(tx, now, source, counts)
    more = full or len(meta) == CHUNK or decisions == CHUNK or len(settled) == CHUNK
    return counts, more, settled


async def drop_content(
    tx: WriteTx, rids: Sequence[int], retention: RetentionConfig, now: int, *, source: str
) -> Counts:
    """A deletion path's way to delete content: mark `rids` for deletion, then
    delete at once the content of those past `content_min_days`. The rest is
    deleted by the purge job once the minimum has passed."""
    if not rids:
        return Counts()
    await tx.mark_discard(rids)
    due = await tx.content_received_before(rids, cutoffs(retention, now).cmin)
    await tx.clear_content(sorted(due))
    payloads, payload_bytes = await tx.drop_unreferenced_payloads(sorted(set(due.values())))
    counts = Counts(contents=len(due), payloads=payloads, payload_bytes=payload_bytes)
    await record(tx, now, source, counts)
    return counts


async def record(tx: WriteTx, now: int, source: str, counts: Counts) -> None:
    """Write the `purges` record of one deletion, if it deleted anything."""
    if counts.any():
        await tx.record_purge(now, source, counts)


async def purge_node(state: NodeState) -> Counts:
    """One run of the node's purge job: `purge`, then the witnessed heads past their time."""
    now = state.now_ms()
    total = await purge(
        state.store,
        state.config.retention,
        state.name,
        now,
        on_settled=lambda tx, recs, now: erasing.answer_settled(state, tx, recs, now),
    )
    await prune_witnessed(state.store, state.config.retention, now)
    return total


async def run_purger(state: NodeState, interval_s: float = PURGE_INTERVAL_S) -> None:
    """Purge once now, then every `interval_s` seconds until the node stops."""
    while not state.stopping:
        try:
            await purge_node(state)
        except RelayError as e:
            event(log, "purge_failed", logging.ERROR, detail=e.detail)
        await asyncio.sleep(interval_s)


# --- preview (read-only) ---------------------------------------------------------------


async def preview(reads: Reads, retention: RetentionConfig, now: int, limit: int = 100) -> Preview:
    """What a purge at `now` would delete; reads only (any storage, even read-only)."""
    return await reads.retention_preview(cutoffs(retention, now), limit)
