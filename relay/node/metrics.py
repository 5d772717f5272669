"""Prometheus metrics of one node (`GET /metrics`).

Invariants:
- Every node has its own `CollectorRegistry`; nothing is registered in the
  process-wide default registry, so several nodes can run in one process.
- Counters and histograms are fed by one-line calls from the code that did
  the work, after its transaction committed; a batch's counts are summed
  first and each series is incremented once per batch, not per message. Gauges about stored state
  (queue depth, unacked inbox rows, database size) are read from the
  database at scrape time, so they are never stale and need no bookkeeping.
- Label values come from config (peers, rule ids) or from fixed code lists
  (item codes, outcomes), never from unauthenticated input, so the number of
  series stays bounded. Mailbox names are labels only with `[metrics]
  mailbox_labels = true`; otherwise the per-mailbox series are one sum.
- The public listener serves /metrics only to a bearer token whose SHA-256
  is `[metrics] token_sha256` (compared in constant time); without one it
  answers 404 with the reason. `[metrics] listen` moves the endpoint to its
  own listener (the token, if set, is still required there).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections import Counter as Tally  # prometheus_client's Counter is the metric
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from relay.config.model import Config
from relay.errors import ItemRejected, RelayError
from relay.logs import event
from relay.node.conns import Listener
from relay.node.exposition import with_worker_label
from relay.node.http import answer_errors
from relay.policy.residency import Decision, Policy
from relay.protocol.envelope import Envelope
from relay.storage.interface import Storage
from relay.storage.records import Queued

log = logging.getLogger("relay.metrics")

PATH = "/metrics"
# The families read from the database at scrape time (_StoredState): one node's
# facts, the same from every worker, so they carry no worker label.
STORED_FAMILIES = frozenset(
    {
        "relay_node_info",
        "relay_queue_envelopes",
        "relay_queue_held_envelopes",
        "relay_queue_oldest_age_seconds",
        "relay_inbox_unacked_messages",
        "relay_database_size_bytes",
    }
)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

_Labelled = TypeVar("_Labelled", Counter, Histogram)


# What the hooks and the scrape read from the code that calls them. NodeState
# imports this module to build its Metrics, so this module names no feature
# type (NodeState, inbound's Candidate, submit's PlannedMessage): it says what
# it reads, and those types match by shape.


class RefusedItem(Protocol):
    """An inbound item refused before storing (federation.inbound's Refusal)."""

    @property
    def error(self) -> ItemRejected: ...
    @property
    def rule(self) -> str: ...


class AcceptedItem(Protocol):
    """An inbound item that passed the checks (federation.inbound's Candidate)."""

    @property
    def env(self) -> Envelope: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def audit(self) -> Decision | None: ...
    @property
    def hop(self) -> str | None: ...


class SubmittedPart(Protocol):
    """One envelope of a submitted message (node.submit's Planned)."""

    @property
    def env(self) -> Envelope: ...
    @property
    def decision(self) -> Decision: ...


class SubmittedMessage(Protocol):
    """A submitted message and its decisions (node.submit's PlannedMessage)."""

    @property
    def parts(self) -> Sequence[SubmittedPart]: ...
    @property
    def audits(self) -> Sequence[tuple[str, Decision]]: ...


class Scraped(Protocol):
    """The running node as the scrape reads it (NodeState)."""

    @property
    def store(self) -> Storage: ...
    @property
    def now_ms(self) -> Callable[[], int]: ...
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> Config: ...
    @property
    def policy(self) -> Policy: ...

    @property
    def worker(self) -> int | None: ...
    @property
    def metrics(self) -> Metrics: ...


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """The queue toward one next hop, as read at scrape time."""

    destination: str
    envelopes: int
    held: int
    oldest_ms: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Stored state read from the database for one scrape."""

    queues: tuple[QueueDepth, ...] = ()
    unacked: tuple[tuple[str, int], ...] = ()  # (mailbox, rows)
    database_bytes: int = 0
    now_ms: int = 0
    node: str = ""
    jurisdiction: str = ""
    mode: str = ""


class _StoredState(Collector):
    """Yields the gauges of the latest snapshot; the scrape handler refreshes it."""

    def __init__(self, mailbox_labels: bool) -> None:
        self.snapshot = Snapshot()
        self.mailbox_labels = mailbox_labels

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        info = GaugeMetricFamily(
            "relay_node_info",
            "This node's name, jurisdiction and policy mode",
            labels=["node", "jurisdiction", "mode"],
        )
        if s.node:
            info.add_metric([s.node, s.jurisdiction, s.mode], 1)
        yield info
        depth = GaugeMetricFamily(
            "relay_queue_envelopes", "Envelopes queued per next hop", labels=["destination"]
        )
        held = GaugeMetricFamily(
            "relay_queue_held_envelopes",
            "Queued envelopes on hold per next hop",
            labels=["destination"],
        )
        oldest = GaugeMetricFamily(
            "relay_queue_oldest_age_seconds",
            "Age of the oldest queued envelope per next hop",
            labels=["destination"],
        )
        for q in s.queues:
            depth.add_metric([q.destination], q.envelopes)
            held.add_metric([q.destination], q.held)
            oldest.add_metric([q.destination], max(s.now_ms - q.oldest_ms, 0) / 1000)
        yield depth
        yield held
        yield oldest
        help_text = "Messages delivered to local mailboxes and not acknowledged yet"
        if self.mailbox_labels:
            inbox = GaugeMetricFamily("relay_inbox_unacked_messages", help_text, labels=["mailbox"])
            for mailbox, rows in s.unacked:
                inbox.add_metric([mailbox], rows)
        else:
            total = sum(rows for _, rows in s.unacked)
            inbox = GaugeMetricFamily("relay_inbox_unacked_messages", help_text, value=total)
        yield inbox
        yield GaugeMetricFamily(
            "relay_database_size_bytes",
            "Bytes of the SQLite database file plus its write-ahead log",
            value=s.database_bytes,
        )


class Metrics:
    """The counters, histograms and scrape-time gauges of one node.

    With `mailbox_labels` false (the default), no series names a mailbox.
    """

    def __init__(self, *, mailbox_labels: bool = False, worker: int | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.mailbox_labels = mailbox_labels
        self.worker = worker  # under `relay run --workers N`: a `worker` label on each series
        by_mailbox = ["mailbox"] if mailbox_labels else []
        r = self.registry
        self.stored = _StoredState(mailbox_labels)
        r.register(self.stored)
        self.accepted = Counter(
            "relay_envelopes_accepted",
            "Envelopes received from a peer and stored",
            ["peer"],
            registry=r,
        )
        self.duplicate = Counter(
            "relay_envelopes_duplicate",
            "Envelopes received from a peer that were already stored",
            ["peer"],
            registry=r,
        )
        self.rejected = Counter(
            "relay_envelopes_rejected",
            "Envelopes received from a peer and refused, by item code",
            ["peer", "reason"],
            registry=r,
        )
        self.unsealed = Counter(
            "relay_messages_received_unsealed",
            "Messages for this node's mailboxes received from a peer and stored with the"
            " payload in the clear (docs/sealing.md), by origin node",
            ["origin"],
            registry=r,
        )
        self.batches_refused = Counter(
            "relay_batches_refused",
            "Inbound batch requests refused as a whole, by error code",
            ["reason"],
            registry=r,
        )
        self.submitted = Counter(
            "relay_messages_submitted",
            "Messages accepted from clients through the API",
            by_mailbox,
            registry=r,
        )
        self.submit_refused = Counter(
            "relay_submits_refused",
            "Client submits refused, by error code",
            ["reason"],
            registry=r,
        )
        self.attempts = Counter(
            "relay_delivery_attempts",
            "Outbound batch attempts per next hop, by outcome (ok, retry, split, rejected)",
            ["peer", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "relay_delivery_retries",
            "Outbound batch attempts that failed and will be retried, per next hop",
            ["peer"],
            registry=r,
        )
        self.ended = Counter(
            "relay_envelopes_ended",
            "Queued envelopes that ended without delivery (expired, rejected), per next hop",
            ["peer", "status", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "Time from queueing at this node to the next hop's signed acceptance",
            ["peer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "relay_batch_envelopes",
            "Envelopes per federation batch, inbound and outbound",
            ["direction"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "relay_decisions",
            "Residency decisions by enforcement point, outcome and rule",
            ["point", "outcome", "rule"],
            registry=r,
        )
        self.webhooks = Counter(
            "relay_webhook_deliveries",
            "Webhook POST attempts, by outcome (ok, retry, refused)",
            [*by_mailbox, "outcome"],
            registry=r,
        )
        self.tree_heads = Counter(
            "relay_tree_heads",
            "New tree heads peers sent, by what checking them showed (relay.federation.witness)",
            ["peer", "outcome"],
            registry=r,
        )

    def _for(self, metric: _Labelled, mailbox: str, *labels: str) -> _Labelled:
        """`metric`'s child for `labels`, and for `mailbox` when mailboxes are labels."""
        values = (mailbox, *labels) if self.mailbox_labels else labels
        return metric.labels(*values) if values else metric

    # --- hooks -------------------------------------------------------------------

    def decision(self, point: str, outcome: str, rule: str, n: int = 1) -> None:
        """Count `n` residency decisions alike."""
        self.decisions.labels(point, outcome, rule).inc(n)

    def _decisions(self, counted: Tally[tuple[str, str, str]]) -> None:
        for (point, outcome, rule), n in counted.items():
            self.decision(point, outcome, rule, n)

    def inbound_batch(
        self,
        peer: str,
        results: Mapping[bytes, str],
        refusals: Sequence[RefusedItem],
        candidates: Sequence[AcceptedItem],
    ) -> None:
        """A committed inbound batch: results per envelope and the accept decisions."""
        self.batch_size.labels("in").observe(len(results))
        outcomes = Tally(results.values())
        for result, n in outcomes.items():
            if result == "accepted":
                self.accepted.labels(peer).inc(n)
            elif result == "duplicate":
                self.duplicate.labels(peer).inc(n)
            else:
                self.rejected.labels(peer, result.partition(":")[2] or result).inc(n)
        decided: Tally[tuple[str, str, str]] = Tally(
            ("accept", "deny", r.rule) for r in refusals if r.error.item_code == "residency"
        )
        unsealed: Tally[str] = Tally()
        for c in candidates:
            h = c.env.header
            if results.get(h.id) != "accepted":
                continue
            if c.hop is None and h.kind == "message" and h.seal is None:
                unsealed[h.origin] += 1
            if c.audit is not None:
                decided["accept", "audit", c.audit.rule] += 1
            else:
                decided["accept", "allow", c.rule_id] += 1
        for origin, n in unsealed.items():
            self.unsealed.labels(origin).inc(n)
        self._decisions(decided)

    def tree_head(self, peer: str, outcome: str) -> None:
        """A new tree head `peer` sent: `outcome` is what checking it showed."""
        self.tree_heads.labels(peer, outcome).inc()

    def batch_refused(self, code: str) -> None:
        """An inbound batch request refused before any item was judged."""
        self.batches_refused.labels(code).inc()

    def submitted_messages(self, mailbox: str, planned: Sequence[SubmittedMessage]) -> None:
        """Messages a client submitted, and their submit decisions."""
        self._for(self.submitted, mailbox).inc(len(planned))
        decided: Tally[tuple[str, str, str]] = Tally()
        for pm in planned:
            audited = {dest for dest, _ in pm.audits}
            for _, d in pm.audits:
                decided["submit", d.outcome, d.rule] += 1
            for p in pm.parts:
                if p.env.header.dest not in audited:
                    decided["submit", "allow", p.decision.rule] += 1
        self._decisions(decided)

    def submit_refusal(self, code: str, rule: str | None = None) -> None:
        """A refused submit; with `rule`, a policy refusal (a submit deny decision)."""
        self.submit_refused.labels(code).inc()
        if rule is not None:
            self.decision("submit", "deny", rule)

    def delivered(
        self,
        peer: str,
        items: Sequence[Queued],
        results: Mapping[bytes, str],
        now_ms: int,
        audits: Mapping[int, Decision],
    ) -> None:
        """A batch the next hop answered with a signed result; `audits` by queue rid."""
        self.attempts.labels(peer, "ok").inc()
        self.batch_size.labels("out").observe(len(items))
        latency = self.latency.labels(peer)
        decided: Tally[tuple[str, str, str]] = Tally()
        for it in items:
            if results.get(it.id) in ("accepted", "duplicate"):
                latency.observe(max(now_ms - it.enqueued, 0) / 1000)
                audit = audits.get(it.rid)
                if audit is not None:
                    decided["forward", "audit", audit.rule] += 1
                else:
                    decided["forward", "allow", ""] += 1
        self._decisions(decided)

    def attempt(self, peer: str, outcome: str) -> None:
        """An outbound attempt that did not deliver: retry, split or rejected."""
        self.attempts.labels(peer, outcome).inc()
        if outcome == "retry":
            self.retries.labels(peer).inc()

    def ended_envelopes(
        self, peer: str, ended: Iterable[tuple[Queued, str, str, str, str]]
    ) -> None:
        """Envelopes a sender ended before sending: (item, status, reason, detail, rule)."""
        for _, status, reason, _, rule in ended:
            self.ended.labels(peer, status, reason).inc()
            if status == "rejected" and reason == "residency":
                self.decision("forward", "deny", rule)

    def webhook(self, mailbox: str, outcome: str) -> None:
        """One webhook delivery attempt or refusal."""
        self._for(self.webhooks, mailbox, outcome).inc()

    # --- scraping ---------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition of every metric, and its content type, for an Accept header.

        A worker's is always the text format, its own series labelled `worker`
        (its supervisor merges the workers', relay.node.exposition).
        """
        if self.worker is not None:
            text = generate_latest(self.registry).decode()
            return with_worker_label(text, self.worker, STORED_FAMILIES).encode(), TEXT_FORMAT
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


async def read_snapshot(state: Scraped) -> Snapshot:
    """Queue depth per next hop, unacked inbox rows per mailbox and database size."""
    store = state.store
    queues = await store.queue_counts()
    unacked = await store.unacked_counts()
    return Snapshot(
        queues=tuple(QueueDepth(q.hop, q.queued, q.held, q.oldest or 0) for q in queues),
        unacked=tuple(sorted(unacked.items())),
        database_bytes=await store.size_bytes(),
        now_ms=state.now_ms(),
        node=state.name,
        jurisdiction=state.config.node.jurisdiction,
        mode=state.policy.mode,
    )


def token_ok(header: str, token_sha256: str) -> bool:
    """True if `header` is `Bearer <token>` and sha256(token) is `token_sha256`."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    return hmac.compare_digest(digest.encode(), token_sha256.encode())


def _not_here(detail: str) -> web.Response:
    return web.json_response({"error": "not_found", "detail": detail}, status=404)


async def scrape_public(state: Scraped, request: web.Request) -> web.Response:
    """`GET /metrics` on the node's own listener: only with `[metrics] token_sha256`."""
    cfg = state.config.metrics
    if state.worker is not None:
        return _not_here(
            "this node runs several workers: their merged metrics are served by the "
            "supervisor on [metrics] listen"
        )
    if cfg.listen_host is not None:
        return _not_here("/metrics is served on its own listener ([metrics] listen)")
    if cfg.token_sha256 is None:
        return _not_here(
            "/metrics is not served on the public listener without a token: "
            "set [metrics] listen or [metrics] token_sha256"
        )
    return await scrape(state, request)


async def scrape(state: Scraped, request: web.Request) -> web.Response:
    """`GET /metrics`: check the token if one is set, refresh the stored-state gauges, render."""
    wanted = state.config.metrics.token_sha256
    if wanted is not None and not token_ok(request.headers.get("Authorization", ""), wanted):
        return web.json_response(
            {"error": "unauthorized", "detail": "send 'Authorization: Bearer <metrics token>'"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body, content_type = await exposition(state, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def exposition(state: Scraped, accept: str = "") -> tuple[bytes, str]:
    """Refresh the stored-state gauges, then render every metric."""
    metrics = state.metrics
    try:
        metrics.stored.snapshot = await read_snapshot(state)
    except (RelayError, ValueError) as e:
        # serve the counters anyway; the stored-state gauges keep their last values
        event(log, "metrics_snapshot_failed", logging.WARNING, detail=str(e))
    return metrics.render(accept)


async def serve(
    state: Scraped, app: web.Application, *, own_listener: bool = True
) -> Listener | None:
    """Route `GET /metrics` on `app`, and with `[metrics] listen` start its own listener.

    Call before `app` is set up. On `app` (the public listener) the route
    answers only with a token (`scrape_public`). Returns the separate
    listener (the caller stops it at stop) or None; never one without
    `own_listener` (a worker's supervisor serves `[metrics] listen`).
    """
    app.router.add_get(PATH, functools.partial(scrape_public, state))
    cfg = state.config.metrics
    if cfg.listen_host is None or not own_listener:
        return None
    own = web.Application(middlewares=[answer_errors])
    own.router.add_get(PATH, functools.partial(scrape, state))
    listener = Listener(own, lambda: state.config.limits, "metrics", shutdown_timeout=2)
    try:
        await listener.start(cfg.listen_host, cfg.listen_port)
    except OSError:
        await listener.stop()
        raise
    return listener
