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


def build_parser() -> argparse.ArgumentParser:
    """The full `relay` parser with every command module registered."""
    parser = argparse.ArgumentParser(
        prog="relay", description="Federated message relay with per-message data residency."
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", required=True)
    # Every module of relay.cli registers its own commands; a new command
    # module needs no edit here.
    for info in pkgutil.iter_modules(relay.cli.__path__):
        if info.name == "main":
            continue
        module = importlib.import_module(f"relay.cli.{info.name}")
        module.register(sub)
    return parser


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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
