"""`relay storage copy DIR TARGET`: move a stopped node's stored state to another database.

Invariants:
- The node must be stopped: a node answering on its admin socket is refused,
  and so is a source whose lock (SQLite) or leases (any worker's) are held;
  the source's lock is held for the whole copy, so a node cannot start in
  the middle of it.
- Both databases are opened through relay.storage.backends first, which
  brings each to this relay's schema; then every table is copied in one
  target transaction (relay.storage.transfer) and the rows per table are
  counted on both sides and printed. Nothing is written to the source.
- A target holding relay data is refused unless --replace.
- --switch edits `[storage]` in node.toml only after the copy committed, and
  through the same validated write as every other node.toml edit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from relay.api.admin_client import NodeNotRunning, call
from relay.config.files import load_config, read_password_file, save_edited
from relay.config.model import Config, StorageConfig
from relay.config.storage import parse_storage_url
from relay.config.tomledit import dumps
from relay.errors import BadRequest, Conflict
from relay.node.opening import storage_password
from relay.storage.copying import copy_storage
from relay.storage.transfer import Copied


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `storage copy` to the `relay` parser."""
    p = sub.add_parser("storage", help="move a node's stored state between databases")
    cmds = p.add_subparsers(metavar="ACTION", required=True)
    c = cmds.add_parser(
        "copy",
        help="copy every table of a stopped node's storage into TARGET and count the rows",
    )
    c.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    c.add_argument(
        "target",
        metavar="TARGET",
        help="sqlite:PATH (relative to DIR) or postgresql://USER@HOST[:PORT]/DB[?schema=NAME]",
    )
    c.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="TARGET's database password (mode 0600), else $RELAY_STORAGE_PASSWORD",
    )
    c.add_argument("--replace", action="store_true", help="overwrite what TARGET already holds")
    c.add_argument(
        "--switch",
        action="store_true",
        help="after the copy, make TARGET the node's [storage] url in node.toml",
    )
    c.add_argument("--json", action="store_true", help="print the counts as one JSON document")
    c.set_defaults(func=cmd_copy)


def parse_target(target: str, directory: Path) -> StorageConfig:
    """TARGET as node.toml would hold it (sqlite:PATH relative to `directory`)."""
    try:
        return parse_storage_url(target, directory)
    except ValueError as e:
        raise BadRequest(f"TARGET: {e}") from None


def refuse_running(directory: Path) -> None:
    """Conflict if a node answers on the admin socket of `directory`."""
    try:
        call(directory, "GET", "/admin/v1/node")
    except NodeNotRunning:
        return
    raise Conflict(f"the node in {directory} is running; stop it before copying its storage")


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy the node's storage into TARGET; print the rows per table."""
    config = load_config(args.dir)
    directory = config.path.parent
    dest = parse_target(args.target, directory)
    password_file: Path | None = args.password_file
    if password_file is not None:
        if dest.sqlite_path is not None:
            raise BadRequest("--password-file is for a PostgreSQL TARGET, not sqlite:")
        password_file = password_file.absolute()
        try:
            dest_password: str | None = read_password_file(password_file)
        except ValueError as e:
            raise BadRequest(f"--password-file: {e}") from None
    else:
        dest_password = storage_password(StorageConfig(dest.url), config.path)
    refuse_running(directory)
    source = config.storage
    copied = asyncio.run(
        copy_storage(
            source.target,
            dest.target,
            source_password=storage_password(source, config.path),
            target_password=dest_password,
            replace=args.replace,
        )
    )
    if args.json:
        print(json.dumps({c.table: {"source": c.source, "target": c.target} for c in copied}))
    else:
        print(render(copied))
    total = sum(c.target for c in copied)
    print(f"copied {total} rows from {source.url} to {dest.url}", file=sys.stderr)
    if args.switch:
        switch(config, args.target, password_file)
        print(f"{config.path}: [storage] url = {args.target!r}", file=sys.stderr)
    return 0


def switch(config: Config, url: str, password_file: Path | None) -> None:
    """Make `url` the node's `[storage] url` (with `password_file`, or none).

    `[node] database` goes: the url replaces it, and node.toml may not name both.
    """
    text = config.path.read_text(encoding="utf-8")
    doc = tomlkit.parse(text)
    node = doc.get("node")
    if isinstance(node, Table) and "database" in node:
        del node["database"]
    table = doc.get("storage")
    if not isinstance(table, Table):
        table = tomlkit.table()
        doc["storage"] = table
    table["url"] = url
    if password_file is not None:
        table["password_file"] = str(password_file)
    elif "password_file" in table and parse_storage_url(url, config.path.parent).sqlite_path:
        del table["password_file"]
    save_edited(config.path, text, dumps(doc))


def render(copied: list[Copied]) -> str:
    """One `table  source  target` line per table."""
    width = max(len(c.table) for c in copied)
    lines = [f"{'table':<{width}}  {'source':>9}  {'target':>9}"]
    lines += [f"{c.table:<{width}}  {c.source:>9}  {c.target:>9}" for c in copied]
    return "\n".join(lines)
