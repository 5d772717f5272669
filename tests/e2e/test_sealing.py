"""Sealed payloads with whole nodes, set up through the CLI (docs/sealing.md).

`relay init` gives every node a seal key and puts it in the `relay peer add`
line, so nodes that pinned each other that way seal by default.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import NodeProc, make_node, make_pair, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKER = "PLAINTEXT-MARKER-3f9c1e7a"


def append(node: NodeProc, text: str) -> None:
    with (node.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text)


def database_bytes(node: NodeProc) -> bytes:
    """Every byte of the node's database files: the main file, its WAL and shm."""
    files = sorted(node.dir.glob("relay.db*"))
    assert node.db_path in files
    return b"".join(f.read_bytes() for f in files)


def stored_payload_rows(node: NodeProc) -> int:
    db = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM payloads").fetchone()[0])
    finally:
        db.close()


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


def test_sealed_through_a_relay_the_relay_and_origin_store_only_ciphertext(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    a = make_node(tmp_path, "a.test", "RU")
    r = make_node(tmp_path, "r.test", "RU")
    b = make_node(tmp_path, "b.test", "RU")
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
    assert stored_payload_rows(r) >= 1  # the relay holds the envelope, sealed
    for holder in (r, a):
        assert MARKER.encode() not in database_bytes(holder), holder.name
    assert MARKER.encode() in database_bytes(b)  # the destination stores it opened

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
    reload(b)
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
    relay("peer", "update", a.dir, "--name", "b.test", "--seal-key", new)
    reload(a)
    old_id = first.split(":", 1)[1][:8]
    relay("seal", "revoke", b.dir, old_id)
    reload(b)

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
    relay("peer", "update", a.dir, "--name", "b.test", "--seal-key", first)
    reload(a)
    st = wait_for(
        lambda: (s := final("sealed to a revoked key"))["status"] == "rejected" and s,
        what="the refusal by b",
    )
    assert st["reason"] == "seal_key"
    assert "code=seal_key" in b.logs() and "of this node is revoked" in b.logs()
