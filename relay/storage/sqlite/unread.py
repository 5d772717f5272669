"""Unread mail per mailbox, read beside a running node (for `relay mailbox`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.errors import StoreError
from relay.storage.sqlite.backup import connect_read_only


def unread_count(database: Path, mailbox: str) -> int:
    """Messages in `mailbox`'s inbox not yet acknowledged; 0 with no database yet."""
    if not database.exists():
        return 0
    try:
        db = connect_read_only(database)
        try:
            row = db.execute(
                "SELECT count(*) FROM inbox WHERE mailbox = ? AND acked IS NULL", (mailbox,)
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot count {mailbox}'s unread mail in {database}: {e}") from None
    return int(row[0])
