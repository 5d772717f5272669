"""TOML text helpers for node.toml: where a key sits, and how to change the file safely.

Invariants:
- `TomlLocator` only reads text that tomllib has already accepted; it never
  decides validity, it only maps a key path to the line where it is written.
- Edits go through tomlkit so that the admin's comments and layout survive,
  and every write is atomic: a temporary file in the same directory, fsync,
  rename, then fsync of the directory. A reader sees the old file or the new
  one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

KeyPart = str | int
KeyPath = tuple[KeyPart, ...]

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def dotted(path: Sequence[KeyPart]) -> str:
    """Render a key path for humans: ("peers", 1, "keys") -> "peers[1].keys"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out


class TomlLocator:
    """Maps key paths of a valid TOML text to 1-based line numbers.

    Paths use str parts for keys and int parts for the n-th table of an array of
    tables: `[[peers]]` second occurrence, key `url` -> ("peers", 1, "url").
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._text = text
        self._scan()

    def line(self, path: Sequence[KeyPart]) -> int:
        """Line of `path`, else of its nearest written ancestor, else 1."""
        key = tuple(path)
        while key:
            found = self._lines.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return 1

    # -- scanner ------------------------------------------------------------

    def _record(self, path: KeyPath, line: int) -> None:
        for end in range(1, len(path) + 1):
            self._lines.setdefault(path[:end], line)

    def _scan(self) -> None:
        text, n = self._text, len(self._text)
        i, line = 0, 1
        table: KeyPath = ()
        counts: dict[KeyPath, int] = {}

        def resolve(parts: list[str]) -> KeyPath:
            out: KeyPath = ()
            for part in parts:
                out = (*out, part)
                if out in counts:
                    out = (*out, counts[out] - 1)
            return out

        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
                i += 1
            elif c in " \t\r":
                i += 1
            elif c == "#":
                i = _line_end(text, i)
            elif c == "[":
                array = text.startswith("[[", i)
                parts, i = self._read_key(i + (2 if array else 1))
                i += 2 if array else 1
                if array:
                    aot = (*resolve(parts[:-1]), parts[-1])
                    counts[aot] = counts.get(aot, 0) + 1
                    table = (*aot, counts[aot] - 1)
                else:
                    table = resolve(parts)
                self._record(table, line)
            else:
                parts, i = self._read_key(i)
                self._record((*table, *parts), line)
                i, line = _skip_value(text, i + 1, line)

    def _read_key(self, i: int) -> tuple[list[str], int]:
        """Read a dotted key starting at i; stop before '=' or ']'."""
        text = self._text
        parts: list[str] = []
        while True:
            while text[i] in " \t":
                i += 1
            if text[i] in "\"'":
                end = _string_end(text, i)
                raw = text[i:end]
                parts.append(str(tomllib.loads(f"k = {raw}")["k"]))
                i = end
            else:
                start = i
                while text[i] in _BARE_KEY:
                    i += 1
                parts.append(text[start:i])
            while text[i] in " \t":
                i += 1
            if text[i] != ".":
                return parts, i
            i += 1


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _string_end(text: str, i: int) -> int:
    """Index just past the string literal that starts at i."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        j = i + 3
        while True:
            if quote == '"' and text[j] == "\\":
                j += 2
            elif text.startswith(quote * 3, j):
                j += 3
                # up to two more quotes may end the content right before the delimiter
                for _ in range(2):
                    if j < len(text) and text[j] == quote:
                        j += 1
                return j
            else:
                j += 1
    j = i + 1
    while text[j] != quote:
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def _skip_value(text: str, i: int, line: int) -> tuple[int, int]:
    """Skip a value (strings, nested arrays, inline tables, comments) up to its line end."""
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            end = _string_end(text, i)
            line += text.count("\n", i, end)
            i = end
        elif c in "[{":
            depth += 1
            i += 1
        elif c in "]}":
            depth -= 1
            i += 1
        elif c == "#":
            i = _line_end(text, i)
        elif c == "\n":
            if depth == 0:
                return i, line
            line += 1
            i += 1
        else:
            i += 1
    return i, line


# -- editing ----------------------------------------------------------------


def tables_of(doc: TOMLDocument, key: str) -> AoT | None:
    """The `[[key]]` array of tables, None if absent; ValueError if written otherwise."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, AoT):
        raise ValueError(f"{key} is not written as [[{key}]] tables; edit it by hand")
    return value


def append_table(doc: TOMLDocument, key: str, entries: dict[str, object]) -> None:
    """Append a `[[key]]` table holding `entries`, separated by a blank line."""
    table = tomlkit.table()
    for name, value in entries.items():
        table.add(name, value)
    table.add(tomlkit.nl())
    aot = tables_of(doc, key)
    if aot is None:
        new = tomlkit.aot()
        new.append(table)
        doc.append(key, new)
        return
    if len(aot) > 0:
        last: Table = aot[-1]
        body = last.value.body
        if body and not isinstance(body[-1][1], Whitespace):
            last.add(tomlkit.nl())
    aot.append(table)


def remove_table(doc: TOMLDocument, key: str, index: int) -> None:
    """Remove the index-th `[[key]]` table; drop the key when it was the last one."""
    aot = tables_of(doc, key)
    if aot is None:
        raise IndexError(index)
    if len(aot) == 1:
        del doc[key]
    else:
        del aot[index]


def dumps(doc: TOMLDocument) -> str:
    """Serialize, ending the file with exactly one newline."""
    return tomlkit.dumps(doc).rstrip("\n") + "\n"


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` atomically; keeps the old file's mode if there was one."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or create in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
