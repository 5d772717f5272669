"""Queue tools, peers, backup/restore and SIGHUP reload, through the CLI on real nodes."""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import NodeProc, make_node, make_pair, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW_RETRY = '\n[federation]\nretry_min = "10m"\nretry_max = "1h"\n'


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = make_pair(tmp_path)
    with (a.dir / "node.toml").open("a") as f:
        f.write(SLOW_RETRY)  # a failed attempt is not repeated on its own during the test
    yield a, b
    for n in (a, b):
        n.kill()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NodeProc]:
    a = make_node(tmp_path, "a.test", "RU")
    a.add_mailbox("alice")
    a.add_mailbox("bob")
    yield a
    a.kill()


def queue_json(node: NodeProc) -> list[dict[str, Any]]:
    out = relay("queue", node.dir, "--json")
    return [json.loads(line) for line in out.stdout.splitlines()]


def peer_json(node: NodeProc, name: str) -> dict[str, Any]:
    out = relay("peers", node.dir, "--json")
    (doc,) = [d for d in map(json.loads, out.stdout.splitlines()) if d["name"] == name]
    return doc  # type: ignore[no-any-return]


def shape_rows(text: str) -> dict[str, dict[str, int]]:
    """The summary table as {destination: {column: count}}."""
    head, *lines = text.splitlines()
    columns = head.split()[1:]
    rows: dict[str, dict[str, int]] = {}
    for line in lines:
        dest, *counts = line.split()
        rows[dest] = dict(zip(columns, map(int, counts), strict=True))
    return rows


def test_backlog_summary_hold_release_delete_retry(
    pair: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    a, b = pair
    a.start()
    ids = [a.send("alice", ["bob@b.test"], f"backlog {i}") for i in range(5)]
    peer = wait_for(
        lambda: (p := peer_json(a, "b.test"))["state"] == "backing off" and p,
        what="b.test backing off",
    )
    assert peer["queued"] == 5 and peer["delivered"] == 0 and peer["last_error"]
    human = relay("peers", a.dir).stdout
    assert "b.test" in human and "backing off" in human

    listed = queue_json(a)
    assert sorted(e["id"] for e in listed) == sorted(ids)
    assert {(e["hop"], e["origin"], e["held"]) for e in listed} == {("b.test", "a.test", False)}
    table = relay("queue", a.dir).stdout
    assert all(i in table for i in ids) and "5 envelopes queued" in table

    summary = relay("queue", a.dir, "--summary").stdout
    rows = shape_rows(summary)
    assert list(rows) == ["TOTAL", "b.test"]
    assert rows["TOTAL"]["T"] == rows["b.test"]["T"] == 5
    assert rows["b.test"]["0-1m"] + rows["b.test"]["1-5m"] == 5  # a slow machine may cross 1m

    # hold / release
    relay("queue", "hold", a.dir, ids[0])
    assert {e["id"]: e["held"] for e in queue_json(a)}[ids[0]] is True
    assert shape_rows(relay("queue", a.dir, "--summary").stdout)["TOTAL"]["HELD"] == 1
    relay("queue", "release", a.dir, ids[0])
    assert not any(e["held"] for e in queue_json(a))
    missing = relay("queue", "hold", a.dir, "ab" * 16, check=False)
    assert missing.returncode == 1 and "not queued" in missing.stderr

    # delete: the sender sees it rejected, not lost
    relay("queue", "delete", a.dir, ids[1])
    assert sorted(e["id"] for e in queue_json(a)) == sorted(ids[:1] + ids[2:])
    status = a.status("alice", ids[1])["recipients"]["bob@b.test"]
    assert (status["status"], status["reason"]) == ("rejected", "deleted by admin")
    assert a.status("alice", ids[0])["recipients"]["bob@b.test"]["status"] == "queued"

    # a hot backup through the running node
    backup = tmp_path / "a-backup.db"
    done = relay("backup", a.dir, backup)
    assert "by the running node" in done.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600

    # retry: b is up now, and a goes at once instead of waiting out its backoff
    b.start()
    relay("queue", "retry", a.dir, "--dest", "b.test")
    got = wait_for(lambda: (m := b.inbox("bob")) and len(m) >= 4 and m, what="4 messages at b")
    assert sorted(m["id"] for m in got) == sorted(ids[:1] + ids[2:])
    wait_for(lambda: queue_json(a) == [], what="a's queue empty")
    peer = wait_for(lambda: (p := peer_json(a, "b.test"))["state"] == "up" and p, what="b.test up")
    assert peer["delivered"] == 4
    assert relay("queue", a.dir).stdout.strip() == "queue is empty"

    # changes need the running node
    assert a.stop() == 0
    down = relay("queue", "retry", a.dir, "--dest", "b.test", check=False)
    assert down.returncode == 5 and "not running" in down.stderr
    assert relay("queue", a.dir, "--json").stdout == ""  # reading works while stopped


def test_usage_errors_exit_2(single: NodeProc) -> None:
    a = single
    for args in (
        ("queue", "retry", a.dir),
        ("queue", "retry", a.dir, "--dest", "b.test", "ab" * 16),
        ("queue", "hold", a.dir),
        ("queue", "hold", a.dir, "not-an-id"),
        ("queue", "delete", a.dir, "--dest", "b.test"),
        ("queue", a.dir, "extra"),
        ("queue", "hold", a.dir, "ab" * 16, "--summary"),
    ):
        done = relay(*args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert "usage: relay queue" in done.stderr


def test_backup_and_restore_serve_the_same_inbox(single: NodeProc, tmp_path: Path) -> None:
    a = single
    a.start()
    ids = [a.send("alice", ["bob@a.test"], f"keep {i}") for i in range(3)]
    before = wait_for(lambda: (m := a.inbox("bob")) and len(m) == 3 and m, what="bob's inbox")
    backup = tmp_path / "a.db"
    relay("backup", a.dir, backup)
    refused = relay("backup", a.dir, backup, check=False)
    assert refused.returncode == 1 and "exists" in refused.stderr

    assert len(a.inbox("bob", ack=True)) == 3  # after the backup: gone from the live node
    assert a.inbox("bob") == []
    busy = relay("restore", a.dir, backup, check=False)
    assert busy.returncode == 1 and "stop it first" in busy.stderr

    assert a.stop() == 0
    cold = tmp_path / "cold.db"
    assert "node stopped" in relay("backup", a.dir, cold).stderr
    done = relay("restore", a.dir, backup)
    assert "replaced database is kept" in done.stderr
    assert not Path(f"{a.db_path}-wal").exists()
    assert stat.S_IMODE(a.db_path.stat().st_mode) == 0o600
    a.start()
    after = a.inbox("bob")
    assert [(m["id"], m["text"]) for m in after] == [(m["id"], m["text"]) for m in before]
    assert sorted(m["id"] for m in after) == sorted(ids)
    assert a.status("alice", ids[0])["recipients"]["bob@a.test"]["status"] == "delivered"


def test_config_commands_reload_the_running_node(single: NodeProc) -> None:
    """`mailbox add` on a running node: its token works at once, and it says so."""
    a = single
    a.start()
    added = relay("mailbox", "add", a.dir, "carol")
    assert "the running node reloaded node.toml: the change is in effect now" in added.stderr
    a.tokens["carol"] = added.stdout.splitlines()[-1]
    a.send("carol", ["bob@a.test"], "at once")  # no SIGHUP, no 401

    # a rotated token takes over and a removed mailbox stops, at once
    old_token = a.tokens["carol"]
    new_token = relay("mailbox", "rotate", a.dir, "carol").stdout.splitlines()[-1]
    relay("mailbox", "remove", a.dir, "alice")
    for token, ok in ((old_token, False), (new_token, True), (a.tokens["alice"], False)):
        done = relay(
            "send", "--node", a.url, "--token", token, "--to", "bob@a.test", "--text", "x",
            check=False,
        )  # fmt: skip
        assert (done.returncode == 0) == ok, (token, done.stderr)
    assert a.stop() == 0

    stopped = relay("mailbox", "add", a.dir, "dave")
    assert stopped.stderr.splitlines()[1] == (
        "the node is not running; it uses the change when it starts (relay run)"
    )
    gone = relay("reload", a.dir, check=False)
    assert gone.returncode == 5
    assert gone.stderr == f"relay: the node in {a.dir} is not running (no admin socket answers)\n"


def test_reload_refuses_a_bad_config_and_keeps_the_old_one(single: NodeProc) -> None:
    a = single
    a.start()
    assert a.proc is not None
    toml = a.dir / "node.toml"
    good = toml.read_text()
    toml.write_text(good.replace('jurisdiction = "RU"', 'jurisdiction = "XX"', 1))
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_refused" in a.logs(), what="reload_refused in the log")
    assert f"{toml}:" in a.logs() and "node.jurisdiction" in a.logs()
    assert a.proc.poll() is None  # still running, on the old config
    a.send("alice", ["bob@a.test"], "still here")

    # the same through the admin socket: the problems are printed, exit 2
    refused = relay("reload", a.dir, check=False)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.splitlines()
    assert lines[0] == "relay: the running node refused node.toml and keeps its old config:"
    assert lines[1].startswith(f"  {toml}:") and "node.jurisdiction" in lines[1]
    a.send("alice", ["bob@a.test"], "and still")

    toml.write_text(good.replace('listen = "127.0.0.1:', 'listen = "127.0.0.2:', 1))
    later = relay("reload", a.dir, "--json")
    assert json.loads(later.stdout)["restart_needed"] == ["node.listen"]
    assert later.stderr == (
        "reloaded: the running node uses node.toml as it is now\n"
        "(node.listen changed too, but only a restart applies it; the old value is kept)\n"
    )
    texts = [m["text"] for m in a.inbox("bob")]
    assert texts == ["still here", "and still"]
    assert a.stop() == 0
