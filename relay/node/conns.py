"""Connection limits of one listener: a cap, and deadlines for idle, headers and bodies.

Invariants:
- At most `[limits] max_connections` connections are open on a listener; one
  more is closed at once, before aiohttp sees a byte of it. A burst of such
  refusals logs one line (at most one per LOG_EVERY_S, with the count).
- A connection with no request in progress that sends nothing is closed after
  `idle_timeout`: the guard's own timer before the first byte, aiohttp's
  keep-alive timeout after each response.
- From the first byte of a request to its complete headers: `header_timeout`,
  then 408 and close. From complete headers to the body's last byte:
  `body_timeout`, then the connection is dropped. A handler still working
  after its body arrived (an inbox long poll) is never cut.
- A TLS handshake must end within `header_timeout` (read at start); a
  handshaking connection is not yet counted against the cap.
- The cap, header and body deadlines are read from the config at each
  connection, so a reload changes them for new connections.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from relay.config.model import LimitsConfig
from relay.logs import event

log = logging.getLogger("relay.conns")

LOG_EVERY_S = 10.0
FD_HEADROOM = 64  # descriptors the node needs besides its connections (database, sockets out)

_408_BODY = b"request headers not received within [limits] header_timeout\n"
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_408_BODY), _408_BODY)
)


@dataclass
class Burst:
    """Logs the first of a run of events at once, then at most one line per LOG_EVERY_S."""

    name: str
    clock: Callable[[], float] = time.monotonic
    count: int = 0
    last: float = field(default=float("-inf"))

    def hit(self, **fields: Any) -> None:
        """Count one event; log the count so far if the last line is old enough."""
        self.count += 1
        now = self.clock()
        if now - self.last >= LOG_EVERY_S:
            event(log, self.name, logging.WARNING, count=self.count, **fields)
            self.count = 0
            self.last = now


class Guard:
    """Counts the open connections of one listener and holds their deadlines."""

    def __init__(self, limits: Callable[[], LimitsConfig], listener: str) -> None:
        self.limits = limits
        self.listener = listener
        self.open: dict[asyncio.BaseTransport, _Connection] = {}
        self.refused = Burst("connections_refused")
        self.cut = Burst("connections_cut")

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The factory `loop.create_server` calls: aiohttp's handlers, guarded."""
        return lambda: _Connection(self, server)

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Headers are complete when a handler starts; the body deadline starts here."""
        conn = self.open.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.headers_done(request)
        try:
            return await handler(request)
        finally:
            conn.request_done()

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """An answer sent without a handler (a refused `Expect: 100-continue`) ends the request."""
        conn = self.open.get(request.transport) if request.transport is not None else None
        if conn is not None and conn.phase == "headers":
            conn.request_done()


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler behind the guard's cap and deadlines."""

    def __init__(self, guard: Guard, server: web.Server) -> None:
        self.guard = guard
        self.server = server
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.phase = "idle"  # idle -> headers -> body -> idle ...
        self.request: web.Request | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are no asyncio.Transport subclass
        guard = self.guard
        limits = guard.limits()
        if limits.max_connections and len(guard.open) >= limits.max_connections:
            guard.refused.hit(listener=guard.listener, max_connections=limits.max_connections)
            transport.abort()
            return
        self.transport = transport
        guard.open[transport] = self
        self.handler = self.server()
        self.handler.connection_made(transport)
        self._arm(limits.idle_timeout_ms, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.handler is None or self.transport is None:
            return
        self.guard.open.pop(self.transport, None)
        self.request = None
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return
        if self.phase == "idle":
            self.phase = "headers"
            self._arm(self.guard.limits().header_timeout_ms, self._headers_expired)
        self.handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def headers_done(self, request: web.Request) -> None:
        """The request's headers are parsed: from now on the body has its deadline."""
        self._disarm()
        self.phase = "body"
        self.request = request
        if not request.content.is_eof():
            self._arm(self.guard.limits().body_timeout_ms, self._body_expired)

    def request_done(self) -> None:
        """The handler returned; idle again (aiohttp's keep-alive timeout takes over)."""
        self._disarm()
        self.phase = "idle"
        self.request = None

    def _arm(self, ms: int, callback: Callable[[], None]) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(ms / 1000, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle_expired(self) -> None:
        self.timer = None
        if self.transport is not None and self.phase == "idle":
            self.transport.close()

    def _headers_expired(self) -> None:
        self.timer = None
        if self.transport is None or self.phase != "headers":
            return
        self.guard.cut.hit(listener=self.guard.listener, phase="headers")
        self.transport.write(_408)
        self.transport.close()

    def _body_expired(self) -> None:
        self.timer = None
        request = self.request
        if self.transport is None or request is None or request.content.is_eof():
            return
        self.guard.cut.hit(listener=self.guard.listener, phase="body")
        self.transport.abort()


class Listener:
    """An aiohttp application served on one address behind a Guard."""

    def __init__(
        self,
        app: web.Application,
        limits: Callable[[], LimitsConfig],
        name: str,
        *,
        shutdown_timeout: float,
    ) -> None:
        """Call before `app` is set up: the guard adds its middleware and signal to it."""
        self.guard = Guard(limits, name)
        app.middlewares.insert(0, self.guard.middleware)
        app.on_response_prepare.append(self.guard.on_prepare)
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=limits().idle_timeout_ms / 1000,
        )
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: SSLContext | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        """Listen on HOST:PORT (port 0: any free port, then in `self.port`).

        With `sock` (a listening socket a `relay run --workers` supervisor
        passed down), accept on it instead; host and port are then ignored.
        """
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        factory = self.guard.protocol_factory(server)
        # A TLS handshake gets the header deadline (asyncio's default is 60 s).
        handshake = self.guard.limits().header_timeout_ms / 1000 if ssl_context else None
        if sock is not None:
            self.server = await loop.create_server(
                factory, sock=sock, ssl=ssl_context, ssl_handshake_timeout=handshake
            )
        else:
            self.server = await loop.create_server(
                factory, host, port, ssl=ssl_context, ssl_handshake_timeout=handshake
            )
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, then let aiohttp finish in-flight requests and close the rest."""
        if self.server is not None:
            self.server.close()
        await self.runner.cleanup()


def descriptor_shortfall(limits: LimitsConfig, listeners: int) -> int | None:
    """The process's open-file limit if `max_connections` on every listener can exceed it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if limits.max_connections == 0 or limits.max_connections * listeners + FD_HEADROOM > soft:
        return soft
    return None
