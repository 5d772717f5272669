"""Several workers of one node on PostgreSQL behave as one node (issue 12, items 2 and 4).

Node a.test runs as two workers: two `relay run` processes, each from its own
directory holding the same node.toml (but for its listen port) and key, on
one PostgreSQL schema, as two machines behind a load balancer would. Node
b.test is an ordinary SQLite node. Everything goes through the CLI, the
HTTP APIs and signals; the tests read A's database only to see who holds a
lease and what each message's status is.

Shown: (a) replay protection and idempotency across workers; (b) one sender
per destination, taken over after its worker is SIGKILLed; (c) an inbox
long-poll on one worker woken by mail landing through the other; (d) the
background jobs run by one worker and moving when it dies; (e) a stream of
messages while workers are SIGKILLed in turn: 0 lost, 0 duplicated, every
status delivered.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from relay.api.admin_client import NodeNotRunning, call
from relay.config.keys import load_private_key
from relay.federation.inbound import BATCH_PATH
from relay.node.leases import RENEW_S
from relay.protocol import httpsig
from relay.protocol.batch import Batch, BatchItem, encode_batch, open_result
from relay.protocol.envelope import make_header, seal
from relay.protocol.keystr import key_id, public_key_string
from tests.e2e.harness import NodeProc, free_port, make_node, relay, wait_for
from tests.fault.common import inbox_seqs, log_events, payload, set_federation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_WAIT_S = 40  # a dead worker's leases expire after 10 s; renewals come every 3 s


# --- the node's database, read as an operator's psql would ----------------------------


def pg_rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of `sql` in the schema the storage `url` names."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema")
    conninfo = urlunsplit(parts._replace(query=urlencode(query)))
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(f'SET search_path TO "{schema}"')
        return list(db.execute(sql, params).fetchall())


def lease_holder(url: str, name: str) -> str | None:
    """The worker holding lease `name` now, None if nobody does."""
    now = time.time_ns() // 1_000_000
    rows = pg_rows(url, "SELECT holder FROM leases WHERE name = %s AND expires > %s", (name, now))
    return str(rows[0][0]) if rows else None


def statuses(url: str, mailbox: str) -> dict[str, str]:
    """Message id (hex) -> status of its one recipient, at the origin."""
    rows = pg_rows(url, "SELECT msg, status FROM recipients WHERE mailbox = %s", (mailbox,))
    return {bytes(msg).hex(): str(status) for msg, status in rows}


# --- the two workers of a.test and the peer b.test ------------------------------------


@dataclass
class Cluster:
    a1: NodeProc  # a.test, worker 1 (its URL is the one b.test pins at first)
    a2: NodeProc  # a.test, worker 2: same node.toml and key, another port
    b: NodeProc
    url: str  # a.test's storage

    def holder_node(self, lease: str) -> NodeProc | None:
        holder = lease_holder(self.url, lease)
        for node in (self.a1, self.a2):
            if holder and node.proc is not None and f":{node.proc.pid}:" in holder:
                return node
        return None

    def stop_all(self) -> None:
        for node in (self.a1, self.a2, self.b):
            node.kill()


def use_storage(node: NodeProc, url: str) -> None:
    """[storage] url replaces the [node] database line `relay init` wrote."""
    toml = node.dir / "node.toml"
    text = re.sub(r'(?m)^database = "relay.db"\n', "", toml.read_text())
    toml.write_text(text + f'\n[storage]\nurl = "{url}"\n')


def second_worker(first: NodeProc, directory: Path) -> NodeProc:
    """Another worker of `first`'s node: its node.toml and keys, listening elsewhere."""
    directory.mkdir()
    for name in ("node.toml", "node.key", "node.seal"):
        shutil.copy2(first.dir / name, directory / name)
    port = free_port()
    toml = directory / "node.toml"
    text = toml.read_text()
    listen = f'listen = "127.0.0.1:{first.port}"'
    assert listen in text, text
    toml.write_text(text.replace(listen, f'listen = "127.0.0.1:{port}"'))
    return NodeProc(directory, first.name, first.jurisdiction, port, tokens=first.tokens)


def with_user(url: str) -> str:
    """`url` naming a user, as [storage] url must (the test server trusts `postgres`)."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"postgres@{parts.netloc}"))


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    pg_url = with_user(pg_url)
    b = make_node(tmp_path, "b.test", "RU")
    a1 = make_node(tmp_path, "a.test", "RU")
    for n in (a1, b):
        # These tests follow receipts from worker to worker: the senders wait for
        # them, as senders of an earlier version do, rather than taking the
        # destination's signed result as delivery (protocol.md §22).
        set_federation(
            n.dir,
            retry_min="50ms",
            retry_max="500ms",
            receipt_window="100ms",
            delivery_results=False,
        )
    a1.add_peer(b)
    b.add_peer(a1)
    a1.add_mailbox("alice")
    a1.add_mailbox("carol")
    b.add_mailbox("bob")
    use_storage(a1, pg_url)
    a2 = second_worker(a1, tmp_path / "a.test-worker2")
    c = Cluster(a1, a2, b, pg_url)
    yield c
    c.stop_all()


def request(
    url: str, token: str, body: Any = None, key: str | None = None, timeout: float = 15
) -> tuple[int, Any] | None:
    """One client API call; None when no HTTP answer came back (the worker died)."""
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
    except OSError:
        return None


def lines(node: NodeProc, name: str) -> list[str]:
    """Every line of `node`'s log for event `name`."""
    text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
    return [ln for ln in text.splitlines() if f" {name} " in f"{ln} "]


# --- (a) replay protection and idempotency --------------------------------------------


def post_batch(node: NodeProc, body: bytes, b: NodeProc, nonce: bytes) -> tuple[int, bytes]:
    """POST a federation batch signed as b.test to `node`; (status, body)."""
    key = load_private_key(b.dir / "node.key")
    headers = httpsig.sign_request(
        method="POST",
        path=BATCH_PATH,
        content_digest=httpsig.content_digest(body),
        origin=b.name,
        destination="a.test",
        key=key,
        key_id=key_id(public_key_string(key.public_key())),
        created=int(time.time()),
        nonce=nonce,
    )
    headers["Content-Type"] = "application/msgpack"
    req = urllib.request.Request(f"{node.url}{BATCH_PATH}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_replay_protection_and_idempotency_hold_across_workers(cluster: Cluster) -> None:
    a1, a2, b = cluster.a1, cluster.a2, cluster.b
    a1.start()
    a2.start()
    key = load_private_key(b.dir / "node.key")
    now = time.time_ns() // 1_000_000
    text = b"sent once, through two workers"
    env = seal(
        make_header(
            id=os.urandom(16),
            kind="message",
            origin=b.name,
            key_id=key_id(public_key_string(key.public_key())),
            sender=f"bob@{b.name}",
            to=["alice@a.test"],
            dest="a.test",
            created=now,
            expires=now + 3_600_000,
            residency=["RU"],
            ctype="text/plain",
            payload=text,
        ),
        text,
        key,
    )
    item = BatchItem(env.header_bytes, env.signature, env.payload, (b.name,))
    batch_id = os.urandom(16)
    body = encode_batch(Batch(batch_id, (item,)))
    a_pub = load_private_key(a1.dir / "node.key").public_key()

    nonce = os.urandom(16)
    status, answer = post_batch(a1, body, b, nonce)
    assert status == 200, answer
    assert open_result(answer, a_pub).results == {env.header.id: "accepted"}
    # the very same request at the other worker: its nonce is already spent
    status, answer = post_batch(a2, body, b, nonce)
    assert status == 400 and json.loads(answer)["error"] == "replay", answer
    # a retry with a fresh nonce gets the first answer from the stored batch results
    status, answer = post_batch(a2, body, b, os.urandom(16))
    assert status == 200, answer
    assert open_result(answer, a_pub).results == {env.header.id: "accepted"}
    # the same envelope in another batch is a duplicate, wherever it lands
    status, answer = post_batch(a2, encode_batch(Batch(os.urandom(16), (item,))), b, os.urandom(16))
    assert status == 200, answer
    assert open_result(answer, a_pub).results == {env.header.id: "duplicate"}
    got = a2.inbox("alice")
    assert [m["text"] for m in got] == [text.decode()]

    # one Idempotency-Key, two workers: one message, the first answer twice
    msg = {"to": ["carol@a.test"], "text": "once only"}
    first = request(f"{a1.url}/v1/messages", a1.tokens["alice"], msg, key="k-1")
    again = request(f"{a2.url}/v1/messages", a2.tokens["alice"], msg, key="k-1")
    assert first is not None and first[0] == 202, first
    assert again == first
    assert [m["text"] for m in a1.inbox("carol")] == ["once only"]
    assert a1.stop() == 0 and a2.stop() == 0


# --- (b) one sender per destination, taken over after a SIGKILL -----------------------


def test_one_sender_per_destination_taken_over_after_sigkill(cluster: Cluster) -> None:
    a1, a2, b = cluster.a1, cluster.a2, cluster.b
    a1.start()
    a2.start()
    ids = [
        (a1 if i % 2 else a2).submit("alice", ["bob@b.test"], payload(i)) for i in range(20)
    ]  # b.test is down: the mail waits in A's queue
    holder = wait_for(
        lambda: cluster.holder_node("sender:b.test"), timeout=LEASE_WAIT_S, what="a sender lease"
    )
    other = a2 if holder is a1 else a1
    b.start()
    wait_for(lambda: len(inbox_seqs(b.db_path, "bob")) == 20, timeout=60, what="20 at B")
    assert lines(holder, "sender_lease_taken") and not [
        ln for ln in lines(other, "sender_lease_taken") if "peer=b.test" in ln
    ]
    received = log_events(b.log_path, "batch_received")
    assert received and all(ev["duplicate"] == "0" for ev in received), received

    # B goes down, more mail queues through both workers, the sending worker dies
    assert b.stop() == 0
    ids += [
        (a1 if i % 2 else a2).submit("alice", ["bob@b.test"], payload(i)) for i in range(20, 40)
    ]
    assert holder.proc is not None
    holder.kill()
    killed = time.monotonic()
    b.start()
    taken = wait_for(
        lambda: cluster.holder_node("sender:b.test") is other,
        timeout=LEASE_WAIT_S,
        what="the surviving worker taking the sender lease",
    )
    took = time.monotonic() - killed
    assert taken
    wait_for(lambda: len(inbox_seqs(b.db_path, "bob")) == 40, timeout=60, what="40 at B")
    seen = inbox_seqs(b.db_path, "bob")
    assert sorted(seen) == list(range(40)) and max(seen.values()) == 1
    # b.test's receipts go to a.test's URL, a1's: with no load balancer in front,
    # the killed worker must be back (as a supervisor would restart it) for them
    holder.start()
    wait_for(
        lambda: set(statuses(cluster.url, "alice").values()) == {"delivered"},
        timeout=60,
        what="every status delivered",
    )
    assert set(statuses(cluster.url, "alice")) == set(ids)
    print(f"\nsender lease of b.test taken over {took:.1f}s after its worker was killed")
    assert cluster.holder_node("sender:b.test") is other  # the restarted one did not take it
    assert other.stop() == 0 and holder.stop() == 0 and b.stop() == 0


# --- (c) an inbox long-poll wakes when mail lands through the other worker -------------


def test_long_poll_on_one_worker_wakes_for_mail_through_the_other(cluster: Cluster) -> None:
    a1, a2 = cluster.a1, cluster.a2
    a1.start()
    a2.start()
    answers: list[tuple[int, Any] | None] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            request(f"{a2.url}/v1/inbox?wait=60", a2.tokens["carol"], timeout=90)
        )
    )
    poll.start()
    time.sleep(1.0)  # the long-poll is waiting at a2 (it found nothing at first)
    assert poll.is_alive()
    a1.send("alice", ["carol@a.test"], "wake up")
    # woken by the commit's announcement, not by its 60 s wait running out
    poll.join(timeout=30)
    assert not poll.is_alive(), "the long-poll at a2 was not woken by mail landing at a1"
    assert answers and answers[0] is not None and answers[0][0] == 200, answers
    assert [m["text"] for m in answers[0][1]["messages"]] == ["wake up"]
    assert a1.stop() == 0 and a2.stop() == 0


# --- (d) background jobs run once and move ---------------------------------------------


def test_background_jobs_run_once_and_move_when_their_worker_dies(cluster: Cluster) -> None:
    a1, a2, b = cluster.a1, cluster.a2, cluster.b
    a1.start()
    wait_for(lambda: lines(a1, "leader_lease_taken"), what="a1 leading")
    a2.start()
    relay("peer", "update", b.dir, "--name", "a.test", "--url", a2.url)  # b.test reaches a2
    b.start()
    first = b.send("bob", ["alice@a.test"], "before")
    wait_for(lambda: b.status("bob", first)["recipients"]["alice@a.test"]["status"] == "delivered")
    # a2 stored it; the receipt was written by the leader, a1, alone
    assert lines(a1, "receipt_written") and not lines(a2, "receipt_written")
    assert not lines(a2, "leader_lease_taken")

    assert a1.proc is not None
    a1.kill()
    second = b.send("bob", ["alice@a.test"], "after")
    wait_for(
        lambda: b.status("bob", second)["recipients"]["alice@a.test"]["status"] == "delivered",
        timeout=LEASE_WAIT_S,
        what="a receipt written after the leader died",
    )
    assert lines(a2, "leader_lease_taken") and lines(a2, "receipt_written")
    assert cluster.holder_node("leader") is a2
    assert [m["text"] for m in a2.inbox("alice")] == ["before", "after"]
    assert a2.stop() == 0 and b.stop() == 0


# --- a peer that contacts one worker ends the backoff at the other --------------------


def slow_backoff(node: NodeProc) -> None:
    """Make `node`'s backoff long, so that only a waiver can end it soon."""
    toml = node.dir / "node.toml"
    text = toml.read_text()
    for key, short, long in (("retry_min", "50ms", "10m"), ("retry_max", "500ms", "1h")):
        assert f'{key} = "{short}"' in text, text
        text = text.replace(f'{key} = "{short}"', f'{key} = "{long}"')
    toml.write_text(text)


def backoff_left_ms(url: str, peer: str) -> int:
    rows = pg_rows(url, "SELECT next_try FROM peer_state WHERE peer = %s", (peer,))
    return int(rows[0][0]) - time.time_ns() // 1_000_000 if rows else 0


def test_a_peer_contacting_one_worker_ends_the_backoff_at_the_other(cluster: Cluster) -> None:
    a1, a2, b = cluster.a1, cluster.a2, cluster.b
    for node in (a1, a2):
        slow_backoff(node)
    a1.start()
    a2.start()
    a1.send("alice", ["bob@b.test"], "after the wait")  # b.test is down
    holder = wait_for(
        lambda: cluster.holder_node("sender:b.test"), timeout=LEASE_WAIT_S, what="a sender lease"
    )
    contacted = a2 if holder is a1 else a1
    # the send failed: a backoff of up to 10 min; wait for one long enough to tell
    # a waiver from its end (full jitter may draw a short one; the next is longer)
    wait_for(lambda: backoff_left_ms(cluster.url, "b.test") > 60_000, timeout=120)
    # the contacted worker learns who holds the lease at its next renewal
    time.sleep(2 * RENEW_S)
    relay("peer", "update", b.dir, "--name", "a.test", "--url", contacted.url)
    b.start()
    b.send("bob", ["alice@a.test"], "hello")  # b.test's request reaches the other worker
    wait_for(lambda: len(bob_texts(b)) == 1, timeout=30, what="the queued mail at B")
    waived = [ln for ln in lines(holder, "backoff_waived") if "peer=b.test" in ln]
    assert waived, holder.logs()
    assert backoff_left_ms(cluster.url, "b.test") <= 0
    assert a1.stop() == 0 and a2.stop() == 0 and b.stop() == 0


def bob_texts(b: NodeProc) -> list[str]:
    return [m["text"] for m in b.inbox("bob")]


# --- (e) SIGKILL workers in turn while a stream flows ----------------------------------

MESSAGES = int(os.environ.get("RELAY_FAULT_MESSAGES", "1500"))
KILLS = int(os.environ.get("RELAY_FAULT_KILLS", "3"))  # per worker
BATCH = 25


class Submitter(threading.Thread):
    """Submits numbered messages in batches, each with its own Idempotency-Key, to
    whichever worker answers, as a client behind a load balancer would; never
    past `allowed`, so that the test can keep work in flight at each kill."""

    def __init__(self, workers: list[NodeProc], token: str, total: int) -> None:
        super().__init__(name="submitter", daemon=True)
        self.workers, self.token, self.total = workers, token, total
        self.allowed = 0
        self.ids: dict[int, str] = {}
        self.retries = 0
        self.failure = ""

    def run(self) -> None:
        turn = 0
        start = 0
        while start < self.total and not self.failure:
            if start >= self.allowed:
                time.sleep(0.01)
                continue
            seqs = range(start, min(start + BATCH, self.total))
            body = {"messages": [{"to": ["bob@b.test"], "text": payload(s)} for s in seqs]}
            while True:
                turn += 1
                node = self.workers[turn % len(self.workers)]
                url = f"{node.url}/v1/messages/batch"
                answer = request(url, self.token, body, key=f"stream-{start}")
                if answer is not None and answer[0] == 202:
                    break
                if answer is not None and answer[0] != 503:
                    self.failure = f"submit stream-{start} answered {answer}"
                    return
                self.retries += 1
                time.sleep(0.05)
            self.ids.update(zip(seqs, answer[1]["ids"], strict=True))
            start += len(seqs)


def undelivered(url: str) -> int:
    """alice's messages whose status is not yet `delivered`: work in flight."""
    return sum(1 for s in statuses(url, "alice").values() if s != "delivered")


def work_in_flight(url: str, sub: Submitter) -> int:
    """alice's undelivered messages; when the submitter has used up its allowance and
    all of it is already delivered (a worker restart can take longer than the rest of
    the node needs to deliver a phase), let it submit one batch more so that the next
    kill again finds work in flight instead of the test waiting for none."""
    n = undelivered(url)
    if n == 0 and len(sub.ids) >= sub.allowed:
        sub.allowed = min(sub.total, sub.allowed + BATCH)
    return n


def test_stream_survives_workers_killed_in_turn(cluster: Cluster) -> None:
    a1, a2, b = cluster.a1, cluster.a2, cluster.b
    started = time.monotonic()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    b.start()
    a1.start()
    a2.start()
    sub = Submitter([a1, a2], a1.tokens["alice"], MESSAGES)
    phases = 2 * KILLS + 1
    sub.allowed = MESSAGES // phases
    sub.start()
    in_flight: list[int] = []  # alice's undelivered messages at each kill
    for kill in range(2 * KILLS):
        victim = (a1, a2)[kill % 2]
        wait_for(lambda: len(sub.ids) >= BATCH, timeout=60, what="submits going through")
        in_flight.append(
            wait_for(
                lambda: work_in_flight(cluster.url, sub), timeout=30, interval=0.01, what="work"
            )
        )
        time.sleep(rng.uniform(0, 0.2))
        victim.kill()
        sub.allowed = MESSAGES * (kill + 2) // phases
        time.sleep(rng.uniform(0, 1.0))
        victim.start()
    sub.allowed = MESSAGES
    sub.join(timeout=300)
    assert not sub.is_alive(), "the submitter did not finish"
    assert not sub.failure, sub.failure
    assert len(sub.ids) == MESSAGES

    def settled() -> bool:
        st = statuses(cluster.url, "alice")
        return len(inbox_seqs(b.db_path, "bob")) == MESSAGES and set(st.values()) == {"delivered"}

    wait_for(settled, timeout=180, interval=0.5, what="every message delivered")
    seen = inbox_seqs(b.db_path, "bob")
    lost = sum(1 for s in range(MESSAGES) if seen[s] == 0)
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    st = statuses(cluster.url, "alice")
    print(
        f"\nworkers killed {len(in_flight)} times mid-stream (undelivered at each kill:"
        f" {in_flight}): messages={MESSAGES}"
        f" (client retries {sub.retries}), lost={lost}, duplicated={duplicated},"
        f" statuses={len(st)} all delivered, {time.monotonic() - started:.0f}s"
    )
    assert len(in_flight) == 2 * KILLS and all(n > 0 for n in in_flight), in_flight
    assert lost == 0 and duplicated == 0
    assert set(st) == set(sub.ids.values())  # a retried submit was stored once
    assert a1.stop() == 0 and a2.stop() == 0 and b.stop() == 0


def worker_pids(node: NodeProc) -> list[int]:
    """The pids of the running workers under `node`'s supervisor, by worker index."""
    try:
        rows = call(node.dir, "GET", "/admin/v1/workers")["workers"]
    except NodeNotRunning:
        return []
    return [int(r["pid"]) for r in sorted(rows, key=lambda r: r["worker"]) if r["running"]]


def restarted(node: NodeProc, victim: int) -> bool:
    """Both workers run again, `victim` replaced by a new process."""
    pids = worker_pids(node)
    return len(pids) == 2 and victim not in pids


def test_stream_survives_kills_under_relay_run_workers(cluster: Cluster) -> None:
    """The same under `relay run --workers 2`: one address, the supervisor restarts
    each SIGKILLed worker, and b.test's receipts reach whichever worker is up."""
    a, b = cluster.a1, cluster.b
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    b.start()
    a.start("--workers", "2", timeout=60)
    assert a.proc is not None
    supervisor = a.proc
    try:
        sub = Submitter([a], a.tokens["alice"], MESSAGES)
        phases = 2 * KILLS + 1
        sub.allowed = MESSAGES // phases
        sub.start()
        in_flight: list[int] = []
        for kill in range(2 * KILLS):
            pids = wait_for(lambda: len(worker_pids(a)) == 2 and worker_pids(a), timeout=60)
            in_flight.append(
                wait_for(
                    lambda: work_in_flight(cluster.url, sub), timeout=30, interval=0.01, what="work"
                )
            )
            time.sleep(rng.uniform(0, 0.2))
            victim = pids[kill % 2]
            os.kill(victim, signal.SIGKILL)
            sub.allowed = MESSAGES * (kill + 2) // phases
            wait_for(functools.partial(restarted, a, victim), timeout=60, what="restarted")
        sub.allowed = MESSAGES
        sub.join(timeout=300)
        assert not sub.is_alive(), "the submitter did not finish"
        assert not sub.failure, sub.failure

        def settled() -> bool:
            st = statuses(cluster.url, "alice")
            done = len(inbox_seqs(b.db_path, "bob")) == MESSAGES
            return done and set(st.values()) == {"delivered"}

        wait_for(settled, timeout=180, interval=0.5, what="every message delivered")
        seen = inbox_seqs(b.db_path, "bob")
        lost = sum(1 for s in range(MESSAGES) if seen[s] == 0)
        duplicated = sum(c - 1 for c in seen.values() if c > 1)
        st = statuses(cluster.url, "alice")
        print(
            f"\nrelay run --workers 2, workers killed {len(in_flight)} times (undelivered at"
            f" each kill: {in_flight}): messages={MESSAGES} (client retries {sub.retries}),"
            f" lost={lost}, duplicated={duplicated}, statuses={len(st)} all delivered"
        )
        assert all(n > 0 for n in in_flight), in_flight
        assert lost == 0 and duplicated == 0
        assert set(st) == set(sub.ids.values())
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert b.stop() == 0
    finally:
        if supervisor.poll() is None:  # never leave workers behind
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
        a.proc = None
