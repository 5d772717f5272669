"""deploy/: the systemd unit verifies, and the compose setup matches the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.model import LimitsConfig
from relay.node.conns import FD_HEADROOM

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _unit_for_this_machine(tmp_path: Path) -> Path:
    relay_bin = Path(sys.executable).with_name("relay")
    text = (DEPLOY / "relay.service").read_text()
    unit = tmp_path / "relay.service"
    unit.write_text(text.replace("/usr/local/bin/relay", str(relay_bin)))
    return unit


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
    unit = _unit_for_this_machine(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for relay.service: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    assert float(found.group(1)) <= 2.0, proc.stdout[-3000:]


def test_unit_runs_as_dedicated_user_with_state_directory() -> None:
    text = (DEPLOY / "relay.service").read_text()
    for line in (
        "User=relay",
        "StateDirectory=relay",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/local/bin/relay run /var/lib/relay",
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
