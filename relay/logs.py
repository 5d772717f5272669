"""Structured logs: one line per event, `key=value` text or JSON.

Call `event(log, "delivery", peer=..., batch=..., outcome=...)`; the formatter
renders the fields. Every refusal names its envelope, peer and rule.

Invariants:
- A value never ends or forges a line. Fields come from the network (mailbox
  names, reasons, peer errors), so the text form shows a value bare only when
  it is printable ASCII without space, quote or '='; anything else is quoted
  with JSON escapes (ASCII only, so U+2028, U+0085 and other line breaks
  become \\uXXXX). The JSON form is ASCII-only JSON for the same reason.
- Ordinary values (printable ASCII) are written exactly as they were given.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

_FIELDS = "relay_fields"
LOG_IDS = 20  # ids named in full in one line; a larger batch names this many


def id_fields(ids: Sequence[bytes], limit: int = LOG_IDS) -> dict[str, Any]:
    """Fields naming the message or envelope ids of one event, for grep.

    `ids=` lists up to `limit` ids in full hex, comma-separated, so `grep ID`
    finds the line; `ids_more=N` counts the rest. A line per batch, never a
    line per id: at high rates batches grow and the log does not.
    """
    fields: dict[str, Any] = {"ids": ",".join(i.hex() for i in ids[:limit])}
    if len(ids) > limit:
        fields["ids_more"] = len(ids) - limit
    return fields


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event `name` with structured fields."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={_FIELDS: fields})


def _bare(s: str) -> bool:
    """True if `s` can be written unquoted: printable ASCII without space, '"' or '='."""
    return all("!" <= c <= "~" and c not in '"=' for c in s)


def _value(v: Any) -> str:
    if isinstance(v, bytes):
        return v.hex()
    s = str(v)
    if s and _bare(s):
        return s
    return json.dumps(s)  # ensure_ascii: every byte outside printable ASCII is escaped


def _message(s: str) -> str:
    """The event name, escaped like a quoted value if it holds anything but printable ASCII."""
    if all(" " <= c <= "~" for c in s):
        return s
    return json.dumps(s)[1:-1]


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"{ts}.{int(record.msecs):03d}Z",
            record.levelname.lower(),
            _message(record.getMessage()),
        ]
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts += [f"{k}={_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        for k, v in fields.items():
            doc[k] = v.hex() if isinstance(v, bytes) else v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)  # ensure_ascii: see the invariants


class _Context(logging.Filter):
    """Puts the same fields first in every line (a worker's `worker=N`)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        own: dict[str, Any] = getattr(record, _FIELDS, {})
        setattr(record, _FIELDS, {**self.fields, **own})
        return True


def setup(fmt: str = "text", level: str = "info", *, worker: int | None = None) -> None:
    """Send relay's logs to stderr in the chosen format.

    A worker of `relay run --workers N` passes its index: every line then
    starts its fields with `worker=N`.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_Context({"worker": worker}))
    root = logging.getLogger("relay")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
