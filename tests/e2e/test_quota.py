"""A full mailbox holds its mail back at the sender, others' mail flows, nothing is lost.

Two `relay run` nodes on 127.0.0.1: b.test keeps 3,800 unread bytes per mailbox
(two of the 1,500-byte messages with their headers, not three) and pages its
inbox at 1,024 bytes; a.test retries fast but keeps b's Retry-After.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import NodeProc, make_pair, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUOTA = "\n[limits]\nmailbox_unread_bytes = 3800\ninbox_page_bytes = 1024\n"
# retries come fast, but b's Retry-After of 30 s is kept: only `relay queue retry` cuts it;
# unsealed, so that the byte counts above are those of plain headers (a sealed header
# carries a 1,168-byte wrap, docs/sealing.md)
FAST_RETRY = '\n[federation]\nretry_min = "100ms"\nretry_max = "60s"\nseal = "off"\n'


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = make_pair(tmp_path)
    b.add_mailbox("carol")
    for node, extra in ((a, FAST_RETRY), (b, QUOTA)):
        toml = node.dir / "node.toml"
        toml.write_text(toml.read_text() + extra)
    yield a, b
    for n in (a, b):
        n.kill()


def _deferred(node: NodeProc) -> list[dict[str, Any]]:
    """Entries queued at `node` whose own next try is ahead (`relay queue --json`)."""
    now = time.time() * 1000
    lines = relay("queue", node.dir, "--json").stdout.splitlines()  # one entry a line
    return [e for e in map(json.loads, lines) if e["next_try"] > now]


def test_mail_past_the_quota_waits_at_the_sender_until_the_mailbox_is_read(
    pair: tuple[NodeProc, NodeProc],
) -> None:
    a, b = pair
    a.start()
    b.start()
    first = a.send("alice", ["bob@b.test"], "1" * 1500)
    wait_for(lambda: len(b.inbox("bob")) == 1, what="the first message at bob")
    later = [a.send("alice", ["bob@b.test"], str(i) * 1500) for i in (2, 3)]
    wait_for(lambda: "quota_refused" in b.log_path.read_text(), what="a quota refusal")
    held = b.inbox("bob")  # one message a page: relay inbox reads every page
    assert 1 <= len(held) < 3 and held[0]["id"] == first
    line = next(ln for ln in b.log_path.read_text().splitlines() if "quota_refused" in ln)
    assert all(f in line for f in ("bob", "a.test", "limits.mailbox_unread_bytes")), line
    # bob's full mailbox holds back only bob's mail: its items wait 30 s at a, the
    # peer is not backing off, and carol's mail goes on at once
    deferred = wait_for(lambda: _deferred(a), what="bob's items deferred at a.test")
    assert {e["dest"] for e in deferred} == {"b.test"} and all(e["attempts"] for e in deferred)
    (peer,) = map(json.loads, relay("peers", a.dir, "--json").stdout.splitlines())
    assert (peer["name"], peer["failures"], peer["next_try"]) == ("b.test", 0, 0), peer
    for_carol = a.send("alice", ["carol@b.test"], "carol is not held back")
    got = wait_for(lambda: b.inbox("carol"), what="carol's mail past bob's full mailbox")
    assert [m["id"] for m in got] == [for_carol]
    assert len(b.inbox("bob")) == len(held)
    assert "outcome=retry" not in a.log_path.read_text()
    assert "deferred:" in a.log_path.read_text()

    assert len(b.inbox("bob", ack=True)) == len(held)
    relay("queue", "retry", a.dir, "--dest", "b.test")  # due now rather than in 30 s
    got = wait_for(lambda: len(b.inbox("bob")) + len(held) == 3 and b.inbox("bob"), what="rest")
    assert sorted(m["id"] for m in [*held, *got]) == sorted([first, *later])
    assert a.stop() == 0 and b.stop() == 0
