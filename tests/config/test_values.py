"""Checks of single config values (relay.config.values), shared by the parser and the CLI."""

from __future__ import annotations

import pytest

from relay.config.values import (
    mailbox_name_error,
    node_name_error,
    node_pattern_error,
    parse_duration_ms,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("5d", 432_000_000)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "5", "5 s", "1.5h", "-1s", "5w", "s", "1H", "1234567890123s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration_ms(text)


@pytest.mark.parametrize("name", ["a", "a.test", "x-1.example.ru", "a" * 63, ".".join(["a"] * 127)])
def test_node_names(name: str) -> None:
    assert node_name_error(name) is None
    assert node_pattern_error(f"*.{name}") is None


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("", "empty node name"),
        ("a" * 254, "node name longer than 253 characters"),
        ("A.test", "bad node name 'A.test': use lowercase labels"),
        ("a..test", "bad node name 'a..test'"),
        ("-a.test", "bad node name '-a.test'"),
        ("a" * 64, "bad node name"),
    ],
)
def test_node_name_errors(name: str, fault: str) -> None:
    reason = node_name_error(name)
    assert reason is not None and reason.startswith(fault)


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("alice", None),
        ("a.b+c_d-e", None),
        (".alice", "bad mailbox name '.alice': use 1..64 of a-z 0-9 . _ + -"),
        ("Alice", "bad mailbox name 'Alice'"),
        ("a" * 65, "bad mailbox name"),
        ("postmaster", "mailbox name 'postmaster' is reserved for receipts"),
    ],
)
def test_mailbox_name_errors(name: str, fault: str | None) -> None:
    reason = mailbox_name_error(name)
    if fault is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(fault)
