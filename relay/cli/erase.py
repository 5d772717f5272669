"""`relay erase`: erase a message at its origin and, from there, on every copy (issue 14).

Two ways in, told apart by the first word:
- `relay erase DIR ID... --reason R` or `relay erase DIR --mailbox M --since T
  --until T --reason R`: the origin's admin, through the running node's admin
  API (relay.api.admin, `POST /admin/v1/erase`); DIR is the node directory.
- `relay erase --node URL ID`: the sending mailbox, through the client API
  (`DELETE /v1/messages/{id}`, token as for `relay send`).

stdout carries one line per envelope reached (or the JSON answer with --json);
what the storage did to its files goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from relay.api.admin_client import call
from relay.cli.client import _call, _common, _need
from relay.cli.main import parse_time
from relay.config.files import load_config
from relay.errors import UsageError

USAGE = """relay erase DIR ID... --reason TEXT [--json]
       relay erase DIR --mailbox NAME --since TIME --until TIME --reason TEXT [--json]
       relay erase --node URL [--token-file PATH] ID [--json]"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `erase` to the `relay` parser."""
    p = sub.add_parser(
        "erase",
        help="erase a message here and on every node that holds a copy",
        usage=USAGE,
        description="Erase messages this node originated: the admin by id or by sender "
        "mailbox and time range (with DIR, through the admin socket), or the sending "
        "mailbox by id (with --node, through the client API). See docs/erasure.md.",
    )
    _common(p)
    p.add_argument("words", nargs="*", metavar="DIR|ID", help="node directory, then ids")
    p.add_argument("--reason", help="why (recorded with the erasure; required for the admin)")
    p.add_argument("--mailbox", help="erase what this mailbox sent (with --since, --until)")
    p.add_argument("--since", type=parse_time, help="from this time (ISO 8601 UTC, or unix ms)")
    p.add_argument("--until", type=parse_time, help="before this time (ISO 8601 UTC, or unix ms)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_erase)


def cmd_erase(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    if words and Path(words[0]).exists():
        doc = _as_admin(Path(words[0]), words[1:], args)
    else:
        doc = _as_mailbox(words, args)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        _print(doc)
    print(f"storage: {doc.get('scrub', '')}", file=sys.stderr)
    return 0


def _as_admin(directory: Path, ids: list[str], args: argparse.Namespace) -> Any:
    config = load_config(directory)
    if not args.reason:
        raise UsageError("give --reason: the admin's reason is recorded with the erasure")
    body: dict[str, Any]
    if args.mailbox is not None:
        if ids or args.since is None or args.until is None:
            raise UsageError("--mailbox takes --since and --until, and no ids")
        body = {"mailbox": args.mailbox, "since": args.since, "until": args.until}
    elif ids:
        body = {"ids": ids}
    else:
        raise UsageError("name message ids, or --mailbox with --since and --until")
    return call(config.path.parent, "POST", "/admin/v1/erase", {**body, "reason": args.reason})


def _as_mailbox(words: list[str], args: argparse.Namespace) -> Any:
    if len(words) != 1 or args.mailbox is not None:
        raise UsageError(
            "a mailbox erases one message: relay erase --node URL ID"
            " (or give the node directory first, for the admin)"
        )
    node, token, tls = _need(args)
    return asyncio.run(_call("DELETE", f"{node}/v1/messages/{words[0]}", token, tls=tls))


def _print(doc: Any) -> None:
    for e in doc.get("erased", []):
        where = f" (then {e['hop']})" if e.get("hop") else ""
        if e["status"] == "held":
            until = dt.datetime.fromtimestamp(e["hold_until"] / 1000, dt.UTC)
            state = f"held until {until:%Y-%m-%d %H:%M} UTC (retention.content_min_days)"
        else:
            state = "erased"
        print(f"{e['id']} to {e['dest']}: {state}{where}")
    for ident in doc.get("unknown", []):
        print(f"{ident}: unknown (no message originated here)")
