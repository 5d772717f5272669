"""relay.logs: a logged value never breaks or forges a log line (issue 10)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from relay import logs
from relay.logs import JsonFormatter, TextFormatter, event

# Everything str.splitlines() (and so many log readers) treats as a line end,
# plus an escape sequence that rewrites a terminal.
BREAKERS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
HOSTILE = [f"ok{b}2026-01-01T00:00:00.000Z info forged admin=yes" for b in BREAKERS] + [
    "\x1b[2Jcleared",
    "tab\there",
    "nul\x00byte",
    "del\x7f",
    "Москва",
    "\ud800",
]


class _Capture(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _render(formatter: logging.Formatter, name: str = "probe", **fields: Any) -> str:
    log = logging.getLogger("relay.test_logs")
    capture = _Capture(formatter)
    log.addHandler(capture)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        event(log, name, **fields)
    finally:
        log.removeHandler(capture)
    assert len(capture.lines) == 1
    return capture.lines[0]


FIELD = re.compile(r' (\w+)=("(?:[^"\\]|\\.)*"|[^ "]+)')


def _fields(line: str) -> list[tuple[str, str]]:
    """The key=value pairs of a text line, each value as written; the whole line must match."""
    head = line.split(" ", 3)
    pairs = FIELD.findall(" " + head[3])
    assert "".join(f" {k}={v}" for k, v in pairs) == " " + head[3], line
    return pairs


def _printable_ascii(line: str) -> bool:
    return all(" " <= c <= "~" for c in line)


@pytest.mark.parametrize("value", HOSTILE)
def test_text_value_stays_on_one_printable_line(value: str) -> None:
    line = _render(TextFormatter(), peer="a.test", reason=value, n=1)
    assert _printable_ascii(line), line
    assert line.splitlines() == [line]
    pairs = _fields(line)
    assert [k for k, _ in pairs] == ["peer", "reason", "n"]
    assert pairs[0][1] == "a.test" and pairs[2][1] == "1"
    assert json.loads(pairs[1][1]) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_json_value_stays_on_one_line_and_parses_back(value: str) -> None:
    line = _render(JsonFormatter(), reason=value)
    assert _printable_ascii(line), line
    assert line.splitlines() == [line]
    assert json.loads(line)["reason"] == value


def test_event_name_is_escaped_too() -> None:
    line = _render(TextFormatter(), "probe\u2028forged", peer="a.test")
    assert _printable_ascii(line), line
    assert "probe\\u2028forged" in line


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a.test", "a.test"),
        ("rly_abc-DEF_123", "rly_abc-DEF_123"),
        ("accepted:1,duplicate:2", "accepted:1,duplicate:2"),
        ("back\\slash", "back\\slash"),
        (17, "17"),
        (b"\x01\xff", "01ff"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("k=v", '"k=v"'),
    ],
)
def test_ordinary_values_keep_their_form(value: object, shown: str) -> None:
    line = _render(TextFormatter(), v=value)
    assert line.endswith(f" info probe v={shown}"), line


def test_json_keeps_types() -> None:
    doc = json.loads(_render(JsonFormatter(), n=3, ok=True, batch=b"\xab", who="a.test"))
    assert (doc["n"], doc["ok"], doc["batch"], doc["who"]) == (3, True, "ab", "a.test")


@pytest.mark.parametrize(
    ("count", "fields"),
    [
        (0, {"ids": ""}),
        (1, {"ids": "00" * 16}),
        (2, {"ids": f"{'00' * 16},{'01' * 16}"}),
        (3, {"ids": f"{'00' * 16},{'01' * 16}", "ids_more": 1}),
    ],
)
def test_id_fields_name_ids_in_full_up_to_a_limit(count: int, fields: dict[str, object]) -> None:
    ids = [bytes([i]) * 16 for i in range(count)]
    assert logs.id_fields(ids, limit=2) == fields


def test_id_fields_default_limit_keeps_a_batch_line_short() -> None:
    ids = [i.to_bytes(16, "big") for i in range(1000)]
    fields = logs.id_fields(ids)
    assert fields["ids_more"] == 1000 - logs.LOG_IDS
    assert len(str(fields["ids"])) == logs.LOG_IDS * 33 - 1
