"""What an admin sees of the outbound queue and of the peers (`relay queue`, `relay peers`).

Invariants:
- Read-only: every query here is a SELECT, so it runs on the node's read
  connection (admin API) or on a separate read-only connection opened by the
  CLI while the node runs (WAL gives it the last committed state).
- The SQL and the shaping of its rows are separate, so the async node and the
  synchronous CLI share both. "Now" is always passed in, never read here.
- Times are unix ms. An envelope's age is its time in this node's queue
  (now - enqueued). Its next retry is its next hop's: backoff is per peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.config.model import Peer

# Postfix qshape-like age buckets: upper bounds in ms, the last bucket is open.
AGE_BOUNDS_MS = (60_000, 300_000, 600_000, 1_200_000, 2_400_000, 4_800_000, 9_600_000)
AGE_LABELS = ("0-1m", "1-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160m+")

QUEUE_SQL = (
    "SELECT q.rid, e.id, e.origin, e.kind, e.sender, e.dest, q.hop, q.enqueued, q.attempts,"
    " q.last_error, q.held, e.size, e.expires, coalesce(ps.next_try, 0)"
    " FROM queue q JOIN envelopes e ON e.rid = q.rid"
    " LEFT JOIN peer_state ps ON ps.peer = q.hop"
    " WHERE (:hop IS NULL OR q.hop = :hop) ORDER BY q.rid LIMIT :limit"
)

_BUCKET = " ".join(
    f"WHEN :now - enqueued < {bound} THEN {i}" for i, bound in enumerate(AGE_BOUNDS_MS)
)
SHAPE_SQL = (
    f"SELECT hop, CASE {_BUCKET} ELSE {len(AGE_BOUNDS_MS)} END AS bucket,"
    " count(*), coalesce(sum(held), 0) FROM queue GROUP BY hop, bucket"
)

PEER_STATE_SQL = "SELECT peer, failures, next_try, last_error, last_ok, delivered FROM peer_state"
QUEUE_COUNTS_SQL = (
    "SELECT hop, count(*), coalesce(sum(held), 0), min(enqueued) FROM queue GROUP BY hop"
)


def queue_params(hop: str | None = None, limit: int = -1) -> dict[str, Any]:
    """Parameters of QUEUE_SQL; a negative limit means no limit."""
    return {"hop": hop, "limit": limit}


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
    next_try: int  # the hop's next attempt (unix ms), 0 if no backoff

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


def queue_entries(rows: Iterable[Sequence[Any]], now: int) -> list[QueueEntry]:
    """Shape the rows of QUEUE_SQL."""
    return [
        QueueEntry(
            id=bytes(r[1]).hex(),
            origin=r[2],
            kind=r[3],
            sender=r[4],
            dest=r[5],
            hop=r[6],
            enqueued=r[7],
            age_ms=max(now - r[7], 0),
            attempts=r[8],
            last_error=r[9],
            held=bool(r[10]),
            size=r[11],
            expires=r[12],
            next_try=r[13],
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


def queue_shape(rows: Iterable[Sequence[Any]]) -> list[ShapeRow]:
    """Shape the rows of SHAPE_SQL: TOTAL first, then destinations by size, then name."""
    per: dict[str, list[int]] = {}
    held: dict[str, int] = {}
    for hop, bucket, count, n_held in rows:
        per.setdefault(hop, [0] * len(AGE_LABELS))[bucket] += count
        held[hop] = held.get(hop, 0) + n_held
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
    state_rows: Iterable[Sequence[Any]],
    count_rows: Iterable[Sequence[Any]],
    now: int,
) -> list[PeerView]:
    """Every pinned peer, and every other hop with queue or state, by name."""
    pinned: Mapping[str, Peer] = {p.name: p for p in peers}
    states = {r[0]: tuple(r[1:]) for r in state_rows}
    counts = {r[0]: tuple(r[1:]) for r in count_rows}
    out: list[PeerView] = []
    for name in sorted({*pinned, *states, *counts}):
        p = pinned.get(name)
        failures, next_try, last_error, last_ok, delivered = states.get(name, (0, 0, "", 0, 0))
        queued, held, oldest = counts.get(name, (0, 0, None))
        out.append(
            PeerView(
                name=name,
                pinned=p is not None,
                url=p.url if p else None,
                jurisdiction=p.jurisdiction if p else None,
                state=peer_state_name(failures, next_try, last_ok, now),
                queued=queued,
                held=held,
                delivered=delivered,
                failures=failures,
                next_try=next_try,
                last_error=last_error,
                last_ok=last_ok,
                oldest_ms=max(now - oldest, 0) if oldest is not None else 0,
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
