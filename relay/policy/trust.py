"""Who this node trusts, and for which jurisdiction (DESIGN §3, §7).

Invariants:
- A node is trusted either pinned (`[[peers]]`) or by a certificate that
  relay.policy.certs accepts and that is in force now. What a node says about
  itself (its node document) is never used. Unknown means deny.
- Pinned config always wins over any certificate for the same name.
- Certificates come from the store the admin fills (`[trust]
  certificates_dir`: every `*.cert` file in it, one certificate per line) and
  from certificates other nodes carried in batch items (`learn`), kept in
  memory with their validity (the caller persists learned ones). Among several
  valid certificates for one name, the one valid longest is used.
- The store and the revocation list are read again when their files change
  (looked at no more often than every RESCAN_S seconds). A revocation list
  that cannot be read makes every certificate count as refused: fail closed.
- Nothing here touches the network: a URL only ever comes from config or
  from a certificate, never from a name a client typed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.config.model import Config
from relay.errors import MalformedError
from relay.logs import event
from relay.policy.certs import (
    TrustedAuthority,
    Verdict,
    certificate_lines,
    decode_line,
    encode_line,
    fingerprint,
    in_force,
    judge,
    parse_revoked,
    time_fault,
)
from relay.protocol.certificate import open_certificate
from relay.protocol.keystr import key_id, parse_public_key

log = logging.getLogger("relay.trust")

RESCAN_S = 2.0
MAX_LEARNED_PER_NAME = 4
MAX_LEARNED_NAMES = 10_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class TrustedNode:
    """A node this node trusts: its keys, jurisdiction and (if known) URL."""

    name: str
    jurisdiction: str
    url: str | None
    keys: dict[str, Ed25519PublicKey]  # key id -> key
    source: str = "pinned"  # or "certificate"
    certificate: bytes | None = None  # the certificate blob it is trusted by
    not_after: int | None = None  # end of that certificate's validity (unix ms)


@dataclass(frozen=True, slots=True)
class _Held:
    """A certificate that passed `relay.policy.certs.judge`, with the node it describes."""

    verdict: Verdict
    node: TrustedNode
    where: str  # "file:line" in the store, or "learned"


def _held(verdict: Verdict, where: str) -> _Held:
    cert = verdict.cert
    assert cert is not None
    keys = {key_id(k): parse_public_key(k) for k in cert.keys}
    node = TrustedNode(
        cert.name,
        cert.jurisdiction,
        cert.url.rstrip("/"),
        keys,
        source="certificate",
        certificate=verdict.blob,
        not_after=cert.not_after,
    )
    return _Held(verdict, node, where)


class Trust:
    """Lookup of trusted nodes by name: pinned peers first, then certificates."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], int] = _wall_ms,
        learned: Iterable[bytes] = (),
    ) -> None:
        self._clock = clock
        self._pinned: dict[str, TrustedNode] = {}
        for p in config.peers:
            keys = {key_id(k): parse_public_key(k) for k in p.keys}
            self._pinned[p.name] = TrustedNode(p.name, p.jurisdiction, p.url, keys)
        self._authorities = {
            a.name: TrustedAuthority(a.name, parse_public_key(a.key), a.jurisdictions)
            for a in config.authorities
        }
        self._dir = config.trust.certificates_dir
        self._revoked_path = config.trust.revoked
        self._revoked: frozenset[str] = frozenset()
        self._revoked_error = ""
        self._stored: dict[str, list[_Held]] = {}
        self._refused: dict[str, list[str]] = {}  # name -> why its stored certificates fail
        self._learned: dict[str, dict[str, _Held]] = {}  # name -> fingerprint -> held
        self._unsaved: list[bytes] = []
        self._signature: object = None
        self._next_scan = 0.0
        self.own_certificates = self._read_own(config.node.certificates)
        self.refresh(force=True)
        self.learn(learned, saved=True)

    # --- lookups ------------------------------------------------------------------

    @property
    def has_authorities(self) -> bool:
        """True if `[[authorities]]` names any authority (else no certificate can count)."""
        return bool(self._authorities)

    def node(self, name: str) -> TrustedNode | None:
        """The trusted node called `name`: pinned, else by a certificate in force."""
        pinned = self._pinned.get(name)
        return pinned if pinned is not None else self.certified(name)

    def certified(self, name: str) -> TrustedNode | None:
        """`name` as a certificate in force now describes it (pinned config ignored)."""
        held = self._best(name)
        return held.node if held is not None else None

    def jurisdiction(self, name: str) -> str | None:
        """The trusted jurisdiction of `name`, or None (unknown means deny)."""
        n = self.node(name)
        return n.jurisdiction if n else None

    def names(self) -> list[str]:
        """Every name trusted now, pinned or certified."""
        certified = {n for n in (*self._stored, *self._learned) if self.certified(n)}
        return sorted(set(self._pinned) | certified)

    def certificate_for(self, name: str) -> bytes | None:
        """The blob of the certificate in force for `name`, to carry to other nodes."""
        held = self._best(name)
        return held.verdict.blob if held is not None else None

    def why_untrusted(self, name: str) -> str:
        """A sentence saying why `name` is not trusted ("" if it is)."""
        if self.node(name) is not None:
            return ""
        reasons = list(self._refused.get(name, []))
        now = self._clock()
        for held in self._candidates(name):
            cert = held.verdict.cert
            assert cert is not None
            if held.verdict.fingerprint in self._revoked:
                reasons.append(
                    f"certificate {held.verdict.fingerprint[:16]} ({held.where}) revoked"
                )
            elif fault := time_fault(cert, now):
                reasons.append(
                    f"certificate {held.verdict.fingerprint[:16]} ({held.where}) {fault}"
                )
        if self._revoked_error:
            reasons.append(f"no certificate counts: {self._revoked_error}")
        if not reasons:
            tail = "" if self._authorities else " (and this node trusts no [[authorities]])"
            return f"{name} is not pinned in [[peers]] and no certificate names it{tail}"
        return f"{name} is not pinned in [[peers]] and has no valid certificate: " + "; ".join(
            reasons
        )

    def _candidates(self, name: str) -> list[_Held]:
        self._maybe_refresh()
        return [*self._stored.get(name, []), *self._learned.get(name, {}).values()]

    def _best(self, name: str) -> _Held | None:
        if self._revoked_error:
            return None
        now = self._clock()
        best: _Held | None = None
        for held in self._candidates(name):
            cert = held.verdict.cert
            assert cert is not None
            if held.verdict.fingerprint in self._revoked or not in_force(cert, now):
                continue
            if best is None or cert.not_after > (best.node.not_after or 0):
                best = held
        return best

    # --- learning ---------------------------------------------------------------------

    def learn(
        self, blobs: Iterable[bytes], *, name: str | None = None, saved: bool = False
    ) -> list[bytes]:
        """Keep every certificate among `blobs` that `relay.policy.certs.judge` accepts.

        With `name`, only certificates for that node are considered (an item's
        fifth element carries its origin's certificates and nothing else).
        Returns the blobs that were new here; unless `saved` (read back from
        the database), they also wait in `take_unsaved` to be persisted.
        """
        new: list[bytes] = []
        now = self._clock()
        for blob in blobs:
            try:
                cert, cert_bytes, _ = open_certificate(blob)
            except MalformedError:
                continue
            if (name is not None and cert.name != name) or cert.not_after < now:
                continue  # not for this origin, or expired: it can never count again
            per_name = self._learned.get(cert.name, {})
            if fingerprint(cert_bytes) in per_name:
                continue
            verdict = judge(blob, self._authorities, self._revoked)
            if verdict.cert is None:
                continue
            if not per_name:
                if len(self._learned) >= MAX_LEARNED_NAMES:
                    continue
                self._learned[cert.name] = per_name
            if len(per_name) >= MAX_LEARNED_PER_NAME:
                oldest = min(per_name.values(), key=lambda h: h.node.not_after or 0)
                del per_name[oldest.verdict.fingerprint]
            per_name[verdict.fingerprint] = _held(verdict, "learned")
            new.append(blob)
            event(
                log,
                "certificate_learned",
                node=cert.name,
                jurisdiction=cert.jurisdiction,
                authority=cert.authority,
                fingerprint=verdict.fingerprint[:16],
                not_after=cert.not_after,
            )
        if not saved:
            self._unsaved.extend(new)
        return new

    def take_unsaved(self) -> list[bytes]:
        """Learned certificates not yet persisted; relay.storage.sqlite.certstore writes them."""
        out, self._unsaved = self._unsaved, []
        return out

    def learned_blobs(self) -> list[bytes]:
        """Every learned certificate, to hand to the Trust of a reloaded config."""
        return [h.verdict.blob for per in self._learned.values() for h in per.values()]

    # --- the files ----------------------------------------------------------------------

    def _maybe_refresh(self) -> None:
        if time.monotonic() >= self._next_scan:
            self.refresh()

    def refresh(self, *, force: bool = False) -> None:
        """Read the certificate store and revocation list again if they changed."""
        self._next_scan = time.monotonic() + RESCAN_S
        files = self._cert_files()
        signature = (_stat(self._revoked_path), [(f, _stat(f)) for f in files])
        if not force and signature == self._signature:
            return
        self._signature = signature
        self._read_revoked()
        self._stored, self._refused = {}, {}
        for file in files:
            self._read_cert_file(file)

    def _cert_files(self) -> list[Path]:
        if self._dir is None:
            return []
        try:
            entries = sorted(self._dir.glob("*.cert"))
        except OSError:
            return []
        return [p for p in entries if p.is_file()]

    def _read_revoked(self) -> None:
        self._revoked, self._revoked_error = frozenset(), ""
        path = self._revoked_path
        if path is None or not path.exists():
            return
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            self._revoked_error = f"revocation list {path} cannot be read: {e}"
        else:
            revoked, bad = parse_revoked(text)
            if bad:
                line, reason = bad[0]
                self._revoked_error = f"revocation list {path}:{line}: {reason}"
            self._revoked = revoked
        if self._revoked_error:
            event(log, "revocation_list_unusable", logging.ERROR, detail=self._revoked_error)

    def _read_cert_file(self, file: Path) -> None:
        try:
            text = file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            event(log, "certificate_refused", logging.WARNING, file=str(file), reason=str(e))
            return
        for line, value in certificate_lines(text):
            where = f"{file.name}:{line}"
            try:
                blob = decode_line(value)
            except MalformedError as e:
                event(log, "certificate_refused", logging.WARNING, file=where, reason=e.detail)
                continue
            verdict = judge(blob, self._authorities, self._revoked)
            if verdict.cert is None:
                event(
                    log, "certificate_refused", logging.WARNING, file=where, reason=verdict.reason
                )
                name = _name_of(blob)
                if name:
                    self._refused.setdefault(name, []).append(f"{where}: {verdict.reason}")
                continue
            self._stored.setdefault(verdict.cert.name, []).append(_held(verdict, where))

    def _read_own(self, paths: Iterable[Path]) -> tuple[bytes, ...]:
        out: list[bytes] = []
        for path in paths:
            try:
                lines = certificate_lines(path.read_text(encoding="ascii"))
                out.extend(decode_line(value) for _, value in lines)
            except (OSError, UnicodeDecodeError, MalformedError) as e:
                event(log, "own_certificate_unreadable", logging.ERROR, file=str(path), detail=e)
        return tuple(out)

    @property
    def own_certificate_lines(self) -> list[str]:
        """This node's own certificates as base64 strings, for its node document."""
        return [encode_line(b) for b in self.own_certificates]


def _stat(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _name_of(blob: bytes) -> str:
    """The node a (possibly refused) certificate names, "" if it does not decode."""
    try:
        return open_certificate(blob)[0].name
    except MalformedError:
        return ""
