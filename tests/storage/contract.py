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


# Heads a node kept before migration 19 (PostgreSQL 12) knew which were evidence,
# as (peer, size, at=seen, head, proof_from, proof): a conflict (two roots of size
# 3), a shrink (8 then 7), a forked proof (5 from 4), plain heads, a latest (9).
PRE_EVIDENCE_HEADS = [
    ("a.test", 1, T0, b"a1", None, ""),
    ("a.test", 3, T0 + 1, b"a3-one", None, ""),
    ("a.test", 3, T0 + 2, b"a3-two", None, ""),
    ("a.test", 4, T0 + 3, b"a4", 3, "consistent"),
    ("a.test", 5, T0 + 4, b"a5", 4, "forked"),
    ("a.test", 8, T0 + 5, b"a8", None, ""),
    ("a.test", 7, T0 + 6, b"a7", None, ""),
    ("a.test", 9, T0 + 7, b"a9", None, ""),
]


async def pre_evidence_heads_stay(storage: Storage) -> None:
    """Every one of PRE_EVIDENCE_HEADS, migrated, is evidence: a prune of every
    head however recent leaves them all."""

    async def prune(tx: WriteTx) -> int:
        return await tx.prune_witnessed(T0 + 1000 * DAY_MS, 1000)

    await storage.write(prune)
    kept = await storage.witnessed_heads(None)
    assert [(h.peer, h.size, h.at) for h in kept] == sorted(h[:3] for h in PRE_EVIDENCE_HEADS)
    assert [h.evidence for h in kept] == [1, 3, 3, 4, 4, 7, 8, 9]  # 5's proof was from 4
