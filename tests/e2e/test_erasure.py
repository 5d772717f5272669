"""Erasure end to end (issue 14): real nodes, driven only through the `relay` CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pgserver
from tests.e2e.conftest import NodeStorage
from tests.e2e.harness import NodeProc, make_node, make_pair, relay, wait_for

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


def stored(node: NodeProc, needle: str) -> list[str]:
    """Where the node's database holds `needle`: SQLite files (WAL included), or on
    PostgreSQL the tables with a live row that holds it (as text or bytea)."""
    if node.storage is not None:
        return pgserver.tables_holding(node.storage, needle.encode())
    return files_holding(node, needle)


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


# --- across the federation ---------------------------------------------------------------


def append(node: NodeProc, text: str) -> None:
    with (node.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text)


def route(node: NodeProc, to: str, via: str) -> None:
    append(node, f'[[routes]]\nto = "{to}"\nvia = "{via}"\n')


def replace_line(node: NodeProc, old: str, new: str) -> None:
    """Change a line `relay init` wrote in node.toml, as an admin would."""
    path = node.dir / "node.toml"
    text = path.read_text(encoding="utf-8")
    assert f"\n{old}\n" in text, text
    path.write_text(text.replace(f"\n{old}\n", f"\n{new}\n", 1))


@pytest.fixture
def path_nodes(tmp_path: Path) -> Iterator[list[NodeProc]]:
    """a.test -> r1.test -> r2.test -> b.test, all RU; b holds content a day (a legal hold)."""
    a, r1, r2, b = (
        make_node(tmp_path, n, "RU") for n in ("a.test", "r1.test", "r2.test", "b.test")
    )
    # every node pins the jurisdiction of each node a message passes; only neighbours by URL
    a.add_peer(r1)
    a.add_peer(r2, with_url=False)
    a.add_peer(b, with_url=False)
    r1.add_peer(a)
    r1.add_peer(r2)
    r1.add_peer(b, with_url=False)
    r2.add_peer(r1)
    r2.add_peer(b)
    r2.add_peer(a, with_url=False)
    b.add_peer(r2)
    b.add_peer(r1, with_url=False)
    b.add_peer(a, with_url=False)
    route(a, "b.test", "r1.test")
    route(r1, "b.test", "r2.test")
    route(r2, "a.test", "r1.test")
    route(b, "a.test", "r2.test")
    for r in (r1, r2):
        append(r, '[relay]\nfor_origins = ["a.test", "b.test"]\n')
    # unsealed, so that every copy on the path holds the marker in the clear and the
    # test can see each erased (a sealed payload leaves only the destination readable)
    append(a, '[federation]\nseal = "off"\n')
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    b.add_mailbox("carol")
    for n in (a, r1, r2, b):
        relay("check", n.dir)
    nodes = [a, r1, r2, b]
    yield nodes
    for n in nodes:
        n.kill()


def erasure_nodes(node: NodeProc, mailbox: str, msg: str) -> dict[str, str]:
    doc = node.status(mailbox, msg)
    return {n["node"]: n["status"] for env in doc.get("erasure", []) for n in env["nodes"]}


def test_erasure_through_two_relays_reaches_every_copy_with_signed_answers(
    path_nodes: list[NodeProc],
) -> None:
    a, _, _, b = path_nodes
    for n in path_nodes:
        n.start()
    read_text, unread_text = marker(), marker()
    read_id = a.send("alice", ["bob@b.test"], read_text)
    unread_id = a.send("alice", ["carol@b.test"], unread_text)
    wait_for(lambda: len(b.inbox("bob")) == 1, what="bob's message at b")
    wait_for(lambda: len(b.inbox("carol")) == 1, what="carol's message at b")
    b.inbox("bob", ack=True)  # bob read his; carol did not read hers
    for msg in (read_id, unread_id):
        wait_for(
            lambda m=msg: all(
                r["status"] == "delivered" for r in a.status("alice", m)["recipients"].values()
            ),
            what="delivered at a",
        )
    assert all(files_holding(n, read_text) for n in path_nodes)  # every node had a copy

    for msg in (read_id, unread_id):
        out = relay("erase", "--node", a.url, "--token", a.tokens["alice"], msg)
        assert out.stdout.strip() == f"{msg} to b.test: erased (then r1.test)"
    for msg in (read_id, unread_id):
        wait_for(
            lambda m=msg: (
                erasure_nodes(a, "alice", m)
                == {
                    "a.test": "erased",
                    "r1.test": "erased",
                    "r2.test": "erased",
                    "b.test": "erased",
                }
            ),
            what="every node's signed answer at a",
        )
    human = relay("status", "--node", a.url, "--token", a.tokens["alice"], read_id).stdout
    assert f"erasure of {read_id} (to b.test):" in human
    for name in ("a.test", "r1.test", "r2.test", "b.test"):
        assert f"  {name}: erased " in human

    # bob and carol see tombstones; no node keeps the payloads in its files
    assert [(m["id"], m["event"]) for m in b.inbox("bob")] == [(read_id, "message.erased")]
    assert [(m["id"], m["event"]) for m in b.inbox("carol")] == [(unread_id, "message.erased")]
    for n in path_nodes:
        for text in (read_text, unread_text):
            assert files_holding(n, text) == [], (n.name, text)
    # b (not the origin) cannot erase a's message
    refused = relay("erase", b.dir, read_id, "--reason", "not mine", check=False)
    assert refused.returncode == 1 and "originated at b.test" in refused.stderr


def test_a_relay_down_during_the_erasure_answers_once_back_and_a_hold_is_reported(
    path_nodes: list[NodeProc],
) -> None:
    a, r1, r2, b = path_nodes
    replace_line(b, "content_min_days = 0", "content_min_days = 1")
    # Every sender toward r2 backs off while it is down, doubling from 1 s (the
    # longer the first wait below takes, the longer the backoff): r1's with the
    # request, and b's with the receipt of the message if r2 went down before it
    # passed. `queue retry` clears r1's only, and an attempt already failing when
    # it runs sets it again; b's answer would wait out its own. A 1 s ceiling
    # makes every sender try r2 again within a second of its coming back.
    for n in (r1, r2, b):
        append(n, '[federation]\nretry_max = "1s"\n')
    for n in path_nodes:
        relay("check", n.dir)
    for n in path_nodes:
        n.start()
    text = marker()
    msg = a.send("alice", ["bob@b.test"], text)
    wait_for(lambda: len(b.inbox("bob")) == 1, what="bob's message at b")

    r2.stop()  # down when the erasure is sent
    relay("erase", a.dir, msg, "--reason", "subject request 7")
    wait_for(
        lambda: (
            erasure_nodes(a, "alice", msg)
            == {"a.test": "erased", "r1.test": "erased", "r2.test": "pending"}
        ),
        what="r1 answered, r2 pending",
    )
    r2.start()
    relay("queue", "retry", r1.dir, "--dest", "r2.test")
    wait_for(
        lambda: (
            erasure_nodes(a, "alice", msg)
            == {"a.test": "erased", "r1.test": "erased", "r2.test": "erased", "b.test": "held"}
        ),
        what="r2 erased, b held",
    )
    doc = a.status("alice", msg)
    (held,) = [n for env in doc["erasure"] for n in env["nodes"] if n["node"] == "b.test"]
    assert held["rule"] == "retention.content_min_days"
    assert held["hold_until"] > held["at"] + 23 * 3600 * 1000
    # the recipient no longer sees it, though b keeps the bytes for the hold
    assert [m.get("event") for m in b.inbox("bob")] == ["message.erased"]
    assert files_holding(b, text)
    for n in (a, r1, r2):
        assert files_holding(n, text) == [], n.name


def test_direct_erasure_on_each_backend(tmp_path: Path, node_storage: NodeStorage) -> None:
    a, b = make_pair(tmp_path, node_storage(), node_storage())
    try:
        a.start()
        b.start()
        text = marker()
        msg = a.send("alice", ["bob@b.test"], text)
        wait_for(lambda: [m["text"] for m in b.inbox("bob")] == [text], what="bob's message")
        # sealed by default (issue 16): a holds only ciphertext, b the opened payload,
        # so the erasure below is checked on a sealed message's copies
        assert stored(a, text) == [] and stored(b, text) != []
        relay("erase", "--node", a.url, "--token", a.tokens["alice"], msg)
        wait_for(
            lambda: erasure_nodes(a, "alice", msg) == {"a.test": "erased", "b.test": "erased"},
            what="b's signed answer at a",
        )
        assert [(m["id"], m["event"]) for m in b.inbox("bob")] == [(msg, "message.erased")]
        # on PostgreSQL: no live row holds it (dead tuples wait for VACUUM, docs/erasure.md)
        assert stored(a, text) == [] and stored(b, text) == []
    finally:
        a.kill()
        b.kill()
