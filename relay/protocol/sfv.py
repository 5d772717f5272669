"""RFC 8941 structured-field dictionaries, as far as relay's headers need them.

Pure: text in, values out.

Invariants:
- Strict: every deviation from RFC 8941 (and a member or parameter key given
  twice, which RFC 8941 would let the last one win) raises the caller's
  `error` class, naming the header and the offset.
- A member keeps its value text exactly as received (`Member.text`), so a
  signature base can be rebuilt byte for byte without re-serialising.
- Byte sequences must be canonical padded standard base64.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from decimal import Decimal
from typing import NoReturn

from relay.errors import RelayError


def b64(raw: bytes) -> str:
    """Padded standard base64, as RFC 8941 byte sequences carry it."""
    return base64.b64encode(raw).decode("ascii")


def b64_canonical(text: str) -> bytes | None:
    """Decode padded standard base64, or None if it is not in canonical form."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return raw if b64(raw) == text else None


@dataclass(frozen=True, slots=True)
class Token:
    """An RFC 8941 token (a bare word such as `sha-256` or `*`)."""

    value: str


BareItem = int | Decimal | str | Token | bytes | bool
Params = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Member:
    """One dictionary member: an item or an inner list, its parameters, and the
    member value exactly as received (everything after `key=`)."""

    value: BareItem | tuple[tuple[BareItem, Params], ...]
    params: Params
    text: str
    inner: bool


_DIGITS = frozenset("0123456789")
_LCALPHA = frozenset("abcdefghijklmnopqrstuvwxyz")
_ALPHA = _LCALPHA | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_KEY_START = _LCALPHA | {"*"}
_KEY_CHARS = _LCALPHA | _DIGITS | frozenset("_-.*")
_TOKEN_CHARS = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~:/")
_B64_CHARS = _ALPHA | _DIGITS | frozenset("+/=")


def parse_dictionary(text: str, error: type[RelayError], header: str) -> dict[str, Member]:
    """Parse `text` as an RFC 8941 dictionary; any fault raises `error` naming `header`."""
    return _Parser(text, error, header).dictionary()


class _Parser:
    """A strict RFC 8941 dictionary parser; every fault raises `error`."""

    def __init__(self, text: str, error: type[RelayError], header: str) -> None:
        self.s = text
        self.i = 0
        self.error = error
        self.header = header

    def fail(self, what: str) -> NoReturn:
        raise self.error(f"{self.header} is not a valid structured field: {what} at {self.i}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.i < len(self.s) and self.s[self.i] in chars:
            self.i += 1

    def dictionary(self) -> dict[str, Member]:
        out: dict[str, Member] = {}
        self.skip(" ")
        if self.i == len(self.s):
            self.fail("empty dictionary")
        while True:
            key = self.key()
            if key in out:
                self.fail(f"member {key!r} repeated")
            value: BareItem | tuple[tuple[BareItem, Params], ...] = True
            start = self.i
            if self.peek() == "=":
                self.i += 1
                start = self.i
                value = self.inner_list() if self.peek() == "(" else self.bare_item()
            params = self.params()
            out[key] = Member(value, params, self.s[start : self.i], isinstance(value, tuple))
            self.skip(" \t")
            if self.i == len(self.s):
                return out
            if self.peek() != ",":
                self.fail("expected ','")
            self.i += 1
            self.skip(" \t")
            if self.i == len(self.s):
                self.fail("trailing comma")

    def inner_list(self) -> tuple[tuple[BareItem, Params], ...]:
        self.i += 1  # "("
        items: list[tuple[BareItem, Params]] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return tuple(items)
            items.append((self.bare_item(), self.params()))
            if self.peek() not in (" ", ")"):
                self.fail("expected ' ' or ')' in inner list")

    def params(self) -> Params:
        out: Params = {}
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            key = self.key()
            if key in out:
                self.fail(f"parameter {key!r} repeated")
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            out[key] = value
        return out

    def key(self) -> str:
        start = self.i
        if self.peek() not in _KEY_START:
            self.fail("expected a key")
        while self.peek() in _KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def bare_item(self) -> BareItem:
        c = self.peek()
        if c == "-" or c in _DIGITS:
            return self.number()
        if c == '"':
            return self.string()
        if c == ":":
            return self.byte_sequence()
        if c == "?":
            return self.boolean()
        if c == "*" or c in _ALPHA:
            start = self.i
            while self.peek() in _TOKEN_CHARS:
                self.i += 1
            return Token(self.s[start : self.i])
        self.fail("expected an item")

    def number(self) -> int | Decimal:
        start = self.i
        if self.peek() == "-":
            self.i += 1
        digits_start = self.i
        while self.peek() in _DIGITS:
            self.i += 1
        whole = self.i - digits_start
        if whole == 0:
            self.fail("expected a digit")
        if self.peek() != ".":
            if whole > 15:
                self.fail("integer too long")
            return int(self.s[start : self.i])
        self.i += 1
        frac_start = self.i
        while self.peek() in _DIGITS:
            self.i += 1
        if whole > 12 or not 1 <= self.i - frac_start <= 3:
            self.fail("bad decimal")
        return Decimal(self.s[start : self.i])

    def string(self) -> str:
        self.i += 1  # '"'
        chars: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == '"':
                return "".join(chars)
            if c == "\\":
                if self.peek() not in ('"', "\\"):
                    self.fail("bad escape in string")
                c = self.s[self.i]
                self.i += 1
            elif not " " <= c <= "~":
                self.fail("bad character in string")
            chars.append(c)
        self.fail("unterminated string")

    def byte_sequence(self) -> bytes:
        self.i += 1  # ":"
        start = self.i
        while self.peek() in _B64_CHARS:
            self.i += 1
        if self.peek() != ":":
            self.fail("unterminated byte sequence")
        raw = b64_canonical(self.s[start : self.i])
        if raw is None:
            self.fail("byte sequence is not canonical padded base64")
        self.i += 1
        return raw

    def boolean(self) -> bool:
        self.i += 1  # "?"
        c = self.peek()
        if c not in ("0", "1"):
            self.fail("bad boolean")
        self.i += 1
        return c == "1"
