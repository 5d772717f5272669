"""Issue 10's attacks against a real `relay run` node, with the figures for docs/security.md.

Not a test (pytest does not collect it): run it by hand, on a quiet machine,
from the checkout whose code it should measure:

    .venv/bin/python -m tests.e2e.hardening_figures

Each attack runs against a fresh node while a thread asks `/healthz` every
20 ms over a new connection. For each it prints the answer the attacker got,
how long that took, the longest `/healthz` wait during the attack (how long
the event loop was held) and how far the node's resident memory rose above
what it was before. To measure older code, copy this file into that checkout
and run it there: it uses only functions that have not changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol import httpsig
from relay.protocol.sfv import b64
from tests.e2e.harness import NodeProc, make_node, relay

MiB = 2**20


@dataclass
class Figure:
    attack: str
    answer: str
    seconds: float
    stall_ms: float
    rss_mib: float


class Watch:
    """Pings /healthz and samples the node's RSS until stopped."""

    def __init__(self, node: NodeProc) -> None:
        assert node.proc is not None
        self.node, self.pid = node, node.proc.pid
        self.base = self.rss()
        self.peak = self.base
        self.stall = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while not self.done.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.node.url + "/healthz", timeout=120) as r:
                    r.read()
            except OSError:
                pass
            self.stall = max(self.stall, time.monotonic() - t)
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __enter__(self) -> Watch:
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.done.set()
        self.thread.join()


def exchange(port: int, head: bytes, body: bytes) -> str:
    """Send a request; the status line and the error code of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        s.sendall(head)
        with contextlib.suppress(OSError):  # refused before the body: the node closed it
            s.sendall(body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    top, _, rest = data.partition(b"\r\n\r\n")
    status = top.split(b"\r\n")[0].decode("latin-1")[9:12]
    try:
        code = json.loads(rest).get("error", "")
    except ValueError:
        code = ""
    return f"{status} {code}".strip()


def batch_request(node: NodeProc, origin: str, key: Ed25519PrivateKey, body: bytes) -> bytes:
    headers = httpsig.sign_request(
        method="POST",
        path="/federation/v1/batch",
        content_digest=httpsig.content_digest(body),
        origin=origin,
        destination=node.name,
        key=key,
        key_id=b64(key.public_key().public_bytes_raw())[:8],
        created=int(time.time()),
        nonce=os.urandom(32),
    )
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /federation/v1/batch HTTP/1.1\r\nHost: {node.name}\r\nConnection: close\r\n"
        f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n{lines}\r\n"
    ).encode()


def nils_batch(size: int) -> bytes:
    """A batch map whose items array is `size` bytes of nils."""
    return (
        b"\x82\xa5batch\xc4\x10"
        + os.urandom(16)
        + b"\xa5items\xdd"
        + size.to_bytes(4, "big")
        + b"\xc0" * size
    )


def submit_request(node: NodeProc, body: bytes) -> bytes:
    return (
        f"POST /v1/messages HTTP/1.1\r\nHost: {node.name}\r\nConnection: close\r\n"
        f"Authorization: Bearer {node.tokens['alice']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()


def measure(
    node: NodeProc, attack: str, sends: list[Callable[[], str]], parallel: bool = True
) -> Figure:
    answers: list[str] = []
    with Watch(node) as w:
        t = time.monotonic()
        threads = [threading.Thread(target=lambda f=f: answers.append(f())) for f in sends]
        for th in threads:
            th.start()
            if not parallel:
                th.join()
        for th in threads:
            th.join()
        seconds = time.monotonic() - t
    return Figure(
        attack, ", ".join(sorted(set(answers))), seconds, w.stall * 1000, (w.peak - w.base) / MiB
    )


def fresh(base: Path, name: str, setup: Callable[[NodeProc], None] = lambda n: None) -> NodeProc:
    node = make_node(base, name, "DE")
    node.add_mailbox("alice")
    setup(node)
    node.start()
    return node


def main() -> None:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)

        def trust_authority(node: NodeProc) -> None:
            out = relay("authority", "init", base / "reg", "--name", "reg.test",
                        "--jurisdictions", "DE")  # fmt: skip
            words = out.stdout.split()
            relay(*words[1:3], node.dir, *words[4:])

        stranger = Ed25519PrivateKey.generate()
        node = fresh(base, "s.test", trust_authority)
        try:
            body = nils_batch(15 * MiB)
            figures.append(
                measure(
                    node,
                    "stranger: two 15 MiB batch bodies of nils, [[authorities]] configured",
                    [
                        lambda: exchange(
                            node.port, batch_request(node, "x.test", stranger, body), body
                        )
                    ]
                    * 2,
                )
            )
        finally:
            node.kill()

        peer = Ed25519PrivateKey.generate()

        def pin(node: NodeProc) -> None:
            key = "ed25519:" + b64(peer.public_key().public_bytes_raw()).rstrip("=")
            relay("peer", "add", node.dir, "--name", "p.test", "--url", "http://127.0.0.1:9",
                  "--jurisdiction", "DE", "--key", key)  # fmt: skip

        node = fresh(base, "q.test", pin)
        try:
            body = nils_batch(15 * MiB)
            figures.append(
                measure(
                    node,
                    "pinned peer: one signed 15 MiB batch body of nils",
                    [lambda: exchange(node.port, batch_request(node, "p.test", peer, body), body)],
                )
            )
        finally:
            node.kill()

        node = fresh(base, "t.test")
        try:
            big = b'{"to": ["alice@t.test"], "text": "' + b"x" * (31 * MiB) + b'"}'
            figures.append(
                measure(
                    node,
                    "token holder: one 31 MiB JSON submit",
                    [lambda: exchange(node.port, submit_request(node, big), big)],
                )
            )
            values = b'{"to": ["alice@t.test"], "text": [' + b"0," * (2 * MiB - 64) + b"0]}"
            figures.append(
                measure(
                    node,
                    "token holder: a 4 MiB JSON submit of two million values",
                    [lambda: exchange(node.port, submit_request(node, values), values)],
                )
            )
            figures.append(
                measure(
                    node,
                    "token holder: the same, three times more, one after another",
                    [lambda: exchange(node.port, submit_request(node, values), values)] * 3,
                    parallel=False,
                )
            )
        finally:
            node.kill()

    print(f"{'attack':<72} {'answer':<18} {'took s':>7} {'stall ms':>9} {'RSS +MiB':>9}")
    for f in figures:
        print(f"{f.attack:<72} {f.answer:<18} {f.seconds:7.2f} {f.stall_ms:9.0f} {f.rss_mib:9.0f}")


if __name__ == "__main__":
    main()
