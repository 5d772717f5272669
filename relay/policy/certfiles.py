"""Reading the certificate store and revocation list from disk (DESIGN §7).

relay.policy.trust judges certificates from values only; this module is
where the files named by `[trust]` and `[node] certificates` are read. The
node reads them at start and reload (Trust.load) and again, off the request
path and off the event loop, whenever they change (watch_store), so a
certificate dropped into the store counts within RESCAN_S seconds without a
reload (docs/routes.md promises that).

Invariants:
- A read never raises: an unreadable file becomes a CertFile with `error`,
  an unreadable revocation list a StoreFiles with `revoked_error` (which
  relay.policy.trust turns into "no certificate counts": fail closed).
- `signature` (sizes and mtimes) changes whenever any file that was read
  changes, appears or disappears; an unchanged signature means no re-read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from relay.config.model import TrustConfig

RESCAN_S = 2.0

Signature = tuple[tuple[int, int] | None, tuple[tuple[Path, tuple[int, int] | None], ...]]


@dataclass(frozen=True, slots=True)
class CertFile:
    """One `*.cert` file of the store: its name and text, or why it could not be read."""

    name: str
    text: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class StoreFiles:
    """The certificate store and the revocation list as read at one moment."""

    cert_files: tuple[CertFile, ...] = ()
    revoked_path: Path | None = None
    revoked_text: str = ""  # "" also when there is no list
    revoked_error: str = ""  # the list exists but cannot be read
    signature: Signature | None = None


def store_signature(trust: TrustConfig) -> Signature:
    """Size and mtime of the revocation list and of every `*.cert` file in the store."""
    files = _cert_files(trust.certificates_dir)
    return _stat(trust.revoked), tuple((f, _stat(f)) for f in files)


def read_store(trust: TrustConfig) -> StoreFiles:
    """Read the certificate store and the revocation list."""
    return _read(trust, store_signature(trust))


def read_store_if_changed(trust: TrustConfig, last: Signature | None) -> StoreFiles | None:
    """read_store, or None if the files still have the signature `last`."""
    signature = store_signature(trust)
    return None if signature == last else _read(trust, signature)


def _read(trust: TrustConfig, signature: Signature) -> StoreFiles:
    revoked_text, revoked_error = "", ""
    path = trust.revoked
    if path is not None and path.exists():
        try:
            revoked_text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            revoked_error = f"revocation list {path} cannot be read: {e}"
    certs: list[CertFile] = []
    for file, _ in signature[1]:
        try:
            certs.append(CertFile(file.name, file.read_text(encoding="ascii")))
        except (OSError, UnicodeDecodeError) as e:
            certs.append(CertFile(file.name, error=str(e)))
    return StoreFiles(tuple(certs), path, revoked_text, revoked_error, signature)


def read_own(paths: Iterable[Path]) -> list[tuple[Path, str | Exception]]:
    """The text of each of this node's own certificate files, or the error reading it."""
    out: list[tuple[Path, str | Exception]] = []
    for path in paths:
        try:
            out.append((path, path.read_text(encoding="ascii")))
        except (OSError, UnicodeDecodeError) as e:
            out.append((path, e))
    return out


class StoreUser(Protocol):
    """What watch_store needs of a Trust: where its files are, and how to take new ones."""

    @property
    def store_config(self) -> TrustConfig: ...

    @property
    def store_signature(self) -> Signature | None: ...

    def use_store(self, files: StoreFiles, /) -> None: ...


async def watch_store(
    current: Callable[[], StoreUser],
    stopping: Callable[[], bool],
    interval_s: float = RESCAN_S,
) -> None:
    """Every `interval_s`, re-read the files of `current()` in a thread if they changed.

    `current` is called each time, since a reload swaps in a new Trust; files
    read for a Trust that was swapped out meanwhile are dropped.
    """
    while not stopping():
        await asyncio.sleep(interval_s)
        user = current()
        files = await asyncio.to_thread(
            read_store_if_changed, user.store_config, user.store_signature
        )
        if files is not None and current() is user:
            user.use_store(files)


def _cert_files(directory: Path | None) -> list[Path]:
    if directory is None:
        return []
    try:
        entries = sorted(directory.glob("*.cert"))
    except OSError:
        return []
    return [p for p in entries if p.is_file()]


def _stat(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
