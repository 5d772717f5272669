"""Certificates other nodes carried to this one, kept across restarts.

A relay that accepted an envelope on the strength of its origin's
certificate must still hold that certificate when it forwards the envelope
after a restart, so learned certificates are written in the same transaction
as the envelopes they let in (`WriteTx.save_certificates`), and handed to
`Trust` when the node starts. Only certificates that
`relay.policy.trust.Trust.learn` accepted are written; they are judged again
when read back, against the config then in force.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.policy.certs import fingerprint
from relay.protocol.certificate import open_certificate
from relay.storage.records import CertificateRecord


def records(blobs: Sequence[bytes]) -> list[CertificateRecord]:
    """The stored form of certificate blobs Trust already accepted."""
    out: list[CertificateRecord] = []
    for blob in blobs:
        cert, cert_bytes, _ = open_certificate(blob)
        out.append(CertificateRecord(fingerprint(cert_bytes), cert.name, cert.not_after, blob))
    return out
