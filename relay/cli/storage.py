"""`relay storage copy DIR TARGET`: move a stopped node's stored state to another database.

Invariants:
- The node must be stopped: a node answering on its admin socket is refused,
  and the source's own lock (SQLite) is held for the whole copy, so a node
  cannot start in the middle of it.
- Both databases are opened through relay.storage.backends first, which
  brings each to this relay's schema; then every table is copied in one
  target transaction (relay.storage.transfer) and the rows per table are
  counted on both sides and printed. Nothing is written to the source.
- A target holding relay data is refused unless --replace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from relay.api.admin_client import NodeNotRunning, call
from relay.config.files import load_config
from relay.errors import BadRequest, Conflict
from relay.storage.copying import copy_storage
from relay.storage.transfer import Copied

SQLITE_PREFIX = "sqlite:"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `storage copy` to the `relay` parser."""
    p = sub.add_parser("storage", help="move a node's stored state between databases")
    cmds = p.add_subparsers(metavar="ACTION", required=True)
    c = cmds.add_parser(
        "copy",
        help="copy every table of a stopped node's database into TARGET and count the rows",
    )
    c.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    c.add_argument("target", metavar="TARGET", help="sqlite:PATH (a new or empty database file)")
    c.add_argument("--replace", action="store_true", help="overwrite what TARGET already holds")
    c.add_argument("--json", action="store_true", help="print the counts as one JSON document")
    c.set_defaults(func=cmd_copy)


def sqlite_target(target: str, base: Path) -> Path:
    """The file a `sqlite:PATH` target names (relative to `base`); BadRequest otherwise."""
    if not target.startswith(SQLITE_PREFIX) or not target.removeprefix(SQLITE_PREFIX):
        raise BadRequest(f"TARGET {target!r} is not sqlite:PATH")
    path = Path(target.removeprefix(SQLITE_PREFIX))
    return path if path.is_absolute() else (base / path).absolute()


def refuse_running(directory: Path) -> None:
    """Conflict if a node answers on the admin socket of `directory`."""
    try:
        call(directory, "GET", "/admin/v1/node")
    except NodeNotRunning:
        return
    raise Conflict(f"the node in {directory} is running; stop it before copying its storage")


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy the node's database into TARGET; print the rows per table."""
    config = load_config(args.dir)
    directory = config.path.parent
    refuse_running(directory)
    source = config.node.database
    dest = sqlite_target(args.target, directory)
    copied = asyncio.run(copy_storage(source, dest, replace=args.replace))
    if args.json:
        print(json.dumps({c.table: {"source": c.source, "target": c.target} for c in copied}))
    else:
        print(render(copied))
    total = sum(c.target for c in copied)
    print(f"copied {total} rows from {source} to {dest}", file=sys.stderr)
    return 0


def render(copied: list[Copied]) -> str:
    """One `table  source  target` line per table."""
    width = max(len(c.table) for c in copied)
    lines = [f"{'table':<{width}}  {'source':>9}  {'target':>9}"]
    lines += [f"{c.table:<{width}}  {c.source:>9}  {c.target:>9}" for c in copied]
    return "\n".join(lines)
