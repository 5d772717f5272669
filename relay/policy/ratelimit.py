"""Token-bucket rate limits: per mailbox on the client API, per peer on federation
(batch requests and batch body bytes).

Invariants:
- One bucket per key: a mailbox whose token authenticated, or a peer whose
  request signature verified (never a name a request merely claims). A bucket
  holds at most `burst` tokens and refills at `rate` tokens a second on a
  monotonic clock, never the node's wall clock (tests freeze that one).
- A refused request takes nothing from its bucket and is answered 429
  `rate_limited` with `Retry-After`: the whole seconds until enough tokens are
  back. A request costing more than the whole burst (a large batch submit)
  takes the whole burst once the bucket is full: it waits, never forever.
- Rate 0 means unlimited: no bucket is kept. A reload keeps the buckets and
  applies the new rate and burst from then on.
- The number of buckets is bounded: past `MAX_BUCKETS` the full (idle) ones
  are dropped, which loses nothing since a full bucket is the starting state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.config.model import LimitsConfig
from relay.errors import Busy, RateLimited, RelayError

MAX_BUCKETS = 10_000
DEFAULT_RETRY_AFTER_S = {429: 1, 503: 2}


class Throttled(RateLimited):
    """429 with the seconds after which the same request would pass."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Buckets:
    """Token buckets sharing one rate and burst, one per key."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, cost: int = 1) -> float:
        """Take `cost` tokens from `key`'s bucket: 0.0 if taken, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        need = float(min(max(cost, 0), self.burst))
        if b.tokens + 1e-9 >= need:  # float refill: 0.001 s at 1000/s is one token
            b.tokens = max(0.0, b.tokens - need)
            return 0.0
        return (need - b.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class Limits:
    """The node's rate limits (`[limits]`): one bucket set for mailboxes, one for peers."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = Buckets(config.client_rate, config.client_burst, clock)
        self.peers = Buckets(config.peer_rate, config.peer_burst, clock)
        self.peer_bytes = Buckets(config.peer_bytes_per_s, _second(config), clock)

    @classmethod
    def renew(cls, old: Limits | None, config: LimitsConfig) -> Limits:
        """`old` with the rates of `config` (a reload), or new limits."""
        if old is None:
            return cls(config)
        old.clients.rate, old.clients.burst = config.client_rate, config.client_burst
        old.peers.rate, old.peers.burst = config.peer_rate, config.peer_burst
        old.peer_bytes.rate, old.peer_bytes.burst = config.peer_bytes_per_s, _second(config)
        return old

    def client(self, mailbox: str, cost: int = 1) -> None:
        """Charge `cost` (messages submitted, or 1 request) to `mailbox`; Throttled if over."""
        wait = self.clients.take(mailbox, cost)
        if wait > 0:
            rate = self.clients.rate
            raise Throttled(
                f"mailbox {mailbox} is over its limit of {rate:g} messages a second "
                f"(burst {self.clients.burst}); retry after {_seconds(wait)} s",
                _seconds(wait),
            )

    def peer(self, peer: str) -> None:
        """Charge one batch request to `peer`; Throttled if over."""
        wait = self.peers.take(peer)
        if wait > 0:
            raise Throttled(
                f"{peer} is over its limit of {self.peers.rate:g} batch requests a second "
                f"(burst {self.peers.burst}); retry after {_seconds(wait)} s",
                _seconds(wait),
            )

    def peer_body(self, peer: str, size: int) -> None:
        """Charge a batch body of `size` bytes to `peer`; Throttled if over."""
        wait = self.peer_bytes.take(peer, size)
        if wait > 0:
            raise Throttled(
                f"{peer} is over its limit of {self.peer_bytes.rate:g} batch bytes a second"
                f" ({size} bytes asked); retry after {_seconds(wait)} s",
                _seconds(wait),
            )


def _second(config: LimitsConfig) -> int:
    """The byte bucket's burst: one second's worth."""
    return max(1, config.peer_bytes_per_s)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def retry_after(e: RelayError) -> int | None:
    """Seconds a client should wait before retrying after `e`, for 429 and 503 only."""
    if e.status not in DEFAULT_RETRY_AFTER_S:
        return None
    given = getattr(e, "retry_after", None)
    if isinstance(given, int) and given > 0:
        return given
    return DEFAULT_RETRY_AFTER_S[e.status]


def retry_headers(e: RelayError) -> dict[str, str]:
    """`{"Retry-After": "<s>"}` for a 429 or 503 answer, else nothing.

    A `busy` answer also closes the connection: the body it refused is then
    not read to its end, and a client that ignores Retry-After pays a reconnect.
    """
    seconds = retry_after(e)
    if seconds is None:
        return {}
    if isinstance(e, Busy):
        return {"Retry-After": str(seconds), "Connection": "close"}
    return {"Retry-After": str(seconds)}
