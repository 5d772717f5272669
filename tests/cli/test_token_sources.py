"""Where `relay send/inbox/status` take the mailbox token from (issue 10).

The documented ways keep it out of the process list: RELAY_TOKEN or
`--token-file`. The file cases that fail need no node; the ones that work
run against a real `relay run` node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.cli.main import main
from tests.e2e.harness import TIMEOUT, NodeProc, make_node


def _token_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _run(*args: str | Path, token_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_TOKEN", "RELAY_URL")}
    if token_env is not None:
        env["RELAY_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-m", "relay", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


@pytest.mark.parametrize(
    ("data", "mode", "why"),
    [
        (b"", 0o600, "the file is empty"),
        (b"\n", 0o600, "the file is empty"),
        (b"rly_abc\n", 0o644, "accessible by group or others (mode 0644); run: chmod 600 {path}"),
        (b"rly_abc\n", 0o640, "accessible by group or others (mode 0640); run: chmod 600 {path}"),
        (b"rly_abc\nrly_def\n", 0o600, "holds more than one line or a control character"),
        (b"rly_abc\n\n", 0o600, "holds more than one line or a control character"),
        (b"rly_\xff\n", 0o600, "not UTF-8 text"),
        (b"x" * 5000, 0o600, "over 4096 bytes; it should hold the token alone"),
    ],
)
def test_bad_token_file_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, mode: int, why: str
) -> None:
    path = _token_file(tmp_path / "alice.token", data, mode)
    # port 9 (discard) on loopback: nothing is contacted, the file check comes first
    code = main(["status", "--node", "http://127.0.0.1:9", "--token-file", str(path), "0" * 32])
    assert code == 2  # a usage error
    assert capsys.readouterr().err == f"relay: --token-file {path}: {why.format(path=path)}\n"


def test_missing_token_file_and_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, why in [
        (tmp_path / "nope", "cannot open: No such file or directory"),
        (tmp_path, "not a regular file"),
    ]:
        code = main(["status", "--node", "http://127.0.0.1:9", "--token-file", str(path), "0" * 32])
        assert code == 2
        assert capsys.readouterr().err == f"relay: --token-file {path}: {why}\n"


def test_token_and_token_file_together_is_a_usage_error(tmp_path: Path) -> None:
    path = _token_file(tmp_path / "t", b"rly_abc\n")
    proc = _run("inbox", "--node", "http://127.0.0.1:9", "--token", "rly_x", "--token-file", path)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def test_no_token_names_the_ways_that_keep_it_private() -> None:
    proc = _run("inbox", "--node", "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr == "relay: set RELAY_TOKEN or give --token-file PATH\n"


def test_help_leads_to_the_environment_and_the_file() -> None:
    out = _run("send", "--help").stdout
    assert out.index("--token-file PATH") < out.index("--token TOKEN")
    assert "RELAY_TOKEN" in out and "process list" in out


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = make_node(tmp_path_factory.mktemp("tokens"), "n.test", "DE")
    n.add_mailbox("alice")
    n.start()
    yield n
    assert n.stop() == 0


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_token_file_and_environment_reach_the_mailbox(
    node: NodeProc, tmp_path: Path, ending: bytes
) -> None:
    token = node.tokens["alice"]
    path = _token_file(tmp_path / "alice.token", token.encode() + ending)
    sent = _run("send", "--node", node.url, "--token-file", path, "--to", "alice@n.test",
                "--text", f"by file {ending!r}")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    msg_id = sent.stdout.strip()
    got = _run("inbox", "--node", node.url, "--json", "--ack", token_env=token)
    assert got.returncode == 0, got.stderr
    assert msg_id in got.stdout
    # RELAY_TOKEN set to another mailbox's token loses to an explicit --token-file
    st = _run("status", "--node", node.url, "--token-file", path, msg_id, token_env="rly_wrong")
    assert st.returncode == 0, st.stderr
    assert st.stdout.strip() == "alice@n.test: delivered"
