"""The bench nodes: set up through the admin CLI, run as `relay run` subprocesses, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from relay.config.files import load_config
from relay.config.storage import PASSWORD_ENV
from relay.errors import RelayError, Unavailable
from relay.protocol.sealing import HYBRID
from relay.storage.postgres.inspect import PgDatabaseView, drop_schema
from relay.storage.sqlite.inspect import DatabaseView
from relay.storage.sqlite.sqlstats import STATS_ENV as SQL_STATS_ENV

JURISDICTION = "DE"
ORIGIN = "a.bench"
SENDER_MAILBOX = "bench"
INBOX = "inbox"
READY_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# --- one node ------------------------------------------------------------------


def free_port() -> int:
    """A loopback port the kernel just handed out (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_cli(*args: str | Path) -> str:
    """Run a `relay` admin command in this process; return its stdout."""
    from relay.cli import main as cli  # the command modules import this one (bench)

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    if code != 0:
        raise RelayError(f"relay {' '.join(map(str, args))} exited {code}: {err.getvalue()}")
    return out.getvalue()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM (a clean drain) if the bench dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BenchNode:
    dir: Path
    name: str
    role: str
    port: int = field(default_factory=free_port)
    peer_args: list[str] = field(default_factory=list)
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    storage_url: str | None = None  # PostgreSQL: this node's own schema; None: SQLite
    workers: int = 1
    db: DatabaseView | PgDatabaseView | None = None
    max_rss_kb: int = 0
    cpu_at_start: float = 0.0
    server_cpu_at_start: dict[int, float] = field(default_factory=dict)
    seen: list[tuple[float, int]] = field(default_factory=list)  # (wall ms, max inbox seq)
    sql_stats: Path | None = None  # RELAY_SQL_STATS for the node: its writer's statement CPU

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    def init(self) -> None:
        out = run_cli(
            "init", self.dir, "--name", self.name, "--jurisdiction", JURISDICTION,
            "--listen", f"127.0.0.1:{self.port}",
        )  # fmt: skip
        line = [ln for ln in out.splitlines() if ln.startswith("relay peer add")][-1]
        self.peer_args = shlex.split(line)[4:]  # after `relay peer add PLACEHOLDER`

    def use_seal_suite(self, suite: str) -> None:
        """Give the new node a seal key of `suite` (as its admin would, with `relay seal
        rotate`), and put that key in the peer line the others paste."""
        line = run_cli("seal", "rotate", self.dir, "--suite", suite).strip().splitlines()[-1]
        words = shlex.split(line)
        key = words[words.index("--seal-key") + 1]
        i = self.peer_args.index("--seal-key")
        self.peer_args[i + 1] = key

    def trust(self, other: BenchNode) -> None:
        run_cli("peer", "add", self.dir, *other.peer_args)

    def set_table(self, table: str, values: Mapping[str, str | int], why: str) -> None:
        """Set documented knobs of a `table` that `relay init` does not write, and check
        the file."""
        path = self.dir / "node.toml"
        lines = "".join(
            f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in values.items()
        )
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"\n# relay bench: {why}\n[{table}]\n{lines}")
        load_config(self.dir)

    def add_mailbox(self, name: str) -> str:
        return run_cli("mailbox", "add", self.dir, name).strip().splitlines()[-1].strip()

    def use_storage(self) -> None:
        """Move the new node to its PostgreSQL schema, as an admin would."""
        if self.storage_url is not None:
            run_cli("storage", "copy", self.dir, self.storage_url, "--switch")

    def start(self) -> None:
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "run", str(self.dir), *workers],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self._stats_env()},
                preexec_fn=_die_with_parent,  # only a prctl before exec
            )

    def _stats_env(self) -> dict[str, str]:
        return {} if self.sql_stats is None else {SQL_STATS_ENV: str(self.sql_stats)}

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise Unavailable(f"node {self.name} exited during start:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{self.url}/readyz", allow_redirects=False) as r:
                    if r.status == 200:
                        self.open_db()
                        return
            await asyncio.sleep(0.05)
        raise Unavailable(
            f"node {self.name} not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def open_db(self) -> None:
        if self.storage_url is not None:
            self.db = PgDatabaseView(self.storage_url, os.environ.get(PASSWORD_ENV))
        else:
            self.db = DatabaseView(load_config(self.dir).node.database)

    def committed(self) -> int:
        """Inbox rows committed at this node (inbox.seq only grows during a bench).

        Each reading is kept with the wall-clock time it was taken: a row with
        seq <= the reading was committed no later than that time.
        """
        if self.db is None:
            return 0
        count = self.db.max_inbox_seq()
        if not self.seen or self.seen[-1][1] != count:
            self.seen.append((time.time() * 1000, count))
        return count

    def stop(self, timeout: float = 60) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def status_kb(self, field_name: str) -> int:
        if self.proc is None:
            return 0
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else 0

    def sample_rss(self) -> None:
        self.max_rss_kb = max(self.max_rss_kb, self.status_kb("VmRSS"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the node so far: the process and its live children
        (the workers of `relay run --workers N`), all threads."""
        if self.proc is None:
            return 0.0
        return sum(process_cpu(pid) or 0.0 for pid in process_tree(self.proc.pid))

    def mark_server_cpu(self) -> None:
        """Note the CPU the database server processes serving this node have used."""
        if isinstance(self.db, PgDatabaseView):
            pids = self.db.server_pids()
            self.server_cpu_at_start = {p: process_cpu(p) or 0.0 for p in pids}

    def server_cpu_seconds(self) -> float | None:
        """CPU of this node's PostgreSQL backends since `mark_server_cpu`; None for SQLite
        or a server on another machine (its processes are not in this /proc)."""
        if not isinstance(self.db, PgDatabaseView):
            return None
        used = 0.0
        for pid in self.db.server_pids():
            cpu = process_cpu(pid)
            if cpu is None:
                return None
            used += cpu - self.server_cpu_at_start.get(pid, 0.0)
        return used

    def event_loop(self) -> str:
        if self.proc is None:
            return ""
        try:
            maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        except OSError:
            return ""
        return "uvloop" if "uvloop" in maps else "asyncio"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all threads); None if it is not here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (from /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def schema_url(url: str, schema: str) -> str:
    """`url` naming `schema` (any schema it named replaced)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# --- the cluster ------------------------------------------------------------------


class Cluster:
    """Origin A and P destinations, configured to trust each other both ways."""

    def __init__(
        self,
        base: Path,
        peers: int,
        storage: str | None = None,
        workers: int = 1,
        sql_stats: bool = False,
        seal_suite: str = HYBRID,
    ) -> None:
        self.seal_suite = seal_suite
        self.a = BenchNode(base / "a", ORIGIN, "origin")
        self.bs = [BenchNode(base / f"b{i}", f"b{i}.bench", "destination") for i in range(peers)]
        self.profilers: list[tuple[BenchNode, subprocess.Popen[bytes], Path]] = []
        run = secrets.token_hex(4)
        for node in self.nodes:
            node.workers = workers
            if sql_stats:
                node.sql_stats = node.dir / "sql-stats.json"
            if storage is not None:
                node.storage_url = schema_url(storage, f"bench_{run}_{node.dir.name}")

    @property
    def nodes(self) -> list[BenchNode]:
        return [self.a, *self.bs]

    def setup(self) -> None:
        self.a.init()
        for b in self.bs:
            b.init()
            if self.seal_suite != HYBRID:
                b.use_seal_suite(self.seal_suite)
            self.a.trust(b)
            b.trust(self.a)
            b.token = b.add_mailbox(INBOX)
        self.a.token = self.a.add_mailbox(SENDER_MAILBOX)
        for node in self.nodes:
            node.use_storage()

    def close(self) -> None:
        """Stop profilers, then nodes; safe to call twice and from any failure."""
        for _, prof, _ in self.profilers:
            if prof.poll() is None:
                prof.send_signal(signal.SIGINT)
        for _, prof, _ in self.profilers:
            try:
                prof.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prof.kill()
                prof.wait()
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            if node.storage_url is not None:
                drop_schema(node.storage_url, os.environ.get(PASSWORD_ENV))
                node.storage_url = None

    def committed(self) -> int:
        return sum(b.committed() for b in self.bs)

    def sample(self) -> None:
        for node in self.nodes:
            node.sample_rss()


async def start_nodes(nodes: Sequence[BenchNode], session: aiohttp.ClientSession) -> None:
    for node in nodes:
        node.start()
    for node in nodes:
        await node.wait_ready(session)
