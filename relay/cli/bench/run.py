"""`relay bench`: real nodes on loopback, timed from submit to commit at the destination.

Invariants:
- Every node is a `relay run` subprocess in its own directory, set up through the
  same CLI functions an admin runs (init, peer add both ways, mailbox add), all
  in one jurisdiction so the default residency allows the traffic. Only
  127.0.0.1, ports handed out by the kernel.
- Nothing here changes how a node runs: the durability is the production one
  (WAL, synchronous=FULL, 202 only after COMMIT).
- "Committed at the destination" is read from the destination's database over
  a read-only connection; latency is `inbox.delivered` (destination clock)
  minus the envelope's `created` (origin clock; same machine), both stored at
  the destination.
- Every process the bench starts (nodes, profilers) is stopped in a `finally`,
  on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import inspect
import io
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.files import load_config
from relay.errors import RelayError, Unavailable
from relay.protocol.envelope import ENVELOPE_DOMAIN, make_header, seal, verify_envelope
from relay.storage.sqlite import store as store_module

JURISDICTION = "DE"
ORIGIN = "a.bench"
SENDER_MAILBOX = "bench"
INBOX = "inbox"
READY_TIMEOUT_S = 30.0
STALL_TIMEOUT_S = 120.0
POLL_EVERY_S = 0.02  # destination commits; bounds the observed latency
RSS_EVERY_S = 0.25
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Options:
    """What to run; mirrors the `relay bench` flags."""

    n: int = 20_000
    size: int = 1024
    clients: int = 20
    client_batch: int = 100
    rate: float | None = None  # open-loop offered load, messages/s
    peers: int = 1
    backlog: int | None = None  # queue this many with the destinations down, then drain
    profile_dir: Path | None = None  # py-spy A and the first destination into this directory
    retry_max: str | None = None  # backlog: cap A's backoff so the drain starts promptly
    workdir: Path | None = None  # keep the node directories here
    progress: bool = True


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
    db: sqlite3.Connection | None = None
    max_rss_kb: int = 0
    cpu_at_start: float = 0.0
    seen: list[tuple[float, int]] = field(default_factory=list)  # (wall ms, max inbox seq)

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

    def trust(self, other: BenchNode) -> None:
        run_cli("peer", "add", self.dir, *other.peer_args)

    def set_retry_max(self, duration: str) -> None:
        """Cap the sender's backoff (a documented [federation] knob) and check the file."""
        path = self.dir / "node.toml"
        with open(path, "a", encoding="utf-8") as f:
            f.write(f'\n# relay bench --backlog: start the drain promptly\n'
                    f'[federation]\nretry_max = "{duration}"\n')  # fmt: skip
        load_config(self.dir)

    def add_mailbox(self, name: str) -> str:
        return run_cli("mailbox", "add", self.dir, name).strip().splitlines()[-1].strip()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "run", str(self.dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_die_with_parent,  # only a prctl before exec
            )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise Unavailable(f"node {self.name} exited during start:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{self.url}/readyz") as r:
                    if r.status == 200:
                        self.open_db()
                        return
            await asyncio.sleep(0.05)
        raise Unavailable(
            f"node {self.name} not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def open_db(self) -> None:
        path = load_config(self.dir).node.database
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def committed(self) -> int:
        """Inbox rows committed at this node (inbox.seq only grows during a bench).

        Each reading is kept with the wall-clock time it was taken: a row with
        seq <= the reading was committed no later than that time.
        """
        if self.db is None:
            return 0
        row = self.db.execute("SELECT max(seq) FROM inbox").fetchone()
        count = int(row[0]) if row and row[0] is not None else 0
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
        """User + system CPU of the node process (all threads) so far."""
        if self.proc is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


# --- the cluster ------------------------------------------------------------------


class Cluster:
    """Origin A and P destinations, configured to trust each other both ways."""

    def __init__(self, base: Path, peers: int) -> None:
        self.a = BenchNode(base / "a", ORIGIN, "origin")
        self.bs = [BenchNode(base / f"b{i}", f"b{i}.bench", "destination") for i in range(peers)]
        self.profilers: list[tuple[BenchNode, subprocess.Popen[bytes], Path]] = []

    @property
    def nodes(self) -> list[BenchNode]:
        return [self.a, *self.bs]

    def setup(self) -> None:
        self.a.init()
        for b in self.bs:
            b.init()
            self.a.trust(b)
            b.trust(self.a)
            b.token = b.add_mailbox(INBOX)
        self.a.token = self.a.add_mailbox(SENDER_MAILBOX)

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

    def committed(self) -> int:
        return sum(b.committed() for b in self.bs)

    def sample(self) -> None:
        for node in self.nodes:
            node.sample_rss()


# --- load ------------------------------------------------------------------------


def message(i: int, size: int, dests: Sequence[str]) -> dict[str, Any]:
    """Message i: a unique text of exactly `size` ASCII bytes (payloads never dedupe)."""
    head = f"{i:012d}:"
    text = (head + "x" * max(size - len(head), 0))[:size]
    return {"to": [f"{INBOX}@{dests[i % len(dests)]}"], "text": text}


class Load:
    """Submits messages to A's client API and keeps what the answers say."""

    def __init__(self, opts: Options, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.opts = opts
        self.url = cluster.a.url
        self.token = cluster.a.token
        self.dests = [b.name for b in cluster.bs]
        self.session = session
        self.acked = 0
        self.scheduled_ms: dict[bytes, float] = {}  # open loop: id -> intended send time

    async def post(self, first: int, count: int, when_ms: float | None = None) -> None:
        msgs = [message(i, self.opts.size, self.dests) for i in range(first, first + count)]
        if self.opts.client_batch == 1:
            path, body = "/v1/messages", json.dumps(msgs[0])
        else:
            path, body = "/v1/messages/batch", json.dumps({"messages": msgs})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with self.session.post(self.url + path, data=body, headers=headers) as r:
            text = await r.text()
            if r.status != 202:
                raise RelayError(f"A answered {path} with HTTP {r.status}: {text[:300]}")
        doc = json.loads(text)
        ids = doc["ids"] if "ids" in doc else [doc["id"]]
        if when_ms is not None:
            for ident in ids:
                self.scheduled_ms[bytes.fromhex(ident)] = when_ms
        self.acked += count

    async def closed_loop(self, n: int) -> None:
        """`clients` workers, each sending its next request as soon as the last was acked."""
        k = self.opts.client_batch
        next_first = 0

        async def worker() -> None:
            nonlocal next_first
            while next_first < n:
                first, count = next_first, min(k, n - next_first)
                next_first += count
                await self.post(first, count)

        async with asyncio.TaskGroup() as tg:
            for _ in range(self.opts.clients):
                tg.create_task(worker())

    async def open_loop(self, n: int, rate: float) -> None:
        """One request every k/rate seconds whether or not earlier ones were answered."""
        k = self.opts.client_batch
        loop = asyncio.get_running_loop()
        start, wall0 = loop.time(), time.time() * 1000
        async with asyncio.TaskGroup() as tg:
            for j, first in enumerate(range(0, n, k)):
                offset = j * k / rate
                delay = start + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(self.post(first, min(k, n - first), wall0 + offset * 1000))


# --- measurements ------------------------------------------------------------------


def ed25519_rates(seconds: float = 1.5) -> dict[str, float]:
    """Single-core rates per CPU second (so other load on the machine does not skew them).

    verify: `verify_envelope`, the check a destination skips for origin-signed
    batches; sign: Ed25519 over the same header bytes; seal: `seal`, what the
    origin does per envelope (encode, re-decode, sign, check the payload).
    """
    key = Ed25519PrivateKey.generate()
    header = make_header(
        id=os.urandom(16), kind="message", origin=ORIGIN, key_id="k", sender=f"x@{ORIGIN}",
        to=[f"{INBOX}@b0.bench"], dest="b0.bench", created=1, expires=2, residency=[JURISDICTION],
        ctype="text/plain; charset=utf-8", payload=b"x" * 1024,
    )  # fmt: skip
    env = seal(header, b"x" * 1024, key)
    pub = key.public_key()
    signed = ENVELOPE_DOMAIN + env.header_bytes
    ops: dict[str, Callable[[], object]] = {
        "verify": lambda: verify_envelope(env, pub),
        "sign": lambda: key.sign(signed),
        "seal": lambda: seal(header, env.payload, key),
    }
    rates: dict[str, float] = {}
    for name, op in ops.items():
        count, t0 = 0, time.thread_time()
        while (elapsed := time.thread_time() - t0) < seconds / len(ops):
            for _ in range(50):
                op()
            count += 50
        rates[name] = count / elapsed
    return rates


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean by nearest rank; zeros when there is nothing."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    s = sorted(values)

    def rank(p: float) -> float:
        return float(s[min(len(s) - 1, max(0, int(-(-p * len(s) // 100)) - 1))])

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": float(s[-1]),
        "mean": round(sum(s) / len(s), 2),
    }


def destination_rows(b: BenchNode, with_ids: bool) -> list[tuple[bytes, int, int, float]]:
    """(id, inbox.delivered, envelope.created, first seen committed) of b's inbox rows.

    "First seen" is the wall-clock time of the first poll of b's database whose
    max(seq) covered the row: an upper bound on its commit time (within one poll).
    """
    assert b.db is not None
    cols = "e.id" if with_ids else "x''"
    seqs = [c for _, c in b.seen]
    out: list[tuple[bytes, int, int, float]] = []
    for r in b.db.execute(
        f"SELECT {cols}, i.delivered, e.created, i.seq FROM inbox i JOIN envelopes e"
        " ON e.rid = i.rid"
    ):
        k = bisect.bisect_left(seqs, int(r[3]))
        seen = b.seen[k][0] if k < len(seqs) else time.time() * 1000
        out.append((bytes(r[0]), int(r[1]), int(r[2]), seen))
    return out


def verification_basis(cluster: Cluster) -> tuple[bool, str]:
    """Whether the destinations skipped per-envelope verification, from their databases."""
    total = relayed = 0
    for b in cluster.bs:
        assert b.db is not None
        row = b.db.execute(
            "SELECT count(*), sum(from_peer IS NULL OR from_peer != origin) FROM envelopes"
            " WHERE kind = 'message'"
        ).fetchone()
        total += int(row[0] or 0)
        relayed += int(row[1] or 0)
    keys = len(load_config(cluster.a.dir).peers[0].keys) if cluster.bs else 0
    skipped = relayed == 0 and total > 0
    basis = (
        f"destination databases: {total - relayed} of {total} message envelopes arrived "
        f"directly from their origin {ORIGIN} (from_peer == origin), which signs every batch "
        f"with its only key ({keys} pinned), so relay.federation.inbound.judge skipped "
        "verify_envelope for them (DESIGN §5); envelopes relayed from elsewhere would be verified"
    )
    return skipped, basis


def journal_mode(node: BenchNode) -> str:
    if node.db is None:
        node.open_db()
    assert node.db is not None
    return str(node.db.execute("PRAGMA journal_mode").fetchone()[0])


def synchronous_setting(node: BenchNode) -> tuple[str, str]:
    """(value, where it was read). synchronous is per connection: not readable from outside."""
    m = re.search(r"\bsynchronous=(\w+)", node.log_tail(200_000))
    if m:
        return m.group(1).upper(), "node log"
    m = re.search(r"PRAGMA synchronous\s*=\s*(\w+)", inspect.getsource(store_module.open_store))
    if m:
        return m.group(
            1
        ).upper(), "relay.storage.sqlite.store.open_store sets it on both connections"
    return "unknown", "neither the node log nor relay.storage.sqlite.store.open_store names it"


# --- profiling ----------------------------------------------------------------------


def start_profilers(cluster: Cluster, directory: Path) -> None:
    """Attach py-spy (100 Hz, Python frames with line numbers) to A and the first B."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RelayError("--profile needs py-spy (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    for node in cluster.nodes[:2]:
        assert node.proc is not None
        out = directory / f"{node.name}.collapsed.txt"
        prof = subprocess.Popen(
            [exe, "record", "--pid", str(node.proc.pid), "--format", "raw", "--rate", "100",
             "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cluster.profilers.append((node, prof, out))


def _worker_lines() -> dict[int, str]:
    """Line numbers of aiosqlite's worker thread loop, named by what the thread does there."""
    try:
        import aiosqlite.core as core

        lines, first = inspect.getsourcelines(core._connection_worker_thread)
    except (ImportError, AttributeError, OSError, TypeError):
        return {}
    names: dict[int, str] = {}
    for i, text in enumerate(lines, start=first):
        if "tx.get()" in text:
            names[i] = "idle: aiosqlite thread waiting for the next statement"
        elif "result = function()" in text:
            names[i] = "aiosqlite thread: one sqlite call (SQL, WAL I/O, fsync)"
        elif "call_soon_threadsafe" in text:
            names[i] = "aiosqlite thread: waking the event loop (call_soon_threadsafe)"
    return names


IDLE_LEAVES = ("select (selectors.py)", "EpollSelector.select (selectors.py)")


def _frame_name(frame: str, worker: dict[int, str]) -> str:
    """`fn (path/to/module.py:12)` -> `fn (module.py)`; aiosqlite's worker by line."""
    m = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not m:
        return frame
    func, path, line = m.group(1), m.group(2), m.group(3)
    if func == "_connection_worker_thread" and line and int(line) in worker:
        return worker[int(line)]
    for marker in ("site-packages/", "/relay/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            path = path.rpartition(marker)[2]
            if marker == "/relay/":
                path = "relay/" + path
            break
    return f"{func} ({path})"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of busy samples per function from py-spy's raw stacks.

    Samples whose innermost frame is waiting (epoll, aiosqlite's queue) are idle:
    counted separately, not in the shares.
    """
    worker = _worker_lines()
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        names = [_frame_name(f, worker) for f in frames]
        if names[-1].startswith("idle") or names[-1] in IDLE_LEAVES:
            idle += count
            continue
        busy += count
        threads["aiosqlite thread" if "aiosqlite thread" in names[-1] else "event loop"] += count
        self_n[names[-1]] += count
        for name in set(names):
            if name.startswith("aiosqlite thread") or (
                name.endswith(".py)") and "relay/" in name and "__main__" not in name
                and not name.startswith(("main (", "cmd_run (", "run_node ("))
            ):  # fmt: skip
                incl_n[name] += count

    def table(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "pct": round(100 * v / max(busy, 1), 1)}
            for k, v in c.most_common(top)
        ]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "threads": {k: round(100 * v / max(busy, 1), 1) for k, v in threads.most_common()},
        "self": table(self_n),
        "inclusive_relay": table(incl_n),
    }


# --- the run ---------------------------------------------------------------------------


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def say(self, text: str, *, final: bool = True) -> None:
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if final else ""
            print(f"\r\x1b[Kbench: {text}", end=end, file=sys.stderr, flush=True)
        elif final or int(time.monotonic()) % 5 == 0:
            print(f"bench: {text}", file=sys.stderr, flush=True)


async def watch(
    cluster: Cluster,
    target: int,
    progress: Progress,
    load: Load | None,
    phase: str,
    samples: list[tuple[float, int]] | None = None,
    submitting: asyncio.Task[Any] | None = None,
) -> float:
    """Sample RSS and the destinations' commits until `target` are committed; return when."""
    last_change, last_count, last_print, last_rss = time.monotonic(), -1, 0.0, 0.0
    window: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        count = cluster.committed()
        if now - last_rss >= RSS_EVERY_S:
            cluster.sample()
            last_rss = now
        if samples is not None:
            samples.append((now, count))
        if count != last_count:
            last_change, last_count = now, count
        for node in cluster.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise Unavailable(f"{node.name} exited {node.proc.returncode}:\n{node.log_tail()}")
        if count >= target:
            return now
        if submitting is not None and submitting.done() and not submitting.cancelled():
            exc = submitting.exception()
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            if exc is not None:
                raise exc
        if now - last_change > STALL_TIMEOUT_S:
            raise Unavailable(
                f"no commit at the destinations for {STALL_TIMEOUT_S:.0f}s ({count}/{target});"
                f" origin log:\n{cluster.a.log_tail()}"
            )
        window = [w for w in window if now - w[0] <= 1.0] + [(now, count)]
        if now - last_print >= 1.0:
            last_print = now
            rate = (window[-1][1] - window[0][1]) / max(window[-1][0] - window[0][0], 1e-9)
            acked = f"acked by A {load.acked:,}  " if load is not None else ""
            progress.say(
                f"{phase}: {acked}committed at destination {count:,}/{target:,}"
                f"  ({rate:,.0f} msg/s)",
                final=False,
            )
        await asyncio.sleep(POLL_EVERY_S)


def drain_rates(samples: list[tuple[float, int]], total: int) -> dict[str, float]:
    """msgs/s over the first and last 10% of a drain, interpolated between samples."""

    def when(count: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if c1 >= count:
                return t0 if c1 == c0 else t0 + (t1 - t0) * (count - c0) / (c1 - c0)
        return samples[-1][0]

    tenth = total / 10
    first = tenth / max(when(tenth) - when(1), 1e-9)
    last = tenth / max(when(total) - when(total - tenth), 1e-9)
    return {
        "first_10pct_msgs_per_s": round(first, 1),
        "last_10pct_msgs_per_s": round(last, 1),
        "last_over_first": round(last / first, 3) if first else 0.0,
    }


async def start_nodes(nodes: Sequence[BenchNode], session: aiohttp.ClientSession) -> None:
    for node in nodes:
        node.start()
    for node in nodes:
        await node.wait_ready(session)


async def run(opts: Options, cluster: Cluster, progress: Progress) -> dict[str, Any]:
    """Run one benchmark on a set-up (not started) cluster; the caller closes it."""
    load_before = loadavg()
    ed = ed25519_rates()
    progress.say(
        f"ed25519 on one core: {ed['verify']:,.0f} verify/s, {ed['sign']:,.0f} sign/s"
        f" ({ed['seal']:,.0f} envelopes sealed/s)"
    )
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=opts.clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        backlog = opts.backlog is not None
        n = opts.backlog if opts.backlog is not None else opts.n
        await start_nodes([cluster.a] if backlog else cluster.nodes, session)
        if opts.profile_dir is not None and not backlog:
            start_profilers(cluster, opts.profile_dir)
        load = Load(opts, cluster, session)
        for node in cluster.nodes:
            node.cpu_at_start = node.cpu_seconds()
        own_cpu = resource.getrusage(resource.RUSAGE_SELF)
        extra: dict[str, Any] = {}
        t0 = time.monotonic()
        submitting = asyncio.create_task(
            load.open_loop(n, opts.rate) if opts.rate is not None else load.closed_loop(n)
        )
        submitted_at: list[float] = []
        submitting.add_done_callback(lambda _: submitted_at.append(time.monotonic()))
        if backlog:
            while not submitting.done():
                cluster.sample()
                progress.say(f"queueing at A with the destinations down: {load.acked:,}/{n:,}",
                             final=False)  # fmt: skip
                await asyncio.wait({submitting}, timeout=1.0)
            await submitting
            submit_s = submitted_at[0] - t0
            progress.say(f"queued {n:,} at A in {submit_s:.1f}s; starting the destinations")
            started = time.monotonic()
            await start_nodes(cluster.bs, session)
            if opts.profile_dir is not None:
                start_profilers(cluster, opts.profile_dir)
            samples: list[tuple[float, int]] = []
            end = await watch(cluster, n, progress, None, "draining", samples)
            first = next((t for t, c in samples if c > 0), started)
            t0 = first
            extra["backlog"] = {
                "queued": n,
                "queue_seconds": round(submit_s, 3),
                "queue_msgs_per_s": round(n / submit_s, 1),
                "wait_before_first_delivery_s": round(first - started, 3),
                "origin_retry_max": opts.retry_max or "default (1h)",
                **drain_rates(samples, n),
            }
        else:
            try:
                end = await watch(cluster, n, progress, load, "running", None, submitting)
            finally:
                if not submitting.done():
                    submitting.cancel()
            await submitting
            submit_s = submitted_at[0] - t0
        seconds = end - t0
        for node in cluster.nodes:
            node.sample_rss()
        own = resource.getrusage(resource.RUSAGE_SELF)
        progress.say(f"{n:,} committed at the destination in {seconds:.2f}s")

    rows = [r for b in cluster.bs for r in destination_rows(b, opts.rate is not None)]
    latency = percentiles([float(d - c) for _, d, c, _ in rows])
    observed = percentiles([seen - c for _, _, c, seen in rows])
    if opts.rate is not None:
        sched = [d - load.scheduled_ms[i] for i, d, _, _ in rows if i in load.scheduled_ms]
        extra["latency_from_schedule_ms"] = {k: round(v, 1) for k, v in percentiles(sched).items()}
    committed_rows = sum(
        int(b.db.execute("SELECT count(*) FROM inbox").fetchone()[0]) for b in cluster.bs if b.db
    )
    skipped, basis = verification_basis(cluster)
    nodes: list[dict[str, Any]] = []
    for node in cluster.nodes:
        sync, sync_src = synchronous_setting(node)
        nodes.append(
            {
                "name": node.name,
                "role": node.role,
                "pid": node.proc.pid if node.proc else None,
                "peak_rss_mb": round(node.status_kb("VmHWM") / 1024, 1),
                "max_sampled_rss_mb": round(node.max_rss_kb / 1024, 1),
                "cpu_s": round(node.cpu_seconds() - node.cpu_at_start, 2),
                "journal_mode": journal_mode(node),
                "synchronous": sync,
                "synchronous_source": sync_src,
                "event_loop": node.event_loop(),
            }
        )
    modes = {str(x["journal_mode"]) for x in nodes}
    syncs = {str(x["synchronous"]) for x in nodes}
    result: dict[str, Any] = {
        "mode": "backlog" if backlog else "open-loop" if opts.rate is not None else "closed-loop",
        "n": n,
        "committed": committed_rows,
        "size": opts.size,
        "clients": opts.clients,
        "client_batch": opts.client_batch,
        "endpoint": "/v1/messages" if opts.client_batch == 1 else "/v1/messages/batch",
        "rate": opts.rate,
        "peers": len(cluster.bs),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        "submit_seconds": round(submit_s, 3),
        "latency_ms": latency,
        "latency_basis": "inbox.delivered at the destination minus envelope created at the"
        " origin, both read from the destination's database (delivered is stamped when the"
        " destination starts handling the batch, before its commit)",
        "latency_observed_ms": {k: round(v, 1) for k, v in observed.items()},
        "latency_observed_basis": "first poll of the destination's database (every"
        f" {POLL_EVERY_S * 1000:.0f} ms, read-only) that saw the row committed, minus envelope"
        " created: an upper bound on submit -> durable at the destination",
        **extra,
        "journal_mode": modes.pop() if len(modes) == 1 else "mixed",
        "synchronous": syncs.pop() if len(syncs) == 1 else "mixed",
        "verify_skipped": skipped,
        "verify_skipped_basis": basis,
        "ed25519_verify_per_s": round(ed["verify"]),
        "ed25519_sign_per_s": round(ed["sign"]),
        "seal_per_s": round(ed["seal"]),
        "ed25519_basis": "one core, operations per CPU second of this process's thread",
        "peak_rss_mb": max(float(x["peak_rss_mb"]) for x in nodes),
        "nodes": nodes,
        "bench_client_cpu_s": round(
            own.ru_utime + own.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime, 2
        ),
        "machine": machine(),
        "code": code_version(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    return result


def code_version() -> str:
    """`git` commit of the relay being measured, `+dirty` with uncommitted changes to it."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "relay"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")  # fmt: skip


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on a shared machine skews the figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def bench(opts: Options) -> dict[str, Any]:
    """Set up a cluster in a temporary (or given) directory, run, always clean up."""
    progress = Progress(opts.progress)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the same cleanup as Ctrl-C

    previous = signal.signal(signal.SIGTERM, interrupted)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        if opts.workdir is not None:
            opts.workdir.mkdir(parents=True, exist_ok=True)
            base = Path(tempfile.mkdtemp(prefix="bench-", dir=opts.workdir))
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-bench-")))
        cluster = Cluster(base, opts.peers)
        stack.callback(cluster.close)
        progress.say(f"setting up {len(cluster.nodes)} nodes in {base}")
        cluster.setup()
        if opts.retry_max is not None:
            cluster.a.set_retry_max(opts.retry_max)
        result = asyncio.run(run(opts, cluster, progress))
        cluster.close()
        if opts.profile_dir is not None:
            result["profile"] = {
                node.name: summarize_profile(out)
                for node, _, out in cluster.profilers
                if out.exists()
            }
        return result
    raise AssertionError("unreachable")  # pragma: no cover
