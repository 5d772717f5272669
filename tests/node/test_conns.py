"""relay.node.conns: the guard's deadlines and cap on a small in-process app.

The e2e tests (tests/e2e/test_limits.py) cut slow clients of a whole node;
these check what must NOT be cut, and the pieces that are easier alone.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from relay.config.model import LimitsConfig
from relay.config.tls import server_context
from relay.node import conns
from relay.node.conns import Burst, Listener, descriptor_shortfall
from tests.config.test_tls import issue, make_ca

LIMITS = LimitsConfig(
    max_connections=2, header_timeout_ms=300, body_timeout_ms=500, idle_timeout_ms=300
)


async def slow_after_body(request: web.Request) -> web.Response:
    """Reads its whole body, then works for longer than every deadline."""
    body = await request.read()
    await asyncio.sleep(1.5)
    return web.Response(text=f"{len(body)}")


async def refuse_expect(request: web.Request) -> web.StreamResponse | None:
    return web.Response(status=413, text="too large", headers={"Connection": "close"})


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    app = web.Application()
    app.router.add_post("/slow", slow_after_body)
    app.router.add_post("/refused", slow_after_body, expect_handler=refuse_expect)
    lst = Listener(app, lambda: LIMITS, "test", shutdown_timeout=1)
    await lst.start("127.0.0.1", 0)
    try:
        yield lst
    finally:
        await lst.stop()


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request`, then read until the server closes (bounded by 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_handler_working_after_its_body_arrived_is_not_cut(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # the body deadline is armed, then the body arrives in time
        writer.write(b"hello")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n5"), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.slow
async def test_refused_expect_ends_the_request_without_a_408(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(
            b"POST /refused HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.readuntil(b"too large"), 10)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        # answered without a handler: the header deadline no longer runs
        (conn,) = listener.guard.open.values()
        assert (conn.phase, conn.timer) == ("idle", None)
    finally:
        writer.close()


@pytest.mark.slow
async def test_the_cap_frees_a_slot_when_a_connection_closes(listener: Listener) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(2)]
    refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert await asyncio.wait_for(refused_reader.read(), 10) == b""  # closed at once
    refused_writer.close()
    for _, writer in idle:
        writer.close()
        await writer.wait_closed()
    for _ in range(100):  # the server sees the closes shortly
        if not listener.guard.open:
            break
        await asyncio.sleep(0.02)
    assert not listener.guard.open
    answer = await exchange(
        listener.port,
        b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_burst_logs_the_first_event_then_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    burst = Burst("connections_refused", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="relay.conns"):
        for _ in range(50):
            burst.hit(listener="node")
        now[0] += conns.LOG_EVERY_S
        burst.hit(listener="node")
    assert [r.getMessage() for r in caplog.records] == ["connections_refused"] * 2
    assert burst.count == 0


def test_descriptor_shortfall_names_the_limit_when_the_cap_does_not_fit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < conns.FD_HEADROOM + 2:
        pytest.skip(f"open-file limit {soft} is too odd for this check")
    assert descriptor_shortfall(LimitsConfig(max_connections=soft), 1) == soft
    assert descriptor_shortfall(LimitsConfig(max_connections=0), 1) == soft  # uncapped
    fits = (soft - conns.FD_HEADROOM) // 2
    assert descriptor_shortfall(LimitsConfig(max_connections=fits), 2) is None
    assert descriptor_shortfall(LimitsConfig(max_connections=fits + 1), 2) == soft


async def test_a_tls_handshake_gets_the_header_deadline(tmp_path: Path) -> None:
    """A client that opens a TLS listener's port and never says hello is let go
    after header_timeout (300 ms here), not asyncio's 60 s."""
    cert, key = issue(make_ca("test ca"), tmp_path)
    lst = Listener(web.Application(), lambda: LIMITS, "test", shutdown_timeout=1)
    await lst.start("127.0.0.1", 0, server_context(cert, key))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing said
        finally:
            writer.close()
    finally:
        await lst.stop()


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _tls_listener(tmp_path: Path) -> tuple[Listener, ssl.SSLContext]:
    """A TLS listener under LIMITS answering GET /hello, and a client context trusting it."""
    ca = make_ca("test ca")
    cert, key = issue(ca, tmp_path)
    app = web.Application()
    app.router.add_get("/hello", hello)
    lst = Listener(app, lambda: LIMITS, "test", shutdown_timeout=1)
    await lst.start("127.0.0.1", 0, server_context(cert, key))
    client = ssl.create_default_context(cadata=ca.cert.public_bytes(Encoding.PEM).decode())
    return lst, client


async def _get_hello(port: int, client: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    try:
        writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(500):  # the server sees accepts and closes shortly
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the listener did not get there")


async def test_handshaking_tls_connections_count_against_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two connections that never say hello fill a cap of two: a third is closed
    before its handshake, with `connections_refused`; once header_timeout has let
    the two go, TLS serves again."""
    lst, client = await _tls_listener(tmp_path)
    try:
        assert (await _get_hello(lst.port, client)).endswith(b"\r\n\r\nhello")
        await _until(lambda: not lst.guard.open)
        silent = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(2)]
        await _until(lambda: len(lst.guard.shaking) == 2)
        assert not lst.guard.open  # counted while handshaking, before aiohttp sees them
        with (
            caplog.at_level(logging.WARNING, logger="relay.conns"),
            pytest.raises((ConnectionError, ssl.SSLError)),
        ):
            await _get_hello(lst.port, client)
        assert [r.getMessage() for r in caplog.records] == ["connections_refused"]
        for reader, writer in silent:  # header_timeout (300 ms) ends their handshakes
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        await _until(lambda: not lst.guard.shaking)
        assert (await _get_hello(lst.port, client)).endswith(b"\r\n\r\nhello")
    finally:
        await lst.stop()


async def test_stopping_a_tls_listener_ends_handshakes_in_progress(tmp_path: Path) -> None:
    lst, _ = await _tls_listener(tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
    await _until(lambda: len(lst.guard.shaking) == 1)
    await lst.stop()
    assert not lst.guard.shaking and all(t.done() for t in lst.accepting)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
