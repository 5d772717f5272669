"""`relay trace DIR ID`: a message's life at its origin and at its destination.

Two real nodes, on each storage backend, set up and driven through the CLI;
the trace is read while the nodes run.
"""

from __future__ import annotations

import json

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
    assert [e["event"] for e in at_a] == ["submitted", "delivery_stated", "status"]
    assert str(at_a[0]["text"]).startswith("submitted by alice@a.test for b.test: ")
    assert "bytes, residency RU" in str(at_a[0]["text"])
    assert str(at_a[1]["text"]).startswith("b.test's signed batch result ")
    assert str(at_a[1]["text"]).endswith(": delivered in RU")
    assert at_a[2]["text"] == "bob@b.test: delivered"
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
    assert len(human) == 3 and human[0].split()[1] == "submitted"


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
    wait_for(
        lambda: a.status("alice", refused)["recipients"]["nobody@b.test"]["status"] == "rejected",
        what="the rejection at a",
    )
    found = trace(a, refused)
    assert found[-1]["text"] == "nobody@b.test: rejected (unknown_mailbox)"
    # b refused it in its batch answer (signed, no receipt) and stored nothing of it
    assert [e["event"] for e in found] == ["submitted", "status"]
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
