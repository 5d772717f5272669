"""Seal keys in node.toml: `relay seal init`, `relay seal rotate`, `relay seal revoke`.

Edits follow relay.config.keyops: tomlkit (comments kept), the whole new text
validated before an atomic write, refused if the file changed meanwhile; a new
key file is written (0600, never overwriting) before node.toml names it.

Invariants:
- A rotated-out seal key moves to `retired_seal_key_files` with a
  `valid_until` (now + grace, never shorter than the queue lifetime): it
  still opens mail sealed to it while peers catch up with the new key and
  mail already sealed to the old one is on its way, and nothing after.
  Retired keys past their valid_until are dropped, and their files removed,
  at the next rotation.
- A revoked seal key opens nothing from the next reload on; its private key
  file is removed once node.toml no longer names it. Revoking the current
  key makes a new one first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from relay.config.keyops import _file_value, _iso, _NodeToml, check_grace, default_grace_ms
from relay.config.model import Config, RetiredSealKey
from relay.config.sealkeys import SEAL_KEY_NAME, generate_seal_key_file, load_seal_key
from relay.errors import BadRequest, NotFound
from relay.protocol.sealing import HYBRID, SealPrivateKey

MAX_ID_TRIES = 16


@dataclass(frozen=True, slots=True)
class SealChange:
    """What an edit did: the current seal key afterwards, and the key it replaced or revoked."""

    current: SealPrivateKey
    file: Path
    old: str | None
    config: Config
    valid_until_ms: int | None = None  # rotate: the old key opens mail until then
    dropped: tuple[Path, ...] = ()  # rotate: expired retired key files removed


def new_seal_key_file(directory: Path, suite: str, first: bool) -> tuple[SealPrivateKey, Path]:
    """A new seal key in `directory` (node.seal if `first` and free, else node-seal-<id>.seal)."""
    if first and not (directory / SEAL_KEY_NAME).exists():
        path = directory / SEAL_KEY_NAME
        return generate_seal_key_file(path, suite), path
    for i in range(MAX_ID_TRIES):
        path = directory / f"node-seal-{i + 2}.seal"
        try:
            return generate_seal_key_file(path, suite), path
        except FileExistsError:
            continue
    raise BadRequest(f"could not find a free seal key file name in {directory}")


def seal_init(directory: Path, suite: str = HYBRID) -> SealChange:
    """Give a node made before sealing existed its first seal key (the migration step)."""
    nt = _NodeToml.open(directory)
    node = nt.config.node
    if node.seal_key_file is not None:
        raise BadRequest(
            f"{nt.path} already names seal_key_file {node.seal_key_file}; "
            "`relay seal rotate` makes a new one"
        )
    key, path = new_seal_key_file(node.key_file.parent, suite, first=True)
    nt.node["seal_key_file"] = _file_value(path, nt.path.parent)
    try:
        config = nt.save()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SealChange(key, path, None, config)


def seal_rotate(
    directory: Path, suite: str = HYBRID, *, now_ms: int, grace_ms: int | None = None
) -> SealChange:
    """Make a new current seal key; the old one is retired until now + grace.

    `grace_ms` defaults to the signing keys' (twice the queue lifetime);
    BadRequest if it is shorter than the queue lifetime.
    """
    nt = _NodeToml.open(directory)
    node = nt.config.node
    if node.seal_key_file is None:
        raise BadRequest(f"{nt.path} has no seal_key_file yet; run `relay seal init` first")
    grace = default_grace_ms(nt.config) if grace_ms is None else grace_ms
    check_grace(
        nt.config,
        grace,
        "mail sealed to the old seal key could still be waiting in a queue when it stops opening",
    )
    old = load_seal_key(node.seal_key_file)
    key, path = new_seal_key_file(node.key_file.parent, suite, first=False)
    valid_until = math.ceil((now_ms + grace) / 1000) * 1000
    live = [r for r in node.retired_seal_keys if not expired(r, now_ms)]
    dropped = tuple(r.file for r in node.retired_seal_keys if expired(r, now_ms))
    retired = [RetiredSealKey(node.seal_key_file, valid_until), *live]
    nt.node["seal_key_file"] = _file_value(path, nt.path.parent)
    nt.node["retired_seal_key_files"] = _retired_array(retired, nt.path.parent)
    try:
        config = nt.save()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    for file in dropped:
        file.unlink(missing_ok=True)
    return SealChange(key, path, old.public.string, config, valid_until, dropped)


def expired(retired: RetiredSealKey, now_ms: int) -> bool:
    """Whether a retired seal key's valid_until has passed (it opens nothing)."""
    return retired.valid_until_ms is not None and retired.valid_until_ms <= now_ms


def seal_revoke(directory: Path, ref: str) -> SealChange:
    """Withdraw one of this node's seal keys (`ref`: key id or key string) at once."""
    nt = _NodeToml.open(directory)
    node = nt.config.node
    own = {}
    retired_files = tuple(r.file for r in node.retired_seal_keys)
    for path in ((node.seal_key_file,) if node.seal_key_file else ()) + retired_files:
        own[path] = load_seal_key(path)
    found = [p for p, k in own.items() if ref in (k.public.key_id, k.public.string)]
    if not found:
        raise NotFound(f"no seal key {ref!r} among this node's seal keys")
    path = found[0]
    revoked_key = own[path].public.string
    current_file = node.seal_key_file
    current = own[current_file] if current_file is not None else None
    new_path: Path | None = None
    if path == current_file:
        current, new_path = new_seal_key_file(node.key_file.parent, own[path].suite, first=False)
        nt.node["seal_key_file"] = _file_value(new_path, nt.path.parent)
        current_file = new_path
    retired = [r for r in node.retired_seal_keys if r.file != path]
    if retired:
        nt.node["retired_seal_key_files"] = _retired_array(retired, nt.path.parent)
    elif "retired_seal_key_files" in nt.node:
        del nt.node["retired_seal_key_files"]
    revoked = tomlkit.array()
    revoked.multiline(True)
    for k in (*node.revoked_seal_keys, revoked_key):
        revoked.append(k)
    nt.node["revoked_seal_keys"] = revoked
    try:
        config = nt.save()
    except BaseException:
        if new_path is not None:
            new_path.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)
    if current is None or current_file is None:
        raise BadRequest("no current seal key")  # unreachable: path was one of own
    return SealChange(current, current_file, revoked_key, config)


def _retired_array(retired: list[RetiredSealKey], base: Path) -> tomlkit.items.Array:
    """`retired_seal_key_files`: `{file, valid_until}` tables; a bare path for a key
    retired before seal keys had a grace period (it keeps opening until revoked)."""
    array = tomlkit.array()
    array.multiline(True)
    for r in retired:
        if r.valid_until_ms is None:
            array.append(_file_value(r.file, base))
            continue
        entry = tomlkit.inline_table()
        entry["file"] = _file_value(r.file, base)
        entry["valid_until"] = _iso(r.valid_until_ms)
        array.append(entry)
    return array
