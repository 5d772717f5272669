"""Checks of single config values, shared by the parser and the CLI.

Each `*_error` function returns why a value is wrong, or None; the `parse_*`
functions raise ValueError with the reason. Pure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable

from relay.config.model import DAY_MS
from relay.errors import MalformedError
from relay.protocol.iso3166 import is_country
from relay.protocol.keystr import parse_public_key
from relay.protocol.names import valid_mailbox, valid_node_name

_GROUP_NAME = re.compile(r"[A-Z][A-Z0-9_]{1,31}")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DURATION = re.compile(r"(\d{1,12})(ms|s|m|h|d)")
_DURATION_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}
RESERVED_MAILBOXES = frozenset({"postmaster"})


def node_pattern_error(pattern: str) -> str | None:
    """Why `pattern` is neither a node name nor `*.suffix` of one, or None."""
    if pattern.startswith("*."):
        return node_name_error(pattern[2:])
    return node_name_error(pattern)


def node_name_error(name: str) -> str | None:
    """Why `name` is not a node name (lowercase DNS-style), or None."""
    if not name:
        return "empty node name"
    if len(name) > 253:
        return "node name longer than 253 characters"
    if not valid_node_name(name):
        return (
            f"bad node name {name!r}: use lowercase labels of a-z, 0-9 and '-' "
            "separated by '.', no empty label, no '-' at a label's ends"
        )
    return None


def mailbox_name_error(name: str) -> str | None:
    """Why `name` is not a mailbox name, or None."""
    if not valid_mailbox(name):
        return f"bad mailbox name {name!r}: use 1..64 of a-z 0-9 . _ + -, not starting with '.'"
    if name in RESERVED_MAILBOXES:
        return f"mailbox name {name!r} is reserved for receipts"
    return None


def country_error(code: str) -> str | None:
    """Why `code` is not an ISO 3166-1 alpha-2 country code, or None."""
    if is_country(code):
        return None
    if is_country(code.upper()):
        return f"bad country code {code!r} (codes are uppercase: {code.upper()!r})"
    return f"bad country code {code!r}"


def url_error(url: str) -> str | None:
    """Why `url` is not an http(s) URL with a host, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as e:
        return f"bad URL {url!r}: {e}"
    if parts.scheme not in ("http", "https"):
        return f"bad URL {url!r}: must start with http:// or https://"
    if not parts.hostname:
        return f"bad URL {url!r}: no host"
    if not port_ok:
        return f"bad URL {url!r}: port 0"
    if parts.username is not None or parts.query or parts.fragment:
        return f"bad URL {url!r}: no user, query or fragment allowed"
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port`; ValueError with a reason."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", listen)
    if m is None:
        raise ValueError(f"bad listen address {listen!r}: use HOST:PORT or [IPV6]:PORT")
    v6, host = m.group(1), m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"bad listen address {listen!r}: port over 65535")
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            raise ValueError(f"bad listen address {listen!r}: not an IPv6 address") from None
        return v6, port
    if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"bad listen address {listen!r}: bad host")
    return host, port


def parse_duration_ms(s: str) -> int:
    """Milliseconds in a duration such as "500ms", "30s", "5m", "1h" or "5d".

    ValueError, with a reason, for anything else.
    """
    m = _DURATION.fullmatch(s)
    if m is None:
        raise ValueError(f"bad duration {s!r}: use a whole number and a unit ms, s, m, h or d")
    return int(m.group(1)) * _DURATION_UNIT_MS[m.group(2)]


def mailbox_token_sha256(token: str) -> str:
    """The stored form of a mailbox token: lowercase hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _one_of(*allowed: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in allowed:
            return None
        return f"bad value {value!r}: use " + " or ".join(f'"{a}"' for a in allowed)

    return check


def _sha256_error(value: str) -> str | None:
    if _SHA256_HEX.fullmatch(value):
        return None
    return "expected 64 lowercase hex digits (a SHA-256)"


def _public_key_error(value: str) -> str | None:
    try:
        parse_public_key(value)
    except MalformedError as e:
        return e.detail
    return None


def _rule_id_error(value: str) -> str | None:
    if _RULE_ID.fullmatch(value):
        return None
    return f"bad rule id {value!r}: use 1..64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
