"""`relay trace DIR ID`: the whole life of one message at this node (issue 17.2).

Reads the node's storage read-only (safe beside a running node, and with it
stopped) and prints relay.node.trace's timeline: one line an event, or JSON
Lines with --json. ID is what `relay send` printed (a message id) or an
envelope id from a log line or `relay queue`. Exit 0 when something is
stored about ID, 1 when nothing is.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
from pathlib import Path

from relay.config.files import load_config
from relay.config.model import Config
from relay.node.opening import open_node_readonly
from relay.node.trace import Event, timeline
from relay.storage.records import AllowRecord, DecisionRecord

RECEIPT_SCAN = 5000  # receipts stored since the message arrived that are searched
PER_ENVELOPE = 100  # decisions read per envelope


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay trace` to the `relay` parser."""
    p = sub.add_parser(
        "trace",
        help="the life of one message at this node, from its database",
        description=(
            "Print what this node's database holds about one message: submitted or"
            " received, residency decisions with their rules, the queue, each delivery"
            " attempt with its next hop and outcome, receipts written and received,"
            " recipients' statuses, inbox delivery and reading, erasure. Safe while the"
            " node runs."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument(
        "id", type=_ident, metavar="ID", help="message id (from relay send) or envelope id"
    )
    p.add_argument("--json", action="store_true", help="JSON Lines: {at, event, envelope, text}")
    p.set_defaults(func=cmd_trace)


def _ident(value: str) -> bytes:
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a message id: ids are 32 hex digits, as `relay send` prints them"
        )
    return bytes.fromhex(text)


async def read_trace(config: Config, ident: bytes) -> list[Event]:
    """The timeline of `ident` at the node of `config`."""
    reads = await open_node_readonly(config)
    try:
        rows = await reads.trace(ident, RECEIPT_SCAN)
        ids = dict.fromkeys([ident, *(e.id for e in rows.envelopes)])
        decisions: list[DecisionRecord] = []
        allows: list[AllowRecord] = []
        for env in ids:
            decisions += await reads.decisions(env, None, PER_ENVELOPE)
            allows += await reads.allows(env, PER_ENVELOPE)
        # erasure records outlive the envelope's rows; a purged message sent from
        # here is still found by (this node, ID)
        keys = dict.fromkeys(
            [(config.node.name, ident), *((e.origin, e.id) for e in rows.envelopes)]
        )
        erasures = list((await reads.erasure_records(list(keys))).values())
    finally:
        await reads.close()
    return timeline(config.node.name, rows, decisions, allows, erasures)


def cmd_trace(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    events = asyncio.run(read_trace(config, args.id))
    if not events:
        print(
            f"relay: nothing stored about {args.id.hex()} at {config.node.name}: not seen here,"
            " or already purged by retention (purges keep counts, not ids)",
            file=sys.stderr,
        )
        return 1
    for ev in events:
        if args.json:
            print(json.dumps(ev.as_json(), ensure_ascii=False))
        else:
            envelope = f" [{ev.envelope}]" if ev.envelope and ev.envelope != args.id.hex() else ""
            print(f"{_when(ev.at)}  {ev.what:<16} {ev.text}{envelope}")
    return 0


def _when(ms: int) -> str:
    if ms == 0:
        return " " * 23
    stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
