"""Tables for relay.protocol.names: node names, mailboxes and addresses."""

from __future__ import annotations

import pytest

from relay.errors import MalformedError
from relay.protocol.names import split_address, valid_mailbox, valid_node_name

# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a.test", True),
        ("msk.example.ru", True),
        ("localhost", True),
        ("x-1.b2", True),
        ("127.0.0.1", True),
        ("a" * 63 + ".test", True),
        (".".join(["a" * 63] * 3) + "." + "a" * 61, True),  # 253 characters
        (".".join(["a" * 63] * 3) + "." + "a" * 62, False),  # 254 characters
        ("a" * 64 + ".test", False),
        ("", False),
        ("A.test", False),
        ("a..test", False),
        (".a.test", False),
        ("a.test.", False),
        ("-a.test", False),
        ("a-.test", False),
        ("a_b.test", False),
        ("a.test\n", False),
        ("a test", False),
        ("а.test", False),  # Cyrillic a
        ("a.tést", False),
    ],
)
def test_valid_node_name(name: str, ok: bool) -> None:
    assert valid_node_name(name) is ok


@pytest.mark.parametrize(
    ("mailbox", "ok"),
    [
        ("bob", True),
        ("postmaster", True),
        ("a.b+c_d-e", True),
        ("-x", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (".bob", False),
        ("Bob", False),
        ("bob smith", False),
        ("bob@x", False),
        ("bob\n", False),
        ("bób", False),
    ],
)
def test_valid_mailbox(mailbox: str, ok: bool) -> None:
    assert valid_mailbox(mailbox) is ok


def test_split_address() -> None:
    assert split_address("bob@b.test") == ("bob", "b.test")
    for bad in ["bob", "bob@", "@b.test", "bob@B.test", "bob@b.test@c.test", ".bob@b.test"]:
        with pytest.raises(MalformedError):
            split_address(bad)
