"""`relay authority init|add|issue`: certificate authorities (DESIGN §7, §9).

An authority is a directory holding `authority.key` (Ed25519, mode 0600) and
`authority.toml` (its name and the jurisdictions it attests). It signs node
certificates; nodes that list it in `[[authorities]]` trust the nodes it
certifies, for the jurisdictions they trust it for.

Invariants:
- `init` never overwrites; the key file is 0600 from the moment it exists.
- `issue` refuses a jurisdiction the authority is not for, and prints
  exactly one line on stdout: the certificate file's line (standard base64 of
  the msgpack array [cert_bytes, signature]). Its fingerprint, the name used
  in revocation lists, goes to stderr.
- `add` edits node.toml like `relay peer add`: comments kept, the whole new
  file validated before an atomic write.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.cli.admin import _NodeFile, _seal_key_arg
from relay.cli.main import parse_time
from relay.cli.reload import apply_edit
from relay.config.keys import generate_key_file, load_private_key
from relay.config.model import DAY_MS
from relay.config.tomledit import TomlLocator, append_table
from relay.config.values import country_error, node_name_error, url_error
from relay.errors import FILE_KEY, ConfigError, ConfigErrors, MalformedError
from relay.policy.certs import decode_line, encode_line, fingerprint, format_ms
from relay.protocol.certificate import Certificate, open_certificate, sign_certificate
from relay.protocol.keystr import parse_public_key, public_key_string

AUTHORITY_TOML = "authority.toml"
AUTHORITY_KEY = "authority.key"
NODE_DIR_PLACEHOLDER = "YOUR_NODE_DIR"
MAX_DAYS = 3650


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay authority init|add|issue`."""
    authority = sub.add_parser(
        "authority", help="certificate authorities: make one, trust one, issue certificates"
    ).add_subparsers(metavar="ACTION", required=True)

    p = authority.add_parser("init", help="create an authority: key and authority.toml")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--name", required=True, type=_checked(node_name_error))
    p.add_argument("--jurisdictions", required=True, type=_codes, metavar="CC,..")
    p.set_defaults(func=cmd_init)

    p = authority.add_parser("add", help="make a node trust an authority for jurisdictions")
    p.add_argument("dir", type=Path, metavar="NODEDIR", help="node directory (or its node.toml)")
    p.add_argument("--name", required=True, type=_checked(node_name_error))
    p.add_argument("--key", required=True, type=_key, metavar="KEY")
    p.add_argument(
        "--jurisdictions",
        required=True,
        type=_names,
        metavar="CC,..",
        help="country codes (or group names of that node)",
    )
    p.set_defaults(func=cmd_add)

    p = authority.add_parser("issue", help="sign a node certificate; prints its file line")
    p.add_argument("dir", type=Path, metavar="DIR", help="authority directory")
    p.add_argument("--node-name", required=True, type=_checked(node_name_error))
    p.add_argument(
        "--node-key",
        dest="node_keys",
        action="append",
        required=True,
        type=_key,
        metavar="KEY",
        help="the node's public key; repeat for several",
    )
    p.add_argument(
        "--node-seal-key",
        dest="node_seal_keys",
        action="append",
        type=_seal_key_arg,
        metavar="SEAL_KEY",
        help="the node's seal key (docs/sealing.md), so that relying nodes seal mail to it;"
        " repeat for several. Nodes older than sealing refuse such a certificate",
    )
    p.add_argument("--jurisdiction", required=True, type=_checked(country_error), metavar="CC")
    p.add_argument("--url", required=True, type=_url, help="where the node is reached")
    p.add_argument("--days", required=True, type=_days, help=f"validity in days, 1..{MAX_DAYS}")
    p.add_argument(
        "--not-before",
        type=_instant,
        metavar="TIME",
        help="start of validity: unix ms or ISO 8601 (default: now)",
    )
    p.set_defaults(func=cmd_issue)


# --- argument types ------------------------------------------------------------------


def _checked(check: Callable[[str], str | None]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if (reason := check(value)) is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    return convert


def _split(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one, comma-separated")
    return list(dict.fromkeys(items))


def _codes(value: str) -> list[str]:
    codes = _split(value)
    for code in codes:
        if (reason := country_error(code)) is not None:
            raise argparse.ArgumentTypeError(reason)
    return sorted(codes)


def _names(value: str) -> list[str]:
    return _split(value)  # node.toml validation judges codes and group names


def _key(value: str) -> str:
    try:
        parse_public_key(value)
    except MalformedError as e:
        raise argparse.ArgumentTypeError(e.detail) from None
    return value


def _url(value: str) -> str:
    if (reason := url_error(value)) is not None:
        raise argparse.ArgumentTypeError(reason)
    return value.rstrip("/")


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is outside 1..{MAX_DAYS}")
    return days


def _instant(value: str) -> int:
    return parse_time(value, zone=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# --- the authority directory ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorityFile:
    """authority.toml, read and checked."""

    path: Path
    name: str
    jurisdictions: tuple[str, ...]
    key_file: Path


def load_authority(directory: Path) -> AuthorityFile:
    """Read DIR/authority.toml; ConfigErrors (FILE:LINE: key: reason) if it is wrong."""
    path = (directory / AUTHORITY_TOML).absolute()
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigErrors(
            [ConfigError(str(path), 1, FILE_KEY, "no such file (`relay authority init`)")]
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigErrors([ConfigError(str(path), 1, FILE_KEY, str(e))]) from None
    locate = TomlLocator(text)
    errors: list[ConfigError] = []

    def problem(key: str, reason: str) -> None:
        errors.append(ConfigError(str(path), locate.line((key,)), key, reason))

    for key in set(data) - {"name", "jurisdictions", "key_file"}:
        problem(key, "unknown key")
    name = data.get("name")
    if not isinstance(name, str):
        problem("name", "expected the authority's name, a string")
    elif (reason := node_name_error(name)) is not None:
        problem("name", reason)
    codes = data.get("jurisdictions")
    if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
        problem("jurisdictions", "expected a non-empty array of country codes")
        codes = []
    for code in codes:
        if (reason := country_error(code)) is not None:
            problem("jurisdictions", reason)
    key_file = data.get("key_file", AUTHORITY_KEY)
    if not isinstance(key_file, str):
        problem("key_file", "expected a string")
    if errors:
        raise ConfigErrors(sorted(errors, key=lambda e: e.line))
    return AuthorityFile(path, str(name), tuple(codes), (directory / str(key_file)).absolute())


def _authority_toml(name: str, codes: list[str]) -> str:
    quoted = ", ".join(f'"{c}"' for c in codes)
    return f"""\
# Certificate authority {name}, written by `relay authority init`.
# It signs node certificates (`relay authority issue`) for these jurisdictions only.
name = "{name}"
jurisdictions = [{quoted}]
# Relative to this file; keep it secret (mode 0600) and backed up.
key_file = "{AUTHORITY_KEY}"
"""


def add_line(name: str, key: str, codes: list[str] | tuple[str, ...]) -> str:
    """The `relay authority add` line a node's admin runs to trust this authority."""
    q = shlex.quote
    return (
        f"relay authority add {NODE_DIR_PLACEHOLDER} --name {q(name)} --key {q(key)} "
        f"--jurisdictions {q(','.join(codes))}"
    )


# --- commands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create DIR/authority.key and DIR/authority.toml; print the `authority add` line."""
    directory: Path = args.dir.absolute()
    toml_path, key_path = directory / AUTHORITY_TOML, directory / AUTHORITY_KEY
    existing = [p for p in (toml_path, key_path) if p.exists() or p.is_symlink()]
    if existing:
        _say(f"relay: refusing to overwrite {', '.join(map(str, existing))}")
        return 1
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)
    key = generate_key_file(key_path)
    try:
        fd = os.open(toml_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_authority_toml(args.name, args.jurisdictions))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    _say(f"created {toml_path} and {key_path} (mode 0600: keep it secret, back it up)")
    _say(
        "Give the line below to the admins of nodes that should trust this authority; "
        f"they replace {NODE_DIR_PLACEHOLDER} with their node directory (and may narrow "
        "--jurisdictions):"
    )
    print(add_line(args.name, public_key_string(key.public_key()), args.jurisdictions))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Add an `[[authorities]]` entry to a node's node.toml."""
    node_file = _NodeFile.open(args.dir)
    found = node_file.find("authorities", args.name)
    if found is not None:
        i = found[0]
        raise node_file.error(
            ("authorities", i, "name"),
            f"authorities[{i}].name",
            f"authority {args.name!r} is already trusted here; edit or remove that entry",
        )
    entry: dict[str, object] = {
        "name": args.name,
        "key": args.key,
        "jurisdictions": args.jurisdictions,
    }
    append_table(node_file.doc, "authorities", entry)
    node_file.save()
    _say(
        f"{node_file.path}: now trusting authority {args.name} for {', '.join(args.jurisdictions)}"
    )
    return apply_edit(node_file.path)


def cmd_issue(args: argparse.Namespace) -> int:
    """Sign a certificate for a node; print its file line."""
    authority = load_authority(args.dir)
    if args.jurisdiction not in authority.jurisdictions:
        _say(
            f"relay: authority {authority.name} attests only "
            f"{', '.join(authority.jurisdictions)}, not {args.jurisdiction}"
        )
        return 1
    key = load_private_key(authority.key_file)
    not_before = args.not_before if args.not_before is not None else time.time_ns() // 1_000_000
    cert = Certificate(
        name=args.node_name,
        keys=tuple(dict.fromkeys(args.node_keys)),
        jurisdiction=args.jurisdiction,
        url=args.url,
        not_before=not_before,
        not_after=not_before + args.days * DAY_MS,
        authority=authority.name,
        seal_keys=tuple(dict.fromkeys(args.node_seal_keys or ())),
    )
    line = encode_line(sign_certificate(cert, key))
    _, cert_bytes, _ = open_certificate(decode_line(line))
    _say(
        f"certificate for {cert.name} ({cert.jurisdiction}) by {authority.name}, valid "
        f"{format_ms(cert.not_before)} .. {format_ms(cert.not_after)}; "
        f"fingerprint (for revocation lists): {fingerprint(cert_bytes)}"
    )
    print(line)
    return 0
