"""The admin API (relay.api.admin) of in-process nodes, over its Unix socket.

Node a.test (RU) runs in the test's event loop with a frozen clock, so a
failed attempt's backoff never runs out by itself. Its peer b.test is another
in-process node, started only when a test wants deliveries to succeed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.api.admin_client import ADMIN_SOCKET, ADMIN_TOKEN, unix_path
from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.values import mailbox_token_sha256
from relay.errors import BadRequest, Conflict, StoreError
from relay.node import queueview
from relay.node.app import Node
from relay.node.queueops import DELETED_REASON
from relay.node.trace import timeline
from relay.protocol.envelope import make_header, seal
from relay.protocol.keystr import key_id, public_key_string
from relay.storage.interface import WriteTx
from relay.storage.records import Attempt, NewEnvelope
from relay.storage.sqlite.backup import backup_file, schema_version_of
from relay.storage.sqlite.store import SCHEMA_VERSION, open_store, sqlite_store, sqlite_tx
from tests.e2e.harness import free_port

NOW_MS = 1_700_000_000_000
TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token"}


class Clock:
    """Unix ms that move only when the test moves them."""

    def __init__(self) -> None:
        self.now_ms = NOW_MS

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class NodeDir:
    name: str
    dir: Path
    port: int
    key: Ed25519PrivateKey

    @property
    def key_string(self) -> str:
        return public_key_string(self.key.public_key())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def node_toml(
    me: NodeDir,
    peer: NodeDir,
    mailboxes: list[str],
    *,
    policy: str = 'default_residency = ["RU"]',
    listen: str = "",
    peer_jurisdiction: str = "RU",
) -> str:
    lines = [
        "[node]",
        f'name = "{me.name}"',
        'jurisdiction = "RU"',
        f'listen = "{listen or f"127.0.0.1:{me.port}"}"',
        'key_file = "node.key"',
        "",
        "[policy]",
        policy,
        "",
        "[federation]",
        'receipt_window = "1h"',  # pending receipts stay visible to the test
        'retry_min = "1h"',
        'retry_max = "1h"',
        "",
        "[[peers]]",
        f'name = "{peer.name}"',
        f'url = "{peer.url}"',
        f'jurisdiction = "{peer_jurisdiction}"',
        f'keys = ["{peer.key_string}"]',
        "",
    ]
    for mb in mailboxes:
        lines += [
            "[[mailboxes]]",
            f'name = "{mb}"',
            f'token_sha256 = "{mailbox_token_sha256(TOKENS[mb])}"',
            "",
        ]
    return "\n".join(lines)


async def wait_until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 15) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


class World:
    """Node a.test running, b.test written (not started), one HTTP session."""

    def __init__(self, tmp: Path, session: aiohttp.ClientSession) -> None:
        self.clock = Clock()
        self.session = session
        self.a = NodeDir("a.test", tmp / "a", free_port(), self._key(tmp / "a"))
        self.b = NodeDir("b.test", tmp / "b", free_port(), self._key(tmp / "b"))
        self.write(self.a, ["alice"])
        self.write(self.b, ["bob"])
        self.node_a: Node | None = None
        self.node_b: Node | None = None

    @staticmethod
    def _key(directory: Path) -> Ed25519PrivateKey:
        directory.mkdir(mode=0o700)
        return generate_key_file(directory / "node.key")

    def write(self, me: NodeDir, mailboxes: list[str], **kw: Any) -> None:
        peer = self.b if me is self.a else self.a
        (me.dir / "node.toml").write_text(node_toml(me, peer, mailboxes, **kw))

    async def start(self, which: NodeDir) -> Node:
        node = Node(load_config(which.dir), clock=self.clock)
        await node.start()
        if which is self.a:
            self.node_a = node
        else:
            self.node_b = node
        return node

    @property
    def state_a(self) -> Any:
        assert self.node_a is not None and self.node_a.state is not None
        return self.node_a.state

    async def admin_raw(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, bytes, str]:
        sock = self.a.dir / ADMIN_SOCKET
        if token is None:
            token = (self.a.dir / ADMIN_TOKEN).read_text().strip()
        with unix_path(sock) as address:
            connector = aiohttp.UnixConnector(path=address)
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.request(
                    method,
                    f"http://admin/admin/v1{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as r,
            ):
                return r.status, await r.read(), r.content_type

    async def admin(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        status, raw, ctype = await self.admin_raw(method, path, body, token=token)
        assert ctype == "application/json", (status, ctype, raw[:100])
        return status, json.loads(raw)

    async def send(self, text: str, to: str = "bob@b.test", mailbox: str = "alice") -> str:
        async with self.session.post(
            f"{self.a.url}/v1/messages",
            json={"to": [to], "text": text},
            headers={"Authorization": f"Bearer {TOKENS[mailbox]}"},
        ) as r:
            assert r.status == 202, await r.text()
            doc = await r.json()
        return str(doc["id"])

    async def status(self, msg_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.a.url}/v1/messages/{msg_id}",
            headers={"Authorization": f"Bearer {TOKENS['alice']}"},
        ) as r:
            assert r.status == 200, await r.text()
            doc: dict[str, Any] = await r.json()
        return doc["recipients"]["bob@b.test"]  # type: ignore[no-any-return]

    async def queue(self) -> list[dict[str, Any]]:
        status, doc = await self.admin("GET", "/queue")
        assert status == 200, doc
        return doc["entries"]  # type: ignore[no-any-return]

    async def peer_b(self) -> dict[str, Any]:
        status, doc = await self.admin("GET", "/peers")
        assert status == 200, doc
        (b,) = [p for p in doc["peers"] if p["name"] == "b.test"]
        return b  # type: ignore[no-any-return]

    async def backlog(self, n: int) -> list[str]:
        """`n` messages queued for b.test (down), after its first failed attempt."""
        ids = [await self.send(f"message {i}") for i in range(n)]

        async def failed() -> bool:
            return (await self.peer_b())["failures"] >= 1 and len(await self.queue()) == n

        await wait_until(failed, "a failed attempt to b.test")
        return ids


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        w = World(tmp_path, session)
        await w.start(w.a)
        try:
            yield w
        finally:
            for node in (w.node_a, w.node_b):
                if node is not None:
                    await node.stop()


# --- the socket and its credential ------------------------------------------------


async def test_socket_and_token_are_private_and_removed_on_stop(world: World) -> None:
    sock, token = world.a.dir / ADMIN_SOCKET, world.a.dir / ADMIN_TOKEN
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 40
    status, doc = await world.admin("GET", "/node")
    assert status == 200 and doc["name"] == "a.test" and doc["pid"] == os.getpid()
    status, doc = await world.admin("GET", "/nowhere")
    assert (status, doc["error"]) == (404, "not_found")
    assert world.node_a is not None
    await world.node_a.stop()
    world.node_a = None
    assert not sock.exists() and not token.exists()


@pytest.mark.parametrize("token", ["", "wrong", "alice-token"])
async def test_requests_without_the_admin_token_are_refused(world: World, token: str) -> None:
    for method, path in (("GET", "/queue"), ("POST", "/queue/delete"), ("GET", "/nowhere")):
        status, doc = await world.admin(method, path, {"ids": ["00" * 16]}, token=token)
        assert (status, doc["error"]) == (401, "unauthorized")


async def test_a_token_configured_by_hash_is_accepted(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        text = (
            (w.a.dir / "node.toml")
            .read_text()
            .replace(
                "[node]\n", f'[node]\nadmin_token_sha256 = "{mailbox_token_sha256("fixed")}"\n'
            )
        )
        (w.a.dir / "node.toml").write_text(text)
        await w.start(w.a)
        try:
            assert (await w.admin("GET", "/node", token="fixed"))[0] == 200
            assert (await w.admin("GET", "/node"))[0] == 200  # the per-start token still works
        finally:
            assert w.node_a is not None
            await w.node_a.stop()


async def test_a_long_directory_path_still_gets_its_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    async with aiohttp.ClientSession() as session:
        w = World(deep, session)
        assert len(str(w.a.dir / ADMIN_SOCKET)) > 108  # over what sockaddr_un holds
        await w.start(w.a)
        try:
            assert (w.a.dir / ADMIN_SOCKET).is_socket()
            assert (await w.admin("GET", "/node"))[0] == 200
        finally:
            assert w.node_a is not None
            await w.node_a.stop()


# --- queue, summary, peers ------------------------------------------------------------


async def test_queue_summary_and_peers_show_the_backlog(world: World) -> None:
    ids = await world.backlog(3)
    entries = await world.queue()
    assert [e["id"] for e in entries] == ids
    for e in entries:
        assert (e["hop"], e["dest"], e["origin"], e["kind"]) == (
            "b.test",
            "b.test",
            "a.test",
            "message",
        )
        assert bool(e["attempts"]) == bool(e["last_error"]) and not e["held"]
        assert e["next_try"] > NOW_MS and e["age_ms"] == 0

    assert entries[0]["attempts"] == 1  # the first went alone, the rest wait for the backoff
    peer = await world.peer_b()
    assert peer["state"] == "backing off" and peer["queued"] == 3 and peer["delivered"] == 0
    assert peer["pinned"] and peer["url"] == world.b.url and peer["jurisdiction"] == "RU"
    assert "Connect" in peer["last_error"] or "connect" in peer["last_error"]
    world.clock.now_ms += 7 * 60_000  # everything is now 7 minutes old
    status, doc = await world.admin("GET", "/queue/summary")
    assert status == 200
    assert doc["ages"][2] == "5-10m"
    total, b = doc["rows"]
    assert total == {
        "dest": "TOTAL",
        "total": 3,
        "held": 0,
        "ages": {**dict.fromkeys(doc["ages"], 0), "5-10m": 3},
    }
    assert b["dest"] == "b.test" and b["ages"]["5-10m"] == 3


async def test_hold_and_release(world: World) -> None:
    ids = await world.backlog(2)
    unknown = "ab" * 16
    status, doc = await world.admin("POST", "/queue/hold", {"ids": [ids[0], unknown]})
    assert status == 200
    assert doc == {"matched": 1, "changed": 1, "unknown": [unknown], "peers": []}
    assert [e["held"] for e in await world.queue()] == [True, False]
    rows = await world.state_a.store.queue_head("b.test", 100)
    assert [r.id.hex() for r in rows] == [ids[1]]  # the sender no longer sees it

    status, doc = await world.admin("POST", "/queue/hold", {"ids": [ids[0]]})
    assert doc["changed"] == 0 and doc["matched"] == 1  # already held
    status, doc = await world.admin("POST", "/queue/release", {"ids": [ids[0]]})
    assert doc == {"matched": 1, "changed": 1, "unknown": [], "peers": ["b.test"]}
    assert [e["held"] for e in await world.queue()] == [False, False]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": []},
        {"ids": ["xyz"]},
        {"ids": ["AB" * 16]},
        {"ids": "ab" * 16},
        [1],
        {"dest": ""},
    ],
)
async def test_bad_action_bodies_are_400(world: World, body: Any) -> None:
    for action in ("hold", "release", "delete", "retry"):
        status, doc = await world.admin("POST", f"/queue/{action}", body)
        assert (status, set(doc)) == (400, {"error", "detail"}), (action, body, doc)


async def test_delete_rejects_at_the_origin(world: World) -> None:
    ids = await world.backlog(2)
    status, doc = await world.admin("POST", "/queue/delete", {"ids": [ids[0]]})
    assert (status, doc["changed"]) == (200, 1)
    assert [e["id"] for e in await world.queue()] == [ids[1]]
    first = await world.status(ids[0])
    assert (first["status"], first["reason"]) == ("rejected", DELETED_REASON)
    events = timeline("a.test", await world.state_a.store.trace(bytes.fromhex(ids[0]), 10), [], [])
    assert ("status", f"bob@b.test: rejected ({DELETED_REASON})") in [
        (e.what, e.text) for e in events
    ]
    assert (await world.status(ids[1]))["status"] == "queued"
    status, doc = await world.admin("POST", "/queue/delete", {"ids": [ids[0]]})
    assert doc == {"matched": 0, "changed": 0, "unknown": [ids[0]], "peers": []}


async def test_delete_of_a_relayed_envelope_sends_a_rejected_receipt(world: World) -> None:
    st = world.state_a
    x_key = Ed25519PrivateKey.generate()
    header = make_header(
        id=os.urandom(16),
        kind="message",
        origin="x.test",
        key_id=key_id(public_key_string(x_key.public_key())),
        sender="sam@x.test",
        to=["bob@b.test"],
        dest="b.test",
        created=NOW_MS - 1000,
        expires=NOW_MS + 3_600_000,
        residency=["RU"],
        ctype="text/plain",
        payload=b"relayed",
    )
    env = seal(header, b"relayed", x_key)
    item = NewEnvelope(env=env, trace=("x.test",), from_peer="x.test", hop="b.test")
    (rid,) = await st.store.write(lambda tx: tx.insert_envelopes([item], NOW_MS))
    tried = Attempt(rid, "b.test", NOW_MS, NOW_MS + 5, "unreachable", "", "refused", 1)
    await st.store.write(lambda tx: tx.record_attempts([tried]))
    status, doc = await world.admin("POST", "/queue/delete", {"ids": [header.id.hex()]})
    assert (status, doc["changed"]) == (200, 1)
    rows = await sqlite_store(st.store).fetchall(
        "SELECT origin, status, reason, id, recipients FROM pending_receipts"
    )
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in rows] == [
        ("x.test", "rejected", DELETED_REASON, header.id)
    ]
    # the envelope's row stays (retention takes it, and its attempts, later): its
    # trace keeps the attempts and says why it left the queue
    events = timeline("a.test", await st.store.trace(header.id, 10), [], [])
    assert [(e.what, e.text) for e in events if e.what in ("attempt", "receipt_owed")] == [
        ("attempt", "to b.test: unreachable: refused (batch of 1, 5 ms)"),
        ("receipt_owed", f"receipt rejected ({DELETED_REASON}) owed to x.test, not written yet"),
    ]


async def test_retry_clears_the_backoff_and_delivers(world: World) -> None:
    ids = await world.backlog(3)
    before = await world.peer_b()
    assert before["next_try"] > world.clock()
    await world.start(world.b)
    status, doc = await world.admin("POST", "/queue/retry", {"dest": "b.test"})
    assert status == 200 and doc["peers"] == ["b.test"] and doc["changed"] == 3

    async def delivered() -> bool:
        return not await world.queue() and (await world.peer_b())["state"] == "up"

    await wait_until(delivered, "the backlog delivered after retry")
    peer = await world.peer_b()
    assert peer["delivered"] == 3 and peer["failures"] == 0
    assert world.node_b is not None and world.node_b.state is not None
    rows = await sqlite_store(world.node_b.state.store).fetchall(
        "SELECT e.id FROM inbox i JOIN envelopes e ON e.rid = i.rid ORDER BY i.seq"
    )
    assert sorted(bytes(r[0]).hex() for r in rows) == sorted(ids)
    status, doc = await world.admin("POST", "/queue/retry", {"dest": "nobody.test"})
    assert status == 404


async def test_retry_by_id_wakes_the_hop(world: World) -> None:
    ids = await world.backlog(1)
    failures = (await world.peer_b())["failures"]
    status, doc = await world.admin("POST", "/queue/retry", {"ids": ids})
    assert status == 200 and doc["peers"] == ["b.test"]

    async def tried_again() -> bool:
        return bool((await world.peer_b())["failures"] > failures)

    await wait_until(tried_again, "another attempt after retry")  # b is still down


# --- backup ------------------------------------------------------------------------------


async def test_backup_is_streamed_as_a_consistent_snapshot(world: World, tmp_path: Path) -> None:
    await world.backlog(2)
    status, raw, ctype = await world.admin_raw("POST", "/backup", {})
    assert (status, ctype) == (200, "application/vnd.sqlite3")
    assert raw.startswith(b"SQLite format 3\x00")
    dest = tmp_path / "copy.db"
    dest.write_bytes(raw)
    db = sqlite3.connect(dest)
    try:
        assert db.execute("SELECT count(*) FROM queue").fetchone() == (2,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert schema_version_of(dest) == SCHEMA_VERSION
    # the node's temporary copy is gone
    assert not [p for p in world.a.dir.iterdir() if p.name.endswith(".tmp")]


def test_backup_file_refuses_the_database_itself_and_existing_files(tmp_path: Path) -> None:
    source = tmp_path / "relay.db"
    db = sqlite3.connect(source)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()  # stays in the WAL while `db` is open
    try:
        dest = tmp_path / "b.db"
        assert backup_file(source, dest) == dest.stat().st_size
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600
        copy = sqlite3.connect(dest)
        assert copy.execute("SELECT x FROM t").fetchall() == [(1,)]
        copy.close()
        with pytest.raises(Conflict):
            backup_file(source, dest)
        backup_file(source, dest, overwrite=True)
        for bad in (source, Path(f"{source}-wal"), tmp_path):
            with pytest.raises(BadRequest):
                backup_file(source, bad)
        with pytest.raises(BadRequest):
            backup_file(source, Path("relative.db"))
        with pytest.raises(StoreError):
            schema_version_of(dest)  # a SQLite file, not a relay database
    finally:
        db.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- reload ------------------------------------------------------------------------------


async def test_reload_adds_a_mailbox_and_refuses_a_bad_config(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    assert world.node_a is not None
    world.write(world.a, ["alice", "carol"])
    result = await world.node_a.reload()
    assert result.applied and not result.restart_needed and not result.policy_changed
    await world.send("from carol", mailbox="carol")  # the new token works at once

    toml = world.a.dir / "node.toml"
    good = toml.read_text()
    toml.write_text(good.replace('jurisdiction = "RU"', 'jurisdiction = "XX"', 1))
    with caplog.at_level(logging.ERROR, logger="relay.node.reload"):
        result = await world.node_a.reload()
    assert not result.applied
    assert any(f"{toml}:3: node.jurisdiction:" in e for e in result.errors), result.errors
    messages = [r.getMessage() for r in caplog.records]
    assert "reload_refused" in messages and "reload_problem" in messages
    assert world.state_a.config.node.jurisdiction == "RU"
    await world.send("still alice")
    await world.send("still carol", mailbox="carol")


async def test_reload_keeps_what_needs_a_restart(world: World) -> None:
    assert world.node_a is not None
    world.write(world.a, ["alice"], listen="127.0.0.1:1")
    result = await world.node_a.reload()
    assert result.applied and result.restart_needed == ("node.listen",)
    assert world.state_a.config.node.listen_port == world.a.port
    await world.send("the listener is untouched")


async def test_reload_with_a_new_policy_rechecks_the_queue(world: World) -> None:
    assert world.node_a is not None
    policy = 'default_residency = ["KZ", "RU"]\nexport_to = '
    world.write(world.a, ["alice"], policy=policy + '["KZ"]', peer_jurisdiction="KZ")
    result = await world.node_a.reload()
    assert result.applied and result.policy_changed and result.peers_changed
    ids = await world.backlog(2)
    world.write(world.a, ["alice"], policy=policy + "[]", peer_jurisdiction="KZ")
    result = await world.node_a.reload()
    assert result.applied and result.policy_changed and not result.peers_changed
    assert await world.queue() == []
    for i in ids:
        assert (await world.status(i))["status"] == "rejected"
    rows = await sqlite_store(world.state_a.store).fetchall("SELECT point, outcome FROM decisions")
    assert [tuple(r) for r in rows] == [("recheck", "deny")] * 2


# --- the summary's buckets, on a bare queue table ------------------------------------------


async def test_summary_buckets_edges_and_order(tmp_path: Path) -> None:
    now = NOW_MS
    ages = {"b.test": [0, 59_999, 60_000, 9_599_999, 9_600_000], "c.test": [300_000, 600_000]}
    rows = [(hop, now - age, 0) for hop, xs in ages.items() for age in xs]
    rows.append(("c.test", now - 10, 1))

    async def fill(tx: WriteTx) -> None:  # queue rows alone: the buckets read nothing else
        await sqlite_tx(tx).executemany(
            "INSERT INTO queue (hop, enqueued, held) VALUES (?, ?, ?)", rows
        )

    store = await open_store(tmp_path / "relay.db")
    try:
        await store.write(fill)
        shape = queueview.queue_shape(await store.queue_ages(now, queueview.AGE_BOUNDS_MS))
    finally:
        await store.close()
    assert [(r.dest, r.total, r.held) for r in shape] == [
        ("TOTAL", 8, 1),
        ("b.test", 5, 0),
        ("c.test", 3, 1),
    ]
    assert shape[1].counts == (2, 1, 0, 0, 0, 0, 1, 1)
    assert shape[2].counts == (1, 0, 1, 1, 0, 0, 0, 0)
    assert shape[0].counts == (3, 1, 1, 1, 0, 0, 1, 1)
    text = queueview.render_shape(shape).splitlines()
    assert text[0].split() == ["DESTINATION", "T", *queueview.AGE_LABELS, "HELD"]
    assert text[1].split() == ["TOTAL", "8", "3", "1", "1", "1", "0", "0", "1", "1", "1"]
    assert [queueview.duration_text(ms) for ms in (5, 42_000, 192_000, 7_500_000, 277_200_000)] == [
        "5ms",
        "42s",
        "3m12s",
        "2h05m",
        "3d05h",
    ]
