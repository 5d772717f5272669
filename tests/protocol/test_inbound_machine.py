"""The receiving side as tables: request refusals in §10 order, item verdicts in §11 order.

Each request case is one set of facts fed to a `Reception` by a tiny driver
that plays the shell; each item case is one envelope with the facts a shell
would look up. Real signatures throughout (Ed25519 is deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import Busy, ItemRejected, MalformedError, RelayError, TooLarge
from relay.policy.ratelimit import Throttled
from relay.policy.residency import Decision
from relay.protocol import httpsig
from relay.protocol.batch import Batch, BatchItem, encode_batch
from relay.protocol.envelope import (
    RECEIPT_CTYPE,
    Envelope,
    header_digest,
    make_header,
    peek_header,
    seal,
)
from relay.protocol.inbound import (
    Admit,
    AnswerStored,
    CheckNonce,
    FindSender,
    FindStoredResults,
    Introduce,
    ItemContext,
    ItemFacts,
    ItemRefused,
    JudgeItems,
    Passed,
    ReadBody,
    ReadBodyToIntroduce,
    ReceiptBudget,
    Reception,
    Refuse,
    Step,
    judge_item,
    open_item,
    proceed,
    settle,
)
from relay.protocol.receipt import (
    MAX_BATCH_RECEIPT_ENTRIES,
    MAX_RECEIPT_ENTRIES,
    Receipt,
    decode_receipt,
    encode_receipt,
)
from relay.protocol.sealing import CLASSIC, seal_body, seal_secret, wrap_dek
from relay.protocol.strict import pack

HERE = "n.test"
PEER = "a.test"
OTHER = "x.test"
FAR = "c.test"
PATH = "/federation/v1/batch"
MAX_BODY = 4096
INTRO_BODY = 1024
CERT = b"\x92certificate blob"
NOW_S = 1_700_000_000
NOW_MS = NOW_S * 1000
NONCE = bytes(range(32))


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


PEER_KEY, OTHER_KEY, STRANGER_KEY = _key(1), _key(2), _key(3)
PEER_KEYS: Mapping[str, Ed25519PublicKey] = {"k1": PEER_KEY.public_key()}
OTHER_KEYS: Mapping[str, Ed25519PublicKey] = {"k2": OTHER_KEY.public_key()}


def envelope(
    *,
    origin: str = PEER,
    key_id: str = "k1",
    key: Ed25519PrivateKey = PEER_KEY,
    to: tuple[str, ...] = (f"bob@{HERE}",),
    dest: str = HERE,
    created: int = NOW_MS - 60_000,
    expires: int = NOW_MS + 3_600_000,
    payload: bytes = b"hello",
    kind: str = "message",
    ident: int = 1,
    max_hops: int = 8,
) -> Envelope:
    receipt = kind == "receipt"
    header = make_header(
        id=bytes([ident]) * 16,
        kind=kind,
        origin=origin,
        key_id=key_id,
        sender=f"{'postmaster' if receipt else 'alice'}@{origin}",
        to=to,
        dest=dest,
        created=created,
        expires=expires,
        residency=["DE"],
        ctype=RECEIPT_CTYPE if receipt else "text/plain",
        payload=payload,
        max_hops=max_hops,
    )
    return seal(header, payload, key)


def item(env: Envelope, trace: tuple[str, ...] = (PEER,)) -> BatchItem:
    return BatchItem(env.header_bytes, env.signature, env.payload, trace)


GOOD_BODY = encode_batch(Batch(b"B" * 16, (item(envelope()),)))


# --- request level ------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """The facts of one request, as the shell would learn them."""

    body: bytes = GOOD_BODY
    signed_body: bytes | None = None  # what Content-Digest was computed over (default: body)
    origin: str = PEER
    dest: str = HERE
    created: int = NOW_S
    key: Ed25519PrivateKey = PEER_KEY
    raw_path: str = PATH
    drop: tuple[str, ...] = ()  # headers left out
    replace: tuple[tuple[str, str], ...] = ()  # headers given another value
    content_length: int | None = -1  # -1: the body's length
    keys: Mapping[str, Ed25519PublicKey] | None = field(default_factory=lambda: PEER_KEYS)
    authorities: bool = False
    introduced: Mapping[str, Ed25519PublicKey] | None = None  # keys once a certificate vouched
    certificates: tuple[bytes, ...] = ()  # sent in Relay-Certificate
    intro_body: int = INTRO_BODY
    admission: RelayError | None = None
    now_s: int = NOW_S
    nonce_seen: bool = False
    stored: Mapping[bytes, str] | None = None


def headers_of(r: Req) -> dict[str, str]:
    signed = r.body if r.signed_body is None else r.signed_body
    headers = httpsig.sign_request(
        method="POST",
        path=PATH,
        content_digest=httpsig.content_digest(signed),
        origin=r.origin,
        destination=r.dest,
        key=r.key,
        key_id="k1",
        created=r.created,
        nonce=NONCE,
    )
    if r.certificates:
        headers[httpsig.CERTIFICATE_HEADER] = httpsig.certificate_header(r.certificates)
    headers.update(r.replace)
    return {k: v for k, v in headers.items() if k not in r.drop}


def drive(r: Req) -> tuple[list[str], Step]:
    """Play the shell: answer each step from `r`; the step types seen and the last one."""
    rx = Reception(
        here=HERE, max_body=MAX_BODY, has_authorities=r.authorities, intro_body=r.intro_body
    )
    length = len(r.body) if r.content_length == -1 else r.content_length
    step: Step = rx.head(
        method="POST", raw_path=r.raw_path, headers=headers_of(r), content_length=length
    )
    seen: list[str] = []
    while True:
        seen.append(type(step).__name__)
        match step:
            case FindSender():
                assert not rx.may_read_body
                step = rx.sender(r.keys, unknown_key="key k1 is revoked here")
            case Introduce():
                assert not rx.may_read_body
                assert step.certificates == r.certificates
                step = rx.sender(r.introduced)
            case ReadBodyToIntroduce():
                assert rx.may_read_body and step.limit == min(r.intro_body, MAX_BODY)
                step = rx.sender(r.introduced)
            case Admit():
                step = rx.admitted(r.admission)
            case ReadBody():
                assert rx.may_read_body
                step = rx.body(r.body, now_s=r.now_s)
            case CheckNonce():
                step = rx.nonce(seen=r.nonce_seen)
            case FindStoredResults():
                step = rx.stored(r.stored)
            case _:
                return seen, step


def outcome(step: Step) -> str:
    if isinstance(step, Refuse):
        return f"{step.status} {step.code}"
    return type(step).__name__


GARBLED = "relay=nonsense("
OTHER_BODY = encode_batch(Batch(b"C" * 16, (item(envelope(ident=2)),)))
NO_ID_BODY = pack({"batch": b"B" * 16, "items": [[pack({"kind": "message"}), b"s" * 64, b"", []]]})
TWICE_BODY = encode_batch(Batch(b"B" * 16, (item(envelope()), item(envelope()))))
UNKNOWN: Mapping[str, Ed25519PublicKey] | None = None
RATE = Throttled("a.test is over its limit", 3)
BUSY = Busy("no write slot free")

REQUEST_CASES: list[tuple[str, Req, str]] = [
    ("a good request", Req(), "JudgeItems"),
    ("a repeated batch id", Req(stored={b"\x01" * 16: "accepted"}), "AnswerStored"),
    ("1 declared length over the limit", Req(content_length=MAX_BODY + 1), "413 too_large"),
    (
        "1 before any header fault",
        Req(content_length=MAX_BODY + 1, drop=("Relay-Origin",)),
        "413 too_large",
    ),
    ("1 at the limit is fine", Req(content_length=MAX_BODY), "JudgeItems"),
    ("2 no Relay-Origin", Req(drop=("Relay-Origin",)), "401 unknown_sender"),
    (
        "2 garbled Signature-Input",
        Req(replace=(("Signature-Input", GARBLED),)),
        "401 bad_signature",
    ),
    ("2 no Signature", Req(drop=("Signature",)), "401 bad_signature"),
    (
        "2 keyid names another node",
        Req(replace=(("Relay-Origin", OTHER),), keys=OTHER_KEYS),
        "401 bad_signature",
    ),
    (
        "2 no Content-Digest, even from an unknown sender",
        Req(drop=("Content-Digest",), keys=UNKNOWN),
        "400 digest_mismatch",
    ),
    ("2 no Relay-Destination", Req(drop=("Relay-Destination",)), "400 wrong_destination"),
    (
        "2 header faults in the order headers are read",
        Req(drop=("Relay-Destination", "Content-Digest")),
        "400 digest_mismatch",
    ),
    ("3 unknown sender", Req(keys=UNKNOWN), "401 unknown_sender"),
    (
        "3 unknown sender before a query string",
        Req(keys=UNKNOWN, raw_path=PATH + "?x=1"),
        "401 unknown_sender",
    ),
    (
        "3 unknown sender, its certificate does not introduce it",
        Req(keys=UNKNOWN, authorities=True),
        "401 unknown_sender",
    ),
    (
        "3 unknown sender introduced by a certificate in its body",
        Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS),
        "JudgeItems",
    ),
    (
        "3 unknown sender introduced by its Relay-Certificate",
        Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS, certificates=(CERT,)),
        "JudgeItems",
    ),
    (
        "3 its Relay-Certificate does not introduce it",
        Req(keys=UNKNOWN, authorities=True, certificates=(CERT, CERT)),
        "401 unknown_sender",
    ),
    (
        "3 no Relay-Certificate, and a body over what is read to find one",
        Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS, content_length=INTRO_BODY + 1),
        "413 too_large",
    ),
    (
        "3 no Relay-Certificate, and no body is read to find one",
        Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS, intro_body=0),
        "401 unknown_sender",
    ),
    (
        "3 a pinned sender's Relay-Certificate is not looked at",
        Req(certificates=(CERT,), authorities=True),
        "JudgeItems",
    ),
    (
        "2 a garbled Relay-Certificate",
        Req(replace=((httpsig.CERTIFICATE_HEADER, "not base64"),)),
        "401 unknown_sender",
    ),
    ("4 unknown key", Req(keys=OTHER_KEYS), "401 unknown_key"),
    ("5 bad signature", Req(keys={"k1": STRANGER_KEY.public_key()}), "401 bad_signature"),
    (
        "5 introduced, then the signature fails",
        Req(keys=UNKNOWN, authorities=True, introduced={"k1": STRANGER_KEY.public_key()}),
        "401 bad_signature",
    ),
    (
        "5 bad signature before a query string",
        Req(raw_path=PATH + "?x=1", keys={"k1": STRANGER_KEY.public_key()}),
        "401 bad_signature",
    ),
    ("6 query string", Req(raw_path=PATH + "?x=1"), "400 malformed"),
    ("6 an empty query is no query", Req(raw_path=PATH + "?"), "JudgeItems"),
    (
        "6 query string before the rate limit",
        Req(raw_path=PATH + "?a", admission=RATE),
        "400 malformed",
    ),
    ("7 rate limited", Req(admission=RATE), "429 rate_limited"),
    ("7 no write slot", Req(admission=BUSY), "503 busy"),
    ("7 rate limit before the digest", Req(admission=RATE, signed_body=b"x"), "429 rate_limited"),
    (
        "8 body grows past the limit",
        Req(body=b"\x00" * (MAX_BODY + 1), content_length=None),
        "413 too_large",
    ),
    ("9 digest mismatch", Req(signed_body=OTHER_BODY), "400 digest_mismatch"),
    (
        "9 digest before destination",
        Req(signed_body=OTHER_BODY, dest=OTHER),
        "400 digest_mismatch",
    ),
    ("10 wrong destination", Req(dest=OTHER), "400 wrong_destination"),
    ("10 destination before clock", Req(dest=OTHER, now_s=0), "400 wrong_destination"),
    ("11 created 301 s behind", Req(now_s=NOW_S + 301), "400 clock_skew"),
    ("11 created 301 s ahead", Req(now_s=NOW_S - 301), "400 clock_skew"),
    ("11 the window is inclusive", Req(now_s=NOW_S + 300), "JudgeItems"),
    ("11 clock before replay", Req(now_s=NOW_S + 301, nonce_seen=True), "400 clock_skew"),
    ("12 replay", Req(nonce_seen=True), "400 replay"),
    ("12 replay before a malformed body", Req(body=b"\xc1", nonce_seen=True), "400 replay"),
    ("13 not msgpack", Req(body=b"\xc1"), "400 malformed"),
    ("13 an item header with no id", Req(body=NO_ID_BODY), "400 malformed"),
    ("13 the same id twice", Req(body=TWICE_BODY), "400 malformed"),
]


@pytest.mark.parametrize(
    ("facts", "expected"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_request_checks_in_order(facts: Req, expected: str) -> None:
    _, last = drive(facts)
    assert outcome(last) == expected


def test_the_body_is_read_only_after_signature_and_admission() -> None:
    seen, last = drive(Req())
    assert seen == [
        "FindSender",
        "Admit",
        "ReadBody",
        "CheckNonce",
        "FindStoredResults",
        "JudgeItems",
    ]
    assert isinstance(last, JudgeItems)
    assert (last.peer, last.request_key, last.ids) == (PEER, "k1", (b"\x01" * 16,))


def test_an_unknown_sender_is_read_early_only_when_authorities_could_introduce_it() -> None:
    seen, _ = drive(Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS))
    assert seen[:3] == ["FindSender", "ReadBodyToIntroduce", "Admit"]
    seen, _ = drive(Req(keys=UNKNOWN))
    assert seen == ["FindSender", "Refuse"]


def test_a_relay_certificate_introduces_before_any_body_byte() -> None:
    facts = Req(keys=UNKNOWN, authorities=True, introduced=PEER_KEYS, certificates=(CERT,))
    seen, _ = drive(facts)
    assert seen[:4] == ["FindSender", "Introduce", "Admit", "ReadBody"]
    seen, last = drive(replace(facts, introduced={"k1": STRANGER_KEY.public_key()}))
    assert seen == ["FindSender", "Introduce", "Refuse"]
    assert outcome(last) == "401 bad_signature"


def test_details_name_what_failed() -> None:
    _, last = drive(Req(keys=OTHER_KEYS))
    assert isinstance(last, Refuse) and last.error.detail == "key k1 is revoked here"
    _, last = drive(Req(admission=RATE))
    assert isinstance(last, Refuse) and last.error is RATE


def test_a_repeated_batch_is_answered_with_the_new_nonce() -> None:
    stored = {b"\x01" * 16: "duplicate"}
    _, last = drive(Req(stored=stored))
    assert isinstance(last, AnswerStored)
    assert (last.batch_id, last.results) == (b"B" * 16, stored)
    assert (
        last.nonce
        == httpsig.parse_request(method="POST", path=PATH, headers=headers_of(Req())).nonce
    )


def test_a_step_out_of_turn_is_a_bug() -> None:
    rx = Reception(here=HERE, max_body=MAX_BODY, has_authorities=False)
    with pytest.raises(RelayError, match="waiting for nothing"):
        rx.body(GOOD_BODY, now_s=NOW_S)
    step = rx.head(method="POST", raw_path=PATH, headers=headers_of(Req()), content_length=None)
    assert isinstance(step, FindSender)
    with pytest.raises(RelayError, match="waiting for FindSender"):
        rx.admitted()
    with pytest.raises(RelayError, match="twice"):
        rx.head(method="POST", raw_path=PATH, headers={}, content_length=None)


# --- item level ---------------------------------------------------------------------------

ALLOW = Decision(True, "allow", "rule:ok", "")
AUDIT = Decision(True, "audit", "rule:audited", "would be denied")
DENY = Decision(False, "deny", "rule:eu-only", "holder outside the set")
CTX = ItemContext(here=HERE, peer=PEER, now_ms=NOW_MS)
FACTS = ItemFacts(accept=ALLOW, origin_keys=PEER_KEYS, mailboxes=frozenset({"bob"}))
RELAY_FACTS = replace(FACTS, origin_keys=OTHER_KEYS, hop=FAR, forward=ALLOW)
NOT_FOR_US = ItemRejected("not_for_us", "no relaying from x.test")


def _forged(env: Envelope, **changes: object) -> Envelope:
    """`env` with a header no decoder would produce (receipt shape rules bypassed)."""
    return replace(env, header=dataclasses.replace(env.header, **changes))  # type: ignore[arg-type]


RECEIPT_PAYLOAD = encode_receipt(
    Receipt("delivered", "", NOW_MS, "DE", "enforce", ((b"\x09" * 16, ("alice@a.test",)),))
)
RECEIPT = envelope(kind="receipt", to=(f"postmaster@{HERE}",), payload=RECEIPT_PAYLOAD)
BAD_RECEIPT = envelope(kind="receipt", to=(f"postmaster@{HERE}",), payload=b"\x90")
RELAYED = envelope(origin=OTHER, key_id="k2", key=OTHER_KEY, dest=FAR, to=(f"carol@{FAR}",))


def receipt_of(entries: int, ident: int = 7, **changes: object) -> Envelope:
    """A delivered receipt for this node listing `entries` envelope ids."""
    payload = encode_receipt(
        Receipt(
            "delivered",
            "",
            NOW_MS,
            "DE",
            "enforce",
            tuple((i.to_bytes(16, "big"), ("alice@a.test",)) for i in range(entries)),
        )
    )
    fields: dict[str, object] = {"kind": "receipt", "to": (f"postmaster@{HERE}",)}
    return envelope(payload=payload, ident=ident, **{**fields, **changes})  # type: ignore[arg-type]


RELAYED_RECEIPT = envelope(
    origin=OTHER,
    key_id="k2",
    key=OTHER_KEY,
    kind="receipt",
    dest=FAR,
    to=(f"postmaster@{FAR}",),
    payload=b"\x90",
)
RELAYED_FULL_RECEIPT = receipt_of(
    1, origin=OTHER, key_id="k2", key=OTHER_KEY, dest=FAR, to=(f"postmaster@{FAR}",)
)
FROM_OTHER = envelope(origin=OTHER, key_id="k2", key=OTHER_KEY)
GOOD = envelope()
SEAL_KEY = seal_secret(CLASSIC, bytes(range(1, 33)))
WRONG_SEAL_KEY = seal_secret(CLASSIC, bytes(range(2, 34)))


def sealed_envelope(dest: str = HERE, to: tuple[str, ...] = (f"bob@{HERE}",)) -> Envelope:
    """A message from PEER whose body b"hello" is sealed to SEAL_KEY (§21)."""
    dek = bytes(range(32))
    wrap = wrap_dek(SEAL_KEY.public, dek, PEER, dest)
    info, ct = seal_body(
        body=b"hello",
        salt=bytes(32),
        dek=dek,
        wrap=wrap,
        pub=SEAL_KEY.public,
        env_id=bytes([7]) * 16,
        origin=PEER,
        dest=dest,
    )
    env = envelope(dest=dest, to=to, payload=ct, ident=7)
    header = dataclasses.replace(env.header, seal=info)
    return seal(header, ct, PEER_KEY)


SEALED = sealed_envelope()
SEAL_FACTS = replace(FACTS, seal_keys={SEAL_KEY.public.key_id: SEAL_KEY})
YEARS_AHEAD = NOW_MS + 3 * 365 * 86_400_000


@dataclass(frozen=True)
class It:
    """One item and the facts looked up for it."""

    item: BatchItem
    facts: ItemFacts = FACTS
    ctx: ItemContext = CTX
    env: Envelope | None = None  # judge this instead of what the item opens to


def bytes_item(env: Envelope, **changes: object) -> BatchItem:
    return replace(item(env), **changes)  # type: ignore[arg-type]


def verdict(case: It) -> str:
    ctx = replace(case.ctx, receipts=ReceiptBudget(case.ctx.receipts.left))  # the case's own
    opened = open_item(ctx, case.item)
    with contextlib.suppress(MalformedError):  # as the batch's checks peeked it: the same verdict
        assert open_item(ctx, case.item, peek_header(case.item.header_bytes)) == opened
    if isinstance(opened, ItemRefused):
        return opened.result
    got = judge_item(ctx, case.env or opened, case.facts)
    if isinstance(got, ItemRefused):
        return got.result
    via = f" via {got.hop}" if got.hop else ""
    audit = " audit" if got.audit else ""
    return f"passed{via}{audit} {','.join(got.mailboxes)}".rstrip()


ITEM_CASES: list[tuple[str, It, str]] = [
    ("a message for a mailbox here", It(item(GOOD)), "passed bob"),
    ("1 header does not decode", It(bytes_item(GOOD, header_bytes=b"\xc1")), "rejected:malformed"),
    ("1 signature not 64 bytes", It(bytes_item(GOOD, signature=b"s" * 63)), "rejected:malformed"),
    ("2 payload length differs", It(bytes_item(GOOD, payload=b"hell")), "rejected:size"),
    ("3 payload digest differs", It(bytes_item(GOOD, payload=b"hellO")), "rejected:digest"),
    ("3 size before digest", It(bytes_item(GOOD, payload=b"hellOO")), "rejected:size"),
    ("4 expired", It(item(envelope(expires=NOW_MS))), "rejected:expired"),
    ("4 expires a ms from now", It(item(envelope(expires=NOW_MS + 1))), "passed bob"),
    ("4 expired before a bad trace", It(item(envelope(expires=NOW_MS), ())), "rejected:expired"),
    (
        "4 created 300 s ahead of the clock",
        It(item(envelope(created=NOW_MS + 300_000, expires=NOW_MS + 400_000))),
        "passed bob",
    ),
    (
        "4 created beyond the clock-skew window",
        It(item(envelope(created=NOW_MS + 300_001, expires=NOW_MS + 400_000))),
        "rejected:malformed",
    ),
    (
        "4 created years ahead",
        It(item(envelope(created=YEARS_AHEAD, expires=YEARS_AHEAD + 3_600_000))),
        "rejected:malformed",
    ),
    (
        "4 created in the future before a bad trace",
        It(item(envelope(created=NOW_MS + 300_001, expires=NOW_MS + 400_000), ())),
        "rejected:malformed",
    ),
    ("5 empty trace", It(item(GOOD, ())), "rejected:malformed"),
    ("5 trace not from the origin", It(item(GOOD, (OTHER, PEER))), "rejected:malformed"),
    ("5 trace not ending at the peer", It(item(FROM_OTHER, (OTHER,))), "rejected:malformed"),
    ("5 trace names an invalid node", It(item(GOOD, ("A B", PEER))), "rejected:malformed"),
    ("6 a name repeats", It(item(FROM_OTHER, (OTHER, PEER, OTHER, PEER))), "rejected:loop"),
    (
        "7 too many hops",
        It(item(envelope(origin=OTHER, key_id="k2", key=OTHER_KEY, max_hops=1), (OTHER, PEER))),
        "rejected:hops",
    ),
    ("8 this node in the trace", It(item(FROM_OTHER, (OTHER, HERE, PEER))), "rejected:loop"),
    ("8 this node is the origin", It(item(GOOD), ctx=replace(CTX, here=PEER)), "rejected:loop"),
    (
        "9 relayed toward its next hop",
        It(item(RELAYED, (OTHER, PEER)), RELAY_FACTS),
        "passed via c.test",
    ),
    (
        "9 relaying refused",
        It(item(RELAYED, (OTHER, PEER)), replace(RELAY_FACTS, hop=NOT_FOR_US)),
        "rejected:not_for_us",
    ),
    (
        "9 relaying refused before the origin is asked",
        It(item(RELAYED, (OTHER, PEER)), replace(RELAY_FACTS, hop=NOT_FOR_US, origin_keys=None)),
        "rejected:not_for_us",
    ),
    (
        "9 relayed receipt with a bad payload",
        It(item(RELAYED_RECEIPT, (OTHER, PEER)), RELAY_FACTS),
        "rejected:malformed",
    ),
    (
        "9 next hop has no URL",
        It(
            item(RELAYED, (OTHER, PEER)),
            replace(RELAY_FACTS, forward=ItemRejected("not_for_us", "no URL")),
        ),
        "rejected:not_for_us",
    ),
    (
        "9 forward check refuses",
        It(item(RELAYED, (OTHER, PEER)), replace(RELAY_FACTS, forward=DENY)),
        "rejected:residency",
    ),
    (
        "9 accept check before forward check",
        It(
            item(RELAYED, (OTHER, PEER)),
            replace(RELAY_FACTS, accept=DENY, forward=ItemRejected("not_for_us", "no URL")),
        ),
        "rejected:residency",
    ),
    (
        "10 unknown origin",
        It(item(GOOD), replace(FACTS, origin_keys=None)),
        "rejected:unknown_origin",
    ),
    (
        "10 unknown origin before residency",
        It(item(GOOD), replace(FACTS, origin_keys=None, accept=DENY)),
        "rejected:unknown_origin",
    ),
    (
        "11 the origin's key is not pinned",
        It(item(GOOD), replace(FACTS, origin_keys=OTHER_KEYS)),
        "rejected:signature",
    ),
    (
        "11 relayed, signature does not verify",
        It(
            item(envelope(origin=OTHER, key_id="k2", key=STRANGER_KEY), (OTHER, PEER)),
            replace(FACTS, origin_keys=OTHER_KEYS),
        ),
        "rejected:signature",
    ),
    (
        "11 sent by its origin, the destination: still verified",
        It(item(envelope(key=STRANGER_KEY))),
        "rejected:signature",
    ),
    (
        "11 sent by its origin with a signature of 64 zero bytes",
        It(bytes_item(GOOD, signature=bytes(64))),
        "rejected:signature",
    ),
    (
        "11 a relay verifies even its own peer's envelopes",
        It(
            item(envelope(key=STRANGER_KEY, dest=FAR, to=(f"carol@{FAR}",))),
            replace(FACTS, hop=FAR, forward=ALLOW),
        ),
        "rejected:signature",
    ),
    (
        "11 signature before residency",
        It(item(GOOD), replace(FACTS, origin_keys=OTHER_KEYS, accept=DENY)),
        "rejected:signature",
    ),
    ("12 residency refuses", It(item(GOOD), replace(FACTS, accept=DENY)), "rejected:residency"),
    ("12 audit lets it through", It(item(GOOD), replace(FACTS, accept=AUDIT)), "passed audit bob"),
    (
        "12 residency before the mailbox",
        It(item(GOOD), replace(FACTS, accept=DENY, mailboxes=frozenset())),
        "rejected:residency",
    ),
    (
        "13 no such mailbox",
        It(item(GOOD), replace(FACTS, mailboxes=frozenset())),
        "rejected:unknown_mailbox",
    ),
    (
        "13 one unknown recipient refuses all",
        It(item(envelope(to=(f"bob@{HERE}", f"eve@{HERE}")))),
        "rejected:unknown_mailbox",
    ),
    (
        "13 two recipients, both here",
        It(
            item(envelope(to=(f"bob@{HERE}", f"eve@{HERE}"))),
            replace(FACTS, mailboxes=frozenset({"bob", "eve"})),
        ),
        "passed bob,eve",
    ),
    ("13 a sealed message opens here", It(item(SEALED), SEAL_FACTS), "passed bob"),
    (
        "13 sealed to a seal key this node does not hold",
        It(item(SEALED), FACTS),
        "rejected:seal_key",
    ),
    (
        "13 sealed to a key id whose key does not open it",
        It(item(SEALED), replace(SEAL_FACTS, seal_keys={SEAL_KEY.public.key_id: WRONG_SEAL_KEY})),
        "rejected:unseal",
    ),
    (
        "13 the mailbox before the seal",
        It(item(SEALED), replace(FACTS, mailboxes=frozenset())),
        "rejected:unknown_mailbox",
    ),
    (
        "9 a relay passes a sealed message on without its key",
        It(item(sealed_envelope(FAR, (f"carol@{FAR}",))), replace(FACTS, hop=FAR, forward=ALLOW)),
        "passed via c.test",
    ),
    ("13 a receipt for this node", It(item(RECEIPT)), "passed"),
    ("13 a receipt with a bad payload", It(item(BAD_RECEIPT)), "rejected:malformed"),
    (
        "13 a receipt that fits the batch's receipt cap exactly",
        It(item(RECEIPT), ctx=replace(CTX, receipts=ReceiptBudget(1))),
        "passed",
    ),
    (
        "13 a receipt over the batch's receipt cap",
        It(item(RECEIPT), ctx=replace(CTX, receipts=ReceiptBudget(0))),
        "rejected:malformed",
    ),
    (
        "13 a bad receipt payload before the cap",
        It(item(BAD_RECEIPT), ctx=replace(CTX, receipts=ReceiptBudget(0))),
        "rejected:malformed",
    ),
    (
        "9 a relayed receipt does not spend the cap",
        It(
            item(RELAYED_FULL_RECEIPT, (OTHER, PEER)),
            RELAY_FACTS,
            replace(CTX, receipts=ReceiptBudget(0)),
        ),
        "passed via c.test",
    ),
    (
        "13 a receipt to another mailbox",
        It(item(RECEIPT), env=_forged(RECEIPT, to=(f"bob@{HERE}",))),
        "rejected:malformed",
    ),
    (
        "13 a receipt of another type",
        It(item(RECEIPT), env=_forged(RECEIPT, ctype="text/plain")),
        "rejected:malformed",
    ),
    (
        "13 a receipt not from postmaster",
        It(item(RECEIPT), env=_forged(RECEIPT, sender=f"alice@{PEER}")),
        "rejected:malformed",
    ),
]


@pytest.mark.parametrize(
    ("case", "expected"), [c[1:] for c in ITEM_CASES], ids=[c[0] for c in ITEM_CASES]
)
def test_item_verdicts_in_order(case: It, expected: str) -> None:
    assert verdict(case) == expected


def test_every_item_code_has_a_case() -> None:
    from relay.errors import ITEM_CODES

    covered = {e.removeprefix("rejected:") for _, _, e in ITEM_CASES if e.startswith("rejected:")}
    assert covered | {"id_conflict"} == ITEM_CODES


def test_a_sealed_message_passes_opened_and_its_wrap_is_opened_once() -> None:
    deks: dict[bytes, bytes] = {}
    facts = replace(SEAL_FACTS, deks=deks)
    got = judge_item(CTX, SEALED, facts)
    assert isinstance(got, Passed)
    assert got.env.payload == bytes(32) + b"hello"  # salt || body: what the node stores
    assert got.env.header_bytes == SEALED.header_bytes  # the origin's signed header, kept
    assert SEALED.header.seal is not None and deks == {SEALED.header.seal.wrap: bytes(range(32))}
    again = judge_item(CTX, SEALED, replace(facts, seal_keys={SEAL_KEY.public.key_id: SEAL_KEY}))
    assert isinstance(again, Passed)


def test_the_receipt_cap_is_spent_across_the_items_of_one_request() -> None:
    ctx = replace(CTX, receipts=ReceiptBudget())
    full = MAX_RECEIPT_ENTRIES
    receipts = [receipt_of(full, ident=10 + n) for n in range(MAX_BATCH_RECEIPT_ENTRIES // full)]
    receipts += [receipt_of(2, ident=1), receipt_of(1, ident=2)]
    verdicts = [judge_item(ctx, r, FACTS) for r in receipts[:-2]]
    assert all(isinstance(v, Passed) for v in verdicts)
    assert ctx.receipts.left == 0
    over = judge_item(ctx, receipts[-2], FACTS)
    assert isinstance(over, ItemRefused) and over.code == "malformed"
    assert f"more than {MAX_BATCH_RECEIPT_ENTRIES} entries" in over.detail
    assert isinstance(judge_item(ctx, receipts[-1], FACTS), ItemRefused)
    fresh = replace(CTX, receipts=ReceiptBudget())
    assert isinstance(judge_item(fresh, receipts[-1], FACTS), Passed)


def test_a_receipt_for_this_node_passes_with_its_decoded_payload() -> None:
    got = judge_item(replace(CTX, receipts=ReceiptBudget()), RECEIPT, FACTS)
    assert isinstance(got, Passed) and got.receipt == decode_receipt(RECEIPT_PAYLOAD)
    relayed = judge_item(CTX, RELAYED_FULL_RECEIPT, RELAY_FACTS)
    assert isinstance(relayed, Passed) and relayed.receipt is None  # not ours to apply
    message = judge_item(CTX, GOOD, FACTS)
    assert isinstance(message, Passed) and message.receipt is None


def test_a_receipt_budget_spends_only_what_fits() -> None:
    budget = ReceiptBudget(5)
    assert budget.take(3) and budget.left == 2
    assert not budget.take(3) and budget.left == 2
    assert budget.take(2) and budget.left == 0
    assert ItemContext(here=HERE, peer=PEER, now_ms=NOW_MS).receipts.left == (
        MAX_BATCH_RECEIPT_ENTRIES
    )


def test_a_residency_refusal_names_its_rule() -> None:
    got = judge_item(CTX, GOOD, replace(FACTS, accept=DENY))
    assert got == ItemRefused("residency", "holder outside the set", "rule:eu-only")
    got = judge_item(CTX, GOOD, replace(FACTS, accept=AUDIT))
    assert isinstance(got, Passed) and got.audit is AUDIT and got.rule == "rule:audited"


def test_a_relayed_envelope_needs_its_relay_facts() -> None:
    with pytest.raises(RelayError, match="no relay plan"):
        judge_item(CTX, RELAYED, replace(RELAY_FACTS, hop=None))
    with pytest.raises(RelayError, match="no forward decision"):
        judge_item(CTX, RELAYED, replace(RELAY_FACTS, forward=None))


def test_settle_dedupes_by_header_digest() -> None:
    hb = GOOD.header_bytes
    assert settle(hb, None) == "accepted"
    assert settle(hb, header_digest(hb)) == "duplicate"
    assert settle(hb, header_digest(hb + b"x")) == "rejected:id_conflict"


def test_open_item_refuses_a_header_peeked_from_other_bytes() -> None:
    other = peek_header(envelope(ident=2).header_bytes)
    with pytest.raises(RelayError, match="not this item's"):
        open_item(CTX, item(GOOD), other)


@given(st.binary(max_size=200), st.binary(max_size=80), st.binary(max_size=40))
def test_open_item_judges_any_bytes_without_raising(
    header: bytes, signature: bytes, payload: bytes
) -> None:
    got = open_item(CTX, BatchItem(header, signature, payload, (PEER,)))
    assert isinstance(got, Envelope | ItemRefused)


@given(st.binary(min_size=0, max_size=300))
def test_any_body_is_judged_or_refused_with_a_relay_error(body: bytes) -> None:
    _, last = drive(Req(body=body))
    assert isinstance(last, JudgeItems) or (
        isinstance(last, Refuse) and last.code in {"malformed", "too_large"}
    )


def test_proceed_raises_a_refusal_and_passes_a_step() -> None:
    rx = Reception(here=HERE, max_body=MAX_BODY, has_authorities=False)
    step = proceed(
        rx.head(method="POST", raw_path=PATH, headers=headers_of(Req()), content_length=0)
    )
    assert isinstance(step, FindSender)
    rx = Reception(here=HERE, max_body=MAX_BODY, has_authorities=False)
    with pytest.raises(TooLarge):
        proceed(rx.head(method="POST", raw_path=PATH, headers={}, content_length=MAX_BODY + 1))
