"""`relay bench --n 500 --json` runs two real nodes and prints one valid result document.

No timing is asserted: only that the run completes, every message was committed
at the destination, and the fields docs/performance.md relies on are there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.cli.bench.options import Options
from relay.cli.bench.run import unread_quota
from relay.config.files import load_config
from relay.config.sealkeys import load_seal_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def bench_json(*flags: str, timeout: float = 180) -> dict[str, Any]:
    """Run `relay bench FLAGS --json --quiet` to the end and return its result document."""
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "bench", *flags, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_bench_smoke_prints_json_with_every_field() -> None:
    doc = bench_json("--n", "500", "--sql-stats")
    assert doc["n"] == 500
    assert doc["committed"] == 500
    assert doc["size"] == 1024
    assert doc["clients"] == 20
    assert doc["peers"] == 1
    assert doc["seconds"] > 0
    assert doc["msgs_per_s"] > 0
    for p in ("p50", "p90", "p99"):
        assert isinstance(doc["latency_ms"][p], float)
        assert doc["latency_ms"][p] >= 0
    assert doc["latency_ms"]["p50"] <= doc["latency_ms"]["p90"] <= doc["latency_ms"]["p99"]
    # the first poll that saw a row committed comes no earlier than B's own stamp of it
    assert doc["latency_observed_ms"]["p50"] >= doc["latency_ms"]["p50"]
    assert doc["journal_mode"] == "wal"
    assert doc["synchronous"] == "FULL"
    assert doc["verify_skipped"] is False
    assert doc["ed25519_verify_per_s"] > 0
    roles = sorted(node["role"] for node in doc["nodes"])
    assert roles == ["destination", "origin"]
    # --sql-stats: each node's writer statements, per message, the dearest first
    assert sorted(doc["sql_stats"]) == ["a.bench", "b0.bench"]
    for stats in doc["sql_stats"].values():
        assert stats["total_us_per_msg"] > 0
        top = [e["sql"] for e in stats["top"]]
        assert any(sql.startswith("INSERT INTO envelopes") for sql in top)
        assert any(sql.startswith("COMMIT") for sql in top)
        costs = [e["us_per_msg"] for e in stats["top"]]
        assert costs == sorted(costs, reverse=True)
    for node in doc["nodes"]:
        assert node["peak_rss_mb"] > 0
        assert node["journal_mode"] == "wal"
        assert node["synchronous"] == "FULL"


def test_bench_refuses_a_bad_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "bench", "--n", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--n" in proc.stderr


def test_bench_app_mode_reads_and_acks_every_message(tmp_path: Path) -> None:
    doc = bench_json("--n", "300", "--app", "--workdir", str(tmp_path))
    assert doc["clock_stops"] == "app read and acked at the destinations"
    assert doc["committed"] == 300
    for node in doc["nodes"]:
        assert node["cpu_us_per_msg"] > 0
    # the app acked what it read: nothing is left unread at the destination
    (db,) = tmp_path.glob("bench-*/b0*/relay.db")
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        unread, acked = conn.execute(
            "SELECT sum(acked IS NULL), sum(acked IS NOT NULL) FROM inbox"
        ).fetchone()
    assert (unread, acked) == (0, 300)


def test_bench_refuses_app_with_backlog() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "bench", "--app", "--backlog", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--app" in proc.stderr


def test_bench_seal_suite_gives_the_destinations_classic_seal_keys(tmp_path: Path) -> None:
    doc = bench_json("--n", "200", "--seal-suite", "x25519", "--workdir", str(tmp_path))
    assert (doc["seal"], doc["seal_suite"], doc["committed"]) == ("preferred", "x25519", 200)
    # the origin pinned the destination's x25519 key, so it sealed every message with it
    (a_toml,) = tmp_path.glob("bench-*/a/node.toml")
    (pinned,) = re.findall(r"(?m)^seal_keys = \[\"([^\"]+)\"\]", a_toml.read_text())
    assert pinned.startswith("x25519:")
    (b_dir,) = tmp_path.glob("bench-*/b0")
    config = load_config(b_dir)
    assert config.node.seal_key_file is not None
    assert load_seal_key(config.node.seal_key_file).public.string == pinned


def test_bench_backlog_sizes_the_destination_quota_to_the_run(tmp_path: Path) -> None:
    # Nobody reads B's inbox in a backlog run: at the 1 GiB default a 1,000,000-message
    # backlog of 1 KiB deferred everything past ~800,000 and the drain stalled at 0 msg/s.
    doc = bench_json("--backlog", "300", "--workdir", str(tmp_path), timeout=240)
    assert (doc["mode"], doc["committed"]) == ("backlog", 300)
    (b_dir,) = tmp_path.glob("bench-*/b0")
    assert load_config(b_dir).limits.mailbox_unread_bytes == doc["dest_mailbox_unread_bytes"]
    # what a million-message run would be given: past the default, and past the run
    million = unread_quota(Options(backlog=1_000_000))
    assert million > 1_000_000 * (1024 + 400) > 2**30
