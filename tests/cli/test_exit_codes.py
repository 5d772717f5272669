"""Exit codes of the client commands and the errors a new user meets first (issue 17).

Each case runs `relay` in process against nothing (a closed loopback port,
or no node at all): the code and the message are decided before, or
instead of, any answer from a node. The codes a node's answers give
(0 delivered, 3 failed, 4 pending) are checked by the e2e harness on every
`relay status` it runs (tests/e2e/harness.py, NodeProc.status).
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main as cli
from relay.cli.client import ApiError, node_url, status_exit_code
from relay.errors import NotFound, Unavailable, Unreachable, UsageError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["delivered"], cli.EXIT_OK),
        (["delivered", "delivered"], cli.EXIT_OK),
        (["queued"], cli.EXIT_PENDING),
        (["sent"], cli.EXIT_PENDING),
        (["delivered", "sent"], cli.EXIT_PENDING),
        (["rejected", "queued"], cli.EXIT_PENDING),  # not final yet for one of them
        (["rejected"], cli.EXIT_POLICY),
        (["expired"], cli.EXIT_POLICY),
        (["delivered", "rejected"], cli.EXIT_POLICY),
        (["some-future-status"], cli.EXIT_PENDING),  # unknown: not known to be final
    ],
)
def test_status_exit_code(statuses: list[str], code: int) -> None:
    assert status_exit_code(statuses) == code


def test_exit_code_of_each_error_kind() -> None:
    assert cli.exit_code(UsageError("x")) == cli.EXIT_USAGE == 2
    assert cli.exit_code(Unreachable("x")) == cli.EXIT_UNREACHABLE == 5
    assert cli.exit_code(Unavailable("x")) == cli.EXIT_FAILURE == 1
    assert cli.exit_code(NotFound("x")) == cli.EXIT_FAILURE
    assert (cli.EXIT_POLICY, cli.EXIT_PENDING) == (3, 4)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("http://127.0.0.1:8701", "http://127.0.0.1:8701"),
        ("https://relay.example.org/", "https://relay.example.org"),
        ("http://[::1]:8701", "http://[::1]:8701"),
    ],
)
def test_node_url_accepts(value: str, url: str) -> None:
    assert node_url(value) == url


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1:8701", "needs http:// or https://, e.g. http://127.0.0.1:8701"),
        ("localhost:8701", "needs http:// or https://, e.g. http://localhost:8701"),
        ("ftp://host", "needs http:// or https://, e.g. http://HOST:PORT"),
        ("http://", "needs http:// or https://"),
        ("http://h:1/?x=1", "a node URL has no ?query or #fragment"),
    ],
)
def test_node_url_refuses(value: str, why: str) -> None:
    with pytest.raises(UsageError, match=why.replace("?", r"\?")):
        node_url(value)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_a_url_without_scheme_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TOKEN", "rly_x")
    code, err = _run(
        ["send", "--node", "127.0.0.1:8701", "--to", "a@b.test", "--text", "x"], capsys
    )
    assert code == 2
    assert err == (
        "relay: --node '127.0.0.1:8701' is not a node URL: it needs http:// or https://,"
        " e.g. http://127.0.0.1:8701\n"
    )


@pytest.mark.parametrize(
    "command", [["send", "--to", "a@b.test", "--text", "x"], ["inbox"], ["status", "0" * 32]]
)
def test_no_node_answering_exits_5_for_every_client_command(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TOKEN", "rly_x")
    port = _closed_port()
    code, err = _run([*command[:1], "--node", f"http://127.0.0.1:{port}", *command[1:]], capsys)
    assert code == cli.EXIT_UNREACHABLE
    assert err == (
        f"relay: cannot reach the node at http://127.0.0.1:{port}: Connection refused"
        " (is it running, and is this its [node] listen or public_url?)\n"
    )


@pytest.mark.parametrize(
    "command", [["send", "--to", "a@b.test", "--text", "x"], ["inbox"], ["status", "0" * 32]]
)
def test_no_node_given_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_URL", raising=False)
    code, err = _run(command, capsys)
    assert code == 2
    assert err == "relay: give --node URL or set RELAY_URL (e.g. http://127.0.0.1:8701)\n"


def test_send_refuses_an_empty_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TOKEN", "rly_x")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    # the port is closed: the refusal comes before any connection is tried
    port = _closed_port()
    code, err = _run(["send", "--node", f"http://127.0.0.1:{port}", "--to", "a@b.test"], capsys)
    assert code == 2
    assert err == "relay: stdin was empty: nothing to send (give --text, or pipe the message in)\n"


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["inbox", "--wait", "-1"], "argument --wait: -1 is out of range: give from 0 to 60"),
        (["inbox", "--wait", "61"], "argument --wait: 61 is out of range: give from 0 to 60"),
        (["inbox", "--limit", "0"], "argument --limit: 0 is out of range: give from 1 to 1000"),
        (["inbox", "--limit", "many"], "argument --limit: 'many' is not a whole number"),
        (
            ["send", "--to", "a@b.test", "--ttl", "0"],
            "argument --ttl: 0 is out of range: give 1 or more",
        ),
    ],
)
def test_bad_numbers_are_usage_errors(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(argv, capsys)
    assert code == 2
    assert why in err


def test_a_missing_node_directory_says_how_one_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["check", str(tmp_path / "nosuchdir")], capsys)
    assert code == 2
    assert err == (
        f"{tmp_path}/nosuchdir: no such node directory (or node.toml file);"
        " `relay init DIR --name NAME --jurisdiction CC` creates a node directory\n"
    )


def test_init_with_port_0_needs_a_public_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["init", str(tmp_path / "n"), "--name", "n.test", "--jurisdiction", "RU"]
    code, err = _run([*argv, "--listen", "127.0.0.1:0"], capsys)
    assert code == 2
    assert "give --public-url URL" in err
    assert not (tmp_path / "n").exists()


def test_a_bad_message_id_is_refused_before_any_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TOKEN", "rly_x")
    code, err = _run(["status", "--node", f"http://127.0.0.1:{_closed_port()}", "abc"], capsys)
    assert code == 2
    assert "argument id: 'abc' is not a message id: ids are 32 hex digits" in err


@pytest.mark.parametrize(
    ("status", "code", "detail", "text"),
    [
        (400, "bad_request", "address 'bob' has no '@'",
         "address 'bob' has no '@' (HTTP 400 bad_request)"),
        (404, "not_found", "no message 00 sent by alice",
         "no message 00 sent by alice (HTTP 404 not_found)"),
        (502, "", "Bad Gateway", "Bad Gateway (HTTP 502)"),
        (401, "unauthorized", "the token does not belong to any mailbox of this node",
         "the token does not belong to any mailbox of this node (HTTP 401 unauthorized);"
         " check RELAY_TOKEN or --token-file: the token `relay mailbox add` printed"),
    ],
)  # fmt: skip
def test_a_node_refusal_reads_detail_first(status: int, code: str, detail: str, text: str) -> None:
    assert ApiError(status, code, detail).detail == text


def test_check_of_a_file_that_is_not_node_toml_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "node.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----\n")
    code, err = _run(["check", str(key)], capsys)
    assert code == 2
    assert err == f"{key}: not TOML, so not a node.toml; give the node directory or its node.toml\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "--node", "http://127.0.0.1:1", "--to", "a@x.test", "b@x.test"],
        ["send", "--node", "http://127.0.0.1:1", "--to", "a@x.test", "--to", "b@x.test"],
        ["rules", "explain", "n", "--from", "alice", "--to", "a@x.test", "--to", "b@x.test"],
    ],
)
def test_every_recipient_given_is_kept_whichever_way_it_is_written(argv: list[str]) -> None:
    # a repeated --to used to keep only the last one, silently dropping recipients
    assert cli.build_parser().parse_args(argv).to == ["a@x.test", "b@x.test"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_each_command_is_built_alike_by_its_module_alone() -> None:
    """`relay CMD` imports only COMMAND_MODULES[CMD]: the table names every command
    of every module, and that module alone builds the same parser for it."""
    full = _subparsers(cli.build_parser())
    assert sorted(cli.COMMAND_MODULES) == sorted(full)
    for command, module in cli.COMMAND_MODULES.items():
        alone = _subparsers(cli.build_parser(command))
        assert sorted(alone) == sorted(c for c, m in cli.COMMAND_MODULES.items() if m == module)
        assert alone[command].format_help() == full[command].format_help(), command
    # not a command (an option, a typo): every module, so argparse lists them all
    assert sorted(_subparsers(cli.build_parser("nonsense"))) == sorted(full)


@pytest.mark.parametrize(
    ("argv", "imported"),
    [
        (["status", "--help"], ["relay.cli.client", "relay.cli.main"]),
        (["--version"], ["relay.cli.main"]),
    ],
)
def test_a_command_starts_without_the_other_commands_modules(
    argv: list[str], imported: list[str]
) -> None:
    code = (
        f"import sys; from relay.cli import main; main.main({argv!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('relay.cli.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[-1] == repr(imported)
    if argv == ["--version"]:
        assert out[0].startswith("relay ")
