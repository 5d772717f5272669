"""Erasure end to end (issue 14): real nodes, driven only through the `relay` CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def marker() -> str:
    """Payload text no database holds by chance."""
    return "erase-me-" + os.urandom(12).hex()


def files_holding(node: NodeProc, needle: str) -> list[str]:
    """The node's database files (WAL and shared memory included) whose bytes hold `needle`."""
    raw = needle.encode()
    return sorted(
        p.name
        for p in node.dir.iterdir()
        if p.name.startswith(node.db_path.name) and raw in p.read_bytes()
    )


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[NodeProc]:
    """One SQLite node with three mailboxes."""
    node = make_node(tmp_path, "a.test", "RU")
    for mb in ("alice", "bob", "mallory"):
        node.add_mailbox(mb)
    yield node
    node.kill()


def erase_as(
    node: NodeProc, mailbox: str, msg: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return relay(
        "erase", "--node", node.url, "--token", node.tokens[mailbox], msg, "--json", check=check
    )


def test_local_erasure_by_sender_and_admin_leaves_no_payload(solo: NodeProc) -> None:
    a = solo
    a.start()
    read_text, unread_text, admin_text = marker(), marker(), marker()
    read_id = a.send("alice", ["bob@a.test"], read_text)
    unread_id = a.send("alice", ["bob@a.test"], unread_text)
    admin_id = a.send("alice", ["bob@a.test"], admin_text)
    got = wait_for(lambda: len(a.inbox("bob")) == 3 and a.inbox("bob"), what="bob's inbox")
    assert {m["text"] for m in got} == {read_text, unread_text, admin_text}
    # bob acknowledges the first one: erasure reaches read messages too
    relay("inbox", "--node", a.url, "--token", a.tokens["bob"], "--limit", "1", "--ack", "--json")
    assert [m["id"] for m in a.inbox("bob")] == [unread_id, admin_id]

    assert files_holding(a, read_text)  # the search finds what is there

    # someone else's message: refused, nothing changes
    refused = erase_as(a, "mallory", read_id, check=False)
    assert refused.returncode == 1 and "not sent by mallory" in refused.stderr
    assert all(m["text"] for m in a.inbox("bob"))

    first: dict[str, int] = {}
    for msg in (read_id, unread_id):
        doc = json.loads(erase_as(a, "alice", msg).stdout)
        first[msg] = doc["erased"][0]["at"]
        assert [(e["id"], e["status"], e["source"], e["actor"]) for e in doc["erased"]] == [
            (msg, "erased", "mailbox", "alice")
        ]

    # the admin erases the third, with a reason; the node directory comes first
    refused = relay("erase", a.dir, admin_id, check=False)
    assert refused.returncode != 0 and "--reason" in refused.stderr
    out = relay("erase", a.dir, admin_id, "--reason", "subject request 42")
    assert out.stdout.strip() == f"{admin_id} to a.test: erased"
    assert "checkpoint" in out.stderr

    # bob sees one tombstone per erased message he still had, none with a body
    items = a.inbox("bob")
    assert [(m["id"], m["event"]) for m in items] == [
        (read_id, "message.erased"),
        (unread_id, "message.erased"),
        (admin_id, "message.erased"),
    ]
    assert not any("text" in m or "body_b64" in m for m in items)
    human = relay("inbox", "--node", a.url, "--token", a.tokens["bob"])
    assert human.stdout.count("<erased by its sender>") == 3

    # erasing again is harmless: the first record stands
    again = json.loads(erase_as(a, "alice", read_id).stdout)
    assert again["erased"][0]["at"] == first[read_id]
    assert len(a.inbox("bob")) == 3

    # no database file holds any of the payloads, WAL included
    for text in (read_text, unread_text, admin_text):
        assert files_holding(a, text) == [], text
    rows = [json.loads(ln) for ln in relay("decisions", a.dir, "--json").stdout.splitlines()]
    erasures = [r for r in rows if r["point"] == "erase"]
    assert len(erasures) == 3 and {r["outcome"] for r in erasures} == {"erased"}
    assert any("subject request 42" in r["reason"] for r in erasures)
    assert a.stop() == 0
    for text in (read_text, unread_text, admin_text):
        assert files_holding(a, text) == [], text
    log = a.log_path.read_text()
    assert log.count("message_erased") == 3 and "subject request 42" in log
