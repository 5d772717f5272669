"""Reaching a running node's admin API from the CLI (see relay.api.admin).

The node listens on DIR/admin.sock and writes its bearer token to
DIR/admin.token at every start; DIR is the directory of node.toml.
`RELAY_ADMIN_TOKEN` overrides the token file (for a token configured as
`[node] admin_token_sha256`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from relay.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RelayError,
    Unauthorized,
    Unavailable,
    Unreachable,
)

ADMIN_SOCKET = "admin.sock"
ADMIN_TOKEN = "admin.token"


def worker_files(worker: int | None) -> tuple[str, str]:
    """Admin socket and token file names: a worker of `relay run --workers N`
    has its own (admin-I.sock, admin-I.token); the supervisor, or the only
    process, has admin.sock and admin.token."""
    if worker is None:
        return ADMIN_SOCKET, ADMIN_TOKEN
    return f"admin-{worker}.sock", f"admin-{worker}.token"


TOKEN_ENV = "RELAY_ADMIN_TOKEN"
MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes on Linux; keep a margin

_BY_STATUS: dict[int, type[RelayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: Unavailable,
}


class NodeNotRunning(Unreachable):
    """No node answers on the admin socket of a node directory."""

    code = "not_running"


@contextlib.contextmanager
def unix_path(path: Path) -> Iterator[str]:
    """A name for `path` short enough for a Unix socket address.

    A long path is reached through /proc/self/fd/N of its open directory,
    valid while the context is open.
    """
    if len(os.fsencode(path)) <= MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def read_token(directory: Path) -> str:
    """The admin token: $RELAY_ADMIN_TOKEN, else the one the node wrote at start."""
    if env := os.environ.get(TOKEN_ENV, "").strip():
        return env
    file = directory / ADMIN_TOKEN
    try:
        return file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NodeNotRunning(
            f"the node in {directory} is not running (no {file}); start it with `relay run`"
        ) from None
    except OSError as e:
        raise Unauthorized(f"cannot read the admin token {file}: {e.strerror}") from None


def call(
    directory: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    sink: BinaryIO | None = None,
) -> Any:
    """One admin API request to the node of `directory`; the decoded JSON answer.

    With `sink`, a successful answer's bytes are written there instead and
    their count is returned. NodeNotRunning when nothing answers; the node's
    error, as a RelayError, when it refuses.
    """
    sock = directory / ADMIN_SOCKET
    if not sock.exists():
        raise NodeNotRunning(
            f"the node in {directory} is not running (no admin socket {sock}); "
            "start it with `relay run`"
        )
    token = read_token(directory)
    return asyncio.run(_call(sock, token, method, path, body, sink))


async def _call(
    sock: Path,
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    sink: BinaryIO | None,
) -> Any:
    raw = b""
    written = 0
    with unix_path(sock) as address:
        connector = aiohttp.UnixConnector(path=address)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                async with session.request(
                    method,
                    f"http://relay-admin{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    if status == 200 and sink is not None:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            sink.write(chunk)
                            written += len(chunk)
                    else:
                        raw = await resp.read()
            except aiohttp.ClientConnectorError:
                raise NodeNotRunning(
                    f"the node is not running: nothing answers on {sock} (a stale socket?)"
                ) from None
            except aiohttp.ClientError as e:
                raise Unavailable(f"admin API on {sock}: {type(e).__name__}: {e}") from None
    if status == 200 and sink is not None:
        return written
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if status == 200:
        return doc
    detail = doc.get("detail") if isinstance(doc, dict) else None
    error = _BY_STATUS.get(status, RelayError)
    raise error(str(detail or f"admin API answered HTTP {status}"))
