"""Opening a node's storage from its config: the one way `relay run` and the
admin commands reach the database `[storage] url` names (relay.config.storage).

- `open_node_storage`: the read-write storage a running node holds.
- `open_node_readonly`: reads beside a running node (`relay queue`, `peers`).
- `sqlite_file`: the file of a SQLite node, for the commands that work on the
  file itself (backup, restore, purge); on another backend they are refused
  with what to use instead.
- `unread_messages`: what `relay mailbox add/remove` check before they edit.
- `storage_password`: `[storage] password_file`, else RELAY_STORAGE_PASSWORD.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

from relay.config.files import read_password_file
from relay.config.model import Config, StorageConfig
from relay.config.storage import PASSWORD_ENV
from relay.errors import StoreError
from relay.storage.backends import open_readonly_storage, open_storage
from relay.storage.interface import NotCreated, ReadOnlyStorage, Storage


def storage_password(storage: StorageConfig, config_file: Path) -> str | None:
    """The database password: from `password_file` if set, else the environment.

    None when neither gives one (the server may trust the connection).
    StoreError naming the file if the password file is unusable.
    """
    if storage.password_file is not None:
        try:
            return read_password_file(storage.password_file)
        except ValueError as e:
            raise StoreError(f"[storage] password_file in {config_file}: {e}") from None
    return os.environ.get(PASSWORD_ENV) or None


async def open_node_storage(config: Config) -> Storage:
    """Open (and migrate) the storage `config` names and start its writer."""
    storage = config.storage
    return await open_storage(storage.target, storage_password(storage, config.path))


async def open_node_readonly(config: Config) -> ReadOnlyStorage:
    """Reads on the node's storage, safe beside a running node.

    StoreError if there is no database yet or it is newer than this code.
    """
    storage = config.storage
    return await open_readonly_storage(storage.target, storage_password(storage, config.path))


def unread_messages(config: Config, mailbox: str) -> int:
    """Unacknowledged messages in `mailbox`'s inbox (safe beside a running node).

    0 when the node never ran (no database yet); StoreError when it cannot be read.
    """
    return asyncio.run(_count_unread(config, mailbox))


async def _count_unread(config: Config, mailbox: str) -> int:
    async with _reads_if_created(config) as reads:
        return 0 if reads is None else await reads.unacked_count(mailbox)


@contextlib.asynccontextmanager
async def _reads_if_created(config: Config) -> AsyncIterator[ReadOnlyStorage | None]:
    """The node's reads, closed after use; None when the node never ran (no database)."""
    try:
        reads = await open_node_readonly(config)
    except NotCreated:
        yield None
        return
    try:
        yield reads
    finally:
        await reads.close()


class Leftovers(NamedTuple):
    """What a mailbox name still has in the store: a new owner of the name would get it."""

    unread: int  # inbox rows not yet acknowledged
    sent: int  # messages it sent: their statuses, and erasing them, answer to the name
    answers: int  # stored Idempotency-Key answers, which name its message ids

    def describe(self) -> str:
        """'1 unread message(s), 2 sent message(s)', naming only what is there."""
        parts = (
            (self.unread, "unread message(s)"),
            (self.sent, "sent message(s) whose status and erasure answer to the name"),
            (self.answers, "Idempotency-Key answer(s)"),
        )
        return ", ".join(f"{n} {what}" for n, what in parts if n)


def leftovers(config: Config, mailbox: str) -> Leftovers:
    """What `mailbox` (a name, perhaps removed) still has stored; zeros before the first run."""
    return asyncio.run(_leftovers(config, mailbox))


async def _leftovers(config: Config, mailbox: str) -> Leftovers:
    async with _reads_if_created(config) as reads:
        if reads is None:
            return Leftovers(0, 0, 0)
        return Leftovers(
            await reads.unacked_count(mailbox),
            await reads.sent_count(mailbox),
            await reads.answer_count(mailbox),
        )


def sqlite_file(config: Config, command: str, instead: str) -> Path:
    """The SQLite file of the node, for `command`, which works on the file itself.

    StoreError on any other backend, naming what to use `instead`.
    """
    storage = config.storage
    if storage.sqlite_path is None:
        raise StoreError(
            f"`{command}` works on a SQLite node's database file; this node's storage is "
            f"{storage.url} ([storage] url in {config.path}): {instead}"
        )
    return storage.sqlite_path
