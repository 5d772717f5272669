"""A `relay run` node against slow headers, trickled bodies and idle sockets (issue 10).

Each node gets small [limits] deadlines and a cap of 20 connections. The
checks are that the slow connection is cut at all, that the node logs why,
and that /healthz answers other clients; no test asserts how fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.config.test_tls import issue, make_ca
from tests.e2e.harness import NodeProc, make_node, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIMITS = """
[limits]
max_connections = 20
header_timeout = "500ms"
body_timeout = "1s"
idle_timeout = "1s"
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    n = make_node(tmp_path, "n.test", "DE")
    n.add_mailbox("alice")
    toml = n.dir / "node.toml"
    toml.write_text(toml.read_text() + LIMITS)
    n.start()
    yield n
    assert n.stop() == 0
    assert "Traceback" not in n.logs()


def healthy(node: NodeProc) -> bool:
    """True if a fresh connection gets 200 from /healthz."""
    try:
        with urllib.request.urlopen(node.url + "/healthz", timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def trickle_until_closed(s: socket.socket, chunk: bytes, node: NodeProc) -> bytes:
    """Send `chunk` every 50 ms until the node closes `s`; return what it answered.

    While trickling, /healthz must keep answering on other connections.
    """
    s.settimeout(0.05)
    answer = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            s.sendall(chunk)
            data = s.recv(65536)
        except TimeoutError:
            assert healthy(node), "the node stopped answering /healthz during the trickle"
            continue
        except OSError:  # reset by the node
            return answer
        if not data:
            return answer
        answer += data
    raise AssertionError(f"the node never closed the slow connection; got {answer!r}")


def log_lines(node: NodeProc, name: str) -> list[str]:
    return [ln for ln in node.logs().splitlines() if f" {name} " in ln]


def test_slow_headers_get_408_and_close(node: NodeProc) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: n.test\r\n")
        answer = trickle_until_closed(s, b"X-Slow: 1\r\n", node)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"[limits] header_timeout" in answer
    lines = wait_for(lambda: log_lines(node, "connections_cut"), what="the cut log line")
    assert "phase=headers" in lines[0] and "listener=node" in lines[0], lines
    assert healthy(node)


def test_trickled_body_is_cut(node: NodeProc) -> None:
    before = node.row_counts()
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: n.test\r\n"
        f"Authorization: Bearer {node.tokens['alice']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(head.encode() + b'{"to": ["alice@n.test"], "text": "')
        trickle_until_closed(s, b"x" * 10, node)
    lines = wait_for(lambda: log_lines(node, "connections_cut"), what="the cut log line")
    assert "phase=body" in lines[0], lines
    assert healthy(node)
    assert node.row_counts() == before
    node.send("alice", ["alice@n.test"], "still serving")


def test_connection_cap_logs_once_and_idle_sockets_are_closed(node: NodeProc) -> None:
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(40)]
    try:
        lines = wait_for(lambda: log_lines(node, "connections_refused"), what="the cap log line")
        assert "max_connections=20" in lines[0] and "listener=node" in lines[0], lines
        wait_for(lambda: healthy(node), what="/healthz once the idle sockets are closed")
        for s in idle:  # every one was closed by the node: refused at once, or idle
            s.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
    assert 1 <= len(log_lines(node, "connections_refused")) < 20  # not one line per socket


@dataclasses.dataclass
class TlsNode(NodeProc):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def test_a_tls_node_counts_connections_still_in_their_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sockets that never send a ClientHello fill the cap of 20: the rest are closed
    with `connections_refused`, header_timeout lets the 20 go, and TLS serves again."""
    ca = make_ca("e2e ca")
    cert, key = issue(ca, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.write(tmp_path / "ca.pem")))  # for urllib
    plain = make_node(tmp_path, "n.test", "DE")
    node = TlsNode(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)})
    toml = node.dir / "node.toml"
    text = toml.read_text().replace(
        "[node]\n", f'[node]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1
    )
    toml.write_text(text + LIMITS)
    node.start()
    try:
        assert healthy(node)
        silent = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(40)]
        try:
            lines = wait_for(lambda: log_lines(node, "connections_refused"), what="the cap line")
            assert "max_connections=20" in lines[0], lines
            for s in silent:  # each closed by the node: past the cap, or its handshake ran out
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1) == b""
        finally:
            for s in silent:
                s.close()
        wait_for(lambda: healthy(node), what="/healthz over TLS once the silent sockets are gone")
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.logs()
