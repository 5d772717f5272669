"""Sealed payloads with whole nodes, set up through the CLI (docs/sealing.md).

`relay init` gives every node a seal key and puts it in the `relay peer add`
line, so nodes that pinned each other that way seal by default.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.e2e.conftest import NodeStorage
from tests.e2e.harness import NodeProc, make_node, make_pair, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKER = "PLAINTEXT-MARKER-3f9c1e7a"


def append(node: NodeProc, text: str) -> None:
    with (node.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text)


def holds(node: NodeProc, text: str) -> list[str]:
    """Where the node's database holds `text` in the clear: on SQLite the files (main,
    WAL and shm) whose bytes hold it; on PostgreSQL the tables with a live row that
    holds it, as text or in a bytea column (dead tuples wait for VACUUM there)."""
    raw = text.encode()
    if node.storage is not None:
        return pgserver.tables_holding(node.storage, raw)
    files = sorted(node.dir.glob("relay.db*"))
    assert node.db_path in files
    return [f.name for f in files if raw in f.read_bytes()]


def recipient(node: NodeProc, msg: str, address: str) -> dict[str, str]:
    st: dict[str, str] = node.status("alice", msg)["recipients"][address]
    return st


def reload(node: NodeProc) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    for n in started:
        n.kill()


def document(node: NodeProc) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        urllib.request.urlopen(f"{node.url}/.well-known/relay", timeout=10).read()
    )
    return doc


def test_sealed_direct_the_origin_stores_only_ciphertext(
    tmp_path: Path, nodes: list[NodeProc], node_storage: NodeStorage
) -> None:
    a, b = make_pair(tmp_path, node_storage(), node_storage())
    for n in (a, b):
        nodes.append(n)
        n.start()
    msg = a.send("alice", ["bob@b.test"], f"{MARKER} sealed from a to b directly")
    got = wait_for(lambda: b.inbox("bob"), what="bob's inbox at b")
    assert [(m["id"], m["text"]) for m in got] == [(msg, f"{MARKER} sealed from a to b directly")]
    wait_for(lambda: recipient(a, msg, "bob@b.test")["status"] == "delivered", what="receipt")
    assert a.row_counts()["payloads"] >= 1  # a keeps its queued copy, sealed
    assert holds(a, MARKER) == []
    assert holds(b, MARKER) != []  # the destination stores it opened: the search finds it


def test_sealed_through_a_relay_the_relay_and_origin_store_only_ciphertext(
    tmp_path: Path, nodes: list[NodeProc], node_storage: NodeStorage
) -> None:
    a = make_node(tmp_path, "a.test", "RU", node_storage())
    r = make_node(tmp_path, "r.test", "RU", node_storage())
    b = make_node(tmp_path, "b.test", "RU", node_storage())
    c = make_node(tmp_path, "c.test", "RU")  # pinned without a seal key, never started
    a.add_peer(r)
    a.add_peer(b, with_url=False)
    r.add_peer(a)
    r.add_peer(b)
    b.add_peer(a, with_url=False)
    b.add_peer(r)
    words = c.peer_line.split()
    relay("peer", "add", a.dir, *words[4 : words.index("--seal-key")])
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    append(a, '[[routes]]\nto = "b.test"\nvia = "r.test"\n')
    append(b, '[[routes]]\nto = "a.test"\nvia = "r.test"\n')
    append(r, '[relay]\nfor_origins = ["a.test", "b.test"]\n')
    for n in (a, r, b):
        relay("check", n.dir)
        nodes.append(n)
        n.start()
    doc = json.loads(urllib.request.urlopen(f"{b.url}/.well-known/relay", timeout=10).read())
    (published,) = doc["seal_keys"].values()
    assert published["state"] == "current" and published["key"].startswith("mlkem768x25519:")
    assert published["key"] in b.peer_line  # what a pinned from b's `relay init` line

    msg = a.send("alice", ["bob@b.test"], f"{MARKER} sealed from a to b")
    got = wait_for(lambda: b.inbox("bob"), what="bob's inbox at b")
    assert [(m["id"], m["text"]) for m in got] == [(msg, f"{MARKER} sealed from a to b")]
    wait_for(
        lambda: recipient(a, msg, "bob@b.test")["status"] == "delivered",
        what="the delivered receipt back at a",
    )
    assert r.row_counts()["payloads"] >= 1  # the relay holds the envelope, sealed
    for holder in (r, a):
        assert holds(holder, MARKER) == [], holder.name
    assert holds(b, MARKER) != []  # the destination stores it opened

    # [federation] seal = "required": c.test has no seal key pinned, so the submit is refused
    append(a, '[federation]\nseal = "required"\n')
    relay("check", a.dir)
    reload(a)
    before = a.row_counts()["envelopes"]

    def refused() -> str:
        out = relay(
            "send",
            "--node",
            a.url,
            "--token",
            a.tokens["alice"],
            "--to",
            "carol@c.test",
            "--text",
            "must not leave unsealed",
            check=False,
        )
        return out.stderr if out.returncode == 3 else ""

    why = wait_for(refused, what="the refusal once a reloaded")
    assert "c.test" in why and "builtin:seal_required" in why
    assert a.row_counts()["envelopes"] == before
    msg2 = a.send("alice", ["bob@b.test"], "still sealed, still delivered")
    wait_for(lambda: recipient(a, msg2, "bob@b.test")["status"] == "delivered", what="msg2")


def test_rotation_keeps_mail_in_flight_and_revocation_refuses_with_seal_key(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    a, b = make_pair(tmp_path)
    for n in (a, b):
        nodes.append(n)
        n.start()
    first = relay("seal", "show", b.dir).stdout.strip()

    # B rotates while A still seals to the old key: it is retired, and still opens.
    out = relay("seal", "rotate", b.dir, "--suite", "x25519")
    update = out.stdout.strip().split()
    assert update[:3] == ["relay", "peer", "update"] and update[-2] == "--seal-key"
    new = update[-1]
    assert new.startswith("x25519:") and new != first
    # no SIGHUP: the command reloaded the running node itself
    assert "the running node reloaded node.toml" in out.stderr
    wait_for(
        lambda: (
            new
            in json.dumps(json.loads(urllib.request.urlopen(f"{b.url}/.well-known/relay").read()))
        ),
        what="b publishing its new seal key",
    )
    msg = a.send("alice", ["bob@b.test"], "sealed to the retired key")
    wait_for(lambda: recipient(a, msg, "bob@b.test")["status"] == "delivered", what="old key")

    # A moves to the new key; then B revokes the old one.
    # the command reloads the running node and says so once it did: no SIGHUP, whose
    # reload would come at a time of its own
    out = relay("peer", "update", a.dir, "--name", "b.test", "--seal-key", new)
    assert "the running node reloaded node.toml" in out.stderr
    old_id = first.split(":", 1)[1][:8]
    assert "the running node reloaded" in relay("seal", "revoke", b.dir, old_id).stderr

    def final(text: str) -> dict[str, str]:
        m = a.send("alice", ["bob@b.test"], text)
        st: dict[str, str] = wait_for(
            lambda: (
                (st := recipient(a, m, "bob@b.test"))["status"] not in ("queued", "sent") and st
            ),
            what=f"a final status for {text!r}",
        )
        return st

    assert final("sealed to the new key")["status"] == "delivered"
    texts = [m["text"] for m in b.inbox("bob")]
    assert "sealed to the retired key" in texts and "sealed to the new key" in texts

    # A peer still sealing to the revoked key is refused with rejected:seal_key.
    out = relay("peer", "update", a.dir, "--name", "b.test", "--seal-key", first)
    assert "the running node reloaded node.toml" in out.stderr
    st = wait_for(
        lambda: (s := final("sealed to a revoked key"))["status"] == "rejected" and s,
        what="the refusal by b",
    )
    assert st["reason"] == "seal_key"
    assert "code=seal_key" in b.logs() and "of this node is revoked" in b.logs()


def test_a_retired_seal_key_opens_mail_in_flight_within_grace_then_nothing(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    a, b = make_pair(tmp_path)
    append(a, '[federation]\nretry_max = "1s"\n')  # a retries b at once when it is back
    # b's queue lifetime bounds the grace from below; a short one allows a short grace
    text = (b.dir / "node.toml").read_text()
    (b.dir / "node.toml").write_text(text.replace("[node]\n", '[node]\nqueue_lifetime = "30s"\n'))
    relay("check", b.dir)
    nodes.extend((a, b))
    a.start()
    old = relay("seal", "show", b.dir).stdout.strip()
    old_id = json.loads(relay("seal", "show", b.dir, "--json").stdout)["seal_keys"][0]["key_id"]

    # b is down; a seals to b's pinned key, and the message waits in a's queue, held
    # there while b starts: the grace is wall time, so only the release and one
    # delivery come between the rotation and the arrival (b's start came between
    # them before, seconds of the 30 on a busy machine)
    in_flight = a.send("alice", ["bob@b.test"], "sealed to the old key, in flight")
    relay("queue", "hold", a.dir, in_flight)
    b.start()
    # b rotates with a short grace while the message is on its way
    out = relay("seal", "rotate", b.dir, "--grace", "30s")
    assert "is retired and opens mail sealed to it until" in out.stderr
    relay("queue", "release", a.dir, in_flight)
    (shown,) = [
        k for k in json.loads(relay("seal", "show", b.dir, "--json").stdout)["seal_keys"]
        if k["key"] == old
    ]  # fmt: skip
    assert shown["state"] == "retired"
    valid_until: int = shown["valid_until"]
    assert document(b)["seal_keys"][old_id] == {
        "key": old,
        "state": "retired",
        "valid_until": valid_until,
    }
    wait_for(
        lambda: recipient(a, in_flight, "bob@b.test")["status"] == "delivered",
        what="the message sealed to the retired key, delivered within the grace period",
    )
    assert "sealed to the old key, in flight" in [m["text"] for m in b.inbox("bob")]

    # b keeps running past valid_until: the old key opens nothing from then on,
    # without a reload, and is no longer published
    time.sleep(max(0.0, valid_until / 1000 - time.time()) + 0.5)
    late = a.send("alice", ["bob@b.test"], "sealed to the old key after its grace")
    st = wait_for(
        lambda: (s := recipient(a, late, "bob@b.test"))["status"] == "rejected" and s,
        what="b refusing mail sealed to its expired seal key",
    )
    assert st["reason"] == "seal_key"
    assert old_id not in document(b)["seal_keys"]
    logs = b.logs()
    assert "code=seal_key" in logs and f"seal key '{old_id}' of this node expired at" in logs
    assert "sealed to the old key after its grace" not in [m["text"] for m in b.inbox("bob")]
