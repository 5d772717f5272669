"""Rotating and revoking keys in node.toml (`relay key rotate`, `relay key revoke`).

Invariants:
- node.toml is edited as every admin command edits it: with tomlkit (comments
  kept), the whole new text validated by `validate_config` before an atomic
  write, and refused if the file changed meanwhile. An edit that would make
  the file invalid writes nothing.
- A new key file is created (0600, never overwriting) before node.toml names
  it; the old private key file is removed only after node.toml stopped naming
  it. A crash in between leaves at worst an unused key file, never a node.toml
  naming a missing key.
- A retired key stays valid for verification for a grace period no shorter
  than the queue lifetime; retired keys past their `valid_until` are dropped
  at the next edit.
- Revoking the signing key rotates first, so the node always has a signing
  key and the revoked one never signs again once the node reloads.
- Key ids may contain `/` and `+`; file names use the URL-safe spelling.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tomlkit.items import Array, Table
from tomlkit.toml_document import TOMLDocument

from relay.config.files import load_config, save_edited
from relay.config.keys import load_private_key, write_key_file
from relay.config.model import Config, RetiredKey
from relay.config.tomledit import dumps, tables_of
from relay.errors import BadRequest, NotFound
from relay.protocol.keystr import key_id, public_key_string

MAX_ID_TRIES = 16


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate` did."""

    new_key: str
    old_key: str
    valid_until_ms: int  # the old key is published and verifiable until then
    key_file: Path  # the new signing key's file
    removed: Path | None  # the old private key file, if it was removed
    dropped: tuple[str, ...]  # retired keys past their valid_until, no longer listed
    config: Config


@dataclass(frozen=True, slots=True)
class Revocation:
    """What `revoke` did; `rotation` is set when the signing key was revoked."""

    key: str
    peer: str | None
    already: bool  # it was revoked before; nothing changed
    rotation: Rotation | None = None
    added: tuple[str, ...] = ()  # keys newly pinned for the peer (--new-key)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One of a node's keys, for `relay key list`."""

    key: str
    state: str  # "signing", "retired", "expired" (retired, past valid_until) or "revoked"
    valid_until_ms: int | None = None


# --- node.toml -------------------------------------------------------------


@dataclass
class _NodeToml:
    path: Path
    text: str
    config: Config
    doc: TOMLDocument

    @classmethod
    def open(cls, directory: Path) -> _NodeToml:
        config = load_config(directory)  # an invalid file is reported, never edited
        text = config.path.read_text(encoding="utf-8")
        return cls(config.path, text, config, tomlkit.parse(text))

    @property
    def node(self) -> Table:
        table = self.doc["node"]
        if not isinstance(table, Table):
            raise BadRequest(f"[node] in {self.path} is not written as a table; edit it by hand")
        return table

    def peer(self, name: str) -> Table:
        try:
            tables: list[object] = list(tables_of(self.doc, "peers") or [])
        except ValueError as e:
            raise BadRequest(f"{self.path}: {e}") from None
        for table in tables:
            if isinstance(table, Table) and table.get("name") == name:
                return table
        raise NotFound(f"no peer named {name!r} in {self.path}")

    def save(self) -> Config:
        return save_edited(self.path, self.text, dumps(self.doc))


def _iso(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.UTC)


def _retired_array(retired: list[RetiredKey]) -> Array:
    array = tomlkit.array()
    array.multiline(True)
    for r in retired:
        entry = tomlkit.inline_table()
        entry["key"] = r.key
        entry["valid_until"] = _iso(r.valid_until_ms)
        array.append(entry)
    return array


def _set_list(table: Table, key: str, values: list[str]) -> None:
    if values:
        table[key] = values
    elif key in table:
        del table[key]


def _set_node_keys(nt: _NodeToml, retired: list[RetiredKey], revoked: list[str]) -> None:
    if retired:
        nt.node["retired_keys"] = _retired_array(retired)
    elif "retired_keys" in nt.node:
        del nt.node["retired_keys"]
    _set_list(nt.node, "revoked_keys", revoked)


def _file_value(path: Path, base: Path) -> str:
    """How node.toml names `path`: relative to its directory when inside it."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _new_key_file(directory: Path, taken: set[str]) -> tuple[Ed25519PrivateKey, Path]:
    """A new key, written to `directory/node-<key id>.key`, whose id is not in `taken`."""
    for _ in range(MAX_ID_TRIES):
        key = Ed25519PrivateKey.generate()
        kid = key_id(public_key_string(key.public_key()))
        if kid in taken:
            continue
        path = directory / f"node-{kid.replace('+', '-').replace('/', '_')}.key"
        try:
            write_key_file(path, key)
        except FileExistsError:
            continue
        return key, path
    raise BadRequest(f"could not make a key with a new key id in {directory}")


# --- rotate ------------------------------------------------------------------


def default_grace_ms(config: Config) -> int:
    """Twice the queue lifetime: an envelope may wait that long here and again at a relay."""
    return 2 * config.node.queue_lifetime_ms


def check_grace(config: Config, grace_ms: int, risk: str) -> None:
    """BadRequest if a retired key's grace period is shorter than the queue lifetime,
    saying the `risk` of that (signing and seal keys alike)."""
    lifetime = config.node.queue_lifetime_ms
    if grace_ms < lifetime:
        raise BadRequest(
            f"the grace period ({grace_ms // 1000} s) is shorter than the queue lifetime "
            f"({lifetime // 1000} s): {risk}"
        )


def rotate(
    directory: Path,
    *,
    now_ms: int,
    grace_ms: int | None = None,
    keep_old_file: bool = False,
    revoke_old: bool = False,
) -> Rotation:
    """Make a new signing key; the old one is retired until now + grace (or revoked).

    BadRequest if `grace_ms` is shorter than the queue lifetime.
    """
    nt = _NodeToml.open(directory)
    node = nt.config.node
    grace = default_grace_ms(nt.config) if grace_ms is None else grace_ms
    if not revoke_old:
        check_grace(
            nt.config,
            grace,
            "envelopes signed with the old key could still be waiting in a queue when it "
            "stops being valid",
        )
    old_key = public_key_string(load_private_key(node.key_file).public_key())
    live = [r for r in node.retired_keys if r.valid_until_ms > now_ms]
    dropped = tuple(r.key for r in node.retired_keys if r.valid_until_ms <= now_ms)
    revoked = list(node.revoked_keys)
    taken = {key_id(k) for k in (old_key, *(r.key for r in live), *revoked)}
    new, new_file = _new_key_file(node.key_file.parent, taken)
    valid_until = math.ceil((now_ms + grace) / 1000) * 1000
    if revoke_old:
        revoked.append(old_key)
    else:
        live.append(RetiredKey(old_key, valid_until))
    nt.node["key_file"] = _file_value(new_file, nt.path.parent)
    _set_node_keys(nt, live, revoked)
    try:
        config = nt.save()
    except BaseException:
        new_file.unlink(missing_ok=True)
        raise
    removed = None
    if not keep_old_file and node.key_file != new_file:
        node.key_file.unlink(missing_ok=True)
        removed = node.key_file
    return Rotation(
        new_key=public_key_string(new.public_key()),
        old_key=old_key,
        valid_until_ms=0 if revoke_old else valid_until,
        key_file=new_file,
        removed=removed,
        dropped=dropped,
        config=config,
    )


# --- revoke ------------------------------------------------------------------


def _resolve(ref: str, keys: list[str], what: str) -> str:
    """The key among `keys` that `ref` names (a key string or a key id)."""
    if ref.startswith("ed25519:"):
        return ref
    found = [k for k in keys if key_id(k) == ref]
    if not found:
        raise NotFound(f"no key with id {ref!r} among {what}")
    if len(found) > 1:
        raise BadRequest(f"key id {ref!r} is ambiguous among {what}; give the whole key string")
    return found[0]


def revoke(directory: Path, ref: str, *, now_ms: int, keep_old_file: bool = False) -> Revocation:
    """Withdraw one of this node's keys: never used, never published again.

    `ref` is a key string or key id. The signing key is replaced by a new one
    first. A key string this node does not list is added to `revoked_keys`.
    """
    nt = _NodeToml.open(directory)
    node = nt.config.node
    signing = public_key_string(load_private_key(node.key_file).public_key())
    retired = [r.key for r in node.retired_keys]
    key = _resolve(ref, [signing, *retired, *node.revoked_keys], "this node's keys")
    if key in node.revoked_keys:
        return Revocation(key, None, already=True)
    if key == signing:
        rotation = rotate(directory, now_ms=now_ms, keep_old_file=keep_old_file, revoke_old=True)
        return Revocation(key, None, already=False, rotation=rotation)
    live = [r for r in node.retired_keys if r.key != key and r.valid_until_ms > now_ms]
    _set_node_keys(nt, live, [*node.revoked_keys, key])
    nt.save()
    return Revocation(key, None, already=False)


def revoke_peer_key(
    directory: Path, peer: str, ref: str, *, new_keys: tuple[str, ...] = ()
) -> Revocation:
    """Refuse a pinned peer's key at once: out of its `keys`, into its `revoked_keys`.

    `new_keys` are pinned at the same time (the peer's replacement key). A
    peer keeps at least one key: revoking its last one needs a new one.
    """
    nt = _NodeToml.open(directory)
    pinned = nt.config.peer(peer)
    if pinned is None:
        raise NotFound(f"no peer named {peer!r} in {nt.path}")
    keys, revoked = list(pinned.keys), list(pinned.revoked_keys)
    key = _resolve(ref, [*keys, *revoked], f"the keys of {peer}")
    added = tuple(k for k in dict.fromkeys(new_keys) if k not in keys and k != key)
    if key in revoked and not added:
        return Revocation(key, peer, already=True)
    remaining = [k for k in keys if k != key] + list(added)
    if not remaining:
        raise BadRequest(
            f"{key_id(key)} is the only key pinned for {peer}: give the key that replaces it "
            f"with --new-key, or unpin the peer with `relay peer remove`"
        )
    table = nt.peer(peer)
    table["keys"] = remaining
    _set_list(table, "revoked_keys", revoked if key in revoked else [*revoked, key])
    nt.save()
    return Revocation(key, peer, already=key in revoked, added=added)


# --- list --------------------------------------------------------------------


def key_infos(config: Config, now_ms: int) -> list[KeyInfo]:
    """The node's keys: the signing key, then retired ones, then revoked ones."""
    signing = public_key_string(load_private_key(config.node.key_file).public_key())
    out = [KeyInfo(signing, "signing")]
    for r in config.node.retired_keys:
        state = "retired" if r.valid_until_ms > now_ms else "expired"
        out.append(KeyInfo(r.key, state, r.valid_until_ms))
    out.extend(KeyInfo(k, "revoked") for k in config.node.revoked_keys)
    return out


def wall_ms() -> int:
    """Now, in unix ms (the CLI's clock; tests pass their own `now_ms`)."""
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
