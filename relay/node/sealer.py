"""This node's side of sealed payloads (protocol §21, docs/sealing.md).

Holds the node's own seal keys (the current one from `[node] seal_key_file`,
retired ones until their `valid_until`, minus `revoked_seal_keys`), seals outgoing
message bodies to the destination's seal key as trust knows it (pinned
`[[peers]] seal_keys`, else a certificate's), and caches opened wraps for
incoming ones.

Invariants:
- One data key and its wrap serve at most EPOCH_ENVELOPES envelopes or
  EPOCH_MS to one (destination, seal key); then a fresh one is drawn. They
  live in memory only, so a restart starts a new epoch.
- A revoked seal key is left out of `keys`, so relay.protocol.inbound refuses
  mail sealed to it (`rejected:seal_key`) before the wrap cache is consulted.
  So is a retired one from its `valid_until` on: `opening_keys()` drops it
  when the clock passes that time, in a node that keeps running as at load.
- `[federation] seal = "off"` seals nothing; "preferred" seals when a key is
  pinned; "required" makes `seal` answer None only for relay.node.submit to
  refuse the message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.config.model import Config
from relay.config.sealkeys import load_seal_key
from relay.errors import MalformedError
from relay.policy.certs import format_ms
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
        self.valid_until: dict[str, int] = {}  # key id -> ms, for retired keys that expire
        self.expired: dict[str, int] = {}  # key id -> the valid_until it passed
        self._next_expiry: int | None = None
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
        until: dict[str, int] = {}
        self.current = None
        if node.seal_key_file is not None:
            self.current = load_seal_key(node.seal_key_file)
            if self.current.public.string not in revoked:
                keys[self.current.public.key_id] = self.current
        for retired in node.retired_seal_keys:
            key = load_seal_key(retired.file)
            kid = key.public.key_id
            if key.public.string in revoked or kid in keys:
                continue
            keys[kid] = key
            if retired.valid_until_ms is not None:
                until[kid] = retired.valid_until_ms
        self.keys = keys
        self.valid_until = until
        self.expired = {}
        self._next_expiry = min(until.values(), default=None)
        self.revoked_ids = frozenset(parse_seal_key(k).key_id for k in revoked)
        self.mode = config.federation.seal
        self.opening_keys()

    def opening_keys(self) -> Mapping[str, SealPrivateKey]:
        """The keys that open mail now: retired ones past their valid_until are dropped
        (for good, until the next load), so expiry needs no reload."""
        if self._next_expiry is None or self.clock() < self._next_expiry:
            return self.keys
        now = self.clock()
        for kid, until in list(self.valid_until.items()):
            if until <= now:
                del self.valid_until[kid]
                self.keys = {k: v for k, v in self.keys.items() if k != kid}
                self.expired[kid] = until
        self._next_expiry = min(self.valid_until.values(), default=None)
        return self.keys

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
        if (until := self.expired.get(key_id)) is not None:
            return (
                f"seal key {key_id!r} of this node expired at {format_ms(until)} "
                "(its retired valid_until passed); it opens nothing"
            )
        if not self.keys:
            return "this node has no seal key ([node] seal_key_file)"
        return f"this node holds no seal key {key_id!r} (it has {', '.join(sorted(self.keys))})"

    def published(self) -> dict[str, dict[str, object]]:
        """The node document's `seal_keys`: key id -> {key, state[, valid_until]};
        an expired retired key is no longer published."""
        out: dict[str, dict[str, object]] = {}
        for kid, key in self.opening_keys().items():
            doc: dict[str, object] = {
                "key": key.public.string,
                "state": "current" if key is self.current else "retired",
            }
            if kid in self.valid_until:
                doc["valid_until"] = self.valid_until[kid]
            out[kid] = doc
        return out
