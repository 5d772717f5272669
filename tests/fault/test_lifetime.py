"""Queue lifetime and persisted backoff (issue 4 point 3), in process with a test clock.

The node is set up through the CLI (`relay init`, `peer add`, `mailbox add`)
and run in the test's event loop as `relay.node.app.Node(config, clock=...)`. Its
only peer, c.test, is dead: its port has no listener, so every attempt fails
at once. The jitter of the backoff is pinned to its upper bound so that
`next_try` is known exactly.
"""

from __future__ import annotations

import asyncio
import random
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.files import load_config
from relay.node import expiry
from relay.node.app import Node
from relay.storage.records import PeerState
from relay.storage.sqlite.store import sqlite_store
from tests.e2e.harness import NodeProc, make_node
from tests.fault.common import query, set_federation

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Setup:
    a: NodeProc
    clock: Clock
    node: Node | None = None

    async def start(self) -> Node:
        node = Node(load_config(self.a.dir), clock=self.clock)
        with warnings.catch_warnings():
            # relay.node.app passes shutdown_timeout to its site, which newer aiohttp
            # deprecates; that warning is not what these tests are about.
            warnings.filterwarnings("ignore", "shutdown_timeout", DeprecationWarning)
            await node.start()
        self.node = node
        return node

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None

    async def send(self, text: str, **extra: Any) -> str:
        assert self.node is not None
        url = f"http://127.0.0.1:{self.node.port}/v1/messages"
        headers = {"Authorization": f"Bearer {self.a.tokens['alice']}"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, json={"to": ["carol@c.test"], "text": text, **extra}, headers=headers) as r,
        ):
            assert r.status == 202, await r.text()
            doc = await r.json()
        ident = doc["id"]
        assert isinstance(ident, str)
        return ident

    async def status(self, ident: str) -> tuple[str, str]:
        assert self.node is not None
        url = f"http://127.0.0.1:{self.node.port}/v1/messages/{ident}"
        headers = {"Authorization": f"Bearer {self.a.tokens['alice']}"}
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        rec = doc["recipients"]["carol@c.test"]
        return rec["status"], rec["reason"]

    async def peer(self) -> PeerState:
        assert self.node is not None and self.node.state is not None
        return await self.node.state.store.peer_state("c.test")


async def eventually(probe: Any, what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


def _configure(tmp_path: Path, lifetime: str, **federation: str) -> NodeProc:
    a = make_node(tmp_path, "a.test", "RU")
    dead = make_node(tmp_path, "c.test", "RU")  # initialised, never started
    a.add_peer(dead)
    a.add_mailbox("alice")
    toml = a.dir / "node.toml"
    text = toml.read_text()
    assert '# queue_lifetime = "5d"' in text
    toml.write_text(text.replace('# queue_lifetime = "5d"', f'queue_lifetime = "{lifetime}"'))
    set_federation(a.dir, **federation)
    return a


@pytest.fixture
def pinned_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter always waits its whole cap, so next_try is exact."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # outbound's jitter


@pytest.fixture
async def lifetime_node(tmp_path: Path, pinned_jitter: None) -> AsyncIterator[Setup]:
    a = _configure(tmp_path, "1h", retry_min="2h", retry_max="2h")
    setup = Setup(a, Clock(T0))
    yield setup
    await setup.stop()


async def test_past_lifetime_expires_while_backing_off(
    lifetime_node: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "SWEEP_INTERVAL_S", 0.05)
    setup, clock = lifetime_node, lifetime_node.clock
    await setup.start()
    default = await setup.send("expires when the queue lifetime ends")  # expires = T0 + 1 h
    long = await setup.send("asks for two hours, gets the lifetime", ttl=7200)
    short = await setup.send("expires after ten minutes", ttl=600)
    failed = await eventually(
        lambda: _failed(setup, 1), "the first failed attempt at c.test", timeout=20
    )
    assert failed.next_try == T0 + 2 * HOUR  # backing off well past the lifetime
    for ident in (default, long, short):
        assert await setup.status(ident) == ("queued", "")

    clock.now = T0 + 10 * MINUTE + 1  # past the short one's expires
    got = await eventually(lambda: _status_is(setup, short, "expired"), "short one expired")
    assert got == ("expired", "expires")
    assert await setup.status(long) == ("queued", "")
    assert await setup.status(default) == ("queued", "")

    clock.now = T0 + HOUR + 1  # past the queue lifetime, still an hour before next_try
    got = await eventually(lambda: _status_is(setup, long, "expired"), "long one expired")
    assert got == ("expired", "queue_lifetime")
    assert await setup.status(default) == ("expired", "expires")

    # Ended while the sender waited: no attempt was made, the queue is empty.
    after = await setup.peer()
    assert (after.failures, after.next_try) == (1, T0 + 2 * HOUR)
    assert setup.node is not None and setup.node.state is not None
    assert await sqlite_store(setup.node.state.store).fetchall("SELECT rid FROM queue") == []
    print(f"\nlifetime: 3 envelopes expired at a backing-off peer (next_try {after.next_try})")


async def test_backoff_state_survives_restart(tmp_path: Path, pinned_jitter: None) -> None:
    a = _configure(tmp_path, "5d", retry_min="1s", retry_max="8s")
    clock = Clock(T0)
    setup = Setup(a, clock)
    try:
        await setup.start()
        await setup.send("to a dead peer")
        first = await eventually(lambda: _failed(setup, 1), "first failure", timeout=20)
        assert first.next_try == T0 + 1000
        await setup.stop()

        rows = query(a.db_path, "SELECT failures, next_try FROM peer_state WHERE peer = 'c.test'")
        assert rows == [(1, T0 + 1000)]

        clock.now = T0 + 500  # restarted before next_try: the sender must wait
        await setup.start()
        await asyncio.sleep(1.5)
        held = await setup.peer()
        assert (held.failures, held.next_try) == (1, T0 + 1000)

        clock.now = T0 + 1000
        second = await eventually(lambda: _failed(setup, 2), "second failure", timeout=20)
        # the cap doubled from the persisted count (1 s -> 2 s), not started over at 1 s
        assert second.next_try == T0 + 1000 + 2000
        print(
            f"\nbackoff across a restart: failures {first.failures} -> {second.failures},"
            f" next_try +{first.next_try - T0} ms -> +{second.next_try - clock.now} ms"
        )
    finally:
        await setup.stop()


async def _failed(setup: Setup, failures: int) -> PeerState | None:
    st = await setup.peer()
    return st if st.failures >= failures else None


async def _status_is(setup: Setup, ident: str, status: str) -> tuple[str, str] | None:
    got = await setup.status(ident)
    return got if got[0] == status else None
