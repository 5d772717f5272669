"""Structured fuzzing of a live node: the batch endpoint and the client API (issue 4 point 4).

A node runs in the test's event loop (the federation harness, no rate
limits); hypothesis runs in a worker thread and sends each case through the
loop. Cases are structured, not only random bytes:

- batch endpoint: requests correctly signed by the pinned peer a.test (so
  they pass the request checks and reach the body), whose bodies are random
  msgpack, a valid batch with one part replaced (wrong type, size or key,
  repeated keys, trailing bytes, bombs), headers re-encoded with a field
  changed and signed again by a.test (so the item checks behind the
  signature are reached), and byte mutations of the golden batch vector;
- client API: JSON bodies with wrong types, keys and sizes for every write
  route, random query parameters, random message ids, random tokens.

Each answer must be one the route documents, never a 5xx (the client routes'
list is read from the OpenAPI document), every error a JSON `{error,
detail}`, and the database must change only as the answer says: nothing for
a refusal, exactly the accepted envelopes for a 200/202. At the end the node
still serves, `PRAGMA integrity_check` is ok and every stored envelope
decodes strictly and matches its payload. The run prints its case counts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.api.openapi import document
from relay.errors import ITEM_CODES, MalformedError
from relay.protocol.batch import open_result
from relay.protocol.envelope import ENVELOPE_DOMAIN, decode_header, encode_header
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import (
    MAX_BODY,
    TIMEOUT,
    TOKEN,
    Clock,
    Harness,
    Identity,
    Pinned,
    Reply,
    start_node,
    write_node_toml,
)

# per target; the whole module stays well under a minute. A longer soak:
# RELAY_FUZZ_EXAMPLES=5000 pytest tests/fuzz
MAX_EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "200"))
BOB_TOKEN = "bob-token"
VECTORS: Any = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8")
)
GOLDEN_BODY = bytes.fromhex(VECTORS["batch_request"]["body_hex"])
RESULTS = {"accepted", "duplicate"} | {f"rejected:{c}" for c in ITEM_CODES}
BATCH_ERRORS = {400: {"malformed"}, 413: {"too_large"}}

CASES: Counter[str] = Counter()
COMMITTED: dict[bytes, dict[bytes, str]] = {}  # batch id -> results, as the node answered
STATUSES: Counter[str] = Counter()
T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        total = sum(CASES.values())
        reporter.write_line(
            f"\nAPI fuzz: {total} cases: " + json.dumps(dict(sorted(CASES.items())))
        )
        reporter.write_line("API fuzz statuses: " + json.dumps(dict(sorted(STATUSES.items()))))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """n.test with a.test and x.test pinned (no urls) and no rate limits."""
    COMMITTED.clear()
    clock = Clock()
    a, a2, x = Identity("a.test"), Identity("a.test"), Identity("x.test")
    node_dir = tmp_path / "n"
    node_key = write_node_toml(
        node_dir,
        peers=[Pinned(a.name, (a.key_string, a2.key_string)), Pinned(x.name, (x.key_string,))],
    )
    with (node_dir / "node.toml").open("a") as f:
        f.write("\n[limits]\nclient_rate = 0\npeer_rate = 0\n")
    node = await start_node(node_dir, clock)
    h = Harness(node, clock, node_key, aiohttp.ClientSession(), a, a2, x)
    try:
        yield h
    finally:
        await h.session.close()
        await h.node.stop()


class Bridge:
    """Runs coroutines on the node's loop from hypothesis's worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        fut: Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        return fut.result(timeout=60)


def run_given(test: Callable[..., None], *strategies: st.SearchStrategy[Any]) -> None:
    """Run `test` over `strategies` with the module's bounded settings."""
    settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(given(*strategies)(test))()


# --- strategies: msgpack values -------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, 16, 2**63 - 1, 2**63, -1]),
    st.floats(),
    st.text(max_size=20),
    st.text(alphabet="abnxz09.-@+_DEFR", max_size=16),
    st.binary(max_size=40),
    st.binary(min_size=15, max_size=17),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=4)), inner, max_size=4),
    ),
    max_leaves=12,
)
# Values a header field might plausibly hold, at or just past its bounds.
NASTY_FIELDS: dict[str, list[Any]] = {
    "v": [0, 2, -1, "1", 2**63],
    "id": [b"", b"\x00" * 15, b"\x00" * 17, "0" * 32],
    "kind": ["", "receipt", "Message", "message\x00", b"message"],
    "origin": ["", "x.test", "n.test", "A.TEST", "a..test", "a.test."],
    "key": ["", "AAAAAAAA", "x" * 300],
    "from": ["", "alice", "alice@x.test", "@a.test", "postmaster@a.test", "a@b@a.test"],
    "to": [[], ["bob"], ["bob@x.test"], ["nobody@n.test"], ["bob@n.test"] * 101, "bob@n.test"],
    "dest": ["", "x.test", "a.test", "N.TEST"],
    "created": [-1, 0, 2**63, 1.5],
    "expires": [0, 2**63 - 1, -5],
    "residency": [[], ["de"], ["FR", "DE"], ["DE", "DE"], ["ZZ"], ["EU"], "DE", [1]],
    "ctype": ["", "text/plain\x00", "application/vnd.relay.receipt+msgpack", 7],
    "size": [-1, 0, 2**63, 10**6],
    "sha256": [b"", b"\x00" * 31, b"\x00" * 32, "00" * 32],
    "max_hops": [0, 1, 17, 2**63 - 1, -1],
}


# --- the batch endpoint -------------------------------------------------------------


def header_map(h: Harness, payload: bytes) -> dict[str, Any]:
    env = h.envelope(payload=payload)
    m: dict[str, Any] = msgpack.unpackb(encode_header(env.header), raw=False)
    return m


def signed_by_a(h: Harness, header_bytes: bytes) -> bytes:
    return h.a.key.sign(ENVELOPE_DOMAIN + header_bytes)


@st.composite
def mutated_header(draw: st.DrawFn, h: Harness) -> list[Any]:
    """A valid item whose header has one field changed, re-encoded and signed again."""
    payload = draw(st.binary(max_size=64))
    m = header_map(h, payload)
    op = draw(st.sampled_from(["nasty", "random", "drop", "add", "two"]))
    if op == "drop":
        del m[draw(st.sampled_from(sorted(m)))]
    elif op == "add":
        m[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in m))] = draw(values)
    else:
        for _ in range(2 if op == "two" else 1):
            field = draw(st.sampled_from(sorted(NASTY_FIELDS)))
            if op == "random":
                m[field] = draw(values)
            else:
                m[field] = draw(st.sampled_from(NASTY_FIELDS[field]))
    header_bytes: bytes = msgpack.packb(m, use_bin_type=True)
    trace = draw(st.sampled_from([["a.test"], ["x.test", "a.test"], [], ["a.test", "a.test"]]))
    return [header_bytes, signed_by_a(h, header_bytes), payload, trace]


@st.composite
def valid_item(draw: st.DrawFn, h: Harness) -> list[Any]:
    env = h.envelope(payload=draw(st.binary(max_size=64)))
    return [env.header_bytes, env.signature, env.payload, ["a.test"]]


@st.composite
def broken_item(draw: st.DrawFn, h: Harness) -> Any:
    """A valid item with one element replaced, dropped or added, or a random value."""
    item: list[Any] = draw(valid_item(h))
    op = draw(st.sampled_from(["replace", "drop", "add", "random", "trace", "certs"]))
    if op == "replace":
        item[draw(st.integers(0, 3))] = draw(values)
    elif op == "drop":
        del item[draw(st.integers(0, 3))]
    elif op == "add":
        item.extend(draw(st.lists(values, min_size=1, max_size=3)))
    elif op == "trace":
        item[3] = draw(st.lists(st.text(alphabet="anxz.t", max_size=8), max_size=20))
    elif op == "certs":
        item.append(draw(st.one_of(values, st.lists(st.binary(max_size=80), max_size=3))))
    else:
        return draw(values)
    return item


def _repeated_key_map(batch_id: bytes, items: list[Any]) -> bytes:
    """{"batch": .., "items": .., "batch": ..}: a map with a repeated key."""
    pk = msgpack.Packer(use_bin_type=True)
    return bytes(
        b"\x83"
        + pk.pack("batch")
        + pk.pack(batch_id)
        + pk.pack("items")
        + pk.pack(items)
        + pk.pack("batch")
        + pk.pack(os.urandom(16))
    )


@st.composite
def batch_body(draw: st.DrawFn, h: Harness) -> tuple[str, bytes]:
    """(kind of case, body bytes) for one batch request."""
    kind = draw(
        st.sampled_from(
            ["random", "items", "header", "mixed", "frame", "duplicate", "golden", "bomb"]
        )
    )
    batch_id = os.urandom(16)
    if kind == "random":
        top = draw(
            st.one_of(
                values,
                st.fixed_dictionaries({"batch": values, "items": values}),
                st.fixed_dictionaries(
                    {"batch": st.binary(min_size=16, max_size=16), "items": st.lists(values)}
                ),
            )
        )
        return kind, msgpack.packb(top, use_bin_type=True)
    if kind == "items":
        items = draw(st.lists(broken_item(h), min_size=1, max_size=3))
    elif kind == "header":
        items = draw(st.lists(mutated_header(h), min_size=1, max_size=3))
    elif kind == "mixed":
        items = draw(
            st.lists(
                st.one_of(valid_item(h), mutated_header(h), broken_item(h)), min_size=1, max_size=4
            )
        )
    elif kind == "duplicate":
        first = draw(valid_item(h))
        items = [first, draw(st.sampled_from([first, [*first[:2], b"other", first[3]]]))]
    elif kind == "golden":
        data = bytearray(GOLDEN_BODY)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["flip", "set", "insert", "cut"]))
            if op == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "set":
                data[i] = draw(st.sampled_from([0x00, 0x7F, 0xC0, 0xC1, 0xC4, 0xDD, 0xDF, 0xFF]))
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=6))
            else:
                del data[i : i + draw(st.integers(1, 6))]
        return kind, bytes(data)
    elif kind == "bomb":
        bomb = draw(
            st.sampled_from(
                [
                    b"\x91" * 5000 + b"\xc0",  # 5,000 nested arrays
                    b"\x81\xa1a" * 3000 + b"\xc0",  # 3,000 nested maps
                    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion elements
                    b"\xdf\xff\xff\xff\xff",  # a map claiming 4 billion pairs
                    b"\xc6\xff\xff\xff\xf0" + b"\x00" * 8,  # a bin far longer than the body
                    b"\x82\xa5batch\xc4\x10" + b"\x00" * 16 + b"\xa5items\xdd\x7f\xff\xff\xff",
                    # issue 10: nils where items go, and containers past the element cap
                    b"\x82\xa5batch\xc4\x10"
                    + b"\x00" * 16
                    + b"\xa5items\xdc\x1f\x00"
                    + b"\xc0" * 0x1F00,
                    b"\x82\xa5batch\xc4\x10"
                    + b"\x00" * 16
                    + b"\xa5items\x9f"
                    + b"\xdc\x01\x90"
                    + b"\x00" * 400,
                ]
            )
        )
        return kind, bomb
    else:  # frame: a valid batch with the framing broken
        items = [draw(valid_item(h))]
        good = msgpack.packb({"batch": batch_id, "items": items}, use_bin_type=True)
        op = draw(st.sampled_from(["trailing", "repeat", "extra", "drop", "id", "cut", "empty"]))
        if op == "trailing":
            return kind, good + draw(st.binary(min_size=1, max_size=8))
        if op == "repeat":
            return kind, _repeated_key_map(batch_id, items)
        if op == "cut":
            return kind, good[: draw(st.integers(0, len(good) - 1))]
        doc: dict[Any, Any] = {"batch": batch_id, "items": items}
        if op == "extra":
            doc[draw(st.one_of(st.text(max_size=6), st.binary(max_size=4)))] = draw(values)
        elif op == "drop":
            del doc[draw(st.sampled_from(["batch", "items"]))]
        elif op == "id":
            doc["batch"] = draw(values)
        else:
            doc["items"] = []
        return kind, msgpack.packb(doc, use_bin_type=True)
    return kind, msgpack.packb({"batch": batch_id, "items": items}, use_bin_type=True)


async def post_batch_case(h: Harness, kind: str, body: bytes) -> None:
    """Send one signed batch and check the answer against what the database gained."""
    before = await h.counts()
    reply = await h.post(body, h.sign(body))
    after = await h.counts()
    CASES[f"batch:{kind}"] += 1
    STATUSES[f"federation {reply.status}"] += 1
    assert reply.status < 500, (reply.status, reply.body[:300])
    if reply.status != 200:
        assert reply.status in BATCH_ERRORS, (reply.status, reply.body[:300])
        assert reply.content_type == "application/json"
        code, detail = reply.error()
        assert code in BATCH_ERRORS[reply.status], (code, detail)
        assert (reply.status == 413) == (len(body) > MAX_BODY)
        assert after == before, "a refused batch changed the database"
        return
    assert reply.content_type == "application/msgpack"
    result = open_result(reply.body, h.node_key.public_key())
    sent = msgpack.unpackb(body, raw=False)
    assert result.batch_id == sent["batch"]
    grew = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    if result.batch_id in COMMITTED:  # a batch id seen before: its stored results, nothing new
        assert result.results == COMMITTED[result.batch_id]
        assert grew == {"nonces": 1}, grew
        return
    COMMITTED[result.batch_id] = dict(result.results)
    ids = [decode_id(item[0]) for item in sent["items"]]
    assert set(result.results) == set(ids)
    assert set(result.results.values()) <= RESULTS, result.results
    accepted = [i for i, r in result.results.items() if r == "accepted"]
    assert grew.pop("envelopes", 0) == len(accepted), grew
    assert grew.pop("nonces") == 1 and grew.pop("batches") == 1, grew
    residency = sum(1 for r in result.results.values() if r == "rejected:residency")
    assert grew.pop("decisions", 0) <= residency
    for table in ("payloads", "inbox", "recipients", "pending_receipts"):
        assert 0 <= grew.pop(table, 0) <= len(accepted) * 100, table
    assert grew == {}, f"tables grew that a batch must not touch: {grew}"
    for item in sent["items"]:
        ident = decode_id(item[0])
        if result.results[ident] == "accepted":
            row = await sqlite_store(h.state.store).fetchone(
                "SELECT header FROM envelopes WHERE origin = 'a.test' AND id = ?", (ident,)
            )
            assert row is not None and bytes(row[0]) == item[0]


def decode_id(header_bytes: bytes) -> bytes:
    ident: bytes = msgpack.unpackb(header_bytes, raw=False)["id"]
    return ident


@pytest.mark.slow
async def test_fuzz_batch_endpoint(harness: Harness) -> None:
    h = harness
    bridge = Bridge(asyncio.get_running_loop())

    def case(kind_body: tuple[str, bytes]) -> None:
        bridge(post_batch_case(h, *kind_body))

    await asyncio.to_thread(run_given, case, batch_body(h))
    await still_healthy(h)
    assert sum(v for k, v in CASES.items() if k.startswith("batch:")) >= MAX_EXAMPLES // 2


# --- the client API -------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
addresses = st.one_of(
    st.sampled_from(
        [
            "bob@n.test",
            "alice@n.test",
            "nobody@n.test",
            "bob@unknown.test",
            "postmaster@n.test",
            "bob",
            "@n.test",
            "Bob@n.test",
            "bob@n.test ",
            "",
        ]
    ),
    st.text(max_size=20),
)
message_fields: dict[str, st.SearchStrategy[Any]] = {
    "to": st.one_of(
        st.lists(addresses, max_size=4), addresses, st.lists(addresses, min_size=101, max_size=102)
    ),
    "text": st.one_of(st.text(max_size=40), st.text(min_size=5000, max_size=5200)),
    "body_b64": st.one_of(
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=20)
    ),
    "ctype": st.one_of(
        st.sampled_from(["text/plain", "", "application/json", "tëxt/plain"]), st.text(max_size=10)
    ),
    "residency": st.one_of(
        st.lists(st.sampled_from(["DE", "FR", "de", "EU", "ZZ", "RU", ""]), max_size=3),
        st.sampled_from(["DE", "DE,FR", "EU", ""]),
    ),
    "ttl": st.one_of(
        st.integers(min_value=-5, max_value=40 * 86400), st.sampled_from([0, 2**63, 1.5, True])
    ),
}


@st.composite
def message(draw: st.DrawFn) -> Any:
    """A message object: valid with one field changed, plausible fields of any type, or any JSON."""
    shape = draw(st.sampled_from(["valid", "valid", "valid", "fields", "json"]))
    if shape == "json":
        return draw(json_values)
    doc: dict[str, Any] = {}
    if shape == "valid":
        doc["to"] = draw(st.lists(st.sampled_from(["bob@n.test", "alice@n.test"]), min_size=1))
        doc["text"] = draw(st.text(max_size=40))
        optional = {"residency": ["DE"], "ttl": 3600, "ctype": "text/plain"}
        doc |= {k: good for k, good in optional.items() if draw(st.booleans())}
        if draw(st.integers(0, 2)) == 0:  # one field changed
            k = draw(st.sampled_from(sorted(message_fields)))
            doc.pop("text" if k == "body_b64" else "", None)
            doc[k] = draw(st.one_of(message_fields[k], json_values))
    else:
        keys = draw(st.sets(st.sampled_from(sorted(message_fields))))
        for k in sorted(keys):
            field = message_fields[k]
            doc[k] = draw(st.one_of(field, json_values) if draw(st.booleans()) else field)
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return doc


auth = st.sampled_from(["alice"] * 6 + ["bob", "bob", "none", "garbage", "basic"])
idem = st.one_of(st.none(), st.text(alphabet="abcXYZ019-_", min_size=0, max_size=210))


@st.composite
def client_case(draw: st.DrawFn) -> dict[str, Any]:
    """One client request: method, path, query, JSON body or raw bytes, headers."""
    route = draw(st.sampled_from(["message", "batch", "status", "inbox", "ack"]))
    case: dict[str, Any] = {"route": route, "auth": draw(auth), "query": {}, "idem": None}
    if route == "message":
        case |= {"method": "POST", "path": "/v1/messages", "idem": draw(idem)}
        case["body"] = draw(st.one_of(message(), message(), message(), json_values))
    elif route == "batch":
        case |= {"method": "POST", "path": "/v1/messages/batch", "idem": draw(idem)}
        case["body"] = draw(
            st.one_of(
                st.fixed_dictionaries({"messages": st.lists(message(), max_size=4)}),
                st.fixed_dictionaries({"messages": json_values}),
                json_values,
            )
        )
    elif route == "ack":
        ids = st.lists(
            st.one_of(
                st.binary(min_size=16, max_size=16).map(bytes.hex),
                st.text(alphabet="0123456789abcdefABCDEF", max_size=34),
                json_scalars,
            ),
            max_size=5,
        )
        case |= {"method": "POST", "path": "/v1/inbox/ack"}
        case["body"] = draw(st.one_of(st.fixed_dictionaries({"ids": ids}), json_values))
    elif route == "status":
        ident = draw(
            st.one_of(
                st.binary(min_size=16, max_size=16).map(bytes.hex),
                st.text(alphabet="0123456789abcdefABCDEFxyz%./", min_size=1, max_size=40),
                st.text(min_size=1, max_size=20),
            ).filter(lambda s: s.strip(".") != "")  # "." and ".." the client resolves away
        )
        case |= {"method": "GET", "path": "/v1/messages/" + urllib.parse.quote(ident, safe="")}
    else:
        number = st.one_of(
            st.integers(min_value=-(10**20), max_value=10**20).map(str),
            st.text(max_size=8),
            st.sampled_from(["0", "1", "1000", "1001", "-1", "1e3", " 5", "0x10", ""]),
        )
        query = draw(
            st.dictionaries(
                st.one_of(
                    st.sampled_from(["limit", "wait", "mailbox", "since"]), st.text(max_size=6)
                ),
                number,
                max_size=3,
            )
        )
        wait = query.get("wait")
        if wait is not None and wait.strip().lstrip("+").isdigit() and int(wait) > 0:
            query["wait"] = "0"  # a real long-poll would only slow the run down
        case |= {"method": "GET", "path": "/v1/inbox", "query": query}
    if case["method"] == "POST" and draw(st.integers(0, 12)) == 0:
        case["raw"] = draw(
            st.sampled_from([b"", b"{", b"\xff\xfe", b'{"to": "\xed\xa0\x80"}', b"[]" * 10, b"nul"])
        )
    return case


def documented_statuses() -> dict[tuple[str, str], set[int]]:
    doc = document()
    out: dict[tuple[str, str], set[int]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            out[(method.upper(), path)] = {int(s) for s in op["responses"]}
    return out


DOCUMENTED = documented_statuses()
TEMPLATES = {
    "message": "/v1/messages",
    "batch": "/v1/messages/batch",
    "status": "/v1/messages/{id}",
    "inbox": "/v1/inbox",
    "ack": "/v1/inbox/ack",
}


def headers_for(case: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    who = case["auth"]
    if who == "alice":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif who == "bob":
        headers["Authorization"] = f"Bearer {BOB_TOKEN}"
    elif who == "garbage":
        headers["Authorization"] = "Bearer " + hashlib.sha256(os.urandom(8)).hexdigest()
    elif who == "basic":
        headers["Authorization"] = "Basic YWxpY2U6YWxpY2U="
    if case["idem"] is not None:
        headers["Idempotency-Key"] = case["idem"]
    return headers


async def client_request(h: Harness, case: dict[str, Any]) -> None:
    before = await h.counts()
    headers = headers_for(case)
    if "raw" in case:
        data: bytes | None = case["raw"]
        headers["Content-Type"] = "application/json"
    elif case["method"] == "POST":
        data = json.dumps(case["body"]).encode()
        headers["Content-Type"] = "application/json"
    else:
        data = None
    url = h.url + case["path"]
    if case["query"]:
        url += "?" + urllib.parse.urlencode(case["query"])
    async with h.session.request(
        case["method"], url, data=data, headers=headers, timeout=TIMEOUT
    ) as resp:
        raw = await resp.read()
        reply = Reply(resp.status, raw, resp.content_type)
    after = await h.counts()
    route = case["route"]
    CASES[f"client:{route}"] += 1
    STATUSES[f"{route} {reply.status}"] += 1
    documented = DOCUMENTED[(case["method"], TEMPLATES[route])]
    assert reply.status < 500, (reply.status, raw[:300], case)
    assert reply.status in documented, (reply.status, raw[:300], case)
    assert reply.content_type == "application/json", (reply.status, raw[:300], case["path"])
    doc = json.loads(raw)
    grew = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    if reply.status >= 400:
        assert set(doc) in ({"error", "detail"}, {"error", "detail", "rule"}), doc
        if reply.status == 422:  # a policy refusal leaves its decision row, nothing else
            assert grew in ({}, {"decisions": 1}), grew
        else:
            assert grew == {}, (reply.status, doc, grew)
        return
    if reply.status == 202:
        ids = doc["ids"] if "ids" in doc else [doc["id"]]
        assert all(isinstance(i, str) and len(i) == 32 for i in ids), doc
        if grew:  # else an Idempotency-Key replay: the first answer again
            assert grew.get("envelopes", 0) >= len(ids), grew
            assert set(grew) <= {
                "envelopes",
                "payloads",
                "inbox",
                "recipients",
                "idempotency",
                "decisions",
            }, grew
        owner = TOKEN if case["auth"] == "alice" else BOB_TOKEN
        for ident in ids:
            async with h.session.get(
                h.url + f"/v1/messages/{ident}",
                headers={"Authorization": f"Bearer {owner}"},
                timeout=TIMEOUT,
            ) as resp:
                assert resp.status == 200, ident
        return
    assert grew == {}, (case, grew)  # reads and acks add no rows


@pytest.mark.slow
async def test_fuzz_client_api(harness: Harness) -> None:
    h = harness
    bridge = Bridge(asyncio.get_running_loop())

    def case(c: dict[str, Any]) -> None:
        bridge(client_request(h, c))

    await asyncio.to_thread(run_given, case, client_case())
    await still_healthy(h)
    assert sum(v for k, v in CASES.items() if k.startswith("client:")) >= MAX_EXAMPLES // 2


# --- after the run ----------------------------------------------------------------------


async def still_healthy(h: Harness) -> None:
    """The node still serves both APIs, and what it stored is whole and strictly valid."""
    await h.still_serves()
    await h.submit(["bob@n.test"], "after the fuzz")
    async with h.session.get(h.url + "/readyz", timeout=TIMEOUT) as resp:
        assert resp.status == 200
    assert h.state.backpressure.in_progress == 0  # every write slot was given back
    store = h.state.store
    assert await sqlite_store(store).pragma("integrity_check") == "ok"
    rows = await sqlite_store(store).fetchall(
        "SELECT e.header, e.size, e.payload_sha, p.body FROM envelopes e"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha"
    )
    for header, size, sha, body in rows:
        try:
            decoded = decode_header(bytes(header))
        except MalformedError as e:  # pragma: no cover - the assertion reports it
            raise AssertionError(f"stored garbage: {e.detail}") from None
        assert decoded.size == size and len(bytes(body)) == size
        assert hashlib.sha256(bytes(body)).digest() == decoded.sha256 == bytes(sha)
    orphans = await sqlite_store(store).fetchone(
        "SELECT count(*) FROM inbox i LEFT JOIN envelopes e ON e.rid = i.rid WHERE e.rid IS NULL"
    )
    assert orphans is not None and orphans[0] == 0


async def test_odd_message_ids_get_a_json_400(harness: Harness) -> None:
    """Ids the fuzz found answered by aiohttp's plain-text 404 (the route did not match)."""
    h = harness
    for ident in ("{", "}", "\n", "\r\n", "/", "a/b", "%", " ", "...", "0" * 31 + "G"):
        path = "/v1/messages/" + urllib.parse.quote(ident, safe="")
        async with h.session.get(
            h.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
        ) as resp:
            assert (resp.status, resp.content_type) == (400, "application/json"), ident
            assert (await resp.json())["error"] == "bad_request"
