"""Readings for the report: latency rows, CPU rates, settings, machine and code version."""

from __future__ import annotations

import bisect
import contextlib
import inspect
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.cli.bench.cluster import INBOX, JURISDICTION, ORIGIN, BenchNode, Cluster
from relay.protocol.envelope import ENVELOPE_DOMAIN, make_header, seal, verify_envelope
from relay.protocol.sealing import (
    DEK_SIZE,
    HYBRID,
    SALT_SIZE,
    SealInfo,
    open_body,
    seal_body,
    seal_secret,
    secret_size,
    wrap_dek,
)
from relay.storage.sqlite import store as store_module
from relay.storage.sqlite.inspect import sqlite_version

# --- measurements ------------------------------------------------------------------


def ed25519_rates(seconds: float = 1.5) -> dict[str, float]:
    """Single-core rates per CPU second (so other load on the machine does not skew them).

    verify: `verify_envelope`, the check a node makes on every envelope it
    stores; sign: Ed25519 over the same header bytes; seal: `seal`, what the
    origin does per envelope (encode, re-decode, sign, check the payload);
    payload_seal / payload_open: a 1 KiB body sealed to / opened at the
    destination under a cached data key (relay.protocol.sealing; the KEM runs
    once per key epoch, not per envelope).
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
    box = seal_secret(HYBRID, os.urandom(secret_size(HYBRID)))
    dek = os.urandom(DEK_SIZE)
    wrap = wrap_dek(box.public, dek, ORIGIN, "b0.bench")
    body = b"x" * 1024

    def seal_payload() -> tuple[SealInfo, bytes]:
        return seal_body(
            body=body, salt=os.urandom(SALT_SIZE), dek=dek, wrap=wrap, pub=box.public,
            env_id=header.id, origin=ORIGIN, dest="b0.bench",
        )  # fmt: skip

    info, sealed = seal_payload()
    ops: dict[str, Callable[[], object]] = {
        "verify": lambda: verify_envelope(env, pub),
        "sign": lambda: key.sign(signed),
        "seal": lambda: seal(header, env.payload, key),
        "payload_seal": seal_payload,
        "payload_open": lambda: open_body(
            info=info, dek=dek, payload=sealed, env_id=header.id, origin=ORIGIN, dest="b0.bench"
        ),
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
    seqs = [c for _, c in b.seen]
    out: list[tuple[bytes, int, int, float]] = []
    for ident, delivered, created, seq in b.db.inbox_rows(with_ids):
        k = bisect.bisect_left(seqs, seq)
        seen = b.seen[k][0] if k < len(seqs) else time.time() * 1000
        out.append((ident, delivered, created, seen))
    return out


def verification_basis(cluster: Cluster) -> tuple[bool, str]:
    """Whether the destinations skipped per-envelope verification (never), and the basis."""
    total = sum(b.db.message_envelopes()[0] for b in cluster.bs if b.db is not None)
    basis = (
        f"destination databases: {total} message envelopes stored; "
        "relay.protocol.inbound.judge_item verifies every envelope's origin signature "
        "before it is stored, whoever sent the batch (docs/protocol.md §11 step 11)"
    )
    return False, basis


def journal_mode(node: BenchNode) -> str:
    if node.db is None:
        node.open_db()
    assert node.db is not None
    return node.db.journal_mode()


def synchronous_setting(node: BenchNode) -> tuple[str, str]:
    """(value, where it was read). synchronous is per connection: not readable from outside."""
    if node.storage_url is not None:
        m = re.search(r"\bsynchronous_commit=(\w+)", node.log_tail(200_000))
        return (
            (m.group(1), "node log (PostgreSQL synchronous_commit)")
            if m
            else (
                "unknown",
                "the node log names no synchronous_commit",
            )
        )
    m = re.search(r"\bsynchronous=(\w+)", node.log_tail(200_000))
    if m:
        return m.group(1).upper(), "node log"
    m = re.search(r"PRAGMA synchronous\s*=\s*(\w+)", inspect.getsource(store_module.open_store))
    if m:
        return m.group(
            1
        ).upper(), "relay.storage.sqlite.store.open_store sets it on both connections"
    return "unknown", "neither the node log nor relay.storage.sqlite.store.open_store names it"


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
        "sqlite": sqlite_version(),
    }


def sql_stats(path: Path, n: int, top: int = 12) -> dict[str, Any]:
    """A node's writer statements (RELAY_SQL_STATS) per message: the dearest `top`.

    The figures cover the node's whole life (start-up and shutdown too, which
    are a few statements), divided by the n messages of the run.
    """
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["statements"]
    except (OSError, ValueError, KeyError) as e:
        return {"error": f"{path}: no statement figures ({e})"}
    total = sum(float(r["cpu_s"]) for r in rows)
    return {
        "total_us_per_msg": round(total * 1e6 / n, 1),
        "statements": len(rows),
        "top": [
            {
                "us_per_msg": round(float(r["cpu_s"]) * 1e6 / n, 2),
                "calls_per_msg": round(int(r["calls"]) / n, 3),
                "rows_per_msg": round(int(r["rows"]) / n, 3),
                "sql": str(r["sql"]),
            }
            for r in rows[:top]
        ],
    }
