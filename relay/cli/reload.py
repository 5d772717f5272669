"""`relay reload DIR`, and the reload that every command editing node.toml ends with.

Invariants:
- A command that changes node.toml (peer, mailbox, key, authority) has
  validated and written the whole file before it asks the running node to
  read it again, through its admin socket (POST /admin/v1/reload, what SIGHUP
  does). The node validates again and keeps its old config if it refuses;
  the command then says so and why, and exits 2.
- The command always says which of the three happened: the node runs and
  now uses the change; it is not running, so the change is used when it
  starts; or it runs but did not take the change (and how to retry).
- A file edit that was made stays made: a failed reload never undoes it, and
  a token printed by `mailbox add` is printed whatever the reload did.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.api.admin_client import NodeNotRunning, call
from relay.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from relay.config.files import config_file
from relay.errors import RelayError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay reload` to the `relay` parser."""
    p = sub.add_parser(
        "reload",
        help="make the running node re-read node.toml (as SIGHUP does) and say what it did",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p.set_defaults(func=cmd_reload)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What asking the node of a directory to reload came to."""

    running: bool
    applied: bool
    problems: tuple[str, ...] = ()  # why it was refused, or why it could not be asked
    restart_needed: tuple[str, ...] = ()
    answer: Any = None  # the admin API's document, when there was one


def reload_node(directory: Path) -> Outcome:
    """Ask the node of `directory` (a node directory or its node.toml) to reload."""
    home = config_file(directory).absolute().parent
    try:
        doc = call(home, "POST", "/admin/v1/reload")
    except NodeNotRunning:
        return Outcome(running=False, applied=False)
    except RelayError as e:
        return Outcome(running=True, applied=False, problems=(f"cannot ask it: {e.detail}",))
    if not isinstance(doc, dict):
        return Outcome(True, False, (f"unexpected answer {doc!r}",))
    # a single node answers {applied, errors, restart_needed, ...}; the
    # supervisor of `relay run --workers N` answers {applied, workers: [those]}
    workers = doc.get("workers")
    parts: list[dict[str, Any]] = workers if isinstance(workers, list) else [doc]
    problems: list[str] = []
    restart: list[str] = []
    for part in parts:
        worker = f"worker {part['worker']}: " if "worker" in part else ""
        problems += [f"{worker}{p}" for p in part.get("errors", [])]
        if not part.get("applied") and not part.get("errors") and part.get("detail"):
            problems.append(f"{worker}{part['detail']}")
        restart += [k for k in part.get("restart_needed", []) if k not in restart]
    return Outcome(True, doc.get("applied") is True, tuple(problems), tuple(restart), doc)


def apply_edit(directory: Path) -> int:
    """After a command wrote node.toml: have the running node use it, and say
    what happened on stderr. The exit code for the command."""
    outcome = reload_node(directory)
    if not outcome.running:
        _say("the node is not running; it uses the change when it starts (relay run)")
        return EXIT_OK
    if outcome.applied:
        return _applied(outcome, "the running node reloaded node.toml: the change is in effect now")
    return _not_applied(directory, outcome, saved=True)


def _applied(outcome: Outcome, line: str) -> int:
    _say(line)
    if outcome.restart_needed:
        keys = ", ".join(outcome.restart_needed)
        _say(f"({keys} changed too, but only a restart applies it; the old value is kept)")
    return EXIT_OK


def _not_applied(directory: Path, outcome: Outcome, *, saved: bool) -> int:
    refused = bool(outcome.answer)
    if refused:
        _say("relay: the running node refused node.toml and keeps its old config:")
    else:
        _say("relay: the running node could not be asked to reload:")
    for problem in outcome.problems:
        _say(f"  {problem}")
    if saved:
        _say(
            "the change is saved in node.toml but not in effect; fix what is named above"
            f" and run `relay reload {directory}` (or systemctl reload relay)"
        )
    return EXIT_USAGE if refused else EXIT_FAILURE


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload the running node; exit 0 applied, 2 refused, 5 not running, 1 not asked."""
    outcome = reload_node(args.dir)
    if args.json and outcome.answer is not None:
        print(json.dumps(outcome.answer))
    if not outcome.running:
        _say(f"relay: the node in {args.dir} is not running (no admin socket answers)")
        return EXIT_UNREACHABLE
    if outcome.applied:
        return _applied(outcome, "reloaded: the running node uses node.toml as it is now")
    return _not_applied(args.dir, outcome, saved=False)


def _say(message: str) -> None:
    print(message, file=sys.stderr)
