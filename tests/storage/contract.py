"""Shared pieces of the storage contract tests (tests/storage/test_contract*.py).

Every contract test takes the `storage` fixture (tests/storage/conftest.py),
which opens one backend of BACKENDS through relay.storage.backends; a new
backend adds its name there and runs the same tests. The tests use the interface only: no SQL, no
backend type.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol.envelope import POSTMASTER_KINDS, Envelope, make_header, seal
from relay.protocol.erasure import ErasureRequest, encode_request, request_header
from relay.protocol.keystr import key_id, public_key_string
from relay.storage.backends import open_readonly_storage
from relay.storage.interface import ReadOnlyStorage, Storage, WriteTx
from relay.storage.records import NewEnvelope

HERE = "here.test"
T0 = 1_700_000_000_000
DAY_MS = 86_400_000
KEY = Ed25519PrivateKey.generate()
KEY_ID = key_id(public_key_string(KEY.public_key()))


async def readonly(storage: Storage) -> ReadOnlyStorage:
    """A read-only open of the same database, beside the running writer."""
    return await open_readonly_storage(storage.location)


def envelope(
    *,
    origin: str = "peer.test",
    payload: bytes = b"hello",
    created: int = T0,
    expires: int | None = None,
    to: Sequence[str] = (f"bob@{HERE}",),
    dest: str = HERE,
    ident: bytes | None = None,
    kind: str = "message",
) -> Envelope:
    """An envelope of `kind`; one of the postmaster's kinds goes from and to postmasters."""
    ctype = POSTMASTER_KINDS.get(kind)
    header = make_header(
        id=ident if ident is not None else os.urandom(16),
        kind=kind,
        origin=origin,
        key_id=KEY_ID,
        sender=f"alice@{origin}" if ctype is None else f"postmaster@{origin}",
        to=to if ctype is None else [f"postmaster@{dest}"],
        dest=dest,
        created=created,
        expires=created + DAY_MS if expires is None else expires,
        residency=["DE"],
        ctype=ctype or "text/plain",
        payload=payload,
    )
    return seal(header, payload, KEY)


def erasure_request(
    origin: str, target: bytes, *, ident: bytes | None = None, dest: str = "far.test"
) -> Envelope:
    """The `erasure` envelope `origin` sends to `dest` for its message envelope `target`."""
    payload = encode_request(ErasureRequest(target, "admin", "", T0))
    header = request_header(
        id=ident if ident is not None else os.urandom(16),
        origin=origin,
        key_id=KEY_ID,
        target_origin=origin,
        dest=dest,
        residency=["DE"],
        created=T0,
        expires=T0 + 1000,
        payload=payload,
    )
    return seal(header, payload, KEY)


def new(
    env: Envelope,
    *,
    hop: str | None = None,
    mailboxes: Sequence[str] = (),
    from_peer: str | None = "peer.test",
) -> NewEnvelope:
    return NewEnvelope(
        env=env,
        trace=(env.header.origin,) if from_peer else (),
        from_peer=from_peer,
        hop=hop,
        mailboxes=tuple(mailboxes),
        rule_id="rule-1",
        policy_hash="ab" * 8,
    )


async def put(storage: Storage, items: Sequence[NewEnvelope], now: int = T0) -> list[int]:
    """Insert `items` in one job; their rids."""

    async def job(tx: WriteTx) -> list[int]:
        return await tx.insert_envelopes(items, now)

    return await storage.write(job)
