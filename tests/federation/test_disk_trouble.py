"""A full or read-only database: 503 with Retry-After, nothing acknowledged, nothing lost.

"Full" is `PRAGMA max_page_count` on the node's writer connection (the file
may not grow by one page), "read-only" is `PRAGMA query_only`. Either way the
client API and the batch endpoint answer 503 `store`, store nothing, readyz
says not ready, and once the condition clears the same requests succeed and
everything acknowledged before is intact (PRAGMA integrity_check).
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import TIMEOUT, TOKEN, Harness, Reply

BIG = "x" * 6000  # needs new pages: a full database cannot take it
UNLIMITED_PAGES = 1_073_741_823


async def pragma_on_writer(h: Harness, sql: str) -> None:
    """Run a PRAGMA on the writer connection, between two transactions."""
    await sqlite_store(h.state.store)._db.execute(sql)


async def client(h: Harness, method: str, path: str, body: Any = None) -> tuple[Reply, str]:
    async with h.session.request(
        method,
        h.url + path,
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        data = await resp.read()
        return Reply(resp.status, data, resp.content_type), resp.headers.get("Retry-After", "")


async def ready(h: Harness) -> tuple[int, str]:
    async with h.session.get(h.url + "/readyz", timeout=TIMEOUT) as resp:
        return resp.status, str((await resp.json())["status"])


async def acknowledged_state(h: Harness) -> list[tuple[Any, ...]]:
    """Every stored envelope with its header digest and payload: what must survive."""
    rows = await sqlite_store(h.state.store).fetchall(
        "SELECT e.origin, e.id, e.hdigest, p.body FROM envelopes e"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha ORDER BY e.rid"
    )
    return [tuple(r) for r in rows]


async def refused_everywhere(h: Harness, *, code: str = "store") -> None:
    """Submit, batch submit and a federation batch all get 503 + Retry-After; nothing stored."""
    before = await h.counts()
    reply, retry = await client(h, "POST", "/v1/messages", {"to": ["bob@n.test"], "text": BIG})
    assert reply.status == 503, reply.body
    assert reply.error()[0] == code
    assert int(retry) >= 1
    msgs = [{"to": ["bob@n.test"], "text": BIG}, {"to": ["alice@n.test"], "text": "b"}]
    reply, retry = await client(h, "POST", "/v1/messages/batch", {"messages": msgs})
    assert reply.status == 503, reply.body
    assert int(retry) >= 1

    env = h.envelope(payload=BIG.encode())
    body = h.body([h.item(env)])
    async with h.session.post(
        h.url + "/federation/v1/batch", data=body, headers=h.sign(body), timeout=TIMEOUT
    ) as resp:
        assert resp.status == 503, await resp.read()
        assert resp.content_type == "application/json"
        assert json.loads(await resp.read())["error"] == code
        assert int(resp.headers["Retry-After"]) >= 1
    assert not await h.stored(env.header.origin, env.header.id)
    assert await h.counts() == before
    status, why = await ready(h)
    assert status == 503 and "store" in why, why


async def works_again(h: Harness) -> None:
    reply, _ = await client(h, "POST", "/v1/messages", {"to": ["bob@n.test"], "text": BIG})
    assert reply.status == 202, reply.body
    await h.still_serves()
    env = h.envelope(payload=BIG.encode())
    result = await h.send([h.item(env)])
    assert result.results == {env.header.id: "accepted"}
    assert await ready(h) == (200, "ready")
    assert await sqlite_store(h.state.store).pragma("integrity_check") == "ok"


async def some_traffic(h: Harness) -> None:
    """Acknowledged work of both kinds, before the trouble."""
    for i in range(3):
        await h.submit(["bob@n.test"], f"before {i} " + BIG)
    for _ in range(3):
        env = h.envelope(payload=os.urandom(3000))
        result = await h.send([h.item(env)])
        assert result.results == {env.header.id: "accepted"}


async def test_full_database_answers_503_and_recovers(harness: Harness) -> None:
    h = harness
    await some_traffic(h)
    kept = await acknowledged_state(h)
    await pragma_on_writer(h, "PRAGMA max_page_count = 1")  # the file may not grow any more

    await refused_everywhere(h)
    # a request that needs no new page still works: the node is not wedged
    reply, _ = await client(h, "POST", "/v1/inbox/ack", {"ids": []})
    assert reply.status == 200, reply.body
    assert await acknowledged_state(h) == kept

    await pragma_on_writer(h, f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
    await works_again(h)
    after = await acknowledged_state(h)
    assert after[: len(kept)] == kept  # nothing acknowledged before was touched


async def test_read_only_database_answers_503_and_recovers(harness: Harness) -> None:
    h = harness
    await some_traffic(h)
    kept = await acknowledged_state(h)
    inbox, _ = await client(h, "GET", "/v1/inbox")
    first = json.loads(inbox.body)["messages"]
    assert first == []  # alice's inbox; bob's holds the messages
    await pragma_on_writer(h, "PRAGMA query_only = 1")
    try:
        await refused_everywhere(h)
        reply, retry = await client(h, "POST", "/v1/inbox/ack", {"ids": ["00" * 16]})
        assert reply.status == 503, reply.body
        assert int(retry) >= 1
        # reads still work: the inbox and status answer from what is stored
        reply, _ = await client(h, "GET", "/v1/inbox")
        assert reply.status == 200
    finally:
        await pragma_on_writer(h, "PRAGMA query_only = 0")
    assert await acknowledged_state(h) == kept
    await works_again(h)


async def test_store_trouble_is_a_json_503_on_every_write_route(harness: Harness) -> None:
    """Each write route of the client API maps the store's refusal to its JSON 503."""
    h = harness
    await pragma_on_writer(h, "PRAGMA query_only = 1")
    try:
        for method, path, body in (
            ("POST", "/v1/messages", {"to": ["bob@n.test"], "text": "x"}),
            ("POST", "/v1/messages/batch", {"messages": [{"to": ["bob@n.test"], "text": "x"}]}),
            ("POST", "/v1/inbox/ack", {"ids": ["00" * 16]}),
        ):
            reply, retry = await client(h, method, path, body)
            assert (reply.status, reply.content_type) == (503, "application/json"), path
            assert reply.error()[0] == "store"
            assert retry.isdigit(), path
    finally:
        await pragma_on_writer(h, "PRAGMA query_only = 0")
    async with aiohttp.ClientSession() as s, s.get(h.url + "/healthz") as resp:
        assert resp.status == 200  # alive all along
