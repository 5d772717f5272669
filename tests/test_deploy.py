"""deploy/: the systemd units verify, and the compose setup matches the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import relay
from relay.config.model import LimitsConfig
from relay.node.conns import FD_HEADROOM

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _unit_for_this_machine(
    tmp_path: Path, source: str = "relay.service", name: str = "relay.service"
) -> Path:
    """deploy/`source` as `name`, pointing at this machine's relay."""
    relay_bin = Path(sys.executable).with_name("relay")
    text = (DEPLOY / source).read_text()
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/relay/bin/relay", str(relay_bin)))
    return unit


def _exposure(unit: Path) -> float:
    """`systemd-analyze security`'s overall exposure level of `unit` (lower is safer)."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    return float(found.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "relay.service" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    assert _exposure(_unit_for_this_machine(tmp_path)) <= 2.0


def test_unit_runs_as_dedicated_user_with_state_directory() -> None:
    text = (DEPLOY / "relay.service").read_text()
    for line in (
        "User=relay",
        "StateDirectory=relay",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecStart=/opt/relay/bin/relay run /var/lib/relay",
    ):
        assert line in text


def test_open_file_limit_fits_the_default_connection_cap() -> None:
    """LimitNOFILE and the compose ulimit leave room for both listeners at the default cap."""
    needed = LimitsConfig().max_connections * 2 + FD_HEADROOM
    unit = re.search(r"^LimitNOFILE=(\d+)$", (DEPLOY / "relay.service").read_text(), re.M)
    assert unit and int(unit.group(1)) >= needed
    compose = re.search(r"nofile: \{ soft: (\d+),", (DEPLOY / "compose.yaml").read_text())
    assert compose and int(compose.group(1)) >= needed


def test_dockerfile_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER relay$", text, re.M)
    assert "python:3.11-slim" in text


def test_compose_setup_pastes_the_printed_peer_line() -> None:
    """compose-setup.sh strips the placeholder `relay init` really prints."""
    from relay.cli import admin

    script = (DEPLOY / "compose-setup.sh").read_text()
    assert "relay peer add YOUR_NODE_DIR" in script
    assert "YOUR_NODE_DIR" in Path(admin.__file__).read_text()


# --- several workers on PostgreSQL (docs/scaling.md) ------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_workers_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """As instance 4 (`relay run --workers 4`)."""
    unit = _unit_for_this_machine(tmp_path, "relay-workers@.service", "relay-workers@4.service")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "relay-workers" not in proc.stderr, proc.stderr
    assert _exposure(unit) <= 2.0


def test_workers_unit_runs_n_workers_with_the_single_node_sandbox() -> None:
    """The instance name is the worker count; every hardening line of relay.service is kept."""
    single = (DEPLOY / "relay.service").read_text()
    workers = (DEPLOY / "relay-workers@.service").read_text()
    assert "ExecStart=/opt/relay/bin/relay run /var/lib/relay --workers %i" in workers
    assert "KillMode=mixed" in workers  # the supervisor stops its workers itself
    sandbox = single[single.index("# Hardening") : single.index("[Install]")]
    settings = [ln for ln in sandbox.splitlines() if ln and not ln.startswith("#")]
    assert settings
    missing = [ln for ln in settings if ln not in workers.splitlines()]
    assert missing == []


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def test_compose_runs_a_two_worker_node_on_postgres() -> None:
    """Checked by parsing: Docker is not available on this project's machines."""
    services = _compose()["services"]
    pg = services["postgres"]
    assert pg["image"] == "${RELAY_POSTGRES_IMAGE:-postgres:15}"  # a local stand-in may replace it
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert "pgdata" in _compose()["volumes"]
    spb = services["spb"]
    assert spb["command"] == ["relay", "run", "/var/lib/relay/spb", "--workers", "2"]
    assert spb["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert spb["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
    # the password setup writes for spb is the one the database was created with
    setup_env = services["setup"]["environment"]
    assert setup_env["RELAY_DEMO_DB_PASSWORD"] == pg["environment"]["POSTGRES_PASSWORD"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports)) and all(p.startswith("127.0.0.1:") for p in ports)


def test_compose_setup_gives_spb_a_postgres_url_without_its_password() -> None:
    script = (DEPLOY / "compose-setup.sh").read_text()
    at = script.index("\n[storage]\n") + 1
    storage = script[at : script.index("TOML\n", at)]
    url = re.search(r'^url = "([^"]+)"$', storage, re.M)
    assert url and url.group(1) == "postgresql://relay@postgres:5432/relay"
    assert 'password_file = "db.password"' in storage
    assert "spb:spb.demo.ru:RU" in script and "relay check" in script


def test_compose_setup_storage_table_passes_relay_check(tmp_path: Path) -> None:
    """spb's node.toml, made as compose-setup.sh makes it, is valid for `relay check`."""
    import contextlib
    import io

    from relay.cli.main import main

    script = (DEPLOY / "compose-setup.sh").read_text()
    start = script.index("\n[storage]\n") + 1
    storage = script[start : script.index("TOML\n", start)]
    node = tmp_path / "spb"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["init", str(node), "--name", "spb.demo.ru", "--jurisdiction", "RU"]) == 0
    assert "sed -i '/^database = /d' spb/node.toml" in script
    toml = node / "node.toml"
    kept = [ln for ln in toml.read_text().splitlines() if not ln.startswith("database = ")]
    toml.write_text("\n".join(kept) + "\n\n" + storage)
    password = node / "db.password"
    password.write_text("relay-demo-password\n")
    password.chmod(0o600)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["check", str(node)]) == 0, err.getvalue()


# --- the Grafana dashboard ------------------------------------------------------

DOCS = DEPLOY.parent / "docs"
DASHBOARD = DEPLOY / "grafana" / "relay.json"
# labels Prometheus adds to every series it scrapes, and the one a node under
# `relay run --workers N` adds to its counters and histograms (docs/metrics.md)
ADDED_LABELS = {"instance", "job", "worker"}
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's table: metric name -> (type, label names)."""
    rows = re.findall(
        r"^\| `(relay_[a-z_]+)` \| (\w+) \|([^|]*)\|", (DOCS / "metrics.md").read_text(), re.M
    )
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def _family(name: str, kind: str) -> str:
    return name.removesuffix("_total") if kind == "counter" else name


def _series() -> dict[str, set[str]]:
    """Every series name a node exposes -> the label names it may carry."""
    out: dict[str, set[str]] = {}
    for name, (kind, labels) in _documented().items():
        family = _family(name, kind)
        for suffix in SERIES_SUFFIXES.get(kind, ("",)):
            out[family + suffix] = (
                labels | ADDED_LABELS | ({"le"} if suffix == "_bucket" else set())
            )
    return out


def _exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_metrics_doc_lists_exactly_the_metrics_a_node_registers() -> None:
    from relay.node.metrics import Metrics

    registered = {f.name: f.type for f in Metrics(mailbox_labels=True).registry.collect()}
    documented = {_family(n, kind): kind for n, (kind, _) in _documented().items()}
    assert documented == registered


def test_dashboard_queries_only_metrics_and_labels_that_exist() -> None:
    series = _series()
    exprs = _exprs()
    assert len(exprs) >= 15
    queried: set[str] = set()
    for expr in exprs:
        names = re.findall(r"\b(relay_[a-z_]+)", expr)
        assert names, expr
        for name, matchers in re.findall(r"\b(relay_[a-z_]+)(?:\{([^}]*)\})?", expr):
            assert name in series, f"{name} in {expr!r} is not a metric a node exposes"
            queried.add(name)
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in series[name], f"{name} has no label {label!r}: {expr!r}"
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert any(label in series[n] for n in names), f"no {label!r} in {expr!r}"
    # what issue 17 asked the dashboard to show
    for needed in (
        "relay_messages_submitted_total",  # throughput
        "relay_queue_envelopes",  # queue depth per peer
        "relay_queue_oldest_age_seconds",  # queue age per peer
        "relay_decisions_total",  # refusals by rule
        "relay_delivery_latency_seconds_bucket",  # delivery latency
        "relay_database_size_bytes",  # storage
    ):
        assert needed in queried, needed


def test_dashboard_is_importable_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "instance"}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"]


# --- the production install path (deploy/install.sh) ----------------------------


@pytest.mark.slow
def test_install_script_into_a_temp_prefix_and_upgrade(tmp_path: Path) -> None:
    """deploy/install.sh --no-system: a virtualenv with relay, the docs the units
    name, the units with their paths; run twice (the upgrade path)."""
    prefix, units, bin_dir = tmp_path / "opt" / "relay", tmp_path / "units", tmp_path / "bin"
    cmd = [
        str(DEPLOY / "install.sh"), "--prefix", str(prefix), "--unit-dir", str(units),
        "--bin-dir", str(bin_dir), "--no-system",
    ]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}
    for _ in range(2):  # a fresh install, then an upgrade over it
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"relay {relay.__version__}" in done.stdout
    installed = bin_dir / "relay"
    assert installed.resolve() == (prefix / "bin" / "relay").resolve()

    # the installed relay works on its own (no checkout on its path)
    node = tmp_path / "node"
    made = subprocess.run(
        [str(installed), "init", str(node), "--name", "n.example.org", "--jurisdiction", "DE"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(
        [str(installed), "check", str(node)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0 and checked.stdout.startswith("ok: n.example.org (DE)")
    where = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import relay; print(relay.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(prefix)), where.stdout

    for name in ("relay.service", "relay-workers@.service"):
        unit = (units / name).read_text()
        assert f"ExecStart={prefix}/bin/relay run /var/lib/relay" in unit
        (doc,) = re.findall(r"^Documentation=file://(\S+)$", unit, re.M)
        assert Path(doc).is_file(), doc  # the unit names a file the install put there
        assert "/opt/relay" not in unit.replace(str(prefix), "")
    assert (prefix / "share" / "doc" / "relay" / "docs" / "operations.md").is_file()
    dashboard = prefix / "share" / "relay" / "grafana-dashboard.json"
    assert json.loads(dashboard.read_text()) == json.loads(DASHBOARD.read_text())
    if shutil.which("systemd-analyze") is not None:
        verified = subprocess.run(
            ["systemd-analyze", "verify", str(units / "relay.service")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert "relay.service" not in verified.stderr, verified.stderr


def test_install_script_refuses_a_relative_prefix_and_unknown_arguments() -> None:
    for args, why in (
        (["--prefix", "opt/relay", "--no-system"], "--prefix must be absolute"),
        (["--frobnicate"], "unknown argument --frobnicate"),
    ):
        done = subprocess.run(
            [str(DEPLOY / "install.sh"), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and why in done.stderr, done.stderr
