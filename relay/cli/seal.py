"""`relay seal init|show|rotate|revoke`: this node's seal keys (docs/sealing.md).

The edits are relay.config.sealops'; this module parses arguments and prints.
stdout carries the seal key string (the value other admins pin with
`relay peer update DIR --name THIS --seal-key ...`); messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from relay.cli.keys import duration_arg
from relay.cli.reload import apply_edit
from relay.config.files import load_config
from relay.config.keyops import wall_ms
from relay.config.sealkeys import load_seal_key
from relay.config.sealops import SealChange, expired, seal_init, seal_revoke, seal_rotate
from relay.policy.certs import format_ms
from relay.protocol.sealing import SUITES

PEER_DIR_PLACEHOLDER = "YOUR_NODE_DIR"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay seal` and its actions."""
    seal = sub.add_parser("seal", help="this node's seal keys for sealed payloads").add_subparsers(
        metavar="ACTION", required=True
    )
    for action, func, text in (
        ("init", cmd_init, "give this node its first seal key (nodes made before sealing)"),
        ("rotate", cmd_rotate, "make a new seal key; the old one still opens mail sealed to it"),
    ):
        p = seal.add_parser(action, help=text)
        _dir(p)
        p.add_argument(
            "--suite", choices=SUITES, default=SUITES[0], help="default: %(default)s (hybrid PQ)"
        )
        p.set_defaults(func=func)
        if action == "rotate":
            p.add_argument(
                "--grace",
                type=duration_arg,
                metavar="DURATION",
                help="how long the old seal key still opens mail, e.g. 10d (default: twice "
                "queue_lifetime, as for signing keys; never shorter than queue_lifetime)",
            )
    p = seal.add_parser("show", help="print the current seal key string")
    _dir(p)
    p.add_argument("--json", action="store_true", help="every seal key and its state, as JSON")
    p.set_defaults(func=cmd_show)
    p = seal.add_parser("revoke", help="withdraw a seal key at once: it opens nothing any more")
    _dir(p)
    p.add_argument("key", metavar="KEY", help="seal key id or seal key string")
    p.set_defaults(func=cmd_revoke)


def _dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _tell(change: SealChange, what: str) -> int:
    node = change.config.node
    _say(f"{what}; {change.file} holds the current seal key (mode 0600: keep it secret)")
    code = apply_edit(change.config.path)
    _say("Give the line below to the admins of peers, so that they seal mail to this node:")
    print(
        f"relay peer update {PEER_DIR_PLACEHOLDER} --name {shlex.quote(node.name)} "
        f"--seal-key {shlex.quote(change.current.public.string)}"
    )
    return code


def cmd_init(args: argparse.Namespace) -> int:
    change = seal_init(args.dir, args.suite)
    return _tell(change, f"created seal key {change.current.public.key_id}")


def cmd_rotate(args: argparse.Namespace) -> int:
    change = seal_rotate(args.dir, args.suite, now_ms=wall_ms(), grace_ms=args.grace)
    old = (change.old or "")[: change.old.index(":") + 9] if change.old else ""
    for file in change.dropped:
        _say(f"removed {file}: a retired seal key past its valid_until")
    until = format_ms(change.valid_until_ms or 0)
    return _tell(
        change,
        f"new seal key {change.current.public.key_id}; {old}... is retired and opens mail"
        f" sealed to it until {until}, then nothing (peers must pin the new key before then)",
    )


def cmd_revoke(args: argparse.Namespace) -> int:
    change = seal_revoke(args.dir, args.key)
    return _tell(change, f"revoked seal key {args.key}: mail sealed to it is refused (seal_key)")


def cmd_show(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    node = config.node
    if node.seal_key_file is None:
        _say(f"relay: {config.path} has no seal_key_file; `relay seal init` makes one")
        return 1
    current = load_seal_key(node.seal_key_file)
    now = wall_ms()
    keys: list[dict[str, object]] = [
        {"key_id": current.public.key_id, "key": current.public.string, "state": "current"}
    ]
    for retired in node.retired_seal_keys:
        k = load_seal_key(retired.file)
        until = retired.valid_until_ms
        entry: dict[str, object] = {
            "key_id": k.public.key_id,
            "key": k.public.string,
            "state": "expired" if expired(retired, now) else "retired",
        }
        if until is not None:
            entry["valid_until"] = until
        keys.append(entry)
    if not args.json:
        print(current.public.string)
        for entry in keys[1:]:
            when = entry.get("valid_until")
            when = f"until {format_ms(when)}" if isinstance(when, int) else "until revoked"
            verb = "opened mail" if entry["state"] == "expired" else "opens mail"
            _say(f"{entry['state']} seal key {entry['key_id']}: {verb} {when}")
        return 0
    keys += [{"key": k, "state": "revoked"} for k in node.revoked_seal_keys]
    print(json.dumps({"name": node.name, "seal_keys": keys}))
    return 0
