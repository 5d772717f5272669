"""The one exception tree of relay.

Every failure that can reach a peer, a client or an admin is a `RelayError`
subclass carrying an HTTP status and a stable reason code. Decoders of network
input raise only these; the HTTP edge maps them to `{"error", "detail"}`.

Item-level federation faults (DESIGN §5) are `ItemRejected` with one of the
`ITEM_CODES`; they never fail a whole batch.
"""

from __future__ import annotations

from typing import ClassVar

ITEM_CODES = frozenset(
    {
        "signature",
        "digest",
        "size",
        "expired",
        "hops",
        "loop",
        "residency",
        "not_for_us",
        "unknown_origin",
        "unknown_mailbox",
        "id_conflict",
        "malformed",
        "seal_key",  # sealed to a seal key the destination does not hold (or revoked)
        "unseal",  # sealed payload or wrapped key does not open (protocol §21)
    }
)


class RelayError(Exception):
    """Base of every error relay raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


# --- 400 -------------------------------------------------------------------


class MalformedError(RelayError):
    """Bytes or JSON that do not decode to what the protocol says."""

    status = 400
    code = "malformed"


class BadRequest(RelayError):
    """A client request that is well-formed but not acceptable (bad field value)."""

    status = 400
    code = "bad_request"


class DigestMismatch(RelayError):
    status = 400
    code = "digest_mismatch"


class WrongDestination(RelayError):
    status = 400
    code = "wrong_destination"


class ClockSkew(RelayError):
    status = 400
    code = "clock_skew"


class Replay(RelayError):
    status = 400
    code = "replay"


# --- 401 / 403 / 404 -------------------------------------------------------


class UnknownSender(RelayError):
    status = 401
    code = "unknown_sender"


class UnknownKey(RelayError):
    status = 401
    code = "unknown_key"


class BadSignature(RelayError):
    status = 401
    code = "bad_signature"


class Unauthorized(RelayError):
    """Missing or wrong bearer token on the client API."""

    status = 401
    code = "unauthorized"


class Forbidden(RelayError):
    status = 403
    code = "forbidden"


class NotFound(RelayError):
    status = 404
    code = "not_found"


class Conflict(RelayError):
    status = 409
    code = "conflict"


# --- 413 / 422 / 429 / 503 -------------------------------------------------


class TooLarge(RelayError):
    status = 413
    code = "too_large"


class PolicyRefused(RelayError):
    """Refused by residency policy; names the rule that refused."""

    status = 422
    code = "policy"

    def __init__(self, detail: str, rule: str) -> None:
        super().__init__(detail)
        self.rule = rule

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail, "rule": self.rule}


class RateLimited(RelayError):
    status = 429
    code = "rate_limited"


class Unavailable(RelayError):
    """The node cannot take the work now (shutting down, store trouble)."""

    status = 503
    code = "unavailable"


class Unreachable(Unavailable):
    """Nothing answers where a command looked for a node: its URL or admin socket."""

    code = "unreachable"


class Busy(RelayError):
    """The node is behind (store write backlog, queue over its bound): retry later."""

    status = 503
    code = "busy"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


# --- item-level ------------------------------------------------------------


class ItemRejected(RelayError):
    """One envelope of a batch is refused; the batch goes on.

    `item_code` is one of ITEM_CODES and becomes `rejected:<item_code>`.
    """

    status = 400
    code = "item_rejected"

    def __init__(self, item_code: str, detail: str) -> None:
        if item_code not in ITEM_CODES:
            raise ValueError(f"unknown item code {item_code!r}")
        super().__init__(detail)
        self.item_code = item_code

    @property
    def result(self) -> str:
        return f"rejected:{self.item_code}"


class ProofFailed(RelayError):
    """A Merkle proof, tree head or audit record does not check out (relay.protocol.merkle,
    relay.protocol.audit); the detail names what failed and where."""

    status = 400
    code = "proof_failed"


# --- local, not HTTP -------------------------------------------------------


class UsageError(RelayError):
    """A command given arguments it cannot work with (the CLI exits 2)."""

    status = 400
    code = "usage"


FILE_KEY = "(file)"  # a ConfigError about the file itself, not one of its keys


class ConfigError(RelayError):
    """One problem in a config file, located as FILE:LINE: key: reason.

    A problem with the file as a whole (missing, unreadable: key FILE_KEY)
    reads FILE: reason, with no line or key to point at.
    """

    status = 500
    code = "config"

    def __init__(self, file: str, line: int, key: str, reason: str) -> None:
        super().__init__(
            f"{file}: {reason}" if key == FILE_KEY else f"{file}:{line}: {key}: {reason}"
        )
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason


class ConfigErrors(RelayError):
    """Every problem found in one config, in file order."""

    status = 500
    code = "config"

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(e.detail for e in errors))
        self.errors = errors


class StoreError(RelayError):
    """The database refused: newer schema than the code, locked, unwritable."""

    status = 503
    code = "store"
