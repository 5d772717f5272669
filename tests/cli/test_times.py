"""The one TIME type of `relay audit` and `relay erase` (relay.cli.main.parse_time)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from relay.cli import main as cli
from relay.cli.main import parse_time

NOON = 1_796_385_600_000  # 2026-12-04T12:00:00Z


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-04T12:00:00Z",
        "2026-12-04T12:00Z",
        "2026-12-04T12:00:00",  # no zone: UTC
        "2026-12-04T12:00:00+00:00",
        "2026-12-04T14:00:00+02:00",
        str(NOON),
    ],
)
def test_a_time_with_or_without_z(text: str) -> None:
    assert parse_time(text) == NOON


def test_where_a_zone_is_required_it_is_said_so() -> None:
    assert parse_time("2026-12-04T12:00Z", zone=True) == parse_time(str(NOON), zone=True) == NOON
    with pytest.raises(argparse.ArgumentTypeError, match="has no time zone"):
        parse_time("2026-12-04T12:00", zone=True)


def test_a_date_alone_is_its_midnight_utc() -> None:
    assert parse_time("2026-12-04") == NOON - 12 * 3600_000


@pytest.mark.parametrize("text", ["last tuesday", "2026-13-01", "-5", "12:00Z"])
def test_what_is_no_time_is_said_so(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="neither unix ms nor an ISO 8601 time"):
        parse_time(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["erase", "DIR", "--mailbox", "alice", "--since", "last tuesday", "--until", "1"],
        ["audit", "export", "DIR", "--from", "last tuesday"],
    ],
)
def test_both_commands_refuse_a_bad_time_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code = cli.main([str(tmp_path) if a == "DIR" else a for a in argv])
    assert code == 2
    assert "'last tuesday' is neither unix ms nor an ISO 8601 time" in capsys.readouterr().err
