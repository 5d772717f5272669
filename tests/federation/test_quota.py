"""Inbox pages bounded in bytes and the per-mailbox unread quota (issue 10 item 4).

A live in-process node on 127.0.0.1: a page stops at `[limits] inbox_page_bytes`
and says `more`, so a reader pages on with `after` and loses nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.cli.client import read_inbox
from relay.config.model import LimitsConfig
from relay.config.tls import client_context
from tests.federation.conftest import TIMEOUT, Harness

BOB_TOKEN = "bob-token"


def set_limits(h: Harness, **values: int) -> None:
    config = h.state.config
    limits = dataclasses.replace(config.limits, **values)
    h.state.config = dataclasses.replace(config, limits=limits)


async def read(h: Harness, query: str) -> dict[str, Any]:
    async with h.session.get(
        h.url + "/v1/inbox" + query,
        headers={"Authorization": f"Bearer {BOB_TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_inbox_pages_stop_at_the_byte_budget_and_page_on(harness: Harness) -> None:
    h = harness
    set_limits(h, inbox_page_bytes=2048)
    texts = [str(i) * 1000 for i in range(5)] + ["x" * 5000, "tail"]
    sent = [await h.submit(["bob@n.test"], t) for t in texts]

    first = await read(h, "?limit=100")
    assert [m["text"] for m in first["messages"]] == texts[:2]  # a third would pass 2048
    assert first["more"] is True
    got = list(first["messages"])
    cursor = first["next"]
    pages = 1
    while True:
        page = await read(h, f"?limit=100&after={cursor}")
        got += page["messages"]
        pages += 1
        if not page["more"]:
            break
        cursor = page["next"]
    assert [m["id"] for m in got] == sent  # nothing lost, nothing twice, in order
    assert pages == 5  # 2 + 2 + 1 + the 5000-byte one alone + "tail"

    # with a large budget the old shape still answers: one page, nothing more
    set_limits(h, inbox_page_bytes=LimitsConfig().inbox_page_bytes)
    whole = await read(h, "")
    assert [m["id"] for m in whole["messages"]] == sent and whole["more"] is False
    empty = await read(h, f"?after={whole['next']}")
    assert empty == {"messages": [], "more": False, "next": whole["next"]}


async def test_relay_inbox_reads_every_page_up_to_its_limit(harness: Harness) -> None:
    h = harness
    set_limits(h, inbox_page_bytes=1024)
    sent = [await h.submit(["bob@n.test"], str(i) * 700) for i in range(4)]  # a page each
    tls = client_context(None)
    got = await read_inbox(h.url, BOB_TOKEN, 0, 100, tls)
    assert [m["id"] for m in got] == sent
    assert [m["id"] for m in await read_inbox(h.url, BOB_TOKEN, 0, 3, tls)] == sent[:3]
