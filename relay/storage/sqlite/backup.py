"""Online backup and restore of a node's SQLite database (DESIGN §8; docs/backup.md).

Invariants:
- A backup is made with SQLite's backup API from a read-only connection, in
  one step, so it is one consistent snapshot (a WAL read transaction) even
  while the node writes. It never blocks the node's writer.
- The backup file is a single self-contained file (rollback journal mode, no
  -wal beside it), mode 0600 from the moment it exists, passes
  `PRAGMA quick_check`, and appears under its name only when complete
  (temporary file, fsync, rename, fsync of the directory).
- A running node writes the snapshot only inside its own database directory
  (a sandboxed service may write nowhere else) and streams it to the admin
  who asked; the admin's side writes the file where it was asked to.
- Nothing here writes the live database of a running node: restore takes the
  database's lock file first (the one `relay run` holds) and refuses while a
  node has it; the database it replaces is kept beside it, checkpointed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from relay.errors import BadRequest, Conflict, StoreError
from relay.storage.sqlite.store import SCHEMA_VERSION, DatabaseLocked

SIDE_FILES = ("-wal", "-shm", "-journal")
CONTENT_TYPE = "application/vnd.sqlite3"  # a backup as the admin API streams it


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the database at `path` (safe beside a running node)."""
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_destination(source: Path, dest: Path, *, overwrite: bool) -> None:
    """Refuse a destination that is the database itself (or a side file) or already exists."""
    if not dest.is_absolute():
        raise BadRequest(f"the backup path must be absolute, not {str(dest)!r}")
    real = dest.resolve()
    src = source.resolve()
    if real in {src, *(src.with_name(src.name + s) for s in SIDE_FILES)}:
        raise BadRequest(f"{dest} is the node's own database; choose another file")
    if dest.is_dir():
        raise BadRequest(f"{dest} is a directory; give a file name")
    if not dest.parent.is_dir():
        raise BadRequest(f"no such directory: {dest.parent}")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise Conflict(f"{dest} exists; remove it or pass --force to replace it")


def private_temp(dest: Path) -> Path:
    """A new empty file beside `dest`, mode 0600 from its creation."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return tmp


def remove_temp(tmp: Path) -> None:
    """Remove a temporary file and the journal SQLite may have left beside it."""
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def snapshot(source: Path, tmp: Path) -> int:
    """Copy the database `source` into the empty file `tmp`, checked; return its size.

    Blocking: the node runs it in a worker thread.
    """
    if not source.is_file():
        raise StoreError(f"no database at {source}: has the node ever run?")
    try:
        src = connect_read_only(source)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst)  # pages=-1: the whole database in one step
                dst.execute("PRAGMA journal_mode = DELETE")
                check = dst.execute("PRAGMA quick_check").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as e:
        raise StoreError(f"backup of {source} failed: {e}") from e
    if check is None or check[0] != "ok":
        raise StoreError(f"backup of {source} failed its integrity check: {check}")
    return tmp.stat().st_size


def install(tmp: Path, dest: Path) -> None:
    """Make the finished `tmp` durable and give it its final name `dest`."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def backup_file(source: Path, dest: Path, *, overwrite: bool = False) -> int:
    """Copy the database `source` into `dest` as a consistent snapshot; return its size."""
    check_destination(source, dest, overwrite=overwrite)
    tmp = private_temp(dest)
    try:
        size = snapshot(source, tmp)
        install(tmp, dest)
    finally:
        remove_temp(tmp)
    return size


def schema_version_of(path: Path) -> int:
    """The schema version of a relay database file; StoreError if it is not one."""
    try:
        db = connect_read_only(path)
        try:
            if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise StoreError(f"{path} fails SQLite's integrity check")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            db.execute("SELECT count(*) FROM envelopes").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise StoreError(f"{path} is not a relay database: {e}") from e
    if row is None or row[0] is None:
        raise StoreError(f"{path} is not a relay database: no schema version")
    return int(row[0])


@contextlib.contextmanager
def database_lock(database: Path) -> Iterator[None]:
    """Hold the lock a running node holds on `database` (DatabaseLocked if one does)."""
    lock_path = database.with_name(database.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseLocked(
                f"{database} is in use by a running node (lock {lock_path} is held); stop it first"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def restore_file(backup: Path, database: Path) -> Path | None:
    """Put `backup` in place as `database`; return where the replaced database was kept.

    The caller holds `database_lock(database)`.
    """
    if backup.resolve() == database.resolve():
        raise BadRequest(f"{backup} is the node's database itself; give a backup file")
    version = schema_version_of(backup)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{backup} has schema version {version}, newer than this relay "
            f"(knows up to {SCHEMA_VERSION}); restore it with a newer relay"
        )
    kept: Path | None = None
    if database.exists():
        try:  # fold the WAL into the file so the kept copy is whole
            db = sqlite3.connect(database, isolation_level=None)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
        except sqlite3.Error as e:
            raise StoreError(f"cannot checkpoint {database} before replacing it: {e}") from e
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = database.with_name(f"{database.name}.pre-restore-{stamp}")
        os.replace(database, kept)
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + suffix).unlink()
    try:
        backup_file(backup, database)
    except BaseException:
        if kept is not None:  # put the replaced database back
            os.replace(kept, database)
        raise
    return kept
