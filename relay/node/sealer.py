"""This node's side of sealed payloads (protocol §21, docs/sealing.md).

Holds the node's own seal keys (the current one from `[node] seal_key_file`,
retired ones that still open, minus `revoked_seal_keys`), seals outgoing
message bodies to the destination's seal key as trust knows it (pinned
`[[peers]] seal_keys`, else a certificate's), and caches opened wraps for
incoming ones.

Invariants:
- One data key and its wrap serve at most EPOCH_ENVELOPES envelopes or
  EPOCH_MS to one (destination, seal key); then a fresh one is drawn. They
  live in memory only, so a restart starts a new epoch.
- A revoked seal key is left out of `keys`, so relay.protocol.inbound refuses
  mail sealed to it (`rejected:seal_key`) before the wrap cache is consulted.
- `[federation] seal = "off"` seals nothing; "preferred" seals when a key is
  pinned; "required" makes `seal` answer None only for relay.node.submit to
  refuse the message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from relay.config.model import Config
from relay.config.sealkeys import load_seal_key
from relay.errors import MalformedError
from relay.protocol.sealing import (
    DEK_SIZE,
    SALT_SIZE,
    SealInfo,
    SealPrivateKey,
    SealPublicKey,
    parse_seal_key,
    seal_body,
    wrap_dek,
)

EPOCH_ENVELOPES = 10_000
EPOCH_MS = 600_000
WRAP_CACHE = 4096


class WrapCache(OrderedDict[bytes, bytes]):
    """wrap -> data key, the least recently used dropped past `limit`."""

    def __init__(self, limit: int = WRAP_CACHE) -> None:
        super().__init__()
        self.limit = limit

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = super().get(key, default)
        if value is not None:
            self.move_to_end(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)


@dataclass(slots=True)
class _Epoch:
    dek: bytes
    wrap: bytes
    left: int
    until: int


class Sealer:
    """Seal keys, the per-destination data keys, and the wrap cache."""

    def __init__(self, random: Callable[[int], bytes], clock: Callable[[], int]) -> None:
        self.random = random
        self.clock = clock
        self.keys: dict[str, SealPrivateKey] = {}  # key id -> key that may open
        self.current: SealPrivateKey | None = None
        self.revoked_ids: frozenset[str] = frozenset()
        self.mode = "preferred"
        self.deks = WrapCache()
        self._parsed: dict[str, SealPublicKey] = {}
        self._epochs: dict[tuple[str, str], _Epoch] = {}

    def load(self, config: Config) -> None:
        """Take (re)loaded config: own keys from their files, peers' pinned seal keys.

        The files were checked when the config was loaded (relay.config.files).
        """
        node = config.node
        revoked = set(node.revoked_seal_keys)
        keys: dict[str, SealPrivateKey] = {}
        self.current = None
        files = ((node.seal_key_file,) if node.seal_key_file else ()) + node.retired_seal_key_files
        for i, path in enumerate(files):
            key = load_seal_key(path)
            if key.public.string in revoked:
                continue
            keys.setdefault(key.public.key_id, key)
            if i == 0 and node.seal_key_file is not None:
                self.current = key
        self.keys = keys
        self.revoked_ids = frozenset(parse_seal_key(k).key_id for k in revoked)
        self.mode = config.federation.seal

    def key_for(self, seal_keys: tuple[str, ...]) -> SealPublicKey | None:
        """The first usable of a node's seal key strings (as trust lists them), or None."""
        for text in seal_keys:
            pub = self._parsed.get(text)
            if pub is None:
                try:
                    pub = parse_seal_key(text)
                except MalformedError:  # config and certificates were checked; skip
                    continue
                if len(self._parsed) > WRAP_CACHE:
                    self._parsed.clear()
                self._parsed[text] = pub
            return pub
        return None

    def seal(
        self, *, dest: str, seal_keys: tuple[str, ...], env_id: bytes, origin: str, body: bytes
    ) -> tuple[SealInfo, bytes] | None:
        """Seal `body` to `dest`'s first seal key: (header seal map, ciphertext), or None
        when it is not sealed (`seal = "off"`, or `dest` has no seal key)."""
        pub = None if self.mode == "off" else self.key_for(seal_keys)
        if pub is None:
            return None
        now = self.clock()
        slot = (dest, pub.string)
        epoch = self._epochs.get(slot)
        if epoch is None or epoch.left <= 0 or now >= epoch.until:
            dek = self.random(DEK_SIZE)
            epoch = _Epoch(dek, wrap_dek(pub, dek, origin, dest), EPOCH_ENVELOPES, now + EPOCH_MS)
            self._epochs[slot] = epoch
        epoch.left -= 1
        return seal_body(
            body=body,
            salt=self.random(SALT_SIZE),
            dek=epoch.dek,
            wrap=epoch.wrap,
            pub=pub,
            env_id=env_id,
            origin=origin,
            dest=dest,
        )

    def why_missing(self, key_id: str) -> str:
        """Why mail sealed to `key_id` does not open here (for `rejected:seal_key`)."""
        if key_id in self.revoked_ids:
            return f"seal key {key_id!r} of this node is revoked"
        if not self.keys:
            return "this node has no seal key ([node] seal_key_file)"
        return f"this node holds no seal key {key_id!r} (it has {', '.join(sorted(self.keys))})"

    def published(self) -> dict[str, dict[str, str]]:
        """The node document's `seal_keys`: key id -> {key, state}."""
        return {
            kid: {
                "key": key.public.string,
                "state": "current" if key is self.current else "retired",
            }
            for kid, key in self.keys.items()
        }
