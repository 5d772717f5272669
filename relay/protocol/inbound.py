"""The receiving side of `POST /federation/v1/batch` as pure decisions (DESIGN §5).

A `Reception` is fed what the HTTP shell learns about one request, one fact
at a time, and answers each fact with the next step, or with a `Refuse` that
ends the request (status and reason code in its error). `open_item`,
`judge_item` and `settle` then give each envelope of the batch its verdict
from facts the shell looked up. Trust, policy, the ledger, rate limits and the
body read all stay in the shell; the clock comes in as a number.

Invariants:
- Request checks run in the order of docs/protocol.md §10: 413 on the
  declared length; the header faults of httpsig; 401 unknown_sender,
  unknown_key, bad_signature; 400 for a query string; admission (429/503,
  decided by the shell and fed back); then, on the body, 400 digest_mismatch,
  wrong_destination, clock_skew, replay, malformed. The first fault ends the
  request and nothing after it is asked.
- `may_read_body` is false until the signature verified and the request was
  admitted. A sender unknown here while authorities are trusted is introduced
  by the certificates of its `Relay-Certificate` header (`Introduce`), before
  any body byte. Only a request without that header (a sender of an earlier
  version) has its body read first, `ReadBodyToIntroduce`, and then at most
  `intro_body` bytes of it (§10 row 3).
- Item checks run in the order of §11 and the first fault is the verdict;
  `settle` adds §8's dedupe once the stored header digest is known.
- Every envelope that passes has had its origin signature verified, whoever
  sent it: the stored envelope is the origin's proof, and the request
  signature proves only who sent the batch.
- A sealed message passes only at its destination and only opened (§21);
  relays pass it on sealed, never reading it.
- The receipts for this node in one batch list at most
  MAX_BATCH_RECEIPT_ENTRIES entries together: `ItemContext.receipts` counts
  them across the items of one request, and a receipt that would pass the cap
  is refused whole.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.errors import (
    BadSignature,
    ItemRejected,
    MalformedError,
    RelayError,
    Replay,
    TooLarge,
    UnknownKey,
    UnknownSender,
    WrongDestination,
)
from relay.protocol import httpsig
from relay.protocol.batch import Batch, BatchItem, check_trace, decode_batch, peek_headers
from relay.protocol.envelope import (
    RECEIPT_CTYPE,
    Envelope,
    PeekedHeader,
    check_payload,
    header_digest,
    open_envelope,
    verify_envelope,
)
from relay.protocol.receipt import MAX_BATCH_RECEIPT_ENTRIES, Receipt, decode_receipt
from relay.protocol.sealing import SealPrivateKey, open_body, unwrap_dek

# --- request steps -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refuse:
    """End the request with `error` (its status and code); nothing is stored."""

    error: RelayError

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code


@dataclass(frozen=True, slots=True)
class FindSender:
    """Look up the node named by Relay-Origin; feed its keys to `Reception.sender`."""

    request: httpsig.SignedRequest


@dataclass(frozen=True, slots=True)
class Introduce:
    """Let trust judge the sender's `certificates` (Relay-Certificate, not yet verified).

    The shell looks the sender up again and feeds the answer to `Reception.sender`;
    no body byte is read.
    """

    certificates: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReadBodyToIntroduce:
    """Read the body now, before the signature: a certificate in it may introduce the sender.

    The shell lets trust judge the certificates the items carry, looks the
    sender up again and feeds the answer to `Reception.sender`.
    """

    limit: int


@dataclass(frozen=True, slots=True)
class Admit:
    """Charge the verified `peer`'s rate limit and take a write slot; feed `Reception.admitted`."""

    peer: str


@dataclass(frozen=True, slots=True)
class ReadBody:
    """Read the body (at most `limit` bytes) and feed it to `Reception.body`."""

    limit: int


@dataclass(frozen=True, slots=True)
class CheckNonce:
    """Has `peer` used `nonce` before (in flight or recorded)? Feed `Reception.nonce`."""

    peer: str
    nonce: str


@dataclass(frozen=True, slots=True)
class FindStoredResults:
    """Look up the results stored for (`peer`, batch id); feed `Reception.stored`.

    `heads[i]` is item i's header as peeked for its id, for `open_item`.
    """

    peer: str
    batch: Batch
    ids: tuple[bytes, ...]
    heads: tuple[PeekedHeader, ...]


@dataclass(frozen=True, slots=True)
class AnswerStored:
    """A repeated batch: record the nonce, answer the stored results signed afresh."""

    batch_id: bytes
    nonce: str
    results: Mapping[bytes, str]


@dataclass(frozen=True, slots=True)
class JudgeItems:
    """A new batch: judge each item (`open_item`, `judge_item`), commit, answer."""

    peer: str
    request_key: str
    nonce: str
    batch: Batch
    ids: tuple[bytes, ...]


Step = (
    Refuse
    | FindSender
    | Introduce
    | ReadBodyToIntroduce
    | Admit
    | ReadBody
    | CheckNonce
    | FindStoredResults
    | AnswerStored
    | JudgeItems
)


S = TypeVar("S", bound=Step)


def proceed(step: Refuse | S) -> S:
    """`step`, unless it is a Refuse: then its error is raised, for a shell that raises."""
    if isinstance(step, Refuse):
        raise step.error
    return step


class Reception:
    """The request-level checks of one batch request, fed facts in order.

    Call `head` first, then answer each step with the method it names. A
    method called out of turn raises RelayError: it is a bug in the shell.
    """

    def __init__(
        self, *, here: str, max_body: int, has_authorities: bool, intro_body: int = 256 * 1024
    ) -> None:
        self.here = here
        self.max_body = max_body
        self.intro_body = min(intro_body, max_body)
        self.has_authorities = has_authorities
        self._length: int | None = None
        self.request: httpsig.SignedRequest | None = None
        self._waiting: type | None = None
        self._query = ""
        self._introduced = False
        self._read_early = False
        self._body: bytes | None = None
        self._batch: Batch | None = None
        self._ids: tuple[bytes, ...] = ()
        self._admitted = False

    @property
    def may_read_body(self) -> bool:
        """True once the shell may read (or has read) the body."""
        return self._read_early or self._admitted

    def _expect(self, method: str, *steps: type[Step]) -> httpsig.SignedRequest:
        if self._waiting not in steps or self.request is None:
            waiting = self._waiting.__name__ if self._waiting else "nothing"
            raise RelayError(f"Reception.{method} called while waiting for {waiting}")
        return self.request

    def _next(self, step: S) -> S:
        self._waiting = None if isinstance(step, Refuse | AnswerStored | JudgeItems) else type(step)
        return step

    def head(
        self, *, method: str, raw_path: str, headers: Mapping[str, str], content_length: int | None
    ) -> Refuse | FindSender:
        """The request line and headers, before any body byte: 413, header faults, FindSender."""
        if self._waiting is not None or self.request is not None:
            raise RelayError("Reception.head called twice")
        if content_length is not None and content_length > self.max_body:
            return self._next(Refuse(too_large(content_length, self.max_body)))
        self._length = content_length
        path, _, self._query = raw_path.partition("?")
        try:
            self.request = httpsig.parse_request(method=method, path=path, headers=headers)
        except RelayError as e:
            return self._next(Refuse(e))
        return self._next(FindSender(self.request))

    def sender(
        self, keys: Mapping[str, Ed25519PublicKey] | None, *, unknown_key: str = ""
    ) -> Refuse | Introduce | ReadBodyToIntroduce | Admit:
        """The sender's trusted keys (None: not trusted); `unknown_key` explains a missing key."""
        req = self._expect("sender", FindSender, Introduce, ReadBodyToIntroduce)
        if keys is None:
            if self.has_authorities and not self._introduced:
                self._introduced = True
                if req.certificates:
                    return self._next(Introduce(req.certificates))
                if self.intro_body == 0:
                    return self._next(
                        Refuse(
                            UnknownSender(
                                f"{req.origin!r} is not a node this node trusts, and the request"
                                " has no Relay-Certificate header to introduce it"
                            )
                        )
                    )
                if self._length is not None and self._length > self.intro_body:
                    return self._next(
                        Refuse(
                            TooLarge(
                                f"{req.origin!r} is not a node this node trusts, and a body of"
                                f" {self._length} bytes is over the {self.intro_body} read to"
                                " find its certificate: send it in the Relay-Certificate header"
                            )
                        )
                    )
                self._read_early = True
                return self._next(ReadBodyToIntroduce(self.intro_body))
            return self._next(
                Refuse(UnknownSender(f"{req.origin!r} is not a node this node trusts"))
            )
        pub = keys.get(req.key_id)
        if pub is None:
            detail = unknown_key or f"{req.origin} has no key {req.key_id!r} pinned at this node"
            return self._next(Refuse(UnknownKey(detail)))
        try:
            httpsig.verify_request(req, pub)
        except BadSignature as e:
            return self._next(Refuse(e))
        if self._query:
            return self._next(Refuse(MalformedError("the batch endpoint takes no query string")))
        return self._next(Admit(req.origin))

    def admitted(self, refusal: RelayError | None = None) -> Refuse | ReadBody:
        """The shell's admission: None, or its 429 rate_limited / 503 busy."""
        self._expect("admitted", Admit)
        if refusal is not None:
            return self._next(Refuse(refusal))
        self._admitted = True
        return self._next(ReadBody(self.max_body))

    def body(self, body: bytes, *, now_s: int) -> Refuse | CheckNonce:
        """The body as read (here or for the introduction) and the clock then, in unix seconds."""
        req = self._expect("body", ReadBody)
        if len(body) > self.max_body:
            return self._next(
                Refuse(TooLarge(f"body is over this node's limit of {self.max_body} bytes"))
            )
        try:
            httpsig.check_content_digest(req.content_digest, body)
            if req.destination != self.here:
                raise WrongDestination(
                    f"this node is {self.here!r}, the request is for {req.destination!r}"
                )
            httpsig.check_clock(req.created, now_s)
        except RelayError as e:
            return self._next(Refuse(e))
        self._body = body
        return self._next(CheckNonce(req.origin, req.nonce))

    def nonce(self, *, seen: bool) -> Refuse | FindStoredResults:
        """Whether the nonce was seen (in flight or recorded); then the batch is decoded."""
        req = self._expect("nonce", CheckNonce)
        if seen:
            return self._next(
                Refuse(Replay(f"nonce {req.nonce} from {req.origin} was already used"))
            )
        assert self._body is not None
        try:
            batch = decode_batch(self._body)
            heads = peek_headers(batch)
        except MalformedError as e:
            return self._next(Refuse(e))
        ids = tuple(h.id for h in heads)
        self._batch, self._ids = batch, ids
        return self._next(FindStoredResults(req.origin, batch, ids, heads))

    def stored(self, results: Mapping[bytes, str] | None) -> AnswerStored | JudgeItems:
        """The results stored for this (peer, batch id), or None for a new batch."""
        req = self._expect("stored", FindStoredResults)
        assert self._batch is not None
        if results is not None:
            return self._next(AnswerStored(self._batch.batch_id, req.nonce, results))
        return self._next(JudgeItems(req.origin, req.key_id, req.nonce, self._batch, self._ids))


def too_large(length: int, limit: int) -> TooLarge:
    """The 413 for a declared body length over `limit` (also the 100-continue answer)."""
    return TooLarge(f"body of {length} bytes is over this node's limit of {limit}")


# --- item verdicts -------------------------------------------------------------------


class PolicyAnswer(Protocol):
    """A residency decision as the item checks read it (relay.policy.residency.Decision)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def outcome(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def reason(self) -> str: ...


@dataclass(slots=True)
class ReceiptBudget:
    """The receipt entries this node will still apply from one batch."""

    left: int = MAX_BATCH_RECEIPT_ENTRIES

    def take(self, entries: int) -> bool:
        """Spend `entries` if they fit (True); else spend nothing (False)."""
        if entries > self.left:
            return False
        self.left -= entries
        return True


@dataclass(frozen=True, slots=True)
class ItemContext:
    """What every item of one request is judged against.

    `receipts` is spent by the items as they are judged: one context per request.
    """

    here: str
    peer: str  # the verified sending node
    now_ms: int
    receipts: ReceiptBudget = field(default_factory=ReceiptBudget)


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """What the shell looked up for one opened envelope, before it is judged.

    `hop`: None when the envelope is for this node; else the next hop, or the
    ItemRejected planning refused it with. `forward`: the forward decision
    toward that hop (or the ItemRejected it raised); None when not relaying.
    `origin_keys`: None when the origin is not trusted. `mailboxes`: the local
    parts of `to` that are mailboxes here. `seal_keys`: this node's seal keys
    that may open a sealed payload (revoked and expired ones left out; `seal_key_why` says
    why a key id is missing); `deks`: a cache of opened wraps (wrap -> data
    key), shared across items and requests so the KEM runs once per wrap.
    """

    accept: PolicyAnswer
    origin_keys: Mapping[str, Ed25519PublicKey] | None
    hop: str | ItemRejected | None = None
    forward: PolicyAnswer | ItemRejected | None = None
    unknown_key: str = ""  # why the header's key is not trusted, if it is not
    mailboxes: frozenset[str] = field(default_factory=frozenset)
    seal_keys: Mapping[str, SealPrivateKey] = field(default_factory=dict)
    seal_key_why: str = ""
    deks: MutableMapping[bytes, bytes] | None = None


@dataclass(frozen=True, slots=True)
class ItemRefused:
    """An item's verdict `rejected:<code>`; `rule` names the residency rule, if any."""

    code: str
    detail: str
    rule: str = ""

    @property
    def result(self) -> str:
        return f"rejected:{self.code}"

    @classmethod
    def of(cls, e: ItemRejected, rule: str = "") -> ItemRefused:
        return cls(e.item_code, e.detail, rule)


@dataclass(frozen=True, slots=True)
class Passed:
    """An item that passed every check that needs no stored envelope.

    `hop` is the next hop when this node relays it (then `mailboxes` is
    empty); `audit` a would-be denial let through in audit mode; `receipt`
    the decoded payload of a receipt for this node, so that it is applied
    without decoding it again. A sealed message for this node passes opened:
    its payload is the sealed `inner` (salt || body, relay.protocol.sealing),
    which is what the node stores.
    """

    env: Envelope
    rule: str
    hop: str | None = None
    mailboxes: tuple[str, ...] = ()
    audit: PolicyAnswer | None = None
    receipt: Receipt | None = None


# An envelope's `created` may be ahead of this node's clock by the request window, no more.
CREATED_AHEAD_MS = httpsig.CLOCK_WINDOW_S * 1000


def open_item(
    ctx: ItemContext, item: BatchItem, head: PeekedHeader | None = None
) -> Envelope | ItemRefused:
    """§11 steps 1–8: the checks on an item's own bytes, its clock fields and its trace.

    `head`: the item's header as peek_headers read it (not unpacked again).
    """
    if head is not None and head.data is not item.header_bytes:
        raise RelayError("open_item: the peeked header is not this item's")
    try:
        env = open_envelope(head or item.header_bytes, item.signature, item.payload)
    except MalformedError as e:
        return ItemRefused("malformed", e.detail)
    h = env.header
    try:
        check_payload(env)
        if h.expires <= ctx.now_ms:
            raise ItemRejected("expired", f"envelope expired at {h.expires} (now {ctx.now_ms})")
        if h.created > ctx.now_ms + CREATED_AHEAD_MS:
            raise ItemRejected(
                "malformed",
                f"envelope created at {h.created} is {h.created - ctx.now_ms} ms ahead of this"
                f" node's clock ({ctx.now_ms}); the limit is {CREATED_AHEAD_MS} ms",
            )
        check_trace(item.trace, h.origin, ctx.peer, h.max_hops)
    except ItemRejected as e:
        return ItemRefused.of(e)
    if ctx.here in item.trace or h.origin == ctx.here:
        return ItemRefused("loop", f"{ctx.here} is already in the trace of this envelope")
    return env


def judge_item(ctx: ItemContext, env: Envelope, facts: ItemFacts) -> Passed | ItemRefused:
    """§11 steps 9–13 for an opened envelope, from the facts the shell looked up."""
    h = env.header
    hop = None if h.dest == ctx.here else facts.hop
    if isinstance(hop, ItemRejected):
        return ItemRefused.of(hop)
    if h.dest != ctx.here and hop is None:
        raise RelayError(f"judge_item: no relay plan for an envelope to {h.dest}")
    if (refused := check_origin(env, facts)) is not None:
        return refused
    accept = facts.accept
    if not accept.allowed:
        return ItemRefused("residency", accept.reason, accept.rule)
    audit = accept if accept.outcome == "audit" else None
    if hop is not None:
        forward = facts.forward
        if isinstance(forward, ItemRejected):
            return ItemRefused.of(forward)
        if forward is None:
            raise RelayError(f"judge_item: no forward decision toward {hop}")
        if not forward.allowed:
            return ItemRefused("residency", forward.reason, forward.rule)
        if h.kind == "receipt" and isinstance(bad := _receipt(env.payload), ItemRefused):
            return bad
        return Passed(env, accept.rule, hop=hop, audit=audit)
    if h.kind == "message":
        names: list[str] = []
        for addr in h.to:
            local = addr.partition("@")[0]  # a checked header's address (decode_header)
            if local not in facts.mailboxes:
                return ItemRefused("unknown_mailbox", f"no mailbox {addr} at {ctx.here}")
            names.append(local)
        if h.seal is not None:
            inner = unseal(env, facts)
            if isinstance(inner, ItemRefused):
                return inner
            env = Envelope(env.header_bytes, env.signature, inner, h)  # not replace(): ~1.5 µs
        return Passed(env, accept.rule, mailboxes=tuple(dict.fromkeys(names)), audit=audit)
    if h.ctype != RECEIPT_CTYPE or list(h.to) != [f"postmaster@{ctx.here}"]:
        return ItemRefused("malformed", "a receipt goes to postmaster with the receipt type")
    if h.sender != f"postmaster@{h.origin}":
        return ItemRefused("malformed", "a receipt comes from the writer's postmaster")
    receipt = _receipt(env.payload)
    if isinstance(receipt, ItemRefused):
        return receipt
    if not ctx.receipts.take(len(receipt.entries)):
        return ItemRefused(
            "malformed",
            f"the receipts of this batch list more than {MAX_BATCH_RECEIPT_ENTRIES} entries;"
            f" this receipt's {len(receipt.entries)} are refused, send them in a later batch",
        )
    return Passed(env, accept.rule, audit=audit, receipt=receipt)


def check_origin(env: Envelope, facts: ItemFacts) -> ItemRefused | None:
    """§11 steps 10–11: the origin is trusted and signed the envelope with a key known here."""
    h = env.header
    if facts.origin_keys is None:
        return ItemRefused("unknown_origin", f"origin {h.origin} is not trusted by this node")
    origin_key = facts.origin_keys.get(h.key)
    if origin_key is None:
        detail = facts.unknown_key or f"{h.origin} has no key {h.key!r} pinned at this node"
        return ItemRefused("signature", detail)
    try:
        verify_envelope(env, origin_key)
    except ItemRejected as e:
        return ItemRefused.of(e)
    return None


def unseal(env: Envelope, facts: ItemFacts) -> bytes | ItemRefused:
    """§11 step 13 for a sealed message here (§21): the opened `inner`, or the refusal."""
    h = env.header
    info = h.seal
    if info is None:
        raise RelayError("unseal: the envelope is not sealed")
    priv = facts.seal_keys.get(info.key)
    if priv is None:
        why = facts.seal_key_why or f"{h.dest} holds no seal key {info.key!r}"
        return ItemRefused("seal_key", why)
    try:
        dek = facts.deks.get(info.wrap) if facts.deks is not None else None
        if dek is None:
            dek = unwrap_dek(priv, info, h.origin, h.dest)
            if facts.deks is not None:
                facts.deks[info.wrap] = dek
        return open_body(
            info=info, dek=dek, payload=env.payload, env_id=h.id, origin=h.origin, dest=h.dest
        )
    except ItemRejected as e:
        return ItemRefused.of(e)


def _receipt(payload: bytes) -> Receipt | ItemRefused:
    try:
        return decode_receipt(payload)
    except MalformedError as e:
        return ItemRefused("malformed", e.detail)


def settle(header_bytes: bytes, stored_digest: bytes | None) -> str:
    """§11 step 14 and §8: the result of an item that passed, given what is stored.

    `stored_digest` is the header digest stored for its (origin, id), or None.
    """
    if stored_digest is None:
        return "accepted"
    if stored_digest == header_digest(header_bytes):
        return "duplicate"
    return "rejected:id_conflict"
