"""Sending to one next hop as pure decisions (DESIGN §5 "Sending", protocol.md §12–13).

A `Planner` is the memory of one destination's sender: how many queued
envelopes to fetch, the peer's advertised body limit, and the id of the last
batch that failed. `plan` turns the head of the queue into the next batch;
`answer` turns what the peer answered into a decision. Queue rows, the peer
state, HTTP, the clock and the dice stay with the shell (`now_ms`, `draw`).

Invariants:
- A batch is a non-empty prefix of the queue rows it is given: at most
  `fetch_limit` rows (the shell fetches that many) and, past the first row,
  at most the byte budget, min(`batch_bytes`, the peer's advertised
  `max_body_bytes`), counting BATCH_OVERHEAD and the certificates carried
  with the first row of each origin. One row is always sent, however large.
- A batch carries at most MAX_BATCH_RECEIPTS receipt envelopes, so however
  full each receipt is (receipt.MAX_RECEIPT_ENTRIES), the receiver's cap of
  receipt.MAX_BATCH_RECEIPT_ENTRIES entries per batch is never passed: a
  receipt refused for that cap would be refused for good.
- A batch keeps the id of the last attempt iff that attempt failed and the
  batch holds exactly the same rows in the same order; any other batch gets
  a fresh id. A signed result, a split or a give-up forgets the id.
- 400 or 413 with code `malformed` or `too_large` halves the fetch limit of
  a batch of several rows (not a failure: the next try is at once) and gives
  up the envelope of a batch of one, with the code as reason. A signed
  result or a give-up restores the fetch limit.
- Every other answer is a failed attempt (a 3xx too: it is never followed):
  the n-th consecutive failure waits uniform(0, min(retry_max, retry_min *
  2^(n-1))) ms, at least 10 ms. A 429 or 503 with Retry-After waits at least
  that long, capped at retry_max (the peer may only slow its own queue).
- Ids missing from a signed result stay queued and count as a failure of
  the peer, unless the result came with Retry-After (the receiver deferring
  a full mailbox's items, protocol.md choice 24a): then only those items
  wait, that long (capped at retry_max), and the peer is not failing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Generic, Protocol, TypeVar

from relay.errors import RelayError
from relay.protocol.batch import Delivered
from relay.protocol.receipt import MAX_BATCH_RECEIPT_ENTRIES, MAX_RECEIPT_ENTRIES

BATCH_OVERHEAD = 64  # bytes of batch framing around the items
PERMANENT_CODES = frozenset({"too_large", "malformed"})
SPLIT_STATUSES = frozenset({400, 413})
RETRY_AFTER_STATUSES = frozenset({429, 503})
MIN_WAIT_MS = 10
MISSING = "missing from the peer's result"
DEFERRED = "left out of the peer's result with Retry-After (its mailbox is full)"
MAX_BATCH_RECEIPTS = MAX_BATCH_RECEIPT_ENTRIES // MAX_RECEIPT_ENTRIES


class Queued(Protocol):
    """A queue row as the planner reads it (relay.storage.sqlite.ledger.Queued)."""

    @property
    def rid(self) -> int: ...
    @property
    def id(self) -> bytes: ...
    @property
    def origin(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def wire_size(self) -> int: ...


Q = TypeVar("Q", bound=Queued)

# --- what the shell feeds in -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedResult:
    """A 200 whose signed result verified and names this batch and nonce.

    `retry_after`: its Retry-After header, sent when the peer left items out
    of the results for now (a full mailbox there): they wait at least that long.
    """

    results: Mapping[bytes, str]
    retry_after: str | None = None
    # delivery-v1 (protocol.md §22): the peer's signed word that it stored these
    # for its own mailboxes, and the signed result itself, kept as the proof
    delivered: Delivered | None = None
    result_bytes: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpRefusal:
    """Any answer but 200: its status, the JSON `error` and `detail`, its Retry-After."""

    status: int
    code: str = ""
    detail: str = ""
    retry_after: str | None = None

    @property
    def error(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.detail}"


@dataclass(frozen=True, slots=True)
class NoResult:
    """No usable answer: connection error, timeout, no URL, an answer over the size
    cap, a result that does not verify or is for another batch or nonce.

    `status` is the HTTP status when one was read (a 413 still rereads the
    peer's limits), else 0.
    """

    error: str
    status: int = 0


Answer = SignedResult | HttpRefusal | NoResult

# --- what the planner decides -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send(Generic[Q]):
    """Send `items` as batch `batch_id` (`reused`: the id of the failed attempt before)."""

    batch_id: bytes
    items: tuple[Q, ...]
    reused: bool


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt: the peer's new failure count and when to try next."""

    error: str
    failures: int
    wait_ms: int
    next_try: int
    reread_limits: bool = False  # a 413: ask the peer for its max_body_bytes again


@dataclass(frozen=True, slots=True)
class Settle(Generic[Q]):
    """A signed result: dequeue `delivered` and `rejected` (with its code); `missing`
    stay queued, and then either `retry` is the failure they count as, or (the
    peer asked for time) they alone wait until `defer_until` (unix ms)."""

    delivered: tuple[Q, ...]
    rejected: tuple[tuple[Q, str], ...]
    missing: tuple[Q, ...]
    retry: Retry | None
    defer_until: int = 0


@dataclass(frozen=True, slots=True)
class Split:
    """Fetch at most `limit` rows and try again at once; not a failure."""

    limit: int
    error: str
    reread_limits: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp(Generic[Q]):
    """End `item` as rejected with `code` as the reason."""

    item: Q
    code: str
    error: str
    reread_limits: bool = False


Decision = Settle[Q] | Split | GiveUp[Q] | Retry

Draw = Callable[[float, float], float]  # random.uniform(low, high)


class Planner(Generic[Q]):
    """The sending decisions of one destination; one per sender task."""

    def __init__(
        self, *, batch_envelopes: int, batch_bytes: int, retry_min_ms: int, retry_max_ms: int
    ) -> None:
        self.batch_envelopes = self.batch_bytes = self.retry_min_ms = self.retry_max_ms = 0
        self.tune(
            batch_envelopes=batch_envelopes,
            batch_bytes=batch_bytes,
            retry_min_ms=retry_min_ms,
            retry_max_ms=retry_max_ms,
        )
        self.fetch_limit = batch_envelopes
        self.peer_max_body: int | None = None
        self._last: tuple[bytes, tuple[int, ...]] | None = None
        self._sent: tuple[Q, ...] = ()

    def tune(
        self, *, batch_envelopes: int, batch_bytes: int, retry_min_ms: int, retry_max_ms: int
    ) -> None:
        """Take new `[federation]` settings (a reload); the fetch limit keeps until reset."""
        if batch_envelopes < 1 or batch_bytes < 1 or not 0 <= retry_min_ms <= retry_max_ms:
            raise RelayError(
                f"Planner: batch_envelopes {batch_envelopes} and batch_bytes {batch_bytes} must"
                f" be positive and 0 <= retry_min {retry_min_ms} <= retry_max {retry_max_ms}"
            )
        self.batch_envelopes = batch_envelopes
        self.batch_bytes = batch_bytes
        self.retry_min_ms = retry_min_ms
        self.retry_max_ms = retry_max_ms

    @property
    def budget(self) -> int:
        """Body bytes a batch may fill past its first row."""
        if self.peer_max_body is None:
            return self.batch_bytes
        return min(self.batch_bytes, self.peer_max_body)

    def trim(self, rows: Sequence[Q], carried_size: Callable[[str], int]) -> tuple[Q, ...]:
        """The longest prefix of `rows` within the byte budget and the receipt
        limit (never empty).

        `carried_size(origin)` is what that origin's certificates add to its
        first row.
        """
        out: list[Q] = []
        used = BATCH_OVERHEAD
        origins: set[str] = set()
        receipts = 0
        for row in rows:
            size = row.wire_size
            if row.origin not in origins:
                size += carried_size(row.origin)
            if out and used + size > self.budget:
                break
            if row.kind == "receipt":
                if receipts == MAX_BATCH_RECEIPTS:
                    break
                receipts += 1
            out.append(row)
            origins.add(row.origin)
            used += size
        return tuple(out)

    def plan(
        self, rows: Sequence[Q], carried_size: Callable[[str], int], new_id: Callable[[], bytes]
    ) -> Send[Q]:
        """The next batch from the head of the queue (`rows`, in queue order).

        `new_id` draws a fresh batch id; it is called only when the id is not reused.
        """
        if not rows:
            raise RelayError("Planner.plan: nothing to send")
        items = self.trim(rows[: self.fetch_limit], carried_size)
        rids = tuple(it.rid for it in items)
        reused = self._last is not None and self._last[1] == rids
        batch_id = self._last[0] if self._last is not None and reused else new_id()
        self._last = (batch_id, rids)
        self._sent = items
        return Send(batch_id, items, reused)

    def answer(self, answer: Answer, *, failures: int, now_ms: int, draw: Draw) -> Decision[Q]:
        """Decide on the peer's answer to the last planned batch.

        `failures` is the peer's consecutive failure count before this attempt.
        """
        items = self._sent
        if not items:
            raise RelayError("Planner.answer: no batch was planned")
        if isinstance(answer, SignedResult):
            at_least = min(retry_after_ms(answer.retry_after, now_ms) or 0, self.retry_max_ms)
            return self._settle(items, answer.results, failures, now_ms, draw, at_least)
        status = answer.status
        reread = status == 413
        if isinstance(answer, HttpRefusal):
            if status in SPLIT_STATUSES and answer.code in PERMANENT_CODES:
                self._last = None
                self._sent = ()
                if len(items) > 1:
                    self.fetch_limit = max(1, len(items) // 2)
                    return Split(self.fetch_limit, answer.error, reread)
                self.fetch_limit = self.batch_envelopes
                return GiveUp(items[0], answer.code, answer.error, reread)
            at_least = 0
            if status in RETRY_AFTER_STATUSES:
                at_least = min(retry_after_ms(answer.retry_after, now_ms) or 0, self.retry_max_ms)
            return self.backoff(answer.error, failures, now_ms, draw, at_least, reread)
        return self.backoff(answer.error, failures, now_ms, draw, 0, reread)

    def _settle(
        self,
        items: tuple[Q, ...],
        results: Mapping[bytes, str],
        failures: int,
        now_ms: int,
        draw: Draw,
        at_least_ms: int = 0,
    ) -> Settle[Q]:
        delivered: list[Q] = []
        rejected: list[tuple[Q, str]] = []
        missing: list[Q] = []
        for it in items:
            r = results.get(it.id)
            if r is None:
                missing.append(it)
            elif r in ("accepted", "duplicate"):
                delivered.append(it)
            else:
                rejected.append((it, r.partition(":")[2] or r))
        self._last = None
        self._sent = ()
        self.fetch_limit = self.batch_envelopes
        if missing and at_least_ms > 0:  # the peer deferred these items, not the batch
            return Settle(
                tuple(delivered), tuple(rejected), tuple(missing), None, now_ms + at_least_ms
            )
        retry = self.backoff(MISSING, failures, now_ms, draw, at_least_ms) if missing else None
        return Settle(tuple(delivered), tuple(rejected), tuple(missing), retry)

    def backoff(
        self,
        error: str,
        failures: int,
        now_ms: int,
        draw: Draw,
        at_least_ms: int = 0,
        reread_limits: bool = False,
    ) -> Retry:
        """The failure after `failures` others: a full-jitter wait of at least `at_least_ms`."""
        n = failures + 1
        wait = max(jitter_wait_ms(n, self.retry_min_ms, self.retry_max_ms, draw), at_least_ms)
        return Retry(error, n, wait, now_ms + wait, reread_limits)


def jitter_wait_ms(failures: int, retry_min_ms: int, retry_max_ms: int, draw: Draw) -> int:
    """The wait after the `failures`-th consecutive failure (1 for the first):
    uniform(0, min(retry_max, retry_min * 2^(failures-1))) ms, at least MIN_WAIT_MS."""
    cap = min(retry_max_ms, retry_min_ms * (2 ** min(failures - 1, 40)))
    return max(MIN_WAIT_MS, int(draw(0, cap)))


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A Retry-After header (RFC 9110 §10.2.3) as ms from `now_ms`; None if absent or invalid.

    Delay-seconds or an HTTP-date; a date in the past is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text) * 1000
    try:
        when: datetime = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int(when.timestamp() * 1000) - now_ms)
