"""Node names, mailboxes, jurisdictions and addresses (DESIGN §4). Pure.

Invariant: each valid_* answers the shape question only; split_address raises
MalformedError naming the address and the part that is wrong.
"""

from __future__ import annotations

import re

from relay.errors import MalformedError
from relay.protocol.strict import show

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# The whole name in one match: a regex call per label cost ~2 µs per name, and
# every header decode checks four names (origin, dest, from, each of to).
_NODE_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAILBOX_RE = re.compile(r"[a-z0-9_+-][a-z0-9._+-]{0,63}")
_JURISDICTION_RE = re.compile(r"[A-Z]{2}")


def valid_node_name(s: str) -> bool:
    """Lowercase ASCII DNS-style name: 1..253 chars, labels of [a-z0-9-], each
    1..63 chars, not starting or ending with '-'."""
    return len(s) <= 253 and _NODE_NAME_RE.fullmatch(s) is not None


def valid_mailbox(s: str) -> bool:
    """Mailbox (local part): 1..64 chars of [a-z0-9._+-], not starting with '.'."""
    return _MAILBOX_RE.fullmatch(s) is not None


def valid_jurisdiction(s: str) -> bool:
    """Two uppercase ASCII letters (ISO 3166-1 alpha-2 shape; the list is not checked)."""
    return _JURISDICTION_RE.fullmatch(s) is not None


def split_address(addr: str) -> tuple[str, str]:
    """Split `mailbox@node` into its parts; MalformedError if either is invalid."""
    mailbox, at, node = addr.partition("@")
    if not at:
        raise MalformedError(f"address {show(addr)} has no '@'")
    if not valid_mailbox(mailbox):
        raise MalformedError(f"address {show(addr)}: invalid mailbox {show(mailbox)}")
    if not valid_node_name(node):
        raise MalformedError(f"address {show(addr)}: invalid node name {show(node)}")
    return mailbox, node
