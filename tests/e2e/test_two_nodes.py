"""Two (and three) nodes as subprocesses, set up only through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.harness import NodeProc, make_node, relay, wait_for
from tests.fault.common import set_federation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _delivered(node: NodeProc, mailbox: str, msg_id: str) -> bool:
    doc = node.status(mailbox, msg_id)
    return all(r["status"] == "delivered" for r in doc["recipients"].values())


def test_messages_both_ways_and_status(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    a.start()
    b.start()
    m1 = a.send("alice", ["bob@b.test"], "привет, Алматы")
    m2 = b.send("bob", ["alice@a.test"], "hello back")
    assert len(m1) == 32 and len(m2) == 32

    got_b = wait_for(lambda: b.inbox("bob"), what="bob's inbox")
    assert [(m["id"], m["from"], m["to"], m["origin"], m["text"]) for m in got_b] == [
        (m1, "alice@a.test", ["bob@b.test"], "a.test", "привет, Алматы")
    ]
    assert got_b[0]["ctype"].startswith("text/plain")
    assert isinstance(got_b[0]["created"], int) and got_b[0]["body_b64"]
    got_a = wait_for(lambda: a.inbox("alice"), what="alice's inbox")
    assert [(m["id"], m["text"]) for m in got_a] == [(m2, "hello back")]

    wait_for(lambda: _delivered(a, "alice", m1), what="delivered receipt at a")
    wait_for(lambda: _delivered(b, "bob", m2), what="delivered receipt at b")
    human = relay("status", "--node", a.url, "--token", a.tokens["alice"], m1)
    assert human.stdout.strip() == "bob@b.test: delivered"

    acked = b.inbox("bob", ack=True)
    assert len(acked) == 1
    assert b.inbox("bob") == []
    assert a.stop() == 0 and b.stop() == 0


def test_unknown_mailbox_comes_back_rejected(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    a.start()
    b.start()
    m = a.send("alice", ["nobody@b.test"], "anyone there?")
    doc = wait_for(
        lambda: (
            (d := a.status("alice", m))["recipients"]["nobody@b.test"]["status"] == "rejected" and d
        ),
        what="rejected status",
    )
    assert doc["recipients"]["nobody@b.test"]["reason"] == "unknown_mailbox"


def test_impostor_with_same_name_is_refused(
    tmp_path: Path, pair: tuple[NodeProc, NodeProc]
) -> None:
    _, b = pair
    b.start()
    # A third node claims a.test's name with its own, different key.
    evil = make_node(tmp_path / "evil", "a.test", "RU")
    evil.add_peer(b)
    evil.add_mailbox("alice")
    before = b.row_counts()
    evil.start()
    try:
        evil.send("alice", ["bob@b.test"], "I am a.test, honest")
        wait_for(
            lambda: "unknown_key" in evil.logs() or "bad_signature" in evil.logs(),
            what="refusal in the impostor's log",
        )
    finally:
        evil.kill()
    assert "unknown_key" in b.logs() or "bad_signature" in b.logs()
    assert b.row_counts() == before
    assert b.inbox("bob") == []


def test_sent_while_receiver_down_arrive_once(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    # The default backoff ceiling doubles up to an hour: with B down for the
    # seconds the submits take, A's next try could fall after this test's wait.
    # This test is about exactly-once delivery, so cap the backoff at 2 s.
    toml = a.dir / "node.toml"
    toml.write_text(toml.read_text() + '\n[federation]\nretry_min = "200ms"\nretry_max = "2s"\n')
    a.start()
    ids = [a.submit("alice", ["bob@b.test"], f"queued {i}") for i in range(20)]
    for i in ids[:3]:
        assert a.status("alice", i)["recipients"]["bob@b.test"]["status"] == "queued"
    b.start()
    got = wait_for(
        lambda: (m := b.inbox("bob")) and len(m) >= 20 and m, timeout=40, what="20 messages at b"
    )
    assert sorted(m["id"] for m in got) == sorted(ids)
    assert sorted(m["text"] for m in got) == sorted(f"queued {i}" for i in range(20))
    wait_for(lambda: all(_delivered(a, "alice", i) for i in ids), what="all delivered")
    # restart both: nothing is delivered twice
    assert b.stop() == 0
    b.start()
    assert len(b.inbox("bob")) == 20


def test_without_receipts_status_stays_sent(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a.test", "RU")
    b = make_node(tmp_path, "b.test", "RU")
    # a waits for receipts, as a sender of an earlier version does (protocol.md §22)
    set_federation(a.dir, delivery_results=False)
    a.add_peer(b)
    b.add_peer(a, with_url=False)  # b knows a's key but cannot reach it: receipts held back
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    a.start()
    b.start()
    try:
        m = a.send("alice", ["bob@b.test"], "no receipt for this")
        wait_for(lambda: b.inbox("bob"), what="message at b")
        wait_for(
            lambda: a.status("alice", m)["recipients"]["bob@b.test"]["status"] == "sent",
            what="sent status",
        )
        wait_for(lambda: "cannot deliver to a.test" in b.logs(), what="b's failed receipt attempt")
        assert a.status("alice", m)["recipients"]["bob@b.test"]["status"] == "sent"
    finally:
        a.kill()
        b.kill()


def test_receiver_killed_after_commit_causes_no_duplicate(
    pair: tuple[NodeProc, NodeProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    a.start()
    # b dies right after its first batch commit, before it answers.
    monkeypatch.setenv("RELAY_FAULT", "exit_after_commit")
    b.start()
    monkeypatch.delenv("RELAY_FAULT")
    ids = [a.send("alice", ["bob@b.test"], f"crash {i}") for i in range(5)]
    assert b.proc is not None
    b.proc.wait(timeout=30)
    assert b.proc.returncode != 0
    b.proc = None
    committed = b.row_counts()["inbox"]
    assert committed >= 1
    b.start()
    got = wait_for(
        lambda: (m := b.inbox("bob")) and len(m) >= 5 and m, timeout=40, what="5 messages at b"
    )
    assert sorted(m["id"] for m in got) == sorted(ids)
    assert len(got) == 5
    wait_for(lambda: all(_delivered(a, "alice", i) for i in ids), what="all delivered")
    assert "duplicate:" in a.logs() or "batch_repeat" in b.logs()
    assert b.storage is not None or os.path.exists(b.db_path)
