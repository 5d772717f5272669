"""Client API and federation limits on a live node (issue 4 points 5 and 10).

Rate limits run on a monotonic clock the test drives (the node's own clock is
frozen anyway); each refusal is 429 or 503 with Retry-After and stores
nothing. A token reaches only its own mailbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from typing import Any

import pytest

from relay.api import client as client_api
from relay.config.model import LimitsConfig
from relay.node import submit
from relay.policy.ratelimit import Limits
from relay.storage.interface import WriteTx
from relay.storage.sqlite.store import sqlite_store, sqlite_tx
from tests.federation.conftest import NODE, TIMEOUT, TOKEN, Harness, Reply

BOB_TOKEN = "bob-token"


class Mono:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def limit(h: Harness, clock: Mono, **values: int) -> None:
    h.state.limits = Limits(LimitsConfig(**values), clock=clock)


async def call(
    h: Harness,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = TOKEN,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[Reply, dict[str, str]]:
    hdrs = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with h.session.request(
        method,
        h.url + path,
        json=body if data is None else None,
        data=None if data is None else io.BytesIO(data),
        headers=hdrs,
        timeout=TIMEOUT,
    ) as resp:
        raw = await resp.read()
        return Reply(resp.status, raw, resp.content_type), dict(resp.headers)


def msg(text: str = "hi", to: str = "bob@n.test") -> dict[str, Any]:
    return {"to": [to], "text": text}


async def test_peer_rate_limit_429_with_retry_after(harness: Harness) -> None:
    h, clock = harness, Mono()
    limit(h, clock, peer_rate=1, peer_burst=2)
    await h.still_serves()
    await h.still_serves()
    env = h.envelope()
    body = h.body([h.item(env)])
    before = await h.counts()
    reply = await h.post(body, h.sign(body))
    assert reply.status == 429 and reply.error()[0] == "rate_limited", reply.body
    assert await h.counts() == before
    assert not await h.stored(env.header.origin, env.header.id)
    # x.test, another verified peer, has its own bucket
    xenv = h.envelope(origin=h.x)
    xbody = h.body([h.item(xenv, trace=("x.test",))])
    xreply = await h.post(xbody, h.sign(xbody, signer=h.x))
    assert xreply.status == 200, xreply.body
    # an unsigned claim to be a.test is 401, and does not spend a.test's bucket
    clock.now += 1.0
    forged = await h.post(body, h.sign(body, key=h.x.key))
    assert forged.status == 401
    await h.still_serves()


async def test_peer_rate_limit_header(harness: Harness) -> None:
    h, clock = harness, Mono()
    limit(h, clock, peer_rate=1, peer_burst=1)
    await h.still_serves()
    body = h.body([h.item(h.envelope())])
    async with h.session.post(
        h.url + "/federation/v1/batch", data=body, headers=h.sign(body), timeout=TIMEOUT
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
    clock.now += 1.0
    await h.still_serves()


async def test_client_rate_limit_counts_messages_of_a_batch(harness: Harness) -> None:
    h, clock = harness, Mono()
    limit(h, clock, client_rate=10, client_burst=10)
    reply, _ = await call(h, "POST", "/v1/messages/batch", {"messages": [msg()] * 8})
    assert reply.status == 202, reply.body
    reply, _ = await call(h, "POST", "/v1/messages", msg())
    assert reply.status == 202, reply.body
    before = await h.counts()
    reply, headers = await call(h, "POST", "/v1/messages/batch", {"messages": [msg()] * 5})
    assert reply.status == 429 and reply.error()[0] == "rate_limited", reply.body
    assert headers["Retry-After"] == "1"
    assert await h.counts() == before
    # bob's token has its own bucket
    reply, _ = await call(h, "POST", "/v1/messages", msg(to="alice@n.test"), token=BOB_TOKEN)
    assert reply.status == 202, reply.body
    # reads count too, one per request
    reply, _ = await call(h, "GET", "/v1/inbox")
    assert reply.status == 200
    reply, headers = await call(h, "GET", "/v1/inbox")
    assert reply.status == 429 and headers["Retry-After"] == "1"
    clock.now += 1.0
    reply, _ = await call(h, "POST", "/v1/messages/batch", {"messages": [msg()] * 5})
    assert reply.status == 202, reply.body
    # a batch over the whole burst waits for a full bucket, then passes
    reply, headers = await call(h, "POST", "/v1/messages/batch", {"messages": [msg()] * 20})
    assert reply.status == 429 and int(headers["Retry-After"]) == 1
    clock.now += 1.0
    reply, _ = await call(h, "POST", "/v1/messages/batch", {"messages": [msg()] * 20})
    assert reply.status == 202, reply.body


async def test_default_limits_do_not_throttle_a_busy_client(harness: Harness) -> None:
    h = harness
    for _ in range(3):
        reply, _ = await call(
            h, "POST", "/v1/messages/batch", {"messages": [msg(f"m{i}") for i in range(300)]}
        )
        assert reply.status == 202, reply.body


async def test_a_token_reaches_only_its_own_mailbox(harness: Harness) -> None:
    h = harness
    # bob sends to alice; alice sends to bob
    reply, _ = await call(
        h, "POST", "/v1/messages", msg("from bob", "alice@n.test"), token=BOB_TOKEN
    )
    assert reply.status == 202, reply.body
    bobs_msg = json.loads(reply.body)["id"]
    alices_msg = await h.submit(["bob@n.test"], "from alice")

    # alice cannot read bob's inbox, whatever she adds to the request
    for path in ("/v1/inbox", "/v1/inbox?mailbox=bob", "/v1/inbox?to=bob@n.test&limit=1000"):
        reply, _ = await call(h, "GET", path)
        assert reply.status == 200, reply.body
        texts = [m["text"] for m in json.loads(reply.body)["messages"]]
        assert texts == ["from bob"], (path, texts)
    # nor the status of bob's message
    reply, _ = await call(h, "GET", f"/v1/messages/{bobs_msg}")
    assert reply.status == 404 and reply.error()[0] == "not_found"
    # nor ack bob's messages
    reply, _ = await call(h, "POST", "/v1/inbox/ack", {"ids": [alices_msg]})
    assert reply.status == 200 and json.loads(reply.body) == {"acked": 0}
    reply, _ = await call(h, "GET", "/v1/inbox", token=BOB_TOKEN)
    assert [m["id"] for m in json.loads(reply.body)["messages"]] == [alices_msg]
    # nor send as bob: there is no field for it, and the envelope says alice
    reply, _ = await call(h, "POST", "/v1/messages", {**msg(), "from": "bob@n.test"})
    assert reply.status == 400 and "from" in reply.error()[1]
    reply, _ = await call(h, "GET", "/v1/inbox", token=BOB_TOKEN)
    senders = {m["from"] for m in json.loads(reply.body)["messages"]}
    assert senders == {"alice@n.test"}
    # a token with bob's name, a prefix of it or alice's with a suffix is no token
    for bad in ("bob", BOB_TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}x"):
        reply, _ = await call(h, "GET", "/v1/inbox", token=bad)
        assert reply.status == 401, bad


async def test_body_size_limits(harness: Harness) -> None:
    h = harness
    limit_bytes = h.state.config.limits.client_body_bytes
    before = await h.counts()
    big = json.dumps(msg("x" * limit_bytes)).encode()
    reply, _ = await call(h, "POST", "/v1/messages", data=big)
    assert reply.status == 413 and reply.error()[0] == "too_large"

    async def chunked() -> Any:  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    async with h.session.post(
        h.url + "/v1/messages",
        data=chunked(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 413
    reply, _ = await call(h, "POST", "/v1/inbox/ack", data=b'{"ids": [' + b'"0",' * 400_000 + b"]}")
    assert reply.status == 413
    # without a valid token the body is never read
    reply, _ = await call(h, "POST", "/v1/messages", data=big, token="wrong")
    assert reply.status == 401
    assert await h.counts() == before


async def test_writer_backlog_answers_503_busy(harness: Harness) -> None:
    h = harness
    store = h.state.store
    store.max_backlog = 2
    gate = asyncio.Event()

    async def hold(tx: WriteTx) -> None:
        await gate.wait()

    held = [asyncio.ensure_future(store.write(hold))]
    await asyncio.sleep(0.05)  # the writer runs it and waits on the gate
    held += [asyncio.ensure_future(store.write(hold)) for _ in range(2)]
    await asyncio.sleep(0.05)  # two more wait: the bound is reached
    before = await h.counts()
    try:
        reply, headers = await call(h, "POST", "/v1/messages", msg())
        assert reply.status == 503 and reply.error()[0] == "busy", reply.body
        assert int(headers["Retry-After"]) >= 1
        body = h.body([h.item(h.envelope())])
        fed = await h.post(body, h.sign(body))
        assert fed.status == 503 and fed.error()[0] == "busy", fed.body
        reply, _ = await call(h, "POST", "/v1/inbox/ack", {"ids": []})
        assert reply.status == 503
        assert await h.counts() == before
    finally:
        gate.set()
        await asyncio.gather(*held)
    reply, _ = await call(h, "POST", "/v1/messages", msg())
    assert reply.status == 202, reply.body
    await h.still_serves()


async def test_queue_bound_answers_503_at_submit_only(harness: Harness) -> None:
    h = harness
    st = h.state
    st.config = dataclasses.replace(st.config, limits=LimitsConfig(max_queued=3))
    st.backpressure.max_age = 0
    ids = [await h.submit(["carol@a.test"], f"queued {i}") for i in range(3)]
    assert len(ids) == 3
    assert await alices_messages(h) == 3
    reply, headers = await call(h, "POST", "/v1/messages", msg(to="carol@a.test"))
    assert reply.status == 503 and reply.error()[0] == "busy", reply.body
    assert "queued" in reply.error()[1]
    assert int(headers["Retry-After"]) >= 1
    reply, _ = await call(h, "POST", "/v1/messages", msg())  # local delivery too: the bound is
    assert reply.status == 503  # on work accepted, not on where it goes
    assert await alices_messages(h) == 3  # neither refused submit stored anything
    # the federation endpoint still takes batches (it drains queues elsewhere)
    await h.still_serves()
    # once the queue drains, submits pass again
    await st.store.write(lambda tx: _exec(tx, "DELETE FROM queue"))
    reply, _ = await call(h, "POST", "/v1/messages", msg())
    assert reply.status == 202, reply.body


async def alices_messages(h: Harness) -> int:
    """Envelopes of messages alice submitted. Not every envelope: the node's receipt
    flusher writes receipts of its own at times the test does not choose."""
    row = await sqlite_store(h.state.store).fetchone(
        "SELECT count(*) FROM envelopes WHERE kind = 'message' AND sender = ?",
        (f"alice@{NODE}",),
    )
    return int(row[0]) if row else 0


async def _exec(tx: WriteTx, sql: str) -> None:
    await (await sqlite_tx(tx).execute(sql)).close()


async def test_write_slots_bound_requests_in_progress(harness: Harness) -> None:
    """With one slot, a submit waiting for its commit makes the next write request 503."""
    h = harness
    st = h.state
    st.config = dataclasses.replace(st.config, limits=LimitsConfig(max_pending_writes=1))
    gate = asyncio.Event()

    async def hold(tx: WriteTx) -> None:
        await gate.wait()

    held = asyncio.ensure_future(st.store.write(hold))  # the writer waits on the gate
    first = asyncio.ensure_future(call(h, "POST", "/v1/messages", msg("first")))
    while st.backpressure.in_progress == 0:  # the first submit holds the slot
        await asyncio.sleep(0.01)
    try:
        reply, headers = await call(h, "POST", "/v1/messages", msg("second"))
        assert reply.status == 503 and reply.error()[0] == "busy", reply.body
        assert headers["Retry-After"] == "1"
        body = h.body([h.item(h.envelope())])
        fed = await h.post(body, h.sign(body))
        assert fed.status == 503 and fed.error()[0] == "busy", fed.body
    finally:
        gate.set()
        await held
    reply, _ = await first
    assert reply.status == 202, reply.body
    assert st.backpressure.in_progress == 0  # every slot given back
    await h.still_serves()
    reply, _ = await call(h, "POST", "/v1/messages", msg("third"))
    assert reply.status == 202, reply.body
    assert st.backpressure.in_progress == 0


async def test_a_large_batch_submit_lets_the_loop_run_while_it_is_planned(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning (and sealing) 1,000 messages pauses every PLAN_RUN of them, so
    other requests are served between pieces instead of after the whole batch."""
    planned: list[int] = []
    real = submit.plan

    def counting(*args: Any, **kwargs: Any) -> submit.PlannedMessage:
        planned.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(submit, "plan", counting)
    seen: list[int] = []  # messages planned so far, each time the loop ran something else
    done = asyncio.Event()

    async def other_work() -> None:
        while not done.is_set():
            seen.append(len(planned))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(other_work())
    ids = await harness.submit_batch([{"to": ["bob@n.test"], "text": f"m{i}"} for i in range(1000)])
    done.set()
    await watcher
    assert len(ids) == 1000 and len(planned) == 1000
    during = sorted({n for n in seen if 0 < n < 1000})
    assert during, "nothing else ran while the batch was planned"
    assert all(n % client_api.PLAN_RUN == 0 for n in during)
