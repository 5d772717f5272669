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
- A TLS connection counts against the cap from its TCP accept: a TLS
  listener accepts plain TCP itself and hands each connection to the loop's
  TLS (`connect_accepted_socket`), so one over the cap is closed before any
  handshake work, and one still handshaking holds its place. The handshake
  must end within `header_timeout`.
- The cap, header and body deadlines are read from the config at each
  connection, so a reload changes them for new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
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
BACKLOG = 100  # what loop.create_server listens with
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
        self.shaking: set[asyncio.Task[None]] = set()  # TLS handshakes in progress
        self.refused = Burst("connections_refused")
        self.cut = Burst("connections_cut")

    def protocol_factory(
        self, server: web.Server, counted: bool = False
    ) -> Callable[[], asyncio.Protocol]:
        """The factory `loop.create_server` calls: aiohttp's handlers, guarded
        (`counted`: the connection already holds its place, from its TCP accept)."""
        return lambda: _Connection(self, server, counted)

    def full(self) -> bool:
        """Whether another connection would pass `max_connections` (logged if so)."""
        cap = self.limits().max_connections
        if cap and len(self.open) + len(self.shaking) >= cap:
            self.refused.hit(listener=self.listener, max_connections=cap)
            return True
        return False

    async def accept_tls(self, sock: socket.socket, server: web.Server, tls: SSLContext) -> None:
        """Accept on `sock` for ever; each connection under the cap gets a TLS handshake."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:  # out of descriptors, or the client gave up: go on
                self.refused.hit(listener=self.listener, error=str(e))
                await asyncio.sleep(0.1)
                continue
            if self.full():
                conn.close()
                continue
            task = loop.create_task(self._shake_hands(conn, server, tls))
            self.shaking.add(task)
            task.add_done_callback(self.shaking.discard)

    async def _shake_hands(self, conn: socket.socket, server: web.Server, tls: SSLContext) -> None:
        """The server side of `conn`'s TLS handshake, within `header_timeout`; then aiohttp."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self.protocol_factory(server, counted=True),
                conn,
                ssl=tls,
                ssl_handshake_timeout=self.limits().header_timeout_ms / 1000,
            )
        except (OSError, TimeoutError):  # ssl.SSLError included; the loop let it go
            conn.close()

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

    def __init__(self, guard: Guard, server: web.Server, counted: bool = False) -> None:
        self.guard = guard
        self.server = server
        self.counted = counted
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.phase = "idle"  # idle -> headers -> body -> idle ...
        self.request: web.Request | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are no asyncio.Transport subclass
        guard = self.guard
        if not self.counted and guard.full():
            transport.abort()
            return
        self.transport = transport
        guard.open[transport] = self
        self.handler = self.server()
        self.handler.connection_made(transport)
        self._arm(guard.limits().idle_timeout_ms, self._idle_expired)

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
        self.tls_socks: list[socket.socket] = []  # a TLS listener accepts on these itself
        self.accepting: list[asyncio.Task[None]] = []
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
        if ssl_context is not None:
            self.tls_socks = [sock] if sock is not None else await _bind(host, port)
            for s in self.tls_socks:
                s.setblocking(False)
                self.accepting.append(
                    loop.create_task(self.guard.accept_tls(s, server, ssl_context))
                )
            self.port = int(self.tls_socks[0].getsockname()[1])
            return
        factory = self.guard.protocol_factory(server)
        if sock is not None:
            self.server = await loop.create_server(factory, sock=sock)
        else:
            self.server = await loop.create_server(factory, host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, then let aiohttp finish in-flight requests and close the rest."""
        if self.server is not None:
            self.server.close()
        for task in [*self.accepting, *self.guard.shaking]:
            task.cancel()
        for task in [*self.accepting, *self.guard.shaking]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for s in self.tls_socks:
            s.close()
        await self.runner.cleanup()


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of HOST:PORT, as `loop.create_server` binds them."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address)
            s.listen(BACKLOG)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def descriptor_shortfall(limits: LimitsConfig, listeners: int) -> int | None:
    """The process's open-file limit if `max_connections` on every listener can exceed it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if limits.max_connections == 0 or limits.max_connections * listeners + FD_HEADROOM > soft:
        return soft
    return None
