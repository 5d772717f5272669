"""Opening a node's storage from its config: the one way `relay run` and the
admin commands reach the database `[storage] url` names (relay.config.storage).

- `open_node_storage`: the read-write storage a running node holds.
- `open_node_readonly`: reads beside a running node (`relay queue`, `peers`).
- `sqlite_file`: the file of a SQLite node, for the commands that work on the
  file itself (backup, restore, purge); on another backend they are refused
  with what to use instead.
- `storage_password`: `[storage] password_file`, else RELAY_STORAGE_PASSWORD.
"""

from __future__ import annotations

import os
from pathlib import Path

from relay.config.files import read_password_file
from relay.config.model import Config, StorageConfig
from relay.config.storage import PASSWORD_ENV
from relay.errors import StoreError
from relay.storage.backends import open_readonly_storage, open_storage
from relay.storage.interface import ReadOnlyStorage, Storage


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


def _sqlite_only(config: Config) -> Path:
    storage = config.storage
    if storage.sqlite_path is None:
        raise StoreError(
            f"{storage.url} ([storage] url in {config.path}): PostgreSQL storage is not "
            "available in this version of relay"
        )
    return storage.sqlite_path


async def open_node_storage(config: Config) -> Storage:
    """Lock, open and migrate the storage `config` names and start its writer."""
    return await open_storage(_sqlite_only(config))


async def open_node_readonly(config: Config) -> ReadOnlyStorage:
    """Reads on the node's storage, safe beside a running node.

    StoreError if there is no database yet or it is newer than this code.
    """
    return await open_readonly_storage(_sqlite_only(config))


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
