"""What an admin sees of the outbound queue and of the peers (`relay queue`, `relay peers`).

Invariants:
- Read-only: the records come from the storage's reads, on the node's own
  storage (admin API) or on a read-only open by the CLI while the node runs.
- The reads and the shaping of their records are separate, so the node and
  the CLI share both. "Now" is always passed in, never read here.
- Times are unix ms. An envelope's age is its time in this node's queue
  (now - enqueued). Its next retry is its next hop's: backoff is per peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.config.model import Peer
from relay.storage.records import AgeBucket, PeerState, QueueCount, QueueListing

# Postfix qshape-like age buckets: upper bounds in ms, the last bucket is open.
AGE_BOUNDS_MS = (60_000, 300_000, 600_000, 1_200_000, 2_400_000, 4_800_000, 9_600_000)
AGE_LABELS = ("0-1m", "1-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160m+")

# --- queue entries -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued envelope as `relay queue` lists it."""

    id: str  # lowercase hex
    origin: str
    kind: str
    sender: str
    dest: str
    hop: str
    enqueued: int
    age_ms: int
    attempts: int
    last_error: str
    held: bool
    size: int
    expires: int
    next_try: int  # its next attempt (unix ms): the hop's backoff or its own deferral; 0: now

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "origin": self.origin,
            "kind": self.kind,
            "from": self.sender,
            "dest": self.dest,
            "hop": self.hop,
            "enqueued": self.enqueued,
            "age_ms": self.age_ms,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "held": self.held,
            "size": self.size,
            "expires": self.expires,
            "next_try": self.next_try,
        }


def queue_entries(rows: Iterable[QueueListing], now: int) -> list[QueueEntry]:
    """Shape the listing of `Reads.queue_listing`."""
    return [
        QueueEntry(
            id=r.id.hex(),
            origin=r.origin,
            kind=r.kind,
            sender=r.sender,
            dest=r.dest,
            hop=r.hop,
            enqueued=r.enqueued,
            age_ms=max(now - r.enqueued, 0),
            attempts=r.attempts,
            last_error=r.last_error,
            held=r.held,
            size=r.size,
            expires=r.expires,
            next_try=r.next_try,
        )
        for r in rows
    ]


def next_retry_text(held: bool, next_try: int, now: int) -> str:
    """`held`, `now` or `in 3m12s`."""
    if held:
        return "held"
    if next_try <= now:
        return "now"
    return "in " + duration_text(next_try - now)


def render_queue(entries: Sequence[QueueEntry], now: int) -> str:
    """A table like `mailq`: id, destination, age, attempts, next retry, last error."""
    if not entries:
        return "queue is empty"
    rows = [
        (
            e.id,
            e.hop if e.hop == e.dest else f"{e.dest} via {e.hop}",
            duration_text(e.age_ms),
            str(e.attempts),
            next_retry_text(e.held, e.next_try, now),
            e.last_error or "-",
        )
        for e in entries
    ]
    head = ("ID", "DESTINATION", "AGE", "ATTEMPTS", "NEXT RETRY", "LAST ERROR")
    held = sum(e.held for e in entries)
    n = len(entries)
    tail = f"{n} envelope{'' if n == 1 else 's'} queued" + (f", {held} held" if held else "")
    return _table(head, rows, right={2, 3}) + "\n" + tail


# --- qshape-like summary ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeRow:
    """Queued envelopes of one destination (or TOTAL) by age bucket."""

    dest: str
    total: int
    held: int
    counts: tuple[int, ...]  # one per AGE_LABELS

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "total": self.total,
            "held": self.held,
            "ages": dict(zip(AGE_LABELS, self.counts, strict=True)),
        }


def queue_shape(rows: Iterable[AgeBucket]) -> list[ShapeRow]:
    """Shape `Reads.queue_ages(now, AGE_BOUNDS_MS)`: TOTAL first, then destinations
    by size, then name."""
    per: dict[str, list[int]] = {}
    held: dict[str, int] = {}
    for r in rows:
        per.setdefault(r.hop, [0] * len(AGE_LABELS))[r.bucket] += r.count
        held[r.hop] = held.get(r.hop, 0) + r.held
    dests = [ShapeRow(h, sum(c), held[h], tuple(c)) for h, c in per.items()]
    dests.sort(key=lambda r: (-r.total, r.dest))
    total = ShapeRow(
        "TOTAL",
        sum(r.total for r in dests),
        sum(r.held for r in dests),
        tuple(sum(r.counts[i] for r in dests) for i in range(len(AGE_LABELS))),
    )
    return [total, *dests]


def render_shape(shape: Sequence[ShapeRow]) -> str:
    """The age x destination table, TOTAL first, like Postfix's qshape."""
    head = ("DESTINATION", "T", *AGE_LABELS, "HELD")
    rows = [(r.dest, str(r.total), *map(str, r.counts), str(r.held)) for r in shape]
    return _table(head, rows, right=set(range(1, len(head))))


# --- peers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerView:
    """One destination as `relay peers` shows it."""

    name: str
    pinned: bool
    url: str | None
    jurisdiction: str | None
    state: str  # "up", "backing off", "retrying", "not tried"
    queued: int
    held: int
    delivered: int
    failures: int
    next_try: int
    last_error: str
    last_ok: int
    oldest_ms: int  # age of the oldest queued envelope, 0 if none

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pinned": self.pinned,
            "url": self.url,
            "jurisdiction": self.jurisdiction,
            "state": self.state,
            "queued": self.queued,
            "held": self.held,
            "delivered": self.delivered,
            "failures": self.failures,
            "next_try": self.next_try,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
            "oldest_ms": self.oldest_ms,
        }


def peer_state_name(failures: int, next_try: int, last_ok: int, now: int) -> str:
    """`backing off` while a backoff runs, `retrying` once it ran out, else `up`."""
    if failures > 0:
        return "backing off" if next_try > now else "retrying"
    return "up" if last_ok else "not tried"


def peer_views(
    peers: Sequence[Peer],
    states: Mapping[str, PeerState],
    queue_counts: Iterable[QueueCount],
    now: int,
) -> list[PeerView]:
    """Every pinned peer, and every other hop with queue or state, by name."""
    pinned: Mapping[str, Peer] = {p.name: p for p in peers}
    counts = {c.hop: c for c in queue_counts}
    out: list[PeerView] = []
    for name in sorted({*pinned, *states, *counts}):
        p = pinned.get(name)
        st = states.get(name, PeerState())
        c = counts.get(name, QueueCount(name, 0, 0, None))
        out.append(
            PeerView(
                name=name,
                pinned=p is not None,
                url=p.url if p else None,
                jurisdiction=p.jurisdiction if p else None,
                state=peer_state_name(st.failures, st.next_try, st.last_ok, now),
                queued=c.queued,
                held=c.held,
                delivered=st.delivered,
                failures=st.failures,
                next_try=st.next_try,
                last_error=st.last_error,
                last_ok=st.last_ok,
                oldest_ms=max(now - c.oldest, 0) if c.oldest is not None else 0,
            )
        )
    return out


def render_peers(views: Sequence[PeerView], now: int) -> str:
    """One line per destination: state, queue, deliveries, next retry, last error."""
    if not views:
        return "no peers"
    rows = []
    for v in views:
        note = "" if v.pinned else " (not pinned)"
        if v.pinned and v.url is None:
            note = " (no url)"
        rows.append(
            (
                v.name + note,
                v.jurisdiction or "-",
                v.state,
                str(v.queued),
                str(v.delivered),
                next_retry_text(False, v.next_try, now) if v.failures else "-",
                duration_text(now - v.last_ok) + " ago" if v.last_ok else "never",
                v.last_error or "-",
            )
        )
    head = ("PEER", "J", "STATE", "QUEUED", "DELIVERED", "NEXT RETRY", "LAST OK", "LAST ERROR")
    return _table(head, rows, right={3, 4})


# --- text helpers ------------------------------------------------------------------


def duration_text(ms: int) -> str:
    """A short human duration: 850ms, 42s, 3m12s, 2h05m, 3d04h."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max([len(head[i]), *(len(r[i]) for r in rows)]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])
