"""`GET /metrics`: two live in-process nodes, real traffic, then a scrape of each.

a.test sends to b.test (stored, and one refused for an unknown mailbox), to a
dead peer c.test (queued, retried), to itself, and once outside its residency
(refused at submit). a.test serves its metrics on the public listener behind a
token, with mailbox labels; b.test on a separate listener behind a token,
with mailboxes aggregated. The values are checked one by one, and the whole output with
`promtool check metrics` (Debian package `prometheus`, installed by .ci/run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.config.values import mailbox_token_sha256
from relay.node.app import Node
from relay.storage.sqlite.store import sqlite_store
from tests.inprocess import TIMEOUT, PeerLine, send, start_node, status, url_of, write_node

METRICS_TOKEN = "scrape-me"


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (
        f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    )
    return samples[key]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Pair:
    a: Node
    b: Node
    b_dir: Path
    session: aiohttp.ClientSession


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    # a's key must be pinned at b before b starts, and b's url known at a:
    # write a's key first, start b, then write a's config with b's url.
    a_key = write_node(a_dir, "a.test")
    b_key = write_node(
        b_dir,
        "b.test",
        peers=[PeerLine("a.test", a_key)],
        tables={
            "metrics": {
                "listen": "127.0.0.1:0",
                "token_sha256": mailbox_token_sha256(METRICS_TOKEN),
            }
        },
    )
    b = await start_node(b_dir)
    write_node(
        a_dir,
        "a.test",
        tables={
            "metrics": {"token_sha256": mailbox_token_sha256(METRICS_TOKEN), "mailbox_labels": True}
        },
        peers=[
            PeerLine("b.test", b_key, url_of(b)),
            PeerLine("c.test", b_key, f"http://127.0.0.1:{closed_port()}"),
        ],
    )
    a = await start_node(a_dir)
    try:
        async with aiohttp.ClientSession() as session:
            yield Pair(a, b, b_dir, session)
    finally:
        await a.stop()
        await b.stop()


async def scrape(session: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url + "/metrics", headers=headers, timeout=TIMEOUT) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.content_type == "text/plain"
        return text


def promtool_check(text: str) -> None:
    """Lint the exposition with promtool; skipped only outside CI when it is missing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs the prometheus package)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def wait_until(probe: object, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert callable(probe)
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_metrics_after_traffic(pair: Pair) -> None:
    a, b, session = pair.a, pair.b, pair.session
    to_bob = []
    for i in range(3):
        code, doc = await send(session, a, ["bob@b.test"], f"m{i}")
        assert code == 202, doc
        to_bob.append(doc["id"])
    code, doc = await send(session, a, ["nobody@b.test"])
    assert code == 202, doc
    to_nobody = doc["id"]
    code, doc = await send(session, a, ["carol@c.test"])
    assert code == 202, doc
    code, doc = await send(session, a, ["alice@a.test"])
    assert code == 202, doc
    code, doc = await send(session, a, ["bob@b.test"], residency=["FR"])
    assert code == 422 and doc["rule"] == "builtin:own_jurisdiction", doc
    # a request nobody signed, refused as a whole at b
    async with session.post(url_of(b) + "/federation/v1/batch", data=b"x") as resp:
        assert resp.status == 401

    async def settled() -> bool:
        for ident in to_bob:
            if (await status(session, a, ident))["bob@b.test"]["status"] not in (
                "sent",
                "delivered",
            ):
                return False
        nobody = (await status(session, a, to_nobody))["nobody@b.test"]
        assert a.state is not None
        row = await sqlite_store(a.state.store).fetchone(
            "SELECT failures FROM peer_state WHERE peer = 'c.test'"
        )
        return nobody["status"] == "rejected" and row is not None and row[0] >= 1

    await wait_until(settled, "deliveries to b.test and a retry toward c.test")

    text = await scrape(session, url_of(a), METRICS_TOKEN)
    got = parse(text)
    assert value(got, "relay_node_info", node="a.test", jurisdiction="DE", mode="enforce") == 1
    assert value(got, "relay_messages_submitted_total", mailbox="alice") == 6
    assert value(got, "relay_submits_refused_total", reason="policy") == 1
    deny = {"point": "submit", "outcome": "deny", "rule": "builtin:own_jurisdiction"}
    assert value(got, "relay_decisions_total", **deny) == 1
    assert value(got, "relay_decisions_total", point="submit", outcome="allow", rule="") == 6
    assert value(got, "relay_delivery_attempts_total", peer="b.test", outcome="ok") >= 1
    assert value(got, "relay_delivery_latency_seconds_count", peer="b.test") == 3
    assert value(got, "relay_batch_envelopes_sum", direction="out") == 4  # 3 to bob, 1 to nobody
    assert value(got, "relay_delivery_retries_total", peer="c.test") >= 1
    assert value(got, "relay_queue_envelopes", destination="c.test") == 1
    assert value(got, "relay_queue_held_envelopes", destination="c.test") == 0
    assert value(got, "relay_queue_oldest_age_seconds", destination="c.test") >= 0
    assert ("relay_queue_envelopes", frozenset({("destination", "b.test")})) not in got
    assert value(got, "relay_inbox_unacked_messages", mailbox="alice") == 1
    db = pair.a.config.node.database
    assert (
        0
        < value(got, "relay_database_size_bytes")
        <= 10 * (db.stat().st_size + db.with_name(db.name + "-wal").stat().st_size)
    )
    a_text = text

    # b serves its metrics only on its own listener, and only with the token
    async with session.get(url_of(b) + "/metrics", timeout=TIMEOUT) as resp:
        assert resp.status == 404
    assert b.metrics_listener is not None
    b_metrics = f"http://127.0.0.1:{b.metrics_listener.port}"
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        async with session.get(b_metrics + "/metrics", headers=header, timeout=TIMEOUT) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
    text = await scrape(session, b_metrics, METRICS_TOKEN)
    got = parse(text)
    assert value(got, "relay_envelopes_accepted_total", peer="a.test") == 3
    # these nodes have no seal keys: every message to bob came in the clear
    assert value(got, "relay_messages_received_unsealed_total", origin="a.test") == 3
    assert (
        value(got, "relay_envelopes_rejected_total", peer="a.test", reason="unknown_mailbox") == 1
    )
    assert value(got, "relay_batch_envelopes_sum", direction="in") == 4
    assert value(got, "relay_decisions_total", point="accept", outcome="allow", rule="") == 3
    assert value(got, "relay_batches_refused_total", reason="unknown_sender") == 1
    assert value(got, "relay_inbox_unacked_messages") == 3  # b names no mailbox
    assert "bob" not in text
    promtool_check(a_text)  # last: it skips when promtool is missing
    promtool_check(text)


async def test_two_nodes_in_one_process_keep_separate_registries(tmp_path: Path) -> None:
    tables = {"metrics": {"token_sha256": mailbox_token_sha256(METRICS_TOKEN)}}
    write_node(tmp_path / "x", "x.test", tables=tables)
    write_node(tmp_path / "y", "y.test", tables=tables)
    x, y = await start_node(tmp_path / "x"), await start_node(tmp_path / "y")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await send(session, x, ["bob@x.test"]))[0] == 202
            gx = parse(await scrape(session, url_of(x), METRICS_TOKEN))
            gy = parse(await scrape(session, url_of(y), METRICS_TOKEN))
    finally:
        await x.stop()
        await y.stop()
    assert value(gx, "relay_messages_submitted_total") == 1
    assert value(gy, "relay_messages_submitted_total") == 0
    assert value(gy, "relay_node_info", node="y.test", jurisdiction="DE", mode="enforce") == 1


async def test_public_listener_has_no_metrics_without_a_token(tmp_path: Path) -> None:
    write_node(tmp_path, "n.test")
    node = await start_node(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            for headers in ({}, bearer):
                async with session.get(
                    url_of(node) + "/metrics", headers=headers, timeout=TIMEOUT
                ) as resp:
                    doc = await resp.json()
                    assert resp.status == 404, doc
                    assert doc["error"] == "not_found"
                    assert "[metrics] listen or [metrics] token_sha256" in doc["detail"]
    finally:
        await node.stop()
