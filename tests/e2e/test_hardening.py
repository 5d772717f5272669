"""A `relay run` node facing bad input and a taken port (issue 10, first items)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol import httpsig
from relay.protocol.sfv import b64
from tests.e2e.harness import TIMEOUT, NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = make_node(tmp_path_factory.mktemp("hardening"), "n.test", "DE")
    n.add_mailbox("alice")
    n.start()
    yield n
    assert n.stop() == 0


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is on a new connection; return status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/inbox"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/batch"),
        ("POST", "/v1/inbox/ack"),
        ("GET", "/v1/messages/00112233445566778899aabbccddeeff"),
    ],
)
def test_non_utf8_authorization_is_a_json_401(node: NodeProc, method: str, path: str) -> None:
    before = node.row_counts()
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\x80rly_\r\n"
        + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    status, headers, body = _raw(node.port, request)
    assert status == 401, body
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc == {"error": "unauthorized", "detail": "the token is not UTF-8 text"}
    assert node.row_counts() == before
    assert "Traceback" not in node.logs()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", _nested(1000)),
        ("/v1/messages", _nested(200_000)),
        ("/v1/messages", f'{{"to": ["bob@n.test"], "text": "x", "ctype": {_nested(900)}}}'),
        ("/v1/messages/batch", f'{{"messages": [{_nested(990)}]}}'),
        ("/v1/inbox/ack", f'{{"ids": [{_nested(950)}]}}'),
        ("/v1/inbox/ack", f'{{"ids": [{_nested(32)}]}}'),
    ],
)
def test_deeply_nested_json_is_a_400(node: NodeProc, path: str, body: str) -> None:
    before = node.row_counts()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n"
        f"Authorization: Bearer {node.tokens['alice']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    status, _, answer = _raw(node.port, head.encode() + body.encode())
    assert status == 400, answer[:300]
    assert json.loads(answer) == {
        "error": "malformed",
        "detail": "request body nests arrays and objects over 32 deep",
    }
    assert node.row_counts() == before
    assert "Traceback" not in node.logs()


def _submit(node: NodeProc, body: bytes, *, declared: int | None = None) -> tuple[int, bytes]:
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n"
        f"Authorization: Bearer {node.tokens['alice']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared or len(body)}\r\n\r\n"
    )
    status, _, answer = _raw(node.port, head.encode() + body)
    return status, answer


def _decoder_processes(node: NodeProc) -> list[int]:
    """The node's child processes that are multiprocessing workers (relay.node.decoders)."""
    assert node.proc is not None
    pid = node.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_client_json_is_capped_and_large_bodies_are_parsed_off_the_loop(tmp_path: Path) -> None:
    """Item 2: 4 MiB of client JSON at most; a hostile document near it is a 400,
    decoded in another process, and a large honest one is taken; the node serves on."""
    node = make_node(tmp_path, "n.test", "DE")
    node.add_mailbox("alice")
    node.start()
    small = json.dumps({"to": ["alice@n.test"], "text": "small"}).encode()
    assert _submit(node, small)[0] == 202
    assert _decoder_processes(node) == []  # a small body is decoded in the node itself
    before = node.row_counts()
    status, answer = _submit(node, b"", declared=4 * 2**20 + 1)  # refused on its headers
    assert status == 413, answer[:300]
    assert json.loads(answer)["error"] == "too_large"
    hostile = b'{"to": ["alice@n.test"], "text": [' + b"0," * (2**21 - 64) + b"0]}"
    status, answer = _submit(node, hostile)
    assert status == 400, answer[:300]
    assert json.loads(answer) == {
        "error": "malformed",
        "detail": "request body holds over 250000 JSON values",
    }
    assert _decoder_processes(node) != []
    assert node.row_counts() == before
    text = "large and honest " * 40_000  # 680 KB: decoded in another process
    status, answer = _submit(node, json.dumps({"to": ["alice@n.test"], "text": text}).encode())
    assert status == 202, answer[:300]
    (got,) = [m for m in node.inbox("alice", ack=True) if m["id"] == json.loads(answer)["id"]]
    assert got["text"] == text
    assert "Traceback" not in node.logs()
    assert node.stop() == 0


def test_one_token_holder_cannot_take_every_write_slot(tmp_path: Path) -> None:
    """Item 3: alice's slow bodies hold her share of the slots, no more; bob is served."""
    n = make_node(tmp_path, "n.test", "DE")
    n.add_mailbox("alice")
    n.add_mailbox("bob")
    with (n.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n[limits]\nmax_pending_writes = 4\n")
    n.start()
    held: list[socket.socket] = []
    try:
        head = (
            "POST /v1/messages HTTP/1.1\r\nHost: n.test\r\n"
            f"Authorization: Bearer {n.tokens['alice']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        for _ in range(2):  # a slot is taken at admission, before the body
            s = socket.create_connection(("127.0.0.1", n.port), timeout=TIMEOUT)
            s.sendall(head.encode())
            held.append(s)
        body = json.dumps({"to": ["bob@n.test"], "text": "x"}).encode()

        def third_refused() -> bytes | None:
            status, answer = _submit(n, body)
            return answer if status == 503 else None

        answer = wait_for(third_refused, what="alice's third submit refused")
        doc = json.loads(answer)
        assert doc["error"] == "busy"
        assert "mailbox alice has 2 write requests in progress" in doc["detail"]
        assert "principal_write_share = 50%" in doc["detail"]
        msg = n.send("bob", ["alice@n.test"], "bob still gets a slot")
        assert msg
        line = [ln for ln in n.logs().splitlines() if "submit_refused mailbox=alice" in ln][-1]
        assert "code=busy" in line
    finally:
        for s in held:
            s.close()
        assert n.stop() == 0


def test_client_gone_mid_body_is_one_quiet_line(node: NodeProc) -> None:
    before = node.row_counts()
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: n.test\r\n"
        f"Authorization: Bearer {node.tokens['alice']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    part = b'{"to": ["bob@n.test"], "text": "cut sh'
    with socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT) as s:
        s.sendall(head.encode() + part)
    wanted = f"the client went away before the end of the body ({len(part)} bytes)"
    lines = wait_for(
        lambda: [ln for ln in node.logs().splitlines() if wanted in ln], what="the log line"
    )
    assert len(lines) == 1
    assert " info submit_refused mailbox=alice code=bad_request " in lines[0]
    assert "Traceback" not in node.logs()
    assert node.row_counts() == before
    node.send("alice", ["alice@n.test"], "still serving")  # the node carries on


def test_run_on_a_taken_port_exits_at_once_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        relay("init", tmp_path / "n", "--name", "n.test", "--jurisdiction", "DE",
              "--listen", f"127.0.0.1:{port}")  # fmt: skip
        try:
            proc = relay("run", tmp_path / "n", check=False)
        except subprocess.TimeoutExpired:
            pytest.fail("relay run on a taken port did not exit")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"relay: cannot listen on 127.0.0.1:{port}"
        f" ([node] listen in {tmp_path / 'n' / 'node.toml'}): Address already in use"
    )
    assert "Traceback" not in proc.stderr


# --- a certified stranger and a plain stranger (item 1) --------------------------------------


def test_a_certified_stranger_is_introduced_by_its_header_a_stranger_costs_no_body(
    tmp_path: Path,
) -> None:
    reg = tmp_path / "reg"
    out = relay("authority", "init", reg, "--name", "reg.test", "--jurisdictions", "RU")
    (add_line,) = out.stdout.splitlines()
    a = make_node(tmp_path, "a.test", "RU")
    c = make_node(tmp_path, "c.test", "RU")
    words = add_line.split()
    relay(*words[1:3], a.dir, *words[4:])  # A trusts reg.test; it has never heard of C
    c.add_peer(a)
    a.add_mailbox("alice")
    c.add_mailbox("carol")
    c_key = relay("key", "show", c.dir).stdout.strip()
    line = relay(
        "authority", "issue", reg, "--node-name", "c.test", "--node-key", c_key,
        "--jurisdiction", "RU", "--url", c.url, "--days", "30",
    ).stdout.strip()  # fmt: skip
    (c.dir / "node.cert").write_text(line + "\n")
    toml = c.dir / "node.toml"
    toml.write_text(
        toml.read_text().replace(
            'key_file = "node.key"\n', 'key_file = "node.key"\ncertificates = ["node.cert"]\n'
        )
    )
    a.start()
    c.start()
    try:
        # A stranger declares 15 MiB: refused on its headers, before a body byte is sent.
        stranger = Ed25519PrivateKey.generate()
        headers = httpsig.sign_request(
            method="POST", path="/federation/v1/batch",
            content_digest=httpsig.content_digest(b"x"), origin="s.test",
            destination="a.test", key=stranger, key_id="k1", created=int(time.time()),
            nonce=os.urandom(32),
        )  # fmt: skip
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        status, _, answer = _raw(
            a.port,
            (
                "POST /federation/v1/batch HTTP/1.1\r\nHost: a.test\r\n"
                f"Content-Type: application/msgpack\r\nContent-Length: {15 * 2**20}\r\n"
                f"{head}\r\n"
            ).encode(),
        )
        assert status == 413, answer[:300]
        assert "Relay-Certificate" in json.loads(answer)["detail"]
        wanted = " warning batch_refused peer=s.test status=413 code=too_large "
        wait_for(lambda: wanted in a.logs(), what="the batch_refused line")

        msg = c.send("carol", ["alice@a.test"], "from a certified stranger")
        got = wait_for(lambda: a.inbox("alice"), what="alice's inbox at a")
        assert [(m["id"], m["origin"]) for m in got] == [(msg, "c.test")]
        assert "certificate_learned node=c.test jurisdiction=RU authority=reg.test" in a.logs()
        assert "Traceback" not in a.logs() + c.logs()
    finally:
        c.kill()
        a.kill()


def test_a_peers_body_of_nils_is_refused_at_its_first_array(tmp_path: Path) -> None:
    """Item 2: a pinned peer's signed 15 MiB batch of nils is a 400 naming the element
    cap, nothing is stored, and the node answers others."""
    n = make_node(tmp_path, "n.test", "DE")
    n.add_mailbox("alice")
    peer = Ed25519PrivateKey.generate()
    raw = peer.public_key().public_bytes_raw()
    key = "ed25519:" + b64(raw).rstrip("=")
    relay("peer", "add", n.dir, "--name", "p.test", "--url", "http://127.0.0.1:9",
          "--jurisdiction", "DE", "--key", key)  # fmt: skip
    n.start()
    try:
        before = n.row_counts()
        size = 15 * 2**20
        body = (
            b"\x82\xa5batch\xc4\x10" + os.urandom(16) + b"\xa5items\xdd"
            + size.to_bytes(4, "big") + b"\xc0" * size
        )  # fmt: skip
        headers = httpsig.sign_request(
            method="POST", path="/federation/v1/batch",
            content_digest=httpsig.content_digest(body), origin="p.test",
            destination="n.test", key=peer, key_id=b64(raw)[:8], created=int(time.time()),
            nonce=os.urandom(32),
        )  # fmt: skip
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        status, _, answer = _raw(
            n.port,
            (
                "POST /federation/v1/batch HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n"
                f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n"
                f"{head}\r\n"
            ).encode()
            + body,
        )
        assert status == 400, answer[:300]
        doc = json.loads(answer)
        assert doc["error"] == "malformed"
        assert "declares 15728640 elements; at most 10000" in doc["detail"]
        assert n.row_counts() == before
        wanted = " warning batch_refused peer=p.test status=400 code=malformed "
        wait_for(lambda: wanted in n.logs(), what="the batch_refused line")
        n.send("alice", ["alice@n.test"], "still serving")
    finally:
        assert n.stop() == 0
