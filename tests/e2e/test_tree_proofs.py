"""Two real nodes: b.test keeps a.test's tree heads and checks the consistency proof
a.test sends with each (Relay-Tree-Proof, docs/protocol.md §19), run after run;
then a.test's log is rewritten while it is stopped, and its next proof shows it."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.protocol.merkle import leaf_hash
from tests.e2e.harness import NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    """a.test on SQLite (the test rewrites its log file), b.test its witness."""
    a = make_node(tmp_path, "a.test", "RU")
    b = make_node(tmp_path, "b.test", "RU")
    a.add_peer(b)
    b.add_peer(a)
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    yield a, b
    for n in (a, b):
        n.kill()


def witnessed(b: NodeProc) -> list[str]:
    """The comment line of each head b.test kept from a.test, by size:
    `# a.test size N at T root R[; proven to extend size M | ; FORKED: ...]`."""
    out = relay("audit", "heads", str(b.dir), "--peer", "a.test").stdout
    return [line for line in out.splitlines() if line.startswith("#")]


def sizes(lines: list[str]) -> list[int]:
    return [int(line.split()[3]) for line in lines]


def latest_size(a: NodeProc) -> int:
    """The size of the newest head a.test signed (the one its batches carry)."""
    out = relay("audit", "heads", str(a.dir), "--latest").stdout
    return sizes([line for line in out.splitlines() if line.startswith("#")])[0]


def send_until(a: NodeProc, b: NodeProc, done: Callable[[list[str]], bool], what: str) -> list[str]:
    """Send a message a batch at a time until `done(witnessed(b))` holds: the first
    batches after a start may go before a.test has its proof ready."""
    sent = 0

    def step() -> tuple[list[str]] | None:
        nonlocal sent
        sent += 1
        a.send("alice", ["bob@b.test"], f"message {sent}")
        wait_for(lambda: len(b.inbox("bob", ack=True)) == 1, what="the message at b.test")
        lines = witnessed(b)
        return (lines,) if done(lines) else None

    result: tuple[list[str]] = wait_for(step, timeout=60, interval=0, what=what)
    return result[0]


def carried(size: int, *, proven: bool) -> Callable[[list[str]], bool]:
    """b.test's newest head from a.test is of `size` (and proven, if asked)."""

    def done(lines: list[str]) -> bool:
        return bool(lines) and sizes(lines)[-1] == size and (not proven or "proven" in lines[-1])

    return done


def test_heads_are_proven_run_after_run_and_a_rewrite_is_caught(
    pair: tuple[NodeProc, NodeProc],
) -> None:
    a, b = pair
    b.start()
    a.start()
    send_until(a, b, lambda lines: True, "a first message")  # no head yet: none was signed
    assert a.stop() == 0  # signs its first head, at stop

    runs = 5
    for run in range(1, runs + 1):
        a.start()
        # Each run's batches carry the head a.test signed when it last stopped, with
        # the proof from the head before it (from the second run on: the first one
        # has nothing to prove from).
        size = latest_size(a)
        send_until(a, b, carried(size, proven=run > 1), f"run {run}'s head of size {size}")
        assert a.stop() == 0
    lines = witnessed(b)
    assert len(lines) >= runs and sizes(lines) == sorted(set(sizes(lines)))
    assert "proven" not in lines[0]
    for earlier, later in itertools.pairwise(lines):
        assert later.endswith(f"; proven to extend size {sizes([earlier])[0]}"), later
    assert "tree_head_forked" not in b.logs()

    con = sqlite3.connect(a.db_path)  # a.test's entry 1 is rewritten while it is stopped
    con.execute("UPDATE audit_log SET leaf = ? WHERE seq = 1", (leaf_hash(b"rewritten"),))
    con.commit()
    con.close()
    a.start()
    lines = send_until(a, b, lambda lines: "FORKED" in lines[-1], "the forked head at b.test")
    assert lines[-1].endswith(f"; FORKED: its proof does not extend size {sizes(lines)[-2]}")
    assert "tree_head_forked" in b.logs()
    assert "does not lead to the earlier root" in b.logs()
    assert "tree_head_mismatch" in a.logs()  # and a.test said so itself, at start
    assert a.stop() == 0 and b.stop() == 0
