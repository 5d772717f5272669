"""Certificates other nodes carried to this one, kept across restarts.

A relay that accepted an envelope on the strength of its origin's
certificate must still hold that certificate when it forwards the envelope
after a restart, so learned certificates are written in the same transaction
as the envelopes they let in, and handed to `Trust` when the node starts.
Only certificates that `relay.policy.trust.Trust.learn` accepted are written here;
they are judged again when read back, against the config then in force.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.policy.certs import fingerprint
from relay.protocol.certificate import open_certificate
from relay.storage.sqlite.store import Store, Tx


async def save(tx: Tx, blobs: Sequence[bytes], now: int) -> None:
    """Keep these certificate blobs (already accepted by Trust); drop expired ones."""
    rows = []
    for blob in blobs:
        cert, cert_bytes, _ = open_certificate(blob)
        rows.append((fingerprint(cert_bytes), cert.name, cert.not_after, blob, now))
    if rows:
        await tx.executemany(
            "INSERT OR IGNORE INTO certificates (fingerprint, name, not_after, blob, at)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    await tx.execute("DELETE FROM certificates WHERE not_after < ?", (now,))


async def load(store: Store, now: int) -> list[bytes]:
    """Every kept certificate still within its validity."""
    rows = await store.fetchall(
        "SELECT blob FROM certificates WHERE not_after >= ? ORDER BY at", (now,)
    )
    return [bytes(r[0]) for r in rows]
