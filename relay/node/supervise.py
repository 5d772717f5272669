"""`relay run DIR --workers N`: one supervisor process and N worker processes.

The supervisor opens no database. It binds `[node] listen` once and starts N
workers (relay.node.workers) that inherit that socket and accept on it: the
kernel hands each new connection to one of them. A socket passed down rather
than SO_REUSEPORT, because the port is bound once (port 0 works, and no other
process of the same user can join the port), and a restarted worker takes up
the same listen queue, so nothing is refused while it starts.

Invariants:
- A worker that exits while the node runs is started again after a backoff
  that doubles from 0.5 s to 30 s, and starts at 0.5 s again once a worker
  has run 30 s. A worker that exits 2 (its config is refused) is not
  restarted: the supervisor stops the others and exits 2.
- SIGTERM and SIGINT are passed to every worker; each drains as a lone node
  does, and the supervisor exits 0 once all have (a worker still running
  after STOP_GRACE_S is killed). SIGHUP is passed to every worker.
- DIR/admin.sock is the supervisor's: `POST /admin/v1/reload` reloads every
  worker and answers each one's result, `GET /admin/v1/workers` lists them,
  `GET /admin/v1/metrics` is every worker's metrics merged; any other admin
  request goes to one running worker (they share the database, so any one
  answers for the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.api.admin import bind_private, check_token, write_private
from relay.api.admin_client import ADMIN_SOCKET, ADMIN_TOKEN, unix_path, worker_files
from relay.config.files import load_config
from relay.config.model import Config
from relay.errors import RelayError, Unavailable
from relay.logs import event
from relay.node.conns import Listener
from relay.node.exposition import merge
from relay.node.metrics import PATH as METRICS_PATH
from relay.node.metrics import STORED_FAMILIES, TEXT_FORMAT, token_ok
from relay.node.workers import worker_argv

log = logging.getLogger("relay.supervisor")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 30.0  # under systemd TimeoutStopSec=60 (deploy/relay-workers@.service)
EXIT_CONFIG = 2
ADMIN_PREFIX = "/admin/v1"
_LISTEN_BACKLOG = 1024


def backoff_after(previous: float, ran_s: float) -> float:
    """The wait before restarting a worker that ran `ran_s` seconds; `previous`
    is the last wait (0 before the first restart)."""
    if ran_s >= BACKOFF_MAX_S or previous == 0:
        return BACKOFF_MIN_S
    return min(previous * 2, BACKOFF_MAX_S)


def bind_listener(host: str, port: int) -> socket.socket:
    """The node's listen socket, bound and listening, to hand to the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=_LISTEN_BACKLOG)


@dataclass
class Slot:
    """Worker `index`: its current process, if any, and how often it was started."""

    index: int
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, directory: Path, config: Config, workers: int) -> None:
        self.directory = directory
        self.config = config
        self.slots = [Slot(i) for i in range(workers)]
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.listen_socket: socket.socket | None = None
        self.token = ""
        self._admin: web.AppRunner | None = None
        self._metrics: Listener | None = None

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0, or 2 when a worker's config is refused."""
        cfg = self.config.node
        try:
            self.listen_socket = bind_listener(cfg.listen_host, cfg.listen_port)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise Unavailable(
                f"cannot listen on {cfg.listen}  ([node] listen in {self.config.path}): {reason}"
            ) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            await self._start_admin()
            await self._start_metrics()
            port = self.listen_socket.getsockname()[1]
            event(
                log,
                "supervisor_started",
                node=cfg.name,
                pid=os.getpid(),
                listen=f"{cfg.listen_host}:{port}",
                workers=len(self.slots),
                storage=self.config.storage.url,
            )
            keepers = [asyncio.create_task(self._keep(slot)) for slot in self.slots]
            await self.stop.wait()
            await self._stop_workers()
            for task in keepers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            if self._metrics is not None:
                await self._metrics.stop()
            await self._stop_admin()
            self.listen_socket.close()
        event(log, "supervisor_stopped", node=cfg.name, exit_code=self.exit_code)
        return self.exit_code

    # --- workers -------------------------------------------------------------------

    async def _spawn(self, slot: Slot) -> None:
        assert self.listen_socket is not None
        fd = self.listen_socket.fileno()
        slot.process = await asyncio.create_subprocess_exec(
            *worker_argv(self.directory, slot.index, fd),
            pass_fds=(fd,),
            stdin=asyncio.subprocess.DEVNULL,
        )
        slot.starts += 1
        slot.started_at = time.monotonic()
        event(
            log,
            "worker_started",
            worker=slot.index,
            pid=slot.process.pid,
            start=slot.starts,
        )

    async def _keep(self, slot: Slot) -> None:
        """Run worker `slot` until the node stops, restarting it when it dies."""
        wait = 0.0
        while not self.stop.is_set():
            try:
                await self._spawn(slot)
            except OSError as e:  # out of processes or memory: try again later
                wait = backoff_after(wait, 0)
                event(
                    log,
                    "worker_start_failed",
                    logging.ERROR,
                    worker=slot.index,
                    detail=str(e),
                    restart_in_s=wait,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), wait)
                continue
            assert slot.process is not None
            code = await slot.process.wait()
            if self.stop.is_set():
                return
            ran = time.monotonic() - slot.started_at
            if code == EXIT_CONFIG:
                event(
                    log,
                    "worker_refused_config",
                    logging.ERROR,
                    worker=slot.index,
                    pid=slot.process.pid,
                    detail="its config was refused: stopping the node",
                )
                self.exit_code = EXIT_CONFIG
                self.stop.set()
                return
            wait = backoff_after(wait, ran)
            event(
                log,
                "worker_exited",
                logging.ERROR,
                worker=slot.index,
                pid=slot.process.pid,
                exit_code=code,  # negative: killed by that signal
                ran_s=round(ran, 1),
                restart_in_s=wait,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)

    def _sighup(self) -> None:
        self._reread()
        self._forward(signal.SIGHUP)

    def _reread(self) -> None:
        """Take node.toml again for what the supervisor itself reads (the admin and
        metrics tokens); the workers each reload the rest."""
        try:
            self.config = load_config(self.config.path)
        except RelayError as e:  # each worker logs the problems itself
            event(log, "supervisor_reload_refused", logging.WARNING, detail=e.detail)

    def _running(self) -> list[Slot]:
        return [s for s in self.slots if s.process is not None and s.process.returncode is None]

    def _forward(self, sig: int) -> None:
        running = self._running()
        for slot in running:
            assert slot.process is not None
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(sig)
        event(log, "signal_forwarded", signal=signal.Signals(sig).name, workers=len(running))

    async def _stop_workers(self) -> None:
        self._forward(signal.SIGTERM)
        waits = [s.process.wait() for s in self._running() if s.process is not None]
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), STOP_GRACE_S)
        except TimeoutError:
            for slot in self._running():
                assert slot.process is not None
                event(log, "worker_killed", logging.ERROR, worker=slot.index, pid=slot.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
            await asyncio.gather(*(s.process.wait() for s in self.slots if s.process is not None))

    # --- admin socket --------------------------------------------------------------

    async def _start_admin(self) -> None:
        self.token = secrets.token_urlsafe(32)
        write_private(self.directory / ADMIN_TOKEN, self.token + "\n")
        sock = bind_private(self.directory / ADMIN_SOCKET)
        app = web.Application(middlewares=[self._guard], client_max_size=1024 * 1024)
        app.router.add_post(f"{ADMIN_PREFIX}/reload", self._reload)
        app.router.add_get(f"{ADMIN_PREFIX}/workers", self._workers)
        app.router.add_get(f"{ADMIN_PREFIX}/metrics", self._merged_metrics)
        app.router.add_route("*", ADMIN_PREFIX + "/{tail:.*}", self._pass_on)
        self._admin = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin.setup()
        await web.SockSite(self._admin, sock).start()

    async def _stop_admin(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for name in (ADMIN_SOCKET, ADMIN_TOKEN):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            check_token(
                request,
                self.token,
                self.directory / ADMIN_TOKEN,
                self.config.node.admin_token_sha256,
            )
            return await handler(request)
        except RelayError as e:
            return web.json_response({"error": e.code, "detail": e.detail}, status=e.status)

    async def _start_metrics(self) -> None:
        """`[metrics] listen`: the workers' metrics merged, behind the same token."""
        cfg = self.config.metrics
        if cfg.listen_host is None:
            return
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._scrape)
        self._metrics = Listener(app, lambda: self.config.limits, "metrics", shutdown_timeout=2)
        try:
            await self._metrics.start(cfg.listen_host, cfg.listen_port)
        except OSError as e:
            raise Unavailable(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port} ([metrics] listen in "
                f"{self.config.path}): {os.strerror(e.errno) if e.errno else e}"
            ) from None

    async def _scrape(self, request: web.Request) -> web.Response:
        wanted = self.config.metrics.token_sha256
        if wanted is not None and not token_ok(request.headers.get("Authorization", ""), wanted):
            return web.json_response(
                {"error": "unauthorized", "detail": "send 'Authorization: Bearer <metrics token>'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        try:
            return await self._merged_metrics(request)
        except Unavailable as e:
            return web.json_response({"error": e.code, "detail": e.detail}, status=e.status)

    async def _merged_metrics(self, request: web.Request) -> web.Response:
        """Every running worker's metrics as one exposition (relay.node.exposition)."""
        texts: list[str] = []
        for slot in self._running():
            try:
                status, body, _ = await self._ask(slot.index, "GET", "/metrics")
            except Unavailable:
                continue  # starting or gone: its series are missing from this scrape
            if status == 200:
                texts.append(body.decode("utf-8", "replace"))
        if not texts:
            raise Unavailable("no worker answered for its metrics")
        merged = merge(texts, STORED_FAMILIES)
        return web.Response(body=merged.encode(), headers={"Content-Type": TEXT_FORMAT})

    async def _workers(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "pid": os.getpid(),
                "workers": [
                    {
                        "worker": s.index,
                        "pid": s.process.pid if s.process is not None else None,
                        "running": s in self._running(),
                        "starts": s.starts,
                    }
                    for s in self.slots
                ],
            }
        )

    async def _reload(self, request: web.Request) -> web.Response:
        """Reload every running worker; each one's answer (or why it gave none)."""
        self._reread()
        running = self._running()
        answers = await asyncio.gather(*(self._reload_one(s.index) for s in running))
        results = [{"worker": s.index, **a} for s, a in zip(running, answers, strict=True)]
        applied = all(r.get("applied") is True for r in results) and bool(results)
        event(log, "reload_fanned_out", workers=len(results), applied=applied)
        return web.json_response({"applied": applied, "workers": results})

    async def _reload_one(self, worker: int) -> dict[str, Any]:
        try:
            status, body, _ = await self._ask(worker, "POST", "/reload")
        except Unavailable as e:
            return {"status": 503, "applied": False, "detail": e.detail}
        return {"status": status, **_json_or_detail(body)}

    async def _pass_on(self, request: web.Request) -> web.Response:
        """Any other admin request: answered by the first running worker that answers."""
        body = await request.read()
        tail = request.match_info["tail"]
        path = f"/{tail}" + (f"?{request.query_string}" if request.query_string else "")
        for slot in self._running():
            try:
                status, answer, ctype = await self._ask(slot.index, request.method, path, body)
            except Unavailable:
                continue
            return web.Response(status=status, body=answer, content_type=ctype)
        raise Unavailable("no worker is running; the supervisor is restarting them")

    async def _ask(
        self, worker: int, method: str, path: str, body: bytes = b""
    ) -> tuple[int, bytes, str]:
        """One request to worker `worker`'s admin socket: status, body, content type."""
        sock_name, token_name = worker_files(worker)
        try:
            token = (self.directory / token_name).read_text(encoding="utf-8").strip()
        except OSError:
            raise Unavailable(f"worker {worker} has no admin token yet (starting?)") from None
        with unix_path(self.directory / sock_name) as address:
            connector = aiohttp.UnixConnector(path=address)
            timeout = aiohttp.ClientTimeout(total=120, sock_connect=5)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                try:
                    async with session.request(
                        method,
                        f"http://relay-admin{ADMIN_PREFIX}{path}",
                        data=body or None,
                        headers={
                            "Authorization": f"Bearer {token}",
                            "Content-Type": "application/json",
                        },
                    ) as resp:
                        ctype = resp.content_type or "application/json"
                        return resp.status, await resp.read(), ctype
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise Unavailable(f"worker {worker}'s admin socket: {e}") from None


def _json_or_detail(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {"detail": body[:200].decode("utf-8", "replace")}
    return doc if isinstance(doc, dict) else {"detail": str(doc)}
