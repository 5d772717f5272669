"""Admin commands that write a node's files: init, key, peer, mailbox, check (DESIGN §9).

Invariants:
- A command never leaves node.toml invalid: every edit is made with tomlkit
  (comments and layout survive), the new text is validated as a whole with
  `parse_config` before it is written, and the write is atomic. An edit that
  would make the file invalid writes nothing and reports why.
- Nothing is overwritten by `init` or `key generate`; key files are 0600 from
  the moment they exist.
- A mailbox token is printed once, as the last line of stdout, and only its
  SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shlex
import sys
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from relay.cli.keys import add_key_actions
from relay.cli.reload import apply_edit
from relay.config.files import config_file, load_config, save_edited
from relay.config.keys import generate_key_file, load_private_key
from relay.config.model import CONFIG_NAME, Config
from relay.config.sealkeys import SEAL_KEY_NAME, generate_seal_key_file
from relay.config.tomledit import (
    TomlLocator,
    append_table,
    dumps,
    remove_table,
    tables_of,
)
from relay.config.values import (
    country_error,
    mailbox_name_error,
    mailbox_token_sha256,
    node_name_error,
    parse_listen,
    url_error,
)
from relay.errors import ConfigError, ConfigErrors, Conflict, MalformedError, UsageError
from relay.node.opening import leftovers, unread_messages
from relay.protocol.keystr import key_id, parse_public_key, public_key_string
from relay.protocol.sealing import parse_seal_key

KEY_NAME = "node.key"
DEFAULT_LISTEN = "127.0.0.1:8701"
PEER_DIR_PLACEHOLDER = "YOUR_NODE_DIR"


TOKEN_PREFIX = "rly_"


def new_token() -> str:
    """A fresh mailbox token: a fixed prefix (greppable in leaked logs, and never
    starting with '-', which argparse would take for an option) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add init, key, peer, mailbox and check to the `relay` parser."""
    p = sub.add_parser("init", help="create a new node: node.toml and node.key")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--name", required=True, type=_arg(node_name_error), help="node name")
    p.add_argument("--jurisdiction", required=True, type=_arg(country_error), metavar="CC")
    p.add_argument("--listen", default=DEFAULT_LISTEN, type=_listen_arg, metavar="HOST:PORT")
    p.add_argument("--public-url", type=_url_arg, metavar="URL", help="default: http://LISTEN")
    p.set_defaults(func=cmd_init)

    key = sub.add_parser("key", help="the node's own key").add_subparsers(
        metavar="ACTION", required=True
    )
    p = key.add_parser("show", help="print the node's public key string")
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="print name, key and key id as JSON")
    p.set_defaults(func=cmd_key_show)
    p = key.add_parser("generate", help="create the key file that node.toml names, if missing")
    _dir_arg(p)
    p.set_defaults(func=cmd_key_generate)
    add_key_actions(key)  # rotate, revoke, list

    peer = sub.add_parser("peer", help="pinned peer nodes in node.toml").add_subparsers(
        metavar="ACTION", required=True
    )
    p = peer.add_parser("add", help="pin a peer's name, jurisdiction and keys")
    _peer_args(p, new=True)
    p.set_defaults(func=cmd_peer_add)
    p = peer.add_parser("update", help="change a pinned peer's URL, jurisdiction or keys")
    _peer_args(p, new=False)
    p.set_defaults(func=cmd_peer_update)
    p = peer.add_parser("remove", help="unpin a peer")
    _dir_arg(p)
    p.add_argument("--name", required=True, type=_arg(node_name_error))
    p.set_defaults(func=cmd_peer_remove)

    mailbox = sub.add_parser("mailbox", help="local mailboxes and their tokens").add_subparsers(
        metavar="ACTION", required=True
    )
    for action, func, text in (
        ("add", cmd_mailbox_add, "add a mailbox and print its token once"),
        ("remove", cmd_mailbox_remove, "remove a mailbox whose inbox is read"),
        ("rotate", cmd_mailbox_rotate, "replace a mailbox's token and print the new one once"),
    ):
        p = mailbox.add_parser(action, help=text)
        _dir_arg(p)
        p.add_argument("name", type=_arg(mailbox_name_error), metavar="NAME")
        p.set_defaults(func=func)
        if action == "add":
            p.add_argument(
                "--inherit",
                action="store_true",
                help="give the new mailbox what a removed mailbox of that name left: unread"
                " mail, its sent messages' statuses, its Idempotency-Key answers",
            )

    p = sub.add_parser("check", help="validate node.toml and the key file")
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check)


# --- argument types ----------------------------------------------------------


def _arg(check: Callable[[str], str | None]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if (reason := check(value)) is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    return convert


def _listen_arg(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _url_arg(value: str) -> str:
    return _arg(url_error)(value).rstrip("/")


def _key_arg(value: str) -> str:
    try:
        parse_public_key(value)
    except MalformedError as e:
        raise argparse.ArgumentTypeError(e.detail) from None
    return value


def _seal_key_arg(value: str) -> str:
    try:
        parse_seal_key(value)
    except MalformedError as e:
        raise argparse.ArgumentTypeError(e.detail) from None
    return value


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")


def _peer_args(p: argparse.ArgumentParser, *, new: bool) -> None:
    _dir_arg(p)
    p.add_argument("--name", required=True, type=_arg(node_name_error), help="peer node name")
    p.add_argument("--url", type=_url_arg, help="where the peer is reached (optional)")
    if not new:
        p.add_argument("--no-url", action="store_true", help="forget the peer's URL")
    p.add_argument("--jurisdiction", required=new, type=_arg(country_error), metavar="CC")
    p.add_argument(
        "--key",
        dest="keys",
        action="append",
        required=new,
        type=_key_arg,
        metavar="KEY",
        help="ed25519:... public key; repeat for several (replaces all keys on update)",
    )
    p.add_argument(
        "--seal-key",
        dest="seal_keys",
        action="append",
        type=_seal_key_arg,
        metavar="SEAL_KEY",
        help="mlkem768x25519:... or x25519:... seal key: mail to the peer is sealed to the"
        " first one (replaces all seal keys on update)",
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# --- editing node.toml -------------------------------------------------------


@dataclass
class _NodeFile:
    """node.toml opened for one edit: its text, its valid config, its tomlkit document."""

    path: Path
    text: str
    config: Config
    doc: TOMLDocument

    @classmethod
    def open(cls, directory: Path) -> _NodeFile:
        config = load_config(directory)  # an invalid file is reported, never edited
        text = config.path.read_text(encoding="utf-8")
        return cls(config.path, text, config, tomlkit.parse(text))

    def error(self, path: tuple[str | int, ...], key: str, reason: str) -> ConfigError:
        return ConfigError(str(self.path), TomlLocator(self.text).line(path), key, reason)

    def tables(self, key: str) -> AoT | None:
        try:
            return tables_of(self.doc, key)
        except ValueError as e:
            raise self.error((key,), key, str(e)) from None

    def find(self, key: str, name: str) -> tuple[int, Table] | None:
        """The `[[key]]` table whose `name` is `name`, with its index."""
        for i, table in enumerate(self.tables(key) or []):
            if table.get("name") == name:
                return i, table
        return None

    def save(self) -> Config:
        """Validate the edited document as a whole, then write it atomically."""
        return save_edited(self.path, self.text, dumps(self.doc))


def _not_found(node_file: _NodeFile, what: str, name: str) -> int:
    _say(f"relay: no {what} named {name!r} in {node_file.path}")
    return 1


# --- init --------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create DIR/node.toml and DIR/node.key; print the `relay peer add` line for peers."""
    directory: Path = args.dir.absolute()
    toml_path, key_path = directory / CONFIG_NAME, directory / KEY_NAME
    existing = [p for p in (toml_path, key_path) if p.exists() or p.is_symlink()]
    if existing:
        _say(f"relay: refusing to overwrite {', '.join(map(str, existing))}")
        return 1
    if not args.public_url and parse_listen(args.listen)[1] == 0:
        raise UsageError(
            f"--listen {args.listen}: with port 0 the port is only known once the node runs;"
            " give --public-url URL with the port other nodes reach it on"
        )
    public_url: str = args.public_url or f"http://{args.listen}"
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    key = generate_key_file(key_path)
    seal_path = directory / SEAL_KEY_NAME
    try:
        seal_key = generate_seal_key_file(seal_path)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    text = _node_toml(args.name, args.jurisdiction, args.listen, public_url)
    try:
        fd = os.open(toml_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        key_path.unlink(missing_ok=True)
        seal_path.unlink(missing_ok=True)
        raise
    pub = public_key_string(key.public_key())
    _say(
        f"created {toml_path}, {key_path} and {seal_path}"
        " (mode 0600: keep them secret, back them up)"
    )
    host = urllib.parse.urlsplit(public_url).hostname or ""
    if _is_loopback(host):
        _say(f"note: {public_url} is a loopback URL; other machines need --public-url")
    _say(
        "Give the line below to the admins of nodes that should trust this one; "
        f"they replace {PEER_DIR_PLACEHOLDER} with their node directory:"
    )
    print(_peer_add_line(args.name, public_url, args.jurisdiction, pub, seal_key.public.string))
    return 0


def _peer_add_line(name: str, url: str, jurisdiction: str, key: str, seal_key: str) -> str:
    q = shlex.quote
    return (
        f"relay peer add {PEER_DIR_PLACEHOLDER} --name {q(name)} --url {q(url)} "
        f"--jurisdiction {q(jurisdiction)} --key {q(key)} --seal-key {q(seal_key)}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _node_toml(name: str, jurisdiction: str, listen: str, public_url: str) -> str:
    cc = jurisdiction
    return f"""\
# node.toml of {name}, written by `relay init`.
# Check it after every edit with `relay check DIR`: unknown keys are errors.

[node]
name = "{name}"
jurisdiction = "{cc}"
# HOST:PORT to listen on; [::1]:8701 for IPv6.
listen = "{listen}"
# How other nodes reach this one.
public_url = "{public_url}"
# Relative to this file; relay refuses to start unless it is mode 0600.
key_file = "{KEY_NAME}"
# The HPKE key that opens payloads sealed to this node (docs/sealing.md); 0600 too.
seal_key_file = "{SEAL_KEY_NAME}"
database = "relay.db"
# max_body_bytes = 16777216
# Undelivered messages expire after this.
# queue_lifetime = "5d"

[policy]
# "audit" records would-be denials and lets them pass.
mode = "enforce"
# Where a message may be stored unless its sender asks for something else.
default_residency = ["{cc}"]
# What senders may ask for (default: default_residency).
# allowed_residency = ["{cc}"]
# Jurisdictions of peers this node forwards to / accepts from (default: allowed_residency).
# export_to = ["{cc}"]
# import_from = ["{cc}"]

# Names for sets of country codes, usable in the lists above:
# [policy.groups]
# EAEU = ["AM", "BY", "KG", "KZ", "RU"]

# Rules: any matching "deny" wins; otherwise "limit" rules narrow the residency.
# Conditions: sender, dest_node, dest_jurisdiction, ctype (a string or a list).
# [[policy.rules]]
# id = "health-stays-home"
# ctype = "application/fhir+json"
# effect = "limit"
# residency = ["{cc}"]

[retention]
content_min_days = 0
content_max_days = 365
metadata_min_days = 0
metadata_max_days = 1095

# Peers are added with `relay peer add`, mailboxes with `relay mailbox add`:
#
# [[peers]]
# name = "other.example.org"
# url = "https://relay.example.org"    # optional: a known origin need not be reachable
# jurisdiction = "DE"
# keys = ["ed25519:..."]
#
# [[mailboxes]]
# name = "alice"
# token_sha256 = "..."                 # the token itself is never stored
"""


# --- key ---------------------------------------------------------------------


def cmd_key_show(args: argparse.Namespace) -> int:
    """Print the node's public key string."""
    config = load_config(args.dir)
    pub = public_key_string(load_private_key(config.node.key_file).public_key())
    if args.json:
        print(json.dumps({"name": config.node.name, "key": pub, "key_id": key_id(pub)}))
    else:
        print(pub)
    return 0


def cmd_key_generate(args: argparse.Namespace) -> int:
    """Create the key file named by node.toml's key_file; never overwrites."""
    file = config_file(args.dir).absolute()
    try:
        value = tomllib.loads(file.read_text(encoding="utf-8"))["node"]["key_file"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        _say(f"relay: cannot read [node] key_file from {file} ({e}); `relay check` says more")
        return 2
    if not isinstance(value, str):
        _say(f"relay: [node] key_file in {file} is not a string")
        return 2
    key_path = (file.parent / value).absolute()
    try:
        key = generate_key_file(key_path)
    except FileExistsError:
        _say(f"relay: refusing to overwrite {key_path}")
        return 1
    _say(f"created {key_path} (mode 0600)")
    print(public_key_string(key.public_key()))
    return 0


# --- peer --------------------------------------------------------------------


def cmd_peer_add(args: argparse.Namespace) -> int:
    """Pin a new peer in node.toml."""
    node_file = _NodeFile.open(args.dir)
    config = node_file.config
    if args.name == config.node.name:
        raise node_file.error(("node", "name"), "--name", "that is this node's own name")
    if (found := node_file.find("peers", args.name)) is not None:
        i = found[0]
        raise node_file.error(
            ("peers", i, "name"),
            f"peers[{i}].name",
            f"peer {args.name!r} already exists (use `relay peer update`)",
        )
    entry: dict[str, object] = {"name": args.name}
    if args.url:
        entry["url"] = args.url
    entry["jurisdiction"] = args.jurisdiction
    entry["keys"] = _unique(args.keys)
    if args.seal_keys:
        entry["seal_keys"] = _unique(args.seal_keys)
    append_table(node_file.doc, "peers", entry)
    node_file.save()
    _say(f"added peer {args.name} ({args.jurisdiction}) to {node_file.path}")
    return apply_edit(node_file.path)


def cmd_peer_update(args: argparse.Namespace) -> int:
    """Change a pinned peer's URL, jurisdiction or keys."""
    if args.url and args.no_url:
        _say("relay: --url and --no-url exclude each other")
        return 2
    if not (args.url or args.no_url or args.jurisdiction or args.keys or args.seal_keys):
        _say("relay: nothing to change: give --url, --no-url, --jurisdiction, --key or --seal-key")
        return 2
    node_file = _NodeFile.open(args.dir)
    found = node_file.find("peers", args.name)
    if found is None:
        return _not_found(node_file, "peer", args.name)
    table = found[1]
    if args.url:
        table["url"] = args.url
    if args.no_url and "url" in table:
        del table["url"]
    if args.jurisdiction:
        table["jurisdiction"] = args.jurisdiction
    if args.keys:
        table["keys"] = _unique(args.keys)
    if args.seal_keys:
        table["seal_keys"] = _unique(args.seal_keys)
    node_file.save()
    _say(f"updated peer {args.name} in {node_file.path}")
    return apply_edit(node_file.path)


def cmd_peer_remove(args: argparse.Namespace) -> int:
    """Unpin a peer."""
    return _remove_entry(args.dir, "peers", "peer", args.name)


def _remove_entry(directory: Path, array: str, what: str, name: str) -> int:
    """Remove the `[[array]]` entry called `name` from node.toml."""
    node_file = _NodeFile.open(directory)
    found = node_file.find(array, name)
    if found is None:
        return _not_found(node_file, what, name)
    remove_table(node_file.doc, array, found[0])
    node_file.save()
    _say(f"removed {what} {name} from {node_file.path}")
    return apply_edit(node_file.path)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- mailbox -----------------------------------------------------------------


def cmd_mailbox_add(args: argparse.Namespace) -> int:
    """Add a mailbox; print its token once, as the last line of stdout.

    Data is keyed by mailbox name: what a removed mailbox of that name left
    (unread mail; sent messages, whose status and erasure answer to the name;
    Idempotency-Key answers, which name message ids) goes to the new one only
    with --inherit, so a new owner never reads or erases it by accident.
    """
    node_file = _NodeFile.open(args.dir)
    if (found := node_file.find("mailboxes", args.name)) is not None:
        i = found[0]
        raise node_file.error(
            ("mailboxes", i, "name"),
            f"mailboxes[{i}].name",
            f"mailbox {args.name!r} already exists (use `relay mailbox rotate` for a new token)",
        )
    left = leftovers(node_file.config, args.name)
    if any(left) and not args.inherit:
        raise Conflict(
            f"a removed mailbox {args.name!r} left {left.describe()} in the store;"
            f" give --inherit to hand them to the new mailbox, or choose another name"
        )
    token = new_token()
    entry: dict[str, object] = {"name": args.name, "token_sha256": mailbox_token_sha256(token)}
    append_table(node_file.doc, "mailboxes", entry)
    node_file.save()
    _say(f"added mailbox {args.name} to {node_file.path}")
    code = apply_edit(node_file.path)
    _say("its token is shown only this once:")
    print(token)
    return code


def cmd_mailbox_remove(args: argparse.Namespace) -> int:
    """Remove a mailbox, refused while its inbox holds unread mail.

    Accepted mail is never dropped by a config edit: its owner reads (and
    acknowledges) it first, with a token from `relay mailbox rotate` if lost.
    """
    config = load_config(args.dir)
    if any(mb.name == args.name for mb in config.mailboxes):
        left = unread_messages(config, args.name)
        if left:
            raise Conflict(
                f"mailbox {args.name!r} has {left} unread message(s); read and acknowledge"
                f" them first (relay inbox --ack; `relay mailbox rotate` gives a new token)"
            )
    return _remove_entry(args.dir, "mailboxes", "mailbox", args.name)


def cmd_mailbox_rotate(args: argparse.Namespace) -> int:
    """Give a mailbox a new token; print it once, as the last line of stdout."""
    node_file = _NodeFile.open(args.dir)
    found = node_file.find("mailboxes", args.name)
    if found is None:
        return _not_found(node_file, "mailbox", args.name)
    token = new_token()
    found[1]["token_sha256"] = mailbox_token_sha256(token)
    node_file.save()
    _say(f"new token for mailbox {args.name} in {node_file.path}")
    code = apply_edit(node_file.path)
    _say("the old token works until the node uses the change; the new one is shown only once:")
    print(token)
    return code


# --- check -------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate node.toml and the key file; problems as FILE:LINE: key: reason."""
    try:
        config = load_config(args.dir)
    except ConfigErrors as e:
        if args.json:
            problems = [
                {"file": p.file, "line": p.line, "key": p.key, "reason": p.reason} for p in e.errors
            ]
            print(json.dumps({"ok": False, "errors": problems}))
        for problem in e.errors:
            _say(problem.detail)
        return 2
    n, m = len(config.peers), len(config.mailboxes)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "name": config.node.name,
                    "jurisdiction": config.node.jurisdiction,
                    "peers": n,
                    "mailboxes": m,
                    "storage": config.storage.url,
                }
            )
        )
    else:
        print(
            f"ok: {config.node.name} ({config.node.jurisdiction}), "
            f"{n} peer{'' if n == 1 else 's'}, {m} mailbox{'' if m == 1 else 'es'}, "
            f"storage {config.storage.url}"
        )
    return 0
