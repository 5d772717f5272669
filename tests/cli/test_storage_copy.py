"""`relay storage copy`: a stopped node's mail moves to another database and is delivered.

SQLite to SQLite, and SQLite to PostgreSQL and back.

A node with queued mail (its peer down), an inbox, dedupe and batch rows,
nonces and decisions is copied through the real CLI; the node then starts on
the copy and delivers what was queued, and its inbox still holds what it had.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.storage.transfer import DATA
from tests.e2e.harness import NodeProc, make_pair, relay, wait_for, with_user
from tests.pgserver import COORDINATION_TABLES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = make_pair(tmp_path)
    yield a, b
    for n in (a, b):
        n.kill()


def loaded(tmp_path: Path, a: NodeProc, b: NodeProc) -> tuple[str, str]:
    """Mail in a's inbox (from b) and mail queued at a for b (b down); both ids."""
    a.start()
    b.start()
    inbound = b.send("bob", ["alice@a.test"], "in alice's inbox")
    wait_for(lambda: a.inbox("alice"), what="alice's inbox")
    refused = relay(
        "send", "--node", a.url, "--token", a.tokens["alice"], "--to", "bob@b.test",
        "--residency", "KZ", "--text", "refused by residency", check=False,
    )  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    assert b.stop() == 0
    queued = a.send("alice", ["bob@b.test"], "queued while b is down")
    assert a.stop() == 0
    return inbound, queued


def test_copy_then_start_on_the_copy_delivers_what_was_queued(
    tmp_path: Path, pair: tuple[NodeProc, NodeProc]
) -> None:
    a, b = pair
    inbound, queued = loaded(tmp_path, a, b)
    before = a.row_counts()
    assert all(before[t] for t in ("queue", "inbox", "nonces", "batches", "decisions"))

    out = relay("storage", "copy", a.dir, "sqlite:copy.db", "--json")
    counts = json.loads(out.stdout)
    assert list(counts) == list(DATA)
    # row_counts leaves out the tables a node changes by itself (audit heads are signed
    # every minute); the copy takes them too, and source and target must agree on all
    assert {t: c["source"] for t, c in counts.items() if t in before} == {
        t: before[t] for t in DATA if t not in COORDINATION_TABLES
    }
    assert all(c["source"] == c["target"] for c in counts.values())
    human = relay("storage", "copy", a.dir, "sqlite:copy.db", check=False)
    assert human.returncode == 1
    assert "already holds relay data" in human.stderr and "--replace" in human.stderr
    replaced = relay("storage", "copy", a.dir, "sqlite:copy.db", "--replace", "--switch")
    assert re.search(r"(?m)^queue\s+1\s+1$", replaced.stdout), replaced.stdout
    assert 'url = "sqlite:copy.db"' in (a.dir / "node.toml").read_text()
    (a.dir / "relay.db").rename(a.dir / "old.db")  # the node must not be reading it
    a.start()
    b.start()
    got = wait_for(lambda: b.inbox("bob"), what="the queued message at b")
    assert [m["id"] for m in got] == [queued]
    assert [m["id"] for m in a.inbox("alice")] == [inbound]
    wait_for(
        lambda: a.status("alice", queued)["recipients"]["bob@b.test"]["status"] == "delivered",
        what="the delivered receipt at a",
    )


def test_a_running_node_is_refused(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    a.start()
    proc = relay("storage", "copy", a.dir, "sqlite:copy.db", check=False)
    assert proc.returncode == 1
    assert "is running; stop it" in proc.stderr
    assert not (a.dir / "copy.db").exists()


def test_a_target_that_is_not_a_database_url_is_refused(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    proc = relay("storage", "copy", a.dir, "mysql://x/y", check=False)
    assert proc.returncode == 1
    assert "TARGET: bad storage url 'mysql://x/y'" in proc.stderr


def test_to_postgres_and_back(tmp_path: Path, pair: tuple[NodeProc, NodeProc], pg_url: str) -> None:
    """SQLite -> PostgreSQL (started there, delivers the queue) -> SQLite again."""
    a, b = pair
    inbound, queued = loaded(tmp_path, a, b)
    before = a.row_counts()
    url = with_user(pg_url)

    out = relay("storage", "copy", a.dir, url, "--switch", "--json")
    counts = json.loads(out.stdout)
    assert {t: c["target"] for t, c in counts.items() if t in before} == {
        t: before[t] for t in DATA if t not in COORDINATION_TABLES
    }
    assert all(c["source"] == c["target"] for c in counts.values())
    assert f'url = "{url}"' in (a.dir / "node.toml").read_text()
    (a.dir / "relay.db").rename(a.dir / "old.db")
    a.start()
    b.start()
    got = wait_for(lambda: b.inbox("bob"), what="the queued message at b")
    assert [m["id"] for m in got] == [queued]
    wait_for(
        lambda: a.status("alice", queued)["recipients"]["bob@b.test"]["status"] == "delivered",
        what="the delivered receipt at a (on PostgreSQL)",
    )
    assert a.stop() == 0

    back = relay("storage", "copy", a.dir, "sqlite:back.db", "--switch", "--json")
    assert all(c["source"] == c["target"] for c in json.loads(back.stdout).values())
    a.start()
    assert [m["id"] for m in a.inbox("alice")] == [inbound]
    assert a.status("alice", queued)["recipients"]["bob@b.test"]["status"] == "delivered"
