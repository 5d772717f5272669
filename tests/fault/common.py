"""Helpers shared by the fault tests: config tweaks, log watching, ledger reads.

Every read of a node's database goes through a separate read-only SQLite
connection, as an operator's `sqlite3` would, so the node under test is never
touched by the test except through its CLI, its HTTP API and signals.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from relay.protocol.sealing import SALT_SIZE

SEQ_RE = re.compile(rb"^seq=(\d+)$")


def stored_seq(body: bytes) -> re.Match[bytes] | None:
    """The `seq=N` of a stored payload: as sent, or opened from a sealed one, which
    the destination stores as salt || body (docs/sealing.md)."""
    return SEQ_RE.match(body) or SEQ_RE.match(body[SALT_SIZE:])


def set_federation(node_dir: Path, **values: str | bool) -> None:
    """Append a `[federation]` table to node.toml (init writes none)."""
    lines = ["", "[federation]"] + [
        f"{k} = {str(v).lower()}" if isinstance(v, bool) else f'{k} = "{v}"'
        for k, v in values.items()
    ]
    path = node_dir / "node.toml"
    text = path.read_text()
    assert "[federation]" not in text, "node.toml already has a [federation] table"
    path.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def payload(seq: int) -> str:
    return f"seq={seq}"


def read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)


def query(db_path: Path, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
    db = read_only(db_path)
    try:
        return list(db.execute(sql, tuple(params)))
    finally:
        db.close()


def inbox_seqs(db_path: Path, mailbox: str) -> Counter[int]:
    """How many times each sequence number sits in `mailbox`'s inbox (acked or not)."""
    rows = query(
        db_path,
        "SELECT p.body FROM inbox i JOIN envelopes e ON e.rid = i.rid"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha WHERE i.mailbox = ?",
        (mailbox,),
    )
    seen: Counter[int] = Counter()
    for (body,) in rows:
        assert isinstance(body, bytes), body
        m = stored_seq(body)
        assert m is not None, f"unexpected payload in the inbox: {body[:80]!r}"
        seen[int(m.group(1))] += 1
    return seen


def inbox_latencies(db_path: Path, mailbox: str) -> dict[int, int]:
    """Sequence number -> ms from the envelope's `created` (origin) to its inbox row."""
    rows = query(
        db_path,
        "SELECT p.body, e.created, i.delivered FROM inbox i JOIN envelopes e ON e.rid = i.rid"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha WHERE i.mailbox = ?",
        (mailbox,),
    )
    out: dict[int, int] = {}
    for body, created, delivered in rows:
        assert isinstance(body, bytes) and isinstance(created, int)
        assert isinstance(delivered, int)
        m = stored_seq(body)
        assert m is not None, body[:80]
        out[int(m.group(1))] = delivered - created
    return out


def statuses(db_path: Path, mailbox: str) -> dict[str, str]:
    """Message id (hex) -> status of its (single) recipient, at the origin."""
    rows = query(db_path, "SELECT msg, status FROM recipients WHERE mailbox = ?", (mailbox,))
    out: dict[str, str] = {}
    for msg, status in rows:
        assert isinstance(msg, bytes) and isinstance(status, str)
        out[msg.hex()] = status
    return out


def undelivered(db_path: Path, mailbox: str) -> int:
    """Messages sent by `mailbox` that are not yet `delivered` (work not yet acknowledged)."""
    rows = query(
        db_path,
        "SELECT count(*) FROM recipients WHERE mailbox = ? AND status != 'delivered'",
        (mailbox,),
    )
    value = rows[0][0]
    assert isinstance(value, int)
    return value


def queue_len(db_path: Path) -> int:
    value = query(db_path, "SELECT count(*) FROM queue")[0][0]
    assert isinstance(value, int)
    return value


@dataclass
class LogWatch:
    """Follows a node's log file from an offset, remembering events seen."""

    path: Path
    offset: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    last_fault: str = ""
    _partial: bytes = b""

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""
        self.seen.clear()
        self.last_fault = ""

    def poll(self) -> list[str]:
        """New complete lines since the last poll."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        lines = [ln.decode("utf-8", "replace") for ln in complete]
        for ln in lines:
            parts = ln.split(" ", 3)
            if len(parts) >= 3:
                name = parts[2]
                self.seen[name] += 1
                if name in ("fault_commit_open", "fault_commit_done"):
                    self.last_fault = name
        return lines

    def wait(self, name: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self.seen[name] >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} in {self.path} after {timeout}s")
            time.sleep(0.005)


def log_events(path: Path, name: str) -> list[dict[str, str]]:
    """Every `name` event of a text log as a dict of its fields (plus `ts`)."""
    out: list[dict[str, str]] = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[2] != name:
            continue
        fields = {"ts": parts[0]}
        for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', parts[3] if len(parts) > 3 else ""):
            fields[m.group(1)] = m.group(2).strip('"')
        out.append(fields)
    return out
