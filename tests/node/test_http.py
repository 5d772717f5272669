"""relay.node.http: the error middleware and the capped body reader, on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from relay.errors import Busy, NotFound, TooLarge
from relay.node.http import UNREAD_BODY, answer_errors, read_capped, refuse_declared


def _too_large(length: int, limit: int) -> TooLarge:
    return TooLarge(f"{length} over {limit}")


async def not_found(request: web.Request) -> web.Response:
    raise NotFound("no such thing")


async def busy(request: web.Request) -> web.Response:
    raise Busy("behind", retry_after=7)


async def capped(request: web.Request) -> web.Response:
    refuse_declared(request, 10, _too_large)
    body = await read_capped(request.content, 10)
    if body is None:
        request[UNREAD_BODY] = True
        raise TooLarge("streamed over 10")
    return web.Response(body=body)


async def broken(request: web.Request) -> web.Response:
    raise KeyError("bug")


async def broken_midway(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"half")
    raise KeyError("bug")


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application(middlewares=[answer_errors])
    app.router.add_get("/missing", not_found)
    app.router.add_get("/busy", busy)
    app.router.add_post("/capped", capped)
    app.router.add_get("/broken", broken)
    app.router.add_get("/broken-midway", broken_midway)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_refusal_is_its_status_and_json(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/missing") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "not_found", "detail": "no such thing"}
        assert "Retry-After" not in resp.headers


async def test_busy_carries_retry_after_and_closes(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/busy") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert resp.headers["Connection"] == "close"


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        (b"0123456789", 200, b"0123456789"),
        (b"0123456789x", 413, b'{"error": "too_large", "detail": "11 over 10"}'),
    ],
)
async def test_declared_length(base: str, body: bytes, status: int, answer: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{base}/capped", data=body) as resp:
        assert resp.status == status
        assert await resp.read() == answer
        assert "Connection" not in resp.headers  # the handler read the body or did not mark it


async def test_a_streamed_body_is_cut_at_its_cap_and_the_connection_closed(base: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"abcd"

    async with aiohttp.ClientSession() as s, s.post(f"{base}/capped", data=chunks()) as resp:
        assert resp.status == 413
        assert (await resp.json())["detail"] == "streamed over 10"
        assert resp.headers["Connection"] == "close"


@pytest.mark.parametrize(
    ("level", "names"),
    [
        (logging.INFO, ["internal_error"]),
        (logging.DEBUG, ["internal_error", "internal_error traceback"]),
    ],
)
async def test_a_bug_is_a_json_500_and_one_log_line_with_a_traceback_only_at_debug(
    base: str, caplog: pytest.LogCaptureFixture, level: int, names: list[str]
) -> None:
    caplog.set_level(level, logger="relay.http")
    async with aiohttp.ClientSession() as s, s.get(f"{base}/broken") as resp:
        assert resp.status == 500
        assert (await resp.json())["error"] == "internal"
    lines = [r for r in caplog.records if r.name == "relay.http"]
    assert [r.getMessage() for r in lines] == names
    assert lines[0].exc_info is None
    assert lines[0].relay_fields["error"] == "KeyError: 'bug'"  # type: ignore[attr-defined]
    assert all(r.exc_info is not None for r in lines[1:])


async def test_an_unknown_route_stays_aiohttp_s_404(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/nowhere") as resp:
        assert resp.status == 404
        assert resp.content_type == "text/plain"


async def test_a_bug_after_the_answer_began_is_not_answered_twice(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.http")
    async with aiohttp.ClientSession() as s, s.get(f"{base}/broken-midway") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert not [r for r in caplog.records if r.name == "relay.http"]
