"""Crash safety (issue 4 point 1): stream messages A→B while SIGKILLing both nodes.

Two `relay run` subprocesses set up through the CLI. A client thread submits
sequence-numbered messages to A's batch endpoint, each request with its own
Idempotency-Key, retrying the same request (same key) until it gets its 202:
a submit that got no answer may or may not have been stored, and the key makes
the retry return the first answer. Meanwhile the test SIGKILLs B and A in
turn, each time while there is work in flight that is not yet acknowledged,
and restarts them with `relay run`. At the end every sequence number must sit
in B's inbox exactly once and A's status must say `delivered` for each.

The second test holds every transaction open for a while (RELAY_FAULT
`commit_delay_ms`) and kills a node only when its log says a transaction is
between BEGIN and COMMIT, checking afterwards that the kill landed there.

RELAY_FAULT_MESSAGES and RELAY_FAULT_KILLS (per node) scale a longer soak.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import NodeProc, make_pair, wait_for
from tests.fault.common import (
    LogWatch,
    inbox_seqs,
    log_events,
    payload,
    queue_len,
    set_federation,
    statuses,
    undelivered,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MESSAGES = int(os.environ.get("RELAY_FAULT_MESSAGES", "5000"))
KILLS = int(os.environ.get("RELAY_FAULT_KILLS", "6"))
BATCH = 25
COMMIT_DELAY_MS = 40


def _request(
    url: str, token: str, body: Any = None, key: str | None = None, timeout: float = 15
) -> tuple[int, Any] | None:
    """One client API call; None when no HTTP answer came back (the node died)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key is not None:
        headers["Idempotency-Key"] = key
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, http.client.HTTPException):
        return None


class Submitter(threading.Thread):
    """Submits messages 0..total-1 in batches, never more than `allowed` so far."""

    def __init__(self, url: str, token: str, to: str, total: int) -> None:
        super().__init__(name="submitter", daemon=True)
        self.url, self.token, self.to, self.total = url, token, to, total
        self.allowed = 0
        self.ids: dict[int, str] = {}
        self.in_flight = False
        self.requests = 0
        self.retries = 0
        self.failure = ""

    def run(self) -> None:
        sent = 0
        while sent < self.total and not self.failure:
            if sent >= self.allowed:
                time.sleep(0.01)
                continue
            seqs = range(sent, min(sent + BATCH, self.total))
            body = {"messages": [{"to": [self.to], "text": payload(s)} for s in seqs]}
            key = f"crash-test-{sent}"
            while True:
                self.in_flight = True
                self.requests += 1
                answer = _request(f"{self.url}/v1/messages/batch", self.token, body, key)
                if answer is not None and answer[0] == 202:
                    break
                if answer is not None and answer[0] != 503:
                    self.failure = f"submit {key} answered {answer}"
                    return
                self.retries += 1
                time.sleep(0.05)
            self.in_flight = False
            ids = answer[1]["ids"]
            if len(ids) != len(seqs):
                self.failure = f"submit {key}: {len(ids)} ids for {len(seqs)} messages"
                return
            self.ids.update(zip(seqs, ids, strict=True))
            sent += len(seqs)
            time.sleep(0.1)


def work_in_flight(a: NodeProc, sub: Submitter) -> int:
    """alice's undelivered messages at A; when the submitter has used up its allowance
    and all of it is already delivered (with several batches in flight a restarted A
    can deliver a whole phase before the test looks), let it submit one batch more so
    that the kill again finds work in flight instead of the test waiting for none."""
    n = undelivered(a.db_path, "alice")
    if n == 0 and len(sub.ids) >= sub.allowed:
        sub.allowed = min(sub.total, sub.allowed + BATCH)
    return n


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = make_pair(tmp_path)
    for n in (a, b):
        # short backoff so that a restarted peer is found again quickly
        set_federation(n.dir, retry_min="50ms", retry_max="500ms", receipt_window="100ms")
    yield a, b
    for n in (a, b):
        n.kill()


@dataclass
class Kill:
    victim: str
    unacked: int  # A's messages not yet `delivered` just before the kill
    unacked_after: int  # and right after it
    queued: int  # A's queue rows right after the kill
    client_in_flight: bool
    in_commit: bool


def _stream_with_kills(a: NodeProc, b: NodeProc, *, in_commit: bool) -> None:
    started = time.monotonic()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    nodes = {"a": a, "b": b}
    watch = {name: LogWatch(n.log_path) for name, n in nodes.items()}
    for name, n in nodes.items():
        watch[name].skip_to_end()
        n.start()
    runs: Counter[str] = Counter(a=1, b=1)
    sub = Submitter(a.url, a.tokens["alice"], "bob@b.test", MESSAGES)
    phases = 2 * KILLS + 1
    sub.allowed = MESSAGES // phases
    sub.start()
    kills: list[Kill] = []
    confirmed: Counter[str] = Counter()
    attempts = 0
    while min(confirmed["a"], confirmed["b"]) < KILLS:
        # alternate B, A, B, ...; once one has its kills, only the other
        victim = "b" if attempts % 2 == 0 else "a"
        if confirmed[victim] >= KILLS:
            victim = "a" if victim == "b" else "b"
        attempts += 1
        assert attempts <= 4 * KILLS, f"kills inside commits not confirmed: {kills}"
        node, w = nodes[victim], watch[victim]
        # Work must be arriving at the victim since its last start.
        w.wait("batch_received" if victim == "b" else "submitted", timeout=60)
        if not in_commit:
            time.sleep(rng.uniform(0, 0.25))
        # ... and some of it not yet acknowledged (A's status not yet `delivered`)
        pending = wait_for(lambda: work_in_flight(a, sub), timeout=30, interval=0.002, what="work")
        if in_commit:
            deadline = time.monotonic() + 30
            while w.last_fault != "fault_commit_open":
                assert time.monotonic() < deadline, f"{victim}: no open commit seen"
                time.sleep(0.002)
                w.poll()
            time.sleep(rng.uniform(0, COMMIT_DELAY_MS / 2000))
        elif victim == "a":
            # aim at a submit between its arrival and its answer
            deadline = time.monotonic() + 2
            while not sub.in_flight and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.01))
        client_in_flight = sub.in_flight
        node.kill()
        w.poll()
        inside = w.last_fault == "fault_commit_open"
        kills.append(
            Kill(
                victim,
                pending,
                undelivered(a.db_path, "alice"),
                queue_len(a.db_path),
                client_in_flight,
                inside,
            )
        )
        if inside or not in_commit:
            confirmed[victim] += 1
        sub.allowed = MESSAGES * (len(kills) + 1) // phases
        time.sleep(rng.uniform(0, 0.3))
        w.skip_to_end()
        node.start()
        runs[victim] += 1
    sub.allowed = MESSAGES
    sub.join(timeout=120)
    assert not sub.is_alive(), "the submitter did not finish"
    assert not sub.failure, sub.failure
    assert len(sub.ids) == MESSAGES

    def settled() -> bool:
        seen = inbox_seqs(b.db_path, "bob")
        st = statuses(a.db_path, "alice")
        return len(seen) == MESSAGES and all(s == "delivered" for s in st.values())

    wait_for(settled, timeout=120, interval=0.5, what="every message delivered")

    seen = inbox_seqs(b.db_path, "bob")
    lost = sum(1 for s in range(MESSAGES) if seen[s] == 0)
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    st = statuses(a.db_path, "alice")
    not_delivered = [i for i in sub.ids.values() if st.get(i) != "delivered"]
    # a retried submit never stored its messages twice at A either
    assert len(st) == MESSAGES, f"A holds {len(st)} messages for {MESSAGES} sequence numbers"

    # The same through the client API: B's inbox paged and acked, A's status.
    via_api: Counter[int] = Counter()
    while True:
        answer = _request(f"{b.url}/v1/inbox?limit=1000", b.tokens["bob"])
        assert answer is not None and answer[0] == 200, answer
        msgs = answer[1]["messages"]
        if not msgs:
            break
        via_api.update(int(m["text"].removeprefix("seq=")) for m in msgs)
        ack = _request(f"{b.url}/v1/inbox/ack", b.tokens["bob"], {"ids": [m["id"] for m in msgs]})
        assert ack is not None and ack[0] == 200 and ack[1]["acked"] == len(msgs), ack
    for seq in rng.sample(range(MESSAGES), 200):
        answer = _request(f"{a.url}/v1/messages/{sub.ids[seq]}", a.tokens["alice"])
        assert answer is not None and answer[0] == 200, answer
        assert answer[1]["recipients"]["bob@b.test"]["status"] == "delivered", answer

    in_flight_kills = sum(1 for k in kills if k.unacked > 0)
    # A logs `submitted` after each commit, counting the fresh requests; a key
    # answered from its idempotency record (committed, then A died before
    # answering) counts in none.
    fresh = sum(int(e["requests"]) for e in log_events(a.log_path, "submitted"))
    keys = -(-MESSAGES // BATCH)
    print(
        f"\ncrash test ({'kills inside commits' if in_commit else 'kills at random moments'}):"
        f" runs a={runs['a']} b={runs['b']},"
        f" kills a={sum(k.victim == 'a' for k in kills)} b={sum(k.victim == 'b' for k in kills)}"
        f" (inside a commit: a={sum(k.in_commit and k.victim == 'a' for k in kills)}"
        f" b={sum(k.in_commit and k.victim == 'b' for k in kills)};"
        f" with unacknowledged work: {in_flight_kills}/{len(kills)};"
        f" A killed with a submit in flight: "
        f"{sum(k.client_in_flight for k in kills if k.victim == 'a')}),"
        f" messages={MESSAGES}, client requests={sub.requests} (retries {sub.retries},"
        f" answered from the idempotency record {keys - fresh}),"
        f" lost={lost}, duplicated={duplicated}, not delivered={len(not_delivered)},"
        f" {time.monotonic() - started:.0f}s"
    )
    for k in kills:
        print(
            f"  kill {k.victim}: unacked before={k.unacked} after={k.unacked_after}"
            f" queued={k.queued} client in flight={k.client_in_flight} in_commit={k.in_commit}"
        )
    assert lost == 0
    assert duplicated == 0
    assert not_delivered == []
    assert sorted(via_api) == list(range(MESSAGES))
    assert max(via_api.values()) == 1
    assert all(k.unacked > 0 for k in kills), "a kill landed when nothing was in flight"
    assert sum(k.victim == "a" for k in kills) >= KILLS
    assert sum(k.victim == "b" for k in kills) >= KILLS
    if in_commit:
        assert confirmed["a"] >= KILLS and confirmed["b"] >= KILLS
    assert a.stop() == 0 and b.stop() == 0


def test_stream_survives_kills(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    _stream_with_kills(a, b, in_commit=False)


def test_stream_survives_kills_inside_commits(
    pair: tuple[NodeProc, NodeProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    monkeypatch.setenv("RELAY_FAULT", f"commit_delay_ms={COMMIT_DELAY_MS}")
    _stream_with_kills(a, b, in_commit=True)
