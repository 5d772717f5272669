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
- Lookups do no I/O. The store and the revocation list come in as data
  (relay.policy.certfiles.StoreFiles), read when the Trust is made (node
  start, reload) and again by certfiles.watch_store when the files change,
  via `use_store`. A revocation list that cannot be read makes every
  certificate count as refused: fail closed.
- Nothing here touches the network: a URL only ever comes from config or
  from a certificate, never from a name a client typed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.config.model import Config, TrustConfig
from relay.errors import MalformedError
from relay.logs import event
from relay.policy.certfiles import (
    Signature,
    StoreFiles,
    read_own,
    read_store,
)
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
    seal_keys: tuple[str, ...] = ()  # seal key strings (protocol §21); the first is sealed to


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
        seal_keys=cert.seal_keys,
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
        store: StoreFiles | None = None,
        own: Sequence[tuple[Path, str | Exception]] | None = None,
    ) -> None:
        """Trust as `config` says, with the certificate store and own certificate
        files as read (`store`, `own`); None reads them now, at load or reload."""
        self._clock = clock
        self._pinned: dict[str, TrustedNode] = {}
        for p in config.peers:
            keys = {key_id(k): parse_public_key(k) for k in p.keys}
            self._pinned[p.name] = TrustedNode(
                p.name, p.jurisdiction, p.url, keys, seal_keys=p.seal_keys
            )
        self._authorities = {
            a.name: TrustedAuthority(a.name, parse_public_key(a.key), a.jurisdictions)
            for a in config.authorities
        }
        self._trust_config = config.trust
        self._revoked: frozenset[str] = frozenset()
        self._revoked_error = ""
        self._stored: dict[str, list[_Held]] = {}
        self._refused: dict[str, list[str]] = {}  # name -> why its stored certificates fail
        self._learned: dict[str, dict[str, _Held]] = {}  # name -> fingerprint -> held
        self._unsaved: list[bytes] = []
        self._signature: Signature | None = None
        self.own_certificates = self._own_blobs(
            read_own(config.node.certificates) if own is None else own
        )
        self.use_store(read_store(config.trust) if store is None else store)
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
        """Learned certificates not yet persisted; relay.node.certificates stores them."""
        out, self._unsaved = self._unsaved, []
        return out

    def learned_blobs(self) -> list[bytes]:
        """Every learned certificate, to hand to the Trust of a reloaded config."""
        return [h.verdict.blob for per in self._learned.values() for h in per.values()]

    # --- the files ----------------------------------------------------------------------

    @property
    def store_config(self) -> TrustConfig:
        """Where the certificate store and the revocation list are (`[trust]`)."""
        return self._trust_config

    @property
    def store_signature(self) -> Signature | None:
        """The signature of the files last used (relay.policy.certfiles)."""
        return self._signature

    def use_store(self, files: StoreFiles) -> None:
        """Judge the certificate store and revocation list afresh from `files`."""
        self._signature = files.signature
        self._use_revoked(files)
        self._stored, self._refused = {}, {}
        for cert_file in files.cert_files:
            self._use_cert_file(cert_file.name, cert_file.text, cert_file.error)

    def _use_revoked(self, files: StoreFiles) -> None:
        self._revoked, self._revoked_error = frozenset(), files.revoked_error
        if files.revoked_text:
            revoked, bad = parse_revoked(files.revoked_text)
            if bad:
                line, reason = bad[0]
                self._revoked_error = f"revocation list {files.revoked_path}:{line}: {reason}"
            self._revoked = revoked
        if self._revoked_error:
            event(log, "revocation_list_unusable", logging.ERROR, detail=self._revoked_error)

    def _use_cert_file(self, file: str, text: str, error: str) -> None:
        if error:
            event(log, "certificate_refused", logging.WARNING, file=file, reason=error)
            return
        for line, value in certificate_lines(text):
            where = f"{file}:{line}"
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

    def _own_blobs(self, files: Sequence[tuple[Path, str | Exception]]) -> tuple[bytes, ...]:
        out: list[bytes] = []
        for path, text in files:
            if isinstance(text, Exception):
                event(log, "own_certificate_unreadable", logging.ERROR, file=str(path), detail=text)
                continue
            try:
                out.extend(decode_line(value) for _, value in certificate_lines(text))
            except MalformedError as e:
                event(log, "own_certificate_unreadable", logging.ERROR, file=str(path), detail=e)
        return tuple(out)

    @property
    def own_certificate_lines(self) -> list[str]:
        """This node's own certificates as base64 strings, for its node document."""
        return [encode_line(b) for b in self.own_certificates]


def _name_of(blob: bytes) -> str:
    """The node a (possibly refused) certificate names, "" if it does not decode."""
    try:
        return open_certificate(blob)[0].name
    except MalformedError:
        return ""
