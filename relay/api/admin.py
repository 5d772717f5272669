"""The admin API: how commands change a running node (DESIGN §9, issue 6).

JSON over HTTP on a Unix socket, DIR/admin.sock, where DIR is the directory
of node.toml.

Invariants:
- The socket is mode 0600, set between bind() and listen(), so no other user
  can ever connect; it is removed on stop (and a stale one from a killed node
  is replaced at start: the node already holds its database lock).
- Every request needs `Authorization: Bearer <token>`: the random token the
  node writes to DIR/admin.token (mode 0600) at each start, or a token whose
  SHA-256 is `[node] admin_token_sha256`. Both are compared in constant time.
- Handlers are thin: decode, call relay.node.queueops / relay.node.queueview /
  relay.storage.sqlite.backup, encode. Every refusal is `{"error", "detail"}`.

Routes (all under /admin/v1):
  GET  /node                      name, jurisdiction, pid, database
  GET  /queue?dest=NODE&limit=N   queued envelopes
  GET  /queue/summary             age x destination counts
  POST /queue/retry               {"dest": NODE} or {"ids": [...]}
  POST /queue/hold | /queue/release | /queue/delete   {"ids": [...]}
  GET  /peers                     each destination's state
  POST /erase                     {"ids", "reason"} or {"mailbox", "since", "until", "reason"}
  POST /backup                    the database, as a consistent SQLite snapshot
  POST /reload                    re-read node.toml as SIGHUP does; what was applied
  GET  /metrics                   this process's metrics (Prometheus text)

A worker of `relay run --workers N` serves this API on DIR/admin-I.sock (token
DIR/admin-I.token); its supervisor owns DIR/admin.sock (relay.node.supervise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from relay.api.admin_client import unix_path, worker_files
from relay.api.client import read_json
from relay.errors import BadRequest, Conflict, NotFound, RelayError, Unauthorized
from relay.logs import event
from relay.node import erasure, metrics, queueops, queueview
from relay.node.http import answering
from relay.node.reload import ReloadResult
from relay.node.state import NodeState
from relay.storage.backends import sqlite_file
from relay.storage.sqlite.backup import CONTENT_TYPE, private_temp, remove_temp, snapshot

log = logging.getLogger("relay.admin")

PREFIX = "/admin/v1"
MAX_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """The admin API of one node: its socket, its token, its routes."""

    KEY: web.AppKey[AdminServer]

    def __init__(
        self, state: NodeState, *, reload: Callable[[], Awaitable[ReloadResult]] | None = None
    ) -> None:
        self.state = state
        self.reload = reload  # POST /reload: the node's own reload (SIGHUP does the same)
        directory = state.config.path.parent
        sock_name, token_name = worker_files(state.worker)
        self.socket_path = directory / sock_name
        self.token_path = directory / token_name
        self.token = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Write a fresh token, bind the socket (0600) and serve."""
        self.token = secrets.token_urlsafe(32)
        write_private(self.token_path, self.token + "\n")
        sock = bind_private(self.socket_path)
        app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
        app[AdminServer.KEY] = self
        app[NodeState.KEY] = self.state
        add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        event(log, "admin_listening", socket=str(self.socket_path), token=str(self.token_path))

    async def stop(self) -> None:
        """Stop serving; remove the socket and the token file."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for path in (self.socket_path, self.token_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def authenticate(self, request: web.Request) -> None:
        check_token(request, self.token, self.token_path, self.state.config.node.admin_token_sha256)


def check_token(
    request: web.Request, token: str, token_path: Path, configured_sha256: str | None
) -> None:
    """Unauthorized unless `request` carries `token` or one whose SHA-256 is configured."""
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    sent = sent.strip()
    if scheme.lower() != "bearer" or not sent:
        raise Unauthorized(f"send 'Authorization: Bearer <token from {token_path}>'")
    ok = bool(token) and hmac.compare_digest(sent.encode(), token.encode())
    if configured_sha256 is not None:
        digest = hashlib.sha256(sent.encode()).hexdigest()
        ok = hmac.compare_digest(digest.encode(), configured_sha256.encode()) or ok
    if not ok:
        raise Unauthorized("wrong admin token")


AdminServer.KEY = web.AppKey("relay_admin", AdminServer)


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def bind_private(path: Path) -> socket.socket:
    """A Unix socket bound at `path`, mode 0600, not yet listening."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise Conflict(f"{path} exists and is not a socket; move it away")
        path.unlink()  # left by a node that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_path(path) as address:
            sock.bind(address)
        os.chmod(path, 0o600)  # before listen(): nobody can connect yet
    except BaseException:
        sock.close()
        raise
    return sock


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin app's one middleware: authenticate, then answer every refusal as JSON."""

    async def authenticated(request: web.Request) -> web.StreamResponse:
        request.app[AdminServer.KEY].authenticate(request)
        try:
            return await handler(request)
        except web.HTTPException as e:  # aiohttp's own 404 / 405 / 413, in the admin's shape
            if e.status < 400:
                raise
            return web.json_response(
                {"error": e.reason.lower().replace(" ", "_"), "detail": e.text or e.reason},
                status=e.status,
            )

    return await answering(request, authenticated, headers=_no_headers)


def _no_headers(e: RelayError) -> dict[str, str]:
    return {}


# --- handlers --------------------------------------------------------------------


def _state(request: web.Request) -> NodeState:
    return request.app[NodeState.KEY]


async def get_node(request: web.Request) -> web.Response:
    st = _state(request)
    return web.json_response(
        {
            "name": st.name,
            "jurisdiction": st.config.node.jurisdiction,
            "pid": os.getpid(),
            "config": str(st.config.path),
            "database": st.store.location,
            "policy_hash": st.policy_hash,
        }
    )


async def get_queue(request: web.Request) -> web.Response:
    st = _state(request)
    dest = request.query.get("dest") or None
    raw_limit = request.query.get("limit", "-1")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise BadRequest("'limit' must be a whole number") from None
    rows = await st.store.queue_listing(dest, limit)
    now = st.now_ms()
    entries = queueview.queue_entries(rows, now)
    return web.json_response({"now": now, "entries": [e.to_json() for e in entries]})


async def get_summary(request: web.Request) -> web.Response:
    st = _state(request)
    now = st.now_ms()
    rows = await st.store.queue_ages(now, queueview.AGE_BOUNDS_MS)
    shape = queueview.queue_shape(rows)
    return web.json_response(
        {"now": now, "ages": list(queueview.AGE_LABELS), "rows": [r.to_json() for r in shape]}
    )


async def get_peers(request: web.Request) -> web.Response:
    st = _state(request)
    now = st.now_ms()
    states = await st.store.peer_states()
    counts = await st.store.queue_counts()
    views = queueview.peer_views(st.config.peers, states, counts, now)
    return web.json_response({"now": now, "peers": [v.to_json() for v in views]})


async def _body(request: web.Request) -> dict[str, Any]:
    doc = await read_json(request, MAX_BODY)
    if not isinstance(doc, dict):
        raise BadRequest("the body is a JSON object")
    return doc


async def post_retry(request: web.Request) -> web.Response:
    doc = await _body(request)
    st = _state(request)
    if set(doc) == {"dest"} and isinstance(doc["dest"], str) and doc["dest"]:
        result = await queueops.retry(st, dest=doc["dest"])
        if result.unknown:
            raise NotFound(f"nothing is queued for {doc['dest']} and it has no backoff")
    elif set(doc) == {"ids"}:
        result = await queueops.retry(st, ids=queueops.parse_ids(doc["ids"]))
    else:
        raise BadRequest('the body is {"dest": NODE} or {"ids": [envelope id, ...]}')
    return web.json_response(result.to_json())


def _ids_action(
    action: Callable[[NodeState, list[bytes]], Awaitable[queueops.ActionResult]],
) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        doc = await _body(request)
        if set(doc) != {"ids"}:
            raise BadRequest('the body is {"ids": [envelope id, ...]}')
        result = await action(_state(request), queueops.parse_ids(doc["ids"]))
        return web.json_response(result.to_json())

    return handler


async def _hold(st: NodeState, ids: list[bytes]) -> queueops.ActionResult:
    return await queueops.set_held(st, ids, True)


async def _release(st: NodeState, ids: list[bytes]) -> queueops.ActionResult:
    return await queueops.set_held(st, ids, False)


async def post_erase(request: web.Request) -> web.Response:
    doc = await _body(request)
    st = _state(request)
    reason = erasure.check_reason(doc.get("reason"), required=True)
    if set(doc) == {"ids", "reason"}:
        result = await erasure.erase_for_admin(st, queueops.parse_ids(doc["ids"]), reason)
    elif set(doc) == {"mailbox", "since", "until", "reason"}:
        mailbox, since, until = doc["mailbox"], doc["since"], doc["until"]
        if not isinstance(mailbox, str) or not all(
            type(v) is int and 0 <= v < 2**63 for v in (since, until)
        ):
            raise BadRequest("'mailbox' is a mailbox name, 'since' and 'until' unix ms")
        result = await erasure.erase_by_sender(st, mailbox, since, until, reason)
    else:
        raise BadRequest(
            'the body is {"ids": [message id, ...], "reason": R} or'
            ' {"mailbox": M, "since": ms, "until": ms, "reason": R}'
        )
    return web.json_response(result.to_json())


async def post_backup(request: web.Request) -> web.StreamResponse:
    """A consistent snapshot of the database, streamed as the answer's body.

    It is made inside the database's own directory (the one place a
    sandboxed node may write) and unlinked before it is sent.
    """
    st = _state(request)
    database = sqlite_file(st.store)
    if database is None:
        raise Conflict(
            f"backup streams a SQLite file; this node stores in {st.store.location}:"
            " back it up with pg_dump (docs/storage.md)"
        )
    tmp = private_temp(database.with_name("backup"))
    try:
        size = await asyncio.to_thread(snapshot, database, tmp)
        f = tmp.open("rb")
    finally:
        remove_temp(tmp)  # the open file stays readable
    with f:
        resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        resp.content_length = size
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(f.read, 1 << 20):
            await resp.write(chunk)
        await resp.write_eof()
    event(log, "backup", bytes=size)
    return resp


async def get_metrics(request: web.Request) -> web.Response:
    """This process's metrics (a worker's labelled `worker`, for its supervisor to merge)."""
    body, content_type = await metrics.exposition(_state(request))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def post_reload(request: web.Request) -> web.Response:
    """Re-read node.toml, as SIGHUP does; the answer says what was applied."""
    reload = request.app[AdminServer.KEY].reload
    if reload is None:
        raise NotFound("this admin socket cannot reload the node")
    result = await reload()
    return web.json_response(reload_json(result))


def reload_json(result: ReloadResult) -> dict[str, Any]:
    """A ReloadResult as the admin API answers it."""
    return {
        "applied": result.applied,
        "errors": list(result.errors),
        "restart_needed": list(result.restart_needed),
        "policy_changed": result.policy_changed,
        "peers_changed": result.peers_changed,
        "recheck_for": list(result.recheck_for),
    }


def add_routes(app: web.Application) -> None:
    """The admin routes, under PREFIX."""
    app.router.add_get(f"{PREFIX}/node", get_node)
    app.router.add_get(f"{PREFIX}/queue", get_queue)
    app.router.add_get(f"{PREFIX}/queue/summary", get_summary)
    app.router.add_post(f"{PREFIX}/queue/retry", post_retry)
    app.router.add_post(f"{PREFIX}/queue/hold", _ids_action(_hold))
    app.router.add_post(f"{PREFIX}/queue/release", _ids_action(_release))
    app.router.add_post(f"{PREFIX}/queue/delete", _ids_action(queueops.delete))
    app.router.add_get(f"{PREFIX}/peers", get_peers)
    app.router.add_post(f"{PREFIX}/erase", post_erase)
    app.router.add_post(f"{PREFIX}/backup", post_backup)
    app.router.add_post(f"{PREFIX}/reload", post_reload)
    app.router.add_get(f"{PREFIX}/metrics", get_metrics)
