"""`relay queue` and `relay peers`: the outbound queue, Postfix style (issue 6).

Invariants:
- Listing (`relay queue DIR`, `--summary`, `relay peers`) only reads: it
  opens the node's storage read-only (relay.storage.backends), which is safe
  while the node runs, and works when it is stopped.
- Every change (retry, hold, release, delete) goes through the running
  node's admin API (relay.api.admin), never into the database behind the
  node's back; with no node running it fails and says so.
- stdout carries only the result (tables, or JSON with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from relay.api.admin_client import call
from relay.config.files import load_config
from relay.config.model import Config
from relay.config.values import node_name_error
from relay.node import queueview
from relay.node.opening import open_node_readonly
from relay.node.queueops import DELETED_REASON
from relay.storage.interface import ReadOnlyStorage
from relay.storage.records import AgeBucket, PeerState, QueueCount, QueueListing

T = TypeVar("T")

ACTIONS = ("list", "retry", "hold", "release", "delete")
USAGE = """relay queue DIR [--summary] [--dest NODE] [--json]
       relay queue retry DIR (--dest NODE | ID...) [--json]
       relay queue hold DIR ID... [--json]
       relay queue release DIR ID... [--json]
       relay queue delete DIR ID... [--json]"""
DESCRIPTION = """\
List the envelopes queued for other nodes (id, destination, age, attempts,
next retry, last error), or with --summary count them by age and destination
like Postfix's qshape. retry ends the backoff of a destination (or of the
destinations of the given envelopes) now; hold keeps envelopes from being
sent, release lets them go again; delete takes them out of the queue and
gives each sender a `rejected` status or receipt. Those four need the node
running: they go through its admin socket DIR/admin.sock. (A node directory
named like an action is written ./retry.)"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `queue` and `peers` to the `relay` parser."""
    p = sub.add_parser(
        "queue",
        help="list, summarise, retry, hold, release or delete queued envelopes",
        usage=USAGE,
        description=DESCRIPTION,
    )
    _queue_options(p)
    # Options may come before, between or after the words: what argparse
    # leaves after the first word is parsed again by `_inner_parser`.
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="[ACTION] DIR [ID ...]")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser(
        "peers",
        help="each destination: up or backing off, next retry, last error, queued, delivered",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("--json", action="store_true", help="print the peers as JSON")
    p.set_defaults(func=cmd_peers)


def _queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summary", action="store_true", help="age x destination counts (qshape)")
    p.add_argument("--dest", metavar="NODE", help="only this destination (list, retry)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _inner_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay queue", usage=USAGE, add_help=False)
    _queue_options(p)
    p.add_argument("words", nargs="*")
    return p


def _usage_error(message: str) -> int:
    print(f"usage: {USAGE}\nrelay queue: error: {message}", file=sys.stderr)
    return 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _read(config: Config, query: Callable[[ReadOnlyStorage], Awaitable[T]], empty: T) -> T:
    """What `query` reads on a read-only open of the node's storage; `empty`
    when the node never ran (no database yet)."""
    database = config.storage.sqlite_path
    if database is not None and not database.exists():
        return empty

    async def run() -> T:
        reads = await open_node_readonly(config)
        try:
            return await query(reads)
        finally:
            await reads.close()

    return asyncio.run(run())


def cmd_queue(args: argparse.Namespace) -> int:
    """Dispatch `relay queue [ACTION] DIR ...`."""
    inner, unknown = _inner_parser().parse_known_intermixed_args(args.words)
    if unknown:
        return _usage_error(f"unrecognized arguments: {' '.join(unknown)}")
    args.summary = args.summary or inner.summary
    args.json = args.json or inner.json
    args.dest = inner.dest if inner.dest is not None else args.dest
    words: list[str] = inner.words
    if not words:
        return _usage_error("give the node directory")
    action, rest = (words[0], words[1:]) if words[0] in ACTIONS else ("list", words)
    if not rest:
        return _usage_error(f"give the node directory after {action!r}")
    directory, ids = Path(rest[0]), [w.lower() for w in rest[1:]]
    if args.dest is not None and (reason := node_name_error(args.dest)) is not None:
        return _usage_error(f"--dest: {reason}")
    if action == "list":
        if ids:
            return _usage_error(f"unexpected arguments: {' '.join(rest[1:])}")
        return _list(directory, args)
    if args.summary:
        return _usage_error(f"--summary goes with listing, not with {action}")
    bad = [i for i in ids if len(i) != 32 or any(c not in "0123456789abcdef" for c in i)]
    if bad:
        return _usage_error(f"not an envelope id (32 hex digits): {bad[0]}")
    if action == "retry":
        if (args.dest is None) == (not ids):
            return _usage_error("retry takes either --dest NODE or envelope ids")
        body: dict[str, Any] = {"dest": args.dest} if args.dest else {"ids": ids}
    else:
        if args.dest is not None:
            return _usage_error(f"{action} takes envelope ids, not --dest")
        if not ids:
            return _usage_error(f"{action} needs at least one envelope id")
        body = {"ids": ids}
    config = load_config(directory)
    result = call(config.path.parent, "POST", f"/admin/v1/queue/{action}", body)
    return _report(action, result, args.json)


def _list(directory: Path, args: argparse.Namespace) -> int:
    config = load_config(directory)
    now = _now_ms()
    if args.summary:
        rows: list[AgeBucket] = _read(
            config, lambda r: r.queue_ages(now, queueview.AGE_BOUNDS_MS), []
        )
        if args.dest is not None:
            rows = [r for r in rows if r.hop == args.dest]
        shape = queueview.queue_shape(rows)
        if args.json:
            print(
                json.dumps(
                    {"ages": list(queueview.AGE_LABELS), "rows": [r.to_json() for r in shape]}
                )
            )
        else:
            print(queueview.render_shape(shape))
        return 0
    listing: list[QueueListing] = _read(config, lambda r: r.queue_listing(args.dest, -1), [])
    entries = queueview.queue_entries(listing, now)
    if args.json:
        for e in entries:
            print(json.dumps(e.to_json()))
    else:
        print(queueview.render_queue(entries, now))
    return 0


def _report(action: str, result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    changed, matched = int(result["changed"]), int(result["matched"])
    unknown: list[str] = result["unknown"]
    peers: list[str] = result["peers"]

    def n(count: int) -> str:
        return f"{count} envelope{'' if count == 1 else 's'}"

    if action == "retry":
        if peers:
            _say(f"retrying now: {', '.join(peers)} ({n(changed)} ready to send)")
        if matched > changed:
            _say(f"{n(matched - changed)} of them held: `relay queue release` lets them go")
    elif action == "hold":
        _say(
            f"held {n(changed)}"
            + (f" ({matched - changed} already held)" if matched > changed else "")
        )
    elif action == "release":
        _say(
            f"released {n(changed)}"
            + (f" ({matched - changed} were not held)" if matched > changed else "")
        )
    else:
        _say(
            f"deleted {n(changed)}; each sender gets a rejected status or receipt "
            f"(reason: {DELETED_REASON})"
        )
    for ident in unknown:
        _say(f"relay: not queued: {ident}")
    return 1 if unknown else 0


def cmd_peers(args: argparse.Namespace) -> int:
    """Each destination: state, queued, delivered, next retry, last error."""
    config = load_config(args.dir)
    now = _now_ms()
    states: dict[str, PeerState] = _read(config, lambda r: r.peer_states(), {})
    counts: list[QueueCount] = _read(config, lambda r: r.queue_counts(), [])
    views = queueview.peer_views(config.peers, states, counts, now)
    if args.json:
        for v in views:
            print(json.dumps(v.to_json()))
    else:
        print(queueview.render_peers(views, now))
    return 0
