"""`relay demo --once`: the README's first command works as a new user sees it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_once_narrates_and_exits_zero() -> None:
    out = relay("demo", "--once", timeout=120)
    text = out.stdout
    assert "bob's inbox at ala: from alice@msk.demo.ru: 'Привет из Москвы'" in text
    assert "residency AM,BY,KG,KZ,RU" in text
    assert "msk now says: delivered." in text
    assert "rule no-transfer-to-de" in text
    assert "rule builtin:dest_jurisdiction" in text
    assert "Stopped every node." in text


def test_demo_once_shows_progress_and_cleans_up_after_itself() -> None:
    out = relay("demo", "--once", timeout=120).stdout
    base = Path(out.splitlines()[0].split(" in ", 1)[1].split(" (", 1)[0])
    for step in ("relay init", "relay peer add", "relay mailbox add", "relay run"):
        assert f"  {step}" in out, step  # no long silence before the narration
    assert not base.exists()  # a clean --once told nobody to look in it


def test_demo_prints_commands_that_work_as_printed_and_keeps_its_directory() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if line.startswith("Ctrl-C stops every node."):
                break
        hints = [ln.strip() for ln in lines if ln.startswith("  RELAY_TOKEN=") or " peers " in ln]
        send, _, refused, peers = hints
        # pasted into a shell as printed, from another directory (`relay` is on PATH
        # only if the demo printed the bare word)
        env = {k: v for k, v in os.environ.items() if k not in ("RELAY_URL", "RELAY_TOKEN")}
        sent = subprocess.run(
            ["bash", "-c", send], capture_output=True, text=True, cwd="/", env=env
        )
        assert sent.returncode == 0 and len(sent.stdout.strip()) == 32, sent.stderr
        no = subprocess.run(
            ["bash", "-c", refused], capture_output=True, text=True, cwd="/", env=env
        )
        assert no.returncode == 3, no.stderr
        listed = subprocess.run(
            ["bash", "-c", peers], capture_output=True, text=True, cwd="/", env=env
        )
        assert listed.returncode == 0 and "ala.demo.kz" in listed.stdout, listed.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    base = Path(lines[0].split(" in ", 1)[1].split(" (", 1)[0])
    assert proc.returncode == 0
    assert f"The nodes' directories and logs are kept in {base}." in rest
    assert (base / "msk" / "node.log").exists()  # what the user was told to look at
    shutil.rmtree(base)
