"""`relay run DIR --workers N`: a supervisor and N worker processes, through the real CLI.

What is shown here is the process model: which worker answered
(`Relay-Worker`), reload (SIGHUP and the admin API) reaching every worker, a
SIGKILLed worker started again, SIGTERM stopping all, and SQLite refused.
Correctness across workers (leases, dedupe, kill -9 mid-stream) is tested
with the coordination code (tests/e2e, tests/fault).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.api.admin_client import NodeNotRunning, call
from relay.config.files import load_config
from tests.e2e.harness import NodeProc, free_port, relay, wait_for

pytestmark = pytest.mark.slow


def use_storage(node: NodeProc, url: str, metrics_port: int = 0) -> None:
    """Point the node at `url` ([storage] url replaces [node] database), and
    serve its metrics on `metrics_port` if given."""
    toml = node.dir / "node.toml"
    text = toml.read_text().replace('database = "relay.db"\n', "")
    text += f'\n[storage]\nurl = "{url}"\n'
    if metrics_port:
        text += f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    toml.write_text(text)


def start(node: NodeProc, workers: int) -> subprocess.Popen[bytes]:
    """`relay run DIR --workers N`, once a worker has started."""
    node.start("--workers", str(workers), timeout=60)
    assert node.proc is not None
    return node.proc


def answering_worker(node: NodeProc) -> str:
    """The Relay-Worker header of one answer on a new connection."""
    with urllib.request.urlopen(f"{node.url}/.well-known/relay", timeout=10) as r:
        return str(r.headers["Relay-Worker"])


def workers(node: NodeProc) -> list[dict[str, Any]]:
    doc = call(node.dir, "GET", "/admin/v1/workers")
    rows: list[dict[str, Any]] = doc["workers"]
    return rows


def all_running(node: NodeProc, n: int) -> list[dict[str, Any]]:
    """The workers once all `n` run and answer on their admin sockets."""
    try:
        rows = workers(node)
    except NodeNotRunning:  # the supervisor has not bound admin.sock yet
        return []
    up = [r for r in rows if r["running"] and (node.dir / f"admin-{r['worker']}.sock").exists()]
    return rows if len(up) == n else []


def log_lines(node: NodeProc, name: str) -> list[str]:
    return [ln for ln in node.logs().splitlines() if f" {name} " in f"{ln} "]


@pytest.fixture
def pg_node(tmp_path: Path, pg_url: str) -> Any:
    node = NodeProc(tmp_path / "msk", "msk.example.ru", "RU", free_port())
    node.init()
    node.add_mailbox("alice")
    use_storage(node, pg_url, metrics_port=free_port())
    yield node
    if node.proc is not None and node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait(timeout=30)


def test_two_workers_share_the_port_and_the_node(pg_node: NodeProc) -> None:
    node = pg_node
    start(node, 2)
    wait_for(lambda: all_running(node, 2), timeout=60, what="both workers up")
    seen = set()
    for _ in range(400):  # the kernel hands connections to whichever worker accepts first
        seen.add(answering_worker(node))
        if seen == {"0", "1"}:
            break
    assert seen == {"0", "1"}

    # One node: mail submitted through any worker is read through any other.
    ids = {node.send("alice", ["alice@msk.example.ru"], f"note {i}") for i in range(6)}
    got = wait_for(lambda: node.inbox("alice"), what="alice's mail")
    assert {m["id"] for m in got} == ids
    assert call(node.dir, "GET", "/admin/v1/node")["name"] == "msk.example.ru"
    assert relay("queue", node.dir).stdout.strip() == "queue is empty"  # local mail only
    summary = json.loads(relay("queue", node.dir, "--summary", "--json").stdout)
    assert [(r["dest"], r["total"]) for r in summary["rows"]] == [("TOTAL", 0)]

    # The supervisor's [metrics] listen: each worker's series labelled, the
    # database's gauges once and unlabelled.
    port = load_config(node.dir).metrics.listen_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    submitted = families["relay_messages_submitted"].samples
    totals = [s for s in submitted if s.name.endswith("_total")]
    assert {s.labels["worker"] for s in totals} <= {"0", "1"}
    assert sum(s.value for s in totals) == 6
    (unacked,) = families["relay_inbox_unacked_messages"].samples
    assert (unacked.labels, unacked.value) == ({}, 6)
    (info,) = families["relay_node_info"].samples
    assert "worker" not in info.labels
    with pytest.raises(urllib.error.HTTPError) as refused:  # not from a worker's listener
        urllib.request.urlopen(f"{node.url}/metrics", timeout=10)
    assert refused.value.code == 404
    refused.value.close()

    # Every log line of a worker names it; the supervisor's lines name none.
    started = log_lines(node, "node_started")
    assert sorted(ln.split(" worker=")[1].split(" ")[0] for ln in started) == ["0", "1"]
    assert all("worker=" not in ln for ln in log_lines(node, "supervisor_started"))


def test_reload_reaches_every_worker(pg_node: NodeProc) -> None:
    node = pg_node
    start(node, 2)
    wait_for(lambda: all_running(node, 2), timeout=60, what="both workers up")

    answer = call(node.dir, "POST", "/admin/v1/reload", {})
    assert answer["applied"] is True
    assert sorted(w["worker"] for w in answer["workers"]) == [0, 1]
    assert all(w["status"] == 200 and w["applied"] for w in answer["workers"])
    assert len(log_lines(node, "reloaded")) == 2

    # `relay mailbox add` has the supervisor reload every worker itself
    node.add_mailbox("bob")
    wait_for(lambda: len(log_lines(node, "reloaded")) == 4, what="the reload mailbox add asked")
    for i in range(6):  # bob's token now works whichever worker answers
        node.send("bob", ["alice@msk.example.ru"], f"from bob {i}")

    # SIGHUP to the supervisor: each worker re-reads node.toml.
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(log_lines(node, "reloaded")) == 6, what="two more reloads")
    reloaded = log_lines(node, "reloaded")[4:]
    assert sorted(ln.split(" worker=")[1].split(" ")[0] for ln in reloaded) == ["0", "1"]


def test_killed_worker_is_restarted_and_sigterm_stops_all(pg_node: NodeProc) -> None:
    node = pg_node
    proc = start(node, 2)
    first = wait_for(lambda: all_running(node, 2), timeout=60, what="both workers up")
    victim = first[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(
        lambda: [r for r in all_running(node, 2) if r["worker"] == 0 and r["pid"] != victim],
        timeout=60,
        what="worker 0 started again",
    )
    assert after[0]["starts"] == 2
    # (its admin socket may be the dead one's: wait for the new one to serve)
    wait_for(lambda: len(log_lines(node, "node_started")) == 3, timeout=60, what="restarted")
    (exited,) = log_lines(node, "worker_exited")
    assert f"pid={victim}" in exited and "exit_code=-9" in exited and "restart_in_s=0.5" in exited
    node.send("alice", ["alice@msk.example.ru"], "still here")

    pids = [r["pid"] for r in workers(node)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    node.proc = None
    for pid in pids:  # every worker has exited (and was reaped by the supervisor)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert len(log_lines(node, "node_stopped")) == 2
    assert not list(node.dir.glob("admin*.sock"))


def test_workers_stop_when_their_supervisor_is_killed(pg_node: NodeProc) -> None:
    node = pg_node
    proc = start(node, 2)
    rows = wait_for(lambda: all_running(node, 2), timeout=60, what="both workers up")
    # started in full (a worker signalled while still starting exits without draining)
    wait_for(lambda: len(log_lines(node, "node_started")) == 2, timeout=60, what="node_started")
    proc.kill()  # SIGKILL: no chance to stop them; the kernel tells them (PR_SET_PDEATHSIG)
    proc.wait(timeout=30)
    node.proc = None

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:  # an exited child of init not yet reaped
            return f.read().split(") ")[1].startswith("Z")

    wait_for(lambda: all(gone(r["pid"]) for r in rows), timeout=60, what="workers gone")
    assert len(log_lines(node, "node_stopped")) == 2  # they drained, as on SIGTERM


def test_sqlite_node_refuses_several_workers(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "msk", "msk.example.ru", "RU", free_port())
    node.init()
    done = relay("run", node.dir, "--workers", "2", check=False)
    assert done.returncode == 2
    assert "--workers 2 needs storage that several processes share" in done.stderr
    assert "SQLite" in done.stderr and "PostgreSQL" in done.stderr
    assert not (node.dir / "relay.db").exists()
    assert not list(node.dir.glob("admin*"))
    bad = relay("run", node.dir, "--workers", "0", check=False)
    assert bad.returncode == 2 and "out of range 1..256" in bad.stderr


def test_one_worker_is_todays_node(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "msk", "msk.example.ru", "RU", free_port())
    node.init()
    proc = start(node, 1)
    with urllib.request.urlopen(f"{node.url}/.well-known/relay", timeout=10) as r:
        assert "Relay-Worker" not in r.headers
        assert json.load(r)["name"] == "msk.example.ru"
    wait_for(lambda: (node.dir / "admin.sock").exists(), what="admin.sock")  # after /readyz
    assert not list(node.dir.glob("admin-*"))
    assert re.search(r"worker=\d", node.logs()) is None  # (lease lines name their holder)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    node.proc = None
