"""`relay key rotate`, `relay key revoke`, `relay key list` (issue 4.6, docs/keys.md).

They join the `relay key` command that relay.cli.admin defines (through
`add_key_actions`). The work is done by relay.config.keyops; this module parses
arguments and prints. stdout carries the line to give to the admins of
peers (or the data, with --json); every message goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from relay.cli.reload import apply_edit
from relay.config.files import load_config
from relay.config.keyops import (
    Rotation,
    default_grace_ms,
    key_infos,
    revoke,
    revoke_peer_key,
    rotate,
)
from relay.config.keyops import wall_ms as now
from relay.config.values import parse_duration_ms
from relay.errors import MalformedError
from relay.protocol.keystr import key_id, parse_public_key

PEER_DIR_PLACEHOLDER = "YOUR_NODE_DIR"  # the same placeholder as `relay init` prints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """No top-level command: the actions are added under `relay key` (add_key_actions)."""


def add_key_actions(key: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add rotate, revoke and list to `relay key`."""
    p = key.add_parser("rotate", help="make a new signing key; the old one stays valid a while")
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help="how long the old key stays valid, e.g. 10d (default: twice queue_lifetime; "
        "never shorter than queue_lifetime)",
    )
    p.add_argument(
        "--keep-old-key", action="store_true", help="keep the old private key file on disk"
    )
    p.set_defaults(func=cmd_key_rotate)

    p = key.add_parser("revoke", help="withdraw a key at once (this node's, or a peer's)")
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("key", metavar="KEY", help="key id or ed25519:... key string")
    p.add_argument("--peer", metavar="NAME", help="revoke a key of this pinned peer")
    p.add_argument(
        "--new-key",
        dest="new_keys",
        action="append",
        default=[],
        type=_key_arg,
        metavar="KEY",
        help="with --peer: pin this key of the peer at the same time (repeatable)",
    )
    p.add_argument(
        "--keep-old-key",
        action="store_true",
        help="revoking the signing key: keep its private key file on disk",
    )
    p.set_defaults(func=cmd_key_revoke)

    p = key.add_parser("list", help="the signing, retired and revoked keys")
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("--json", action="store_true", help="one JSON object per key, one per line")
    p.set_defaults(func=cmd_key_list)


def duration_arg(value: str) -> int:
    """An argparse type: a duration such as 10d or 30s, in ms (relay.config.values)."""
    try:
        return parse_duration_ms(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _key_arg(value: str) -> str:
    try:
        parse_public_key(value)
    except MalformedError as e:
        raise argparse.ArgumentTypeError(e.detail) from None
    return value


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _peer_line(*args: str) -> str:
    return " ".join(["relay", *(shlex.quote(a) for a in args)])


def _report_rotation(r: Rotation) -> None:
    _say(f"new signing key {key_id(r.new_key)} in {r.key_file} (mode 0600)")
    if r.removed is not None:
        _say(f"removed the old private key file {r.removed}")
    for gone in r.dropped:
        _say(f"dropped retired key {key_id(gone)}: its valid_until has passed")
    if r.config.node.certificates:
        _say(
            "note: this node's certificate lists its old key; ask the authority for a "
            "certificate that lists the new one"
        )


def cmd_key_rotate(args: argparse.Namespace) -> int:
    """New signing key; the old one retired for the grace period; print the peers' line."""
    config = load_config(args.dir)
    grace = args.grace if args.grace is not None else default_grace_ms(config)
    if grace < config.node.queue_lifetime_ms:
        _say(
            "relay: --grace must be at least the queue lifetime "
            f"({config.node.queue_lifetime_ms // 1000} s): envelopes signed with the old key "
            "may wait that long in a queue"
        )
        return 2
    r = rotate(args.dir, now_ms=now(), grace_ms=grace, keep_old_file=args.keep_old_key)
    _report_rotation(r)
    code = apply_edit(args.dir)
    _say(
        f"the old key {key_id(r.old_key)} stays valid until {_when(r.valid_until_ms)} "
        "and is published in /.well-known/relay until then."
    )
    _say(
        "Give the line below to the admins of nodes that pin this one; they replace "
        f"{PEER_DIR_PLACEHOLDER} with their node directory (after {_when(r.valid_until_ms)} "
        "they may drop the old key):"
    )
    keys = [r.new_key, *(k.key for k in r.config.node.retired_keys)]
    print(
        _peer_line(
            "peer",
            "update",
            PEER_DIR_PLACEHOLDER,
            "--name",
            config.node.name,
            *(a for k in keys for a in ("--key", k)),
        )
    )
    return code


def cmd_key_revoke(args: argparse.Namespace) -> int:
    """Withdraw a key of this node (printing the peers' line) or of a pinned peer."""
    if args.peer is None and args.new_keys:
        _say("relay: --new-key goes with --peer")
        return 2
    if args.peer is not None:
        rv = revoke_peer_key(args.dir, args.peer, args.key, new_keys=tuple(args.new_keys))
        if rv.already:
            _say(f"key {key_id(rv.key)} of {args.peer} was already revoked; nothing changed")
            return 0
        for added in rv.added:
            _say(f"pinned key {key_id(added)} for {args.peer}")
        _say(f"revoked key {key_id(rv.key)} of {args.peer}: it is refused from now on")
        return apply_edit(args.dir)
    config = load_config(args.dir)
    rv = revoke(args.dir, args.key, now_ms=now(), keep_old_file=args.keep_old_key)
    if rv.already:
        _say(f"key {key_id(rv.key)} was already revoked; nothing changed")
        return 0
    _say(f"revoked key {key_id(rv.key)}: it is no longer published and never signs again")
    extra: list[str] = []
    if rv.rotation is not None:
        _report_rotation(rv.rotation)
        extra = ["--new-key", rv.rotation.new_key]
    code = apply_edit(args.dir)
    _say(
        "Give the line below to the admins of nodes that pin this one, so that they refuse "
        f"the key at once; they replace {PEER_DIR_PLACEHOLDER} with their node directory:"
    )
    print(
        _peer_line(
            "key", "revoke", PEER_DIR_PLACEHOLDER, rv.key, "--peer", config.node.name, *extra
        )
    )
    return code


def cmd_key_list(args: argparse.Namespace) -> int:
    """Print the node's keys: signing, retired (with valid_until), revoked."""
    config = load_config(args.dir)
    for info in key_infos(config, now()):
        if args.json:
            doc: dict[str, object] = {
                "key": info.key,
                "key_id": key_id(info.key),
                "state": info.state,
            }
            if info.valid_until_ms is not None:
                doc["valid_until"] = info.valid_until_ms
            print(json.dumps(doc))
        else:
            until = f" until {_when(info.valid_until_ms)}" if info.valid_until_ms else ""
            print(f"{info.state:8} {key_id(info.key)} {info.key}{until}")
    return 0
