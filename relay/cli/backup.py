"""`relay backup DIR FILE` and `relay restore DIR FILE` (docs/backup.md).

Invariants:
- A running node makes its own snapshot, asked through its admin API, and
  streams it here; a stopped node's database is copied by this process while
  it holds the database lock, so a node cannot start in the middle. Either way the copy
  is SQLite's online backup, mode 0600, checked, and renamed into place.
- `restore` never touches a running node's database: it takes the lock
  first and refuses while a node holds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay.api.admin_client import NodeNotRunning, call
from relay.config.files import load_config
from relay.node.opening import sqlite_file
from relay.storage.sqlite.backup import (
    check_destination,
    database_lock,
    install,
    private_temp,
    remove_temp,
    restore_file,
    schema_version_of,
    snapshot,
)

_USE_PG_DUMP = (
    "back up a PostgreSQL node with pg_dump (docs/backup.md), e.g. "
    "pg_dump --format=custom --file=relay.dump DBNAME"
)
_USE_PG_RESTORE = "restore a PostgreSQL node with pg_restore (docs/backup.md)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `backup` and `restore` to the `relay` parser."""
    p = sub.add_parser(
        "backup", help="copy the node's database to FILE (SQLite online backup, safe while running)"
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("file", type=Path, metavar="FILE", help="where to write the backup")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="put a backup in place as the node's database (the node must be stopped)"
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("file", type=Path, metavar="FILE", help="a file written by `relay backup`")
    p.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up through the running node, or directly when it is stopped."""
    config = load_config(args.dir)
    database = sqlite_file(config, "relay backup", _USE_PG_DUMP)
    dest: Path = args.file.absolute()
    check_destination(database, dest, overwrite=args.force)
    tmp = private_temp(dest)
    try:
        try:
            with tmp.open("wb") as sink:
                size = call(config.path.parent, "POST", "/admin/v1/backup", {}, sink=sink)
            schema_version_of(tmp)  # it arrived whole: SQLite's check and our schema
            how = "made by the running node"
        except NodeNotRunning:
            with database_lock(database):
                size = snapshot(database, tmp)
            how = "node stopped"
        install(tmp, dest)
    finally:
        remove_temp(tmp)
    print(f"backed up {database} to {dest} ({size} bytes, {how})", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace a stopped node's database with a backup; keep the old one beside it."""
    config = load_config(args.dir)
    database = sqlite_file(config, "relay restore", _USE_PG_RESTORE)
    backup: Path = args.file.absolute()
    with database_lock(database):
        kept = restore_file(backup, database)
    print(f"restored {database} from {backup}", file=sys.stderr)
    if kept is not None:
        print(f"the replaced database is kept as {kept}", file=sys.stderr)
    return 0
