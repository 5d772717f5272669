"""The load clients: submit messages to A's client API, closed or open loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from relay.cli.bench.cluster import INBOX, Cluster
from relay.cli.bench.options import Options
from relay.errors import RelayError

# --- load ------------------------------------------------------------------------


def message(i: int, size: int, dests: Sequence[str]) -> dict[str, Any]:
    """Message i: a unique text of exactly `size` ASCII bytes (payloads never dedupe)."""
    head = f"{i:012d}:"
    text = (head + "x" * max(size - len(head), 0))[:size]
    return {"to": [f"{INBOX}@{dests[i % len(dests)]}"], "text": text}


class Load:
    """Submits messages to A's client API and keeps what the answers say."""

    def __init__(self, opts: Options, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.opts = opts
        self.url = cluster.a.url
        self.token = cluster.a.token
        self.dests = [b.name for b in cluster.bs]
        self.session = session
        self.acked = 0
        self.scheduled_ms: dict[bytes, float] = {}  # open loop: id -> intended send time

    async def post(self, first: int, count: int, when_ms: float | None = None) -> None:
        msgs = [message(i, self.opts.size, self.dests) for i in range(first, first + count)]
        if self.opts.client_batch == 1:
            path, body = "/v1/messages", json.dumps(msgs[0])
        else:
            path, body = "/v1/messages/batch", json.dumps({"messages": msgs})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with self.session.post(
            self.url + path, data=body, headers=headers, allow_redirects=False
        ) as r:
            text = await r.text()
            if r.status != 202:
                raise RelayError(f"A answered {path} with HTTP {r.status}: {text[:300]}")
        doc = json.loads(text)
        ids = doc["ids"] if "ids" in doc else [doc["id"]]
        if when_ms is not None:
            for ident in ids:
                self.scheduled_ms[bytes.fromhex(ident)] = when_ms
        self.acked += count

    async def closed_loop(self, n: int) -> None:
        """`clients` workers, each sending its next request as soon as the last was acked."""
        k = self.opts.client_batch
        next_first = 0

        async def worker() -> None:
            nonlocal next_first
            while next_first < n:
                first, count = next_first, min(k, n - next_first)
                next_first += count
                await self.post(first, count)

        async with asyncio.TaskGroup() as tg:
            for _ in range(self.opts.clients):
                tg.create_task(worker())

    async def open_loop(self, n: int, rate: float) -> None:
        """One request every k/rate seconds whether or not earlier ones were answered."""
        k = self.opts.client_batch
        loop = asyncio.get_running_loop()
        start, wall0 = loop.time(), time.time() * 1000
        async with asyncio.TaskGroup() as tg:
            for j, first in enumerate(range(0, n, k)):
                offset = j * k / rate
                delay = start + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(self.post(first, min(k, n - first), wall0 + offset * 1000))


# --- the receiving application (--app) ---------------------------------------------

READ_LIMIT = 1000  # messages per inbox page (the client API's maximum)


class Reader:
    """The application at each destination: reads its inbox page by page and acks it.

    `read` counts messages read and acknowledged (the ack committed at the
    destination), which is what `--app` times.
    """

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self.read = 0

    async def run(self, n: int) -> None:
        """Read and ack at every destination until `n` messages were acked in all."""
        async with asyncio.TaskGroup() as tg:
            for b in self.cluster.bs:
                tg.create_task(self._one(b.url, b.token, n))

    async def _one(self, url: str, token: str, n: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        after = 0
        while self.read < n:
            async with self.session.get(
                f"{url}/v1/inbox",
                params={"wait": "1", "limit": str(READ_LIMIT), "after": str(after)},
                headers=headers,
                allow_redirects=False,
            ) as r:
                text = await r.text()
                if r.status != 200:
                    raise RelayError(f"{url} answered /v1/inbox with HTTP {r.status}: {text[:300]}")
            page = json.loads(text)
            ids = [m["id"] for m in page["messages"]]
            after = int(page["next"])
            if not ids:
                continue
            async with self.session.post(
                f"{url}/v1/inbox/ack", json={"ids": ids}, headers=headers, allow_redirects=False
            ) as r:
                text = await r.text()
                if r.status != 200:
                    raise RelayError(f"{url} answered /v1/inbox/ack with HTTP {r.status}: {text}")
            self.read += len(ids)
