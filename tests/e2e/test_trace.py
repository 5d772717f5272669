"""`relay trace DIR ID`: a message's life at its origin and at its destination.

Two real nodes, on each storage backend, set up and driven through the CLI;
the trace is read while the nodes run.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import NodeProc, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def nodes(pair: tuple[NodeProc, NodeProc]) -> tuple[NodeProc, NodeProc]:
    """conftest's two nodes that trust each other, on each storage backend."""
    return pair


def trace(node: NodeProc, ident: str) -> list[dict[str, object]]:
    out = relay("trace", node.dir, ident, "--json")
    return [json.loads(line) for line in out.stdout.splitlines()]


def events(node: NodeProc, ident: str) -> list[str]:
    return [str(e["event"]) for e in trace(node, ident)]


def test_trace_follows_a_message_from_submit_to_read(nodes: tuple[NodeProc, NodeProc]) -> None:
    a, b = nodes
    a.start()
    b.start()
    m = a.send("alice", ["bob@b.test"], "trace me")
    wait_for(
        lambda: a.status("alice", m)["recipients"]["bob@b.test"]["status"] == "delivered",
        what="delivered at a",
    )
    assert [x["id"] for x in b.inbox("bob", ack=True)] == [m]

    # b is the destination: its signed batch result stated the delivery
    # (protocol.md §22), so no receipt was written or received
    at_a = trace(a, m)
    assert [e["event"] for e in at_a] == ["submitted", "attempt", "delivery_stated", "status"]
    assert str(at_a[0]["text"]).startswith("submitted by alice@a.test for b.test: ")
    assert "bytes, residency RU" in str(at_a[0]["text"])
    assert re.fullmatch(r"to b\.test: accepted \(batch of 1, \d+ ms\)", str(at_a[1]["text"]))
    assert str(at_a[2]["text"]).startswith("b.test's signed batch result ")
    assert str(at_a[2]["text"]).endswith(": delivered in RU")
    assert at_a[3]["text"] == "bob@b.test: delivered"
    assert all(e["envelope"] == m for e in at_a)

    wait_for(lambda: "inbox_read" in events(b, m), what="b's read in its database")
    at_b = trace(b, m)
    assert [e["event"] for e in at_b] == ["received", "inbox_delivered", "inbox_read"]
    assert str(at_b[0]["text"]).startswith("received from a.test: alice@a.test to b.test, ")
    assert at_b[1]["text"] == "in mailbox bob"
    assert at_b[2]["text"] == "read and acknowledged by bob"
    times = [int(str(e["at"])) for e in at_b]
    assert times == sorted(times)

    # the id `relay send` printed is in a log line at both nodes, found by grep
    assert any(" submitted " in ln and f"ids={m}" in ln for ln in a.logs().splitlines())
    assert any(" delivery " in ln and m in ln for ln in a.logs().splitlines())
    assert any(" batch_received " in ln and m in ln for ln in b.logs().splitlines())

    human = relay("trace", a.dir, m).stdout.splitlines()
    assert len(human) == 4 and human[0].split()[1] == "submitted"
    assert human[1].split()[1:3] == ["attempt", "to"]


def test_trace_lists_a_failed_attempt_then_the_delivery(
    nodes: tuple[NodeProc, NodeProc],
) -> None:
    a, b = nodes
    a.start()  # b is stopped: a's first attempt finds no one listening
    m = a.send("alice", ["bob@b.test"], "first try fails")
    wait_for(lambda: "attempt" in events(a, m), what="a's first attempt in its database")
    b.start()
    relay("queue", "retry", a.dir, "--dest", "b.test")  # no waiting out a's backoff
    wait_for(
        lambda: a.status("alice", m)["recipients"]["bob@b.test"]["status"] == "delivered",
        what="the delivery once b is up",
    )
    tried = [e for e in trace(a, m) if e["event"] == "attempt"]
    assert len(tried) >= 2
    first, last = str(tried[0]["text"]), str(tried[-1]["text"])
    assert first.startswith("to b.test: unreachable: "), first
    assert "Cannot connect to host" in first, first
    assert re.fullmatch(r"to b\.test: accepted \(batch of \d+, \d+ ms\)", last), last
    # every attempt but the last failed the same way, each with the peer named
    assert all(str(e["text"]).startswith("to b.test: unreachable: ") for e in tried[:-1])
    times = [int(str(e["at"])) for e in tried]
    assert times == sorted(times) and all(e["envelope"] == m for e in tried)


def test_trace_after_an_erasure(nodes: tuple[NodeProc, NodeProc]) -> None:
    a, b = nodes
    a.start()
    b.start()
    m = a.send("alice", ["bob@b.test"], "to be forgotten")
    wait_for(
        lambda: a.status("alice", m)["recipients"]["bob@b.test"]["status"] == "delivered",
        what="the delivery",
    )
    assert "attempt" in events(a, m)
    relay("erase", a.dir, m, "--reason", "subject request 7")
    at_a = trace(a, m)
    erased = [e for e in at_a if e["event"] == "erased"]
    assert [e["text"] for e in erased] == [
        "content erased, asked by admin (admin): subject request 7"
    ]
    # the erasure took the message's attempts with its copies; what it was stays
    assert at_a[0]["event"] == "submitted" and "attempt" not in events(a, m)
    # the request reached b, which erased its copy too and says so in its trace
    wait_for(lambda: "erased" in events(b, m), what="the erasure at b")
    text = next(str(e["text"]) for e in trace(b, m) if e["event"] == "erased")
    assert text.startswith("content erased, asked by ") and "subject request 7" in text


def test_trace_shows_the_queue_and_a_refusal(nodes: tuple[NodeProc, NodeProc]) -> None:
    a, b = nodes
    a.start()  # b is down: the message waits in a's queue
    m = a.send("alice", ["bob@b.test"], "wait for b")
    wait_for(
        lambda: "attempt(s) so far; last error" in relay("trace", a.dir, m).stdout,
        what="a failed attempt in the trace",
    )
    line = next(ln for ln in relay("trace", a.dir, m).stdout.splitlines() if " queued " in ln)
    assert "queued for b.test: " in line

    refused = a.send("alice", ["nobody@b.test"], "no such mailbox")
    b.start()
    # a's backoff has grown while b was down (up to 2^n s): end it, as an admin would
    relay("queue", "retry", a.dir, "--dest", "b.test")
    wait_for(
        lambda: a.status("alice", refused)["recipients"]["nobody@b.test"]["status"] == "rejected",
        what="the rejection at a",
    )
    found = trace(a, refused)
    assert found[-1]["text"] == "nobody@b.test: rejected (unknown_mailbox)"
    # b refused it in its batch answer (signed, no receipt) and stored nothing of it;
    # a lists that answer as the last attempt (after any made while b was down)
    kinds = [e["event"] for e in found]
    assert kinds[0] == "submitted" and set(kinds[1:-1]) == {"attempt"}, kinds
    assert re.fullmatch(
        r"to b\.test: rejected unknown_mailbox \(batch of \d+, \d+ ms\)", str(found[-2]["text"])
    ), found[-2]
    nothing = relay("trace", b.dir, refused, check=False)
    assert nothing.returncode == 1 and "nothing stored about" in nothing.stderr


def test_trace_of_an_unknown_or_malformed_id(nodes: tuple[NodeProc, NodeProc]) -> None:
    a, _ = nodes
    a.start()
    a.send("alice", ["alice@a.test"], "so that the database exists")
    unknown = relay("trace", a.dir, "0" * 32, check=False)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr == (
        f"relay: nothing stored about {'0' * 32} at a.test: not seen here,"
        " or already purged by retention (purges keep counts, not ids)\n"
    )
    bad = relay("trace", a.dir, "abc", check=False)
    assert bad.returncode == 2
    assert "'abc' is not a message id: ids are 32 hex digits" in bad.stderr
