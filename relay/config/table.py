"""Reading TOML tables while collecting located problems (used by relay.config.parse).

A `_Table` remembers which keys were read, so `done()` can report the rest as
unknown; every problem goes to one `_Report` as `FILE:LINE: key: reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from relay.config.tomledit import KeyPath, TomlLocator, dotted
from relay.config.values import parse_duration_ms
from relay.errors import ConfigError

T = TypeVar("T")
_TYPE_NAMES = {
    bool: "a boolean",
    str: "a string",
    int: "an integer",
    list: "an array",
    dict: "a table",
}


class _Report:
    """Collects problems, each located by key path."""

    def __init__(self, file: str, locator: TomlLocator) -> None:
        self.file = file
        self.locator = locator
        self.errors: list[ConfigError] = []

    def add(self, path: KeyPath, reason: str) -> None:
        line = self.locator.line(path)
        self.errors.append(ConfigError(self.file, line, dotted(path), reason))


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, data: Mapping[str, object], path: KeyPath, report: _Report) -> None:
        self.data = data
        self.path = path
        self.report = report
        self.used: set[str] = set()

    def error(self, key: str, reason: str) -> None:
        self.report.add((*self.path, key), reason)

    def raw(self, key: str, kind: type[T], *, required: bool = False) -> T | None:
        """The value under `key` if present and of `kind` (bool is never an int)."""
        self.used.add(key)
        if key not in self.data:
            if required:
                self.report.add((*self.path, key), "missing (required)")
            return None
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_toml_type(value)}")
            return None
        return value

    def string(
        self, key: str, *, required: bool = False, check: Callable[[str], str | None] | None = None
    ) -> str | None:
        value = self.raw(key, str, required=required)
        if value is not None and check is not None and (reason := check(value)) is not None:
            self.error(key, reason)
            return None
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.raw(key, int)
        if value is None:
            return default
        if not lo <= value <= hi:
            self.error(key, f"{value} is out of range {lo}..{hi}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, bool)
        return default if value is None else value

    def duration_ms(self, key: str, default: int, *, lo: int = 1) -> int:
        if key in self.data and not isinstance(self.data[key], str):
            self.used.add(key)
            self.error(key, 'expected a duration string such as "30s", "5m", "1h" or "5d"')
            return default
        value = self.raw(key, str)
        if value is None:
            return default
        try:
            ms = parse_duration_ms(value)
        except ValueError as e:
            self.error(key, str(e))
            return default
        if ms < lo:
            self.error(key, f"duration {value!r} is too short (at least {lo} ms)")
            return default
        return ms

    def strings(
        self, key: str, *, single: bool = False, required: bool = False
    ) -> list[str] | None:
        """A list of strings; with `single`, one string is taken as a list of one."""
        self.used.add(key)
        if key not in self.data:
            if required:
                self.report.add((*self.path, key), "missing (required)")
            return None
        value = self.data[key]
        if single and isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            what = "a string or an array of strings" if single else "an array of strings"
            self.error(key, f"expected {what}")
            return None
        return [str(v) for v in value]

    def table(self, key: str) -> _Table | None:
        value = self.raw(key, dict)
        return None if value is None else _Table(value, (*self.path, key), self.report)

    def tables(self, key: str) -> list[_Table]:
        """An array of tables `[[key]]`."""
        value = self.raw(key, list)
        if value is None:
            return []
        if not all(isinstance(v, dict) for v in value):
            self.error(key, f"expected [[{dotted((*self.path, key))}]] tables")
            return []
        return [_Table(v, (*self.path, key, i), self.report) for i, v in enumerate(value)]

    def done(self, later: Mapping[str, str] | None = None) -> None:
        """Report every key that was not read."""
        for key in self.data:
            if key in self.used:
                continue
            value = self.data[key]
            if later and key in later:
                self.error(key, f"not supported yet ({later[key]})")
            elif isinstance(value, dict):
                self.error(key, f"unknown table [{dotted((*self.path, key))}]")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                self.error(key, f"unknown table [[{dotted((*self.path, key))}]]")
            else:
                self.error(key, "unknown key")


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), "a date or time")
