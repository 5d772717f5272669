"""A flooded node stays within its memory and recovers by itself (issue 4 point 10).

One `relay run` subprocess with a slow disk (RELAY_FAULT=commit_delay_ms holds
every transaction open, so the writer falls behind) and `[limits]
max_pending_writes` set low is flooded with concurrent batch submits that
ignore Retry-After. The node must answer 202 or 503 `busy` with Retry-After,
nothing else; its resident memory (VmRSS, sampled throughout) must stay
within a bound; and once the flood stops it must take submits again with
every accepted message in the inbox. The test prints requests, answers,
messages and the memory figures.

RELAY_FLOOD_UNBOUNDED=1 runs the same flood with no writer bound, to see the
difference (the memory assertion is then skipped).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import NodeProc, make_node, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 1500
IN_FLIGHT = 400  # concurrent requests the flood keeps open
PER_REQUEST = 100  # messages per batch submit
TEXT = "x" * 1024
WRITER_BOUND = 16
COMMIT_DELAY_MS = 40
RSS_GROWTH_LIMIT_MB = 110  # bounded: about +60 MB here (open connections); unbounded: +200


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kb = max(self.peak_kb, vm_rss_kb(self.pid))
            self.samples += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join()


async def flood(node: NodeProc, token: str) -> tuple[Counter[str], int, set[str]]:
    """REQUESTS batch submits, IN_FLIGHT at a time: answers, messages accepted, Retry-Afters."""
    answers: Counter[str] = Counter()
    retry_after: set[str] = set()
    accepted = 0
    body = json.dumps(
        {"messages": [{"to": ["bob@n.test"], "text": TEXT} for _ in range(PER_REQUEST)]}
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    gate = asyncio.Semaphore(IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        async with gate:
            try:
                async with session.post(
                    node.url + "/v1/messages/batch", data=body, headers=headers, timeout=timeout
                ) as resp:
                    doc = await resp.json()
                    answers[f"{resp.status} {doc.get('error', '')}".strip()] += 1
                    if resp.status == 202:
                        accepted += len(doc["ids"])
                    elif "Retry-After" in resp.headers:
                        retry_after.add(resp.headers["Retry-After"])
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # A `busy` answer closes the connection without reading the body;
                # a client still sending may see the reset before the 503. Only a
                # 202 (sent after the whole body was read and committed) counts.
                answers["reset"] += 1

    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(REQUESTS)))
    return answers, accepted, retry_after


def test_flood_keeps_memory_bounded_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbounded = os.environ.get("RELAY_FLOOD_UNBOUNDED") == "1"
    node = make_node(tmp_path, "n.test", "DE")
    token = node.add_mailbox("alice")
    node.add_mailbox("bob")
    with (node.dir / "node.toml").open("a") as f:
        f.write(
            "\n[limits]\nclient_rate = 0\n"
            f"max_pending_writes = {0 if unbounded else WRITER_BOUND}\n"
        )
    monkeypatch.setenv("RELAY_FAULT", f"commit_delay_ms={COMMIT_DELAY_MS}")
    node.start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        node.send("alice", ["bob@n.test"], "warm up")
        baseline_kb = vm_rss_kb(pid)
        sampler = RssSampler(pid)
        sampler.start()
        started = time.monotonic()
        try:
            answers, accepted, retry_after = asyncio.run(flood(node, token))
        finally:
            sampler.stop()
        seconds = time.monotonic() - started

        # it recovers by itself: the next submit is taken, every accepted message is stored
        node.send("alice", ["bob@n.test"], "after the flood")

        def all_stored() -> bool:
            return node.row_counts()["inbox"] == accepted + 2

        wait_for(all_stored, timeout=60, what="every accepted message in bob's inbox")
        after_kb = vm_rss_kb(pid)
        growth_mb = (sampler.peak_kb - baseline_kb) / 1024
        print(
            f"\nflood: {REQUESTS} batch submits of {PER_REQUEST} x {len(TEXT)} B, "
            f"{IN_FLIGHT} in flight, writer bound "
            f"{'none' if unbounded else WRITER_BOUND}, commit delay {COMMIT_DELAY_MS} ms: "
            f"{dict(answers)} in {seconds:.1f} s; {accepted} messages accepted and stored; "
            f"VmRSS baseline {baseline_kb / 1024:.0f} MB, peak {sampler.peak_kb / 1024:.0f} MB "
            f"(+{growth_mb:.0f} MB, {sampler.samples} samples), after {after_kb / 1024:.0f} MB"
        )
        assert set(answers) <= {"202", "503 busy", "reset"}, answers
        assert accepted == answers["202"] * PER_REQUEST
        if not unbounded:
            assert answers["503 busy"] + answers["reset"] > 0, "the flood never met the bound"
            assert answers["503 busy"] > 0, "every refusal was a reset: no Retry-After seen"
            assert retry_after and all(v.isdigit() and int(v) >= 1 for v in retry_after)
            assert growth_mb < RSS_GROWTH_LIMIT_MB, f"VmRSS grew by {growth_mb:.0f} MB"
        assert answers["202"] > 0
    finally:
        node.stop()
