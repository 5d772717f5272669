"""`relay bench --storage URL --workers N`: both nodes on PostgreSQL, two workers each.

No timing is asserted: only that the run completes with every message
committed, says what it ran on, reports the CPU it can see, and leaves no
schema behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from tests.e2e.harness import with_user

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def bench_schemas(url: str) -> set[str]:
    with psycopg.connect(url.split("?")[0], autocommit=True) as db:
        rows = db.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
        return {str(r[0]) for r in rows}


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "bench", "--json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_bench_on_postgres_with_two_workers(pg_url: str) -> None:
    url = with_user(pg_url)
    before = bench_schemas(url)
    proc = run_bench("--n", "400", "--storage", url, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["committed"] == 400
    assert doc["storage"] == "postgresql" and doc["workers"] == 2
    assert doc["synchronous"] == "on"  # synchronous_commit, from each node's start-up log
    for node in doc["nodes"]:
        assert node["storage"] == "postgresql" and node["workers"] == 2
        assert node["cpu_s"] > 0
        # this node's backends, when the server runs on this machine
        assert node["server_cpu_s"] is None or node["server_cpu_s"] >= 0
    assert bench_schemas(url) == before  # each node's schema was dropped


def test_bench_refuses_workers_without_postgres() -> None:
    proc = run_bench("--n", "10", "--workers", "2")
    assert proc.returncode == 2
    assert "--workers above 1 needs --storage" in proc.stderr
    proc = run_bench("--n", "10", "--storage", "sqlite:x.db")
    assert proc.returncode == 2
    assert "is not a postgresql:// URL" in proc.stderr
