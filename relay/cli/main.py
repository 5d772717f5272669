"""The `relay` command: argument parsing, dispatch and exit codes (DESIGN §9).

Invariants:
- stdout carries only a command's result; every message goes to stderr.
- Exit codes (docs/config.md, "Exit codes"): 0 ok (or delivered), 1
  failure, 2 usage or config error, 3 refused by policy (or, for `relay
  status`, rejected or expired), 4 pending (`relay status`: not final yet),
  5 unreachable (no node answers at the URL or admin socket), 130
  interrupted. A `RelayError` from a command is printed as its detail.
- Each module of relay.cli but this one exposes `register(sub)` (found by
  pkgutil, so adding a module adds its commands), adding subparsers
  whose `func(args) -> int` runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import relay.cli
from relay import __version__
from relay.errors import (
    ConfigError,
    ConfigErrors,
    PolicyRefused,
    RelayError,
    Unreachable,
    UsageError,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_POLICY = 3
EXIT_PENDING = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130


# The module that registers each top-level command. `relay CMD ...` imports that
# module alone: importing every command module (aiohttp, psycopg, cryptography,
# prometheus_client, the node) is most of a short command's start-up, and the
# tests start thousands. A command missing here still works (every module is
# imported then, as for `relay --help`); tests/cli/test_exit_codes.py checks the
# table against what the modules register.
COMMAND_MODULES: dict[str, str] = {
    "audit": "audit",
    "authority": "authority",
    "backup": "backup",
    "bench": "bench",
    "check": "admin",
    "decisions": "policy",
    "demo": "demo",
    "erase": "erase",
    "inbox": "client",
    "init": "admin",
    "key": "admin",
    "mailbox": "admin",
    "peer": "admin",
    "peers": "queue",
    "purge": "policy",
    "queue": "queue",
    "reload": "reload",
    "restore": "backup",
    "rules": "policy",
    "run": "run",
    "seal": "seal",
    "send": "client",
    "status": "client",
    "storage": "storage",
    "trace": "trace",
}


def command_modules() -> list[str]:
    """Every module of relay.cli that registers commands (all but this one)."""
    return [i.name for i in pkgutil.iter_modules(relay.cli.__path__) if i.name != "main"]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `relay` parser: with the module of `command` alone when COMMAND_MODULES
    names it, else with every command module registered."""
    parser = argparse.ArgumentParser(
        prog="relay", description="Federated message relay with per-message data residency."
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", required=True)
    # Every module of relay.cli registers its own commands; a new command
    # module needs no edit here to work (only to start fast: COMMAND_MODULES).
    known = COMMAND_MODULES.get(command or "")
    for name in [known] if known else command_modules():
        importlib.import_module(f"relay.cli.{name}").register(sub)
    return parser


def parse_time(text: str, *, zone: bool = False) -> int:
    """Unix ms, or an ISO 8601 time (UTC unless it says otherwise; a trailing Z says
    UTC too): the type of every TIME argument (`relay audit`, `relay erase`). With
    `zone`, an ISO time must name its zone (`relay authority`'s validity)."""
    if text.isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither unix ms nor an ISO 8601 time (2026-12-04T10:00Z)"
        ) from None
    if t.tzinfo is None:
        if zone:
            raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z for UTC)")
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _command(argv: list[str]) -> str | None:
    """The command `argv` names, if its first word is one (not an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def exit_code(error: RelayError) -> int:
    """The exit code for a RelayError that ends a command."""
    if isinstance(error, ConfigError | ConfigErrors | UsageError):
        return EXIT_USAGE
    if isinstance(error, PolicyRefused):
        return EXIT_POLICY
    if isinstance(error, Unreachable):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run `relay` with `argv` (default: sys.argv[1:]) and return the exit code."""
    words = sys.argv[1:] if argv is None else argv
    if words == ["--version"]:  # needs no command module at all
        print(f"relay {__version__}")
        return EXIT_OK
    parser = build_parser(_command(words))
    try:
        args = parser.parse_args(words)
    except SystemExit as e:  # argparse exits on --help, --version and usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, ConfigErrors) as e:
        print(e.detail, file=sys.stderr)  # FILE:LINE: key: reason, one per line
        return exit_code(e)
    except RelayError as e:
        print(f"relay: {e.detail}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("relay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`relay inbox | head`): stop quietly and
        # keep the interpreter from complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"relay: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_FAILURE
