"""Whole nodes as subprocesses, set up and driven only through the `relay` CLI."""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.cli.client import status_exit_code
from tests import pgserver
from tests.pgserver import COORDINATION_TABLES

TIMEOUT = 60


def free_port() -> int:
    """An ephemeral port the kernel just handed out (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relay(
    *args: str | Path, check: bool = True, input: str | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `relay ARGS...` as a new user would; return the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "relay", *map(str, args)],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"relay {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@dataclass
class NodeProc:
    dir: Path
    name: str
    jurisdiction: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    peer_line: str = ""
    storage: str | None = None  # a PostgreSQL [storage] url; None: the SQLite file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    @property
    def db_path(self) -> Path:
        return self.dir / "relay.db"

    def init(self) -> None:
        out = relay(
            "init",
            self.dir,
            "--name",
            self.name,
            "--jurisdiction",
            self.jurisdiction,
            "--listen",
            f"127.0.0.1:{self.port}",
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("relay peer add")]
        assert lines, f"init printed no peer line: {out.stdout!r}"
        self.peer_line = lines[-1].strip()
        if self.storage is not None:
            # [storage] url replaces the [node] database line `relay init` wrote
            toml = self.dir / "node.toml"
            text = re.sub(r"(?m)^database = .*\n", "", toml.read_text(), count=1)
            toml.write_text(text + f'\n[storage]\nurl = "{self.storage}"\n')

    def add_mailbox(self, name: str) -> str:
        out = relay("mailbox", "add", self.dir, name)
        token = out.stdout.strip().splitlines()[-1].strip()
        self.tokens[name] = token
        return token

    def add_peer(self, other: NodeProc, *, with_url: bool = True) -> None:
        """Paste the other admin's printed `relay peer add` line, with our dir."""
        words = other.peer_line.split()
        assert words[:3] == ["relay", "peer", "add"], other.peer_line
        args = [w for w in words[4:]]  # drop the placeholder dir
        if not with_url:
            i = args.index("--url")
            del args[i : i + 2]
        relay("peer", "add", self.dir, *args)

    def start(self, *args: str, timeout: float = TIMEOUT) -> None:
        """`relay run DIR ARGS...` (e.g. `--workers 2`), then wait_ready."""
        since = self.log_size()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", str(self.dir), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.wait_ready(since, timeout)

    def log_size(self) -> int:
        """Bytes in the node's log so far (0 before the first start)."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_ready(self, since: int, timeout: float = TIMEOUT) -> None:
        """Until /readyz answers 200 and the log past byte `since` holds `node_started`.

        /readyz answers before the node has finished starting; `node_started`
        is logged last, so from then on a signal (SIGHUP, SIGTERM) finds the
        node's handlers and its admin socket serving.
        """
        deadline = time.monotonic() + timeout
        ready = False
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.logs()}")
            if not ready:
                try:
                    with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                        ready = r.status == 200
                except (urllib.error.URLError, OSError):
                    pass
            if ready and self._logged_since(since, b"node_started"):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not started after {timeout}s:\n{self.logs()}")

    def _logged_since(self, since: int, word: bytes) -> bool:
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return word in f.read()
        except FileNotFoundError:
            return False

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    # --- client commands -----------------------------------------------------

    def send(self, mailbox: str, to: list[str], text: str, *extra: str) -> str:
        out = relay(
            "send",
            "--node",
            self.url,
            "--token",
            self.tokens[mailbox],
            "--to",
            *to,
            "--text",
            text,
            *extra,
        )
        return out.stdout.strip()

    def submit(self, mailbox: str, to: list[str], text: str) -> str:
        """Submit through the client API as an application would, without a `relay send`
        process (half a second of CPU each): for tests that queue mail to test
        something else. Returns the message id."""
        req = urllib.request.Request(
            f"{self.url}/v1/messages",
            data=json.dumps({"to": to, "text": text}).encode(),
            headers={
                "Authorization": f"Bearer {self.tokens[mailbox]}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            assert resp.status == 202, resp.status
            return str(json.loads(resp.read())["id"])

    def inbox(self, mailbox: str, *, wait: int = 0, ack: bool = False) -> list[dict[str, Any]]:
        args = [
            "inbox",
            "--node",
            self.url,
            "--token",
            self.tokens[mailbox],
            "--json",
            "--wait",
            str(wait),
            "--limit",
            "1000",
        ]
        if ack:
            args.append("--ack")
        out = relay(*args)
        return [json.loads(ln) for ln in out.stdout.splitlines() if ln.strip()]

    def status(self, mailbox: str, msg_id: str) -> dict[str, Any]:
        out = relay(
            "status", "--node", self.url, "--token", self.tokens[mailbox], msg_id, "--json",
            check=False,
        )  # fmt: skip
        doc: dict[str, Any] = json.loads(out.stdout)
        # the exit code says what the document says: 0 delivered, 3 failed, 4 pending
        statuses = [r["status"] for r in doc["recipients"].values()]
        assert out.returncode == status_exit_code(statuses), (out.returncode, doc, out.stderr)
        return doc

    def row_counts(self) -> dict[str, int]:
        """Rows of every table but the coordination state the node changes by itself
        (its lease renewals), read through a separate read-only connection."""
        if self.storage is not None:
            return pgserver.row_counts(self.storage)
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            names = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master"
                    " WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            return {
                n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]
                for n in names
                if n not in COORDINATION_TABLES
            }
        finally:
            db.close()


def with_user(url: str) -> str:
    """A PostgreSQL `url` that names its user, as node.toml requires (libpq's own
    default, the login name, when it names none)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{getpass.getuser()}@{parts.netloc}"))


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


def make_node(base: Path, name: str, jurisdiction: str, storage: str | None = None) -> NodeProc:
    """A new node directory made by `relay init`; on PostgreSQL if `storage` is a url."""
    node = NodeProc(base / name, name, jurisdiction, free_port(), storage=storage)
    node.init()
    return node


def make_pair(
    base: Path, storage_a: str | None = None, storage_b: str | None = None
) -> tuple[NodeProc, NodeProc]:
    """a.test and b.test (both RU, not started), each pinning the other from the line
    the other's `relay init` printed; mailbox alice at a.test, bob at b.test. On
    PostgreSQL where `storage_a` or `storage_b` is a url."""
    a = make_node(base, "a.test", "RU", storage_a)
    b = make_node(base, "b.test", "RU", storage_b)
    a.add_peer(b)
    b.add_peer(a)
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    return a, b
