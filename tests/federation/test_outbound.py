"""The sending side (DESIGN §5 "Sending", "Retries"), against a fake peer.

The fake peer "b.test" is a small aiohttp server on 127.0.0.1 port 0, pinned
in the node's config with its url. It checks every request the way a real
receiver would (signature by the node's key, Content-Digest, strict body) and
answers what the test tells it to. The node runs on the wall clock with short
backoff bounds so retries come quickly; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import RelayError
from relay.federation.inbound import BATCH_PATH
from relay.node.state import wall_clock_ms
from relay.protocol import httpsig
from relay.protocol.audit import RECEIPT, RESULT, decode_entry
from relay.protocol.batch import (
    DELIVERY_HEADER,
    DELIVERY_V1,
    BatchResult,
    Delivered,
    decode_batch,
    sign_result,
)
from relay.protocol.envelope import peek_id
from relay.storage.records import PeerState
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import NODE, Harness, Identity, Pinned, start_node, wait_until
from tests.federation.conftest import write_node_toml as write_toml

PEER = "b.test"
FAST_RETRY = {"retry_min": "10ms", "retry_max": "100ms", "request_timeout": "10s"}


@dataclass(frozen=True)
class Seen:
    """One request as the fake peer received and checked it."""

    batch_id: bytes
    nonce: str
    ids: tuple[bytes, ...]
    traces: tuple[tuple[str, ...], ...]
    payloads: tuple[bytes, ...]


Answer = Callable[["FakePeer", Seen, web.Request], Awaitable[web.StreamResponse]]


class FakePeer:
    """A receiver that checks requests strictly and answers as told."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.node_public: Ed25519PublicKey | None = None
        self.seen: list[Seen] = []
        self.problems: list[str] = []
        self.answers: list[Answer] = []  # one per request, then `default`
        self.default: Answer = accept
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(BATCH_PATH, self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            assert self.node_public is not None
            sreq = httpsig.parse_request(
                method=request.method, path=request.raw_path, headers=request.headers
            )
            httpsig.verify_request(sreq, self.node_public)
            httpsig.check_content_digest(request.headers.get("Content-Digest"), body)
            if (sreq.origin, sreq.destination) != (NODE, PEER):
                raise RelayError(f"request from {sreq.origin} to {sreq.destination}")
            if request.content_type != "application/msgpack":
                raise RelayError(f"content type {request.content_type}")
            batch = decode_batch(body)
            seen = Seen(
                batch.batch_id,
                sreq.nonce,
                tuple(peek_id(it.header_bytes) for it in batch.items),
                tuple(it.trace for it in batch.items),
                tuple(it.payload for it in batch.items),
            )
        except RelayError as e:
            self.problems.append(f"{type(e).__name__}: {e.detail}")
            return web.json_response(e.to_json(), status=e.status)
        self.seen.append(seen)
        answer = self.answers.pop(0) if self.answers else self.default
        return await answer(self, seen, request)

    def result(
        self, seen: Seen, results: dict[bytes, str], *, key: Ed25519PrivateKey | None = None
    ) -> web.Response:
        body = sign_result(
            BatchResult(seen.batch_id, seen.nonce, results), key or self.identity.key
        )
        return web.Response(body=body, content_type="application/msgpack")


async def accept(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
    return peer.result(seen, dict.fromkeys(seen.ids, "accepted"))


async def wrong_key(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
    return peer.result(seen, dict.fromkeys(seen.ids, "accepted"), key=Ed25519PrivateKey.generate())


async def server_error(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "internal", "detail": "boom"}, status=500)


async def hang_up(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
    """The request arrived, but its answer is lost."""
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=200)


async def stale_nonce(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
    """A correctly signed result of this batch, but for an earlier attempt's nonce."""
    earlier = next(s for s in peer.seen if s.nonce != seen.nonce)
    return peer.result(earlier, dict.fromkeys(seen.ids, "accepted"))


@dataclass
class Outbound:
    h: Harness
    peer: FakePeer
    node_dir: Path

    async def peer_state(self) -> PeerState:
        return await self.h.state.store.peer_state(PEER)

    async def queue_rows(self) -> list[tuple[bytes, int, str]]:
        rows = await sqlite_store(self.h.state.store).fetchall(
            "SELECT e.id, q.attempts, q.last_error FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " WHERE q.hop = ? ORDER BY q.rid",
            (PEER,),
        )
        return [(bytes(r[0]), int(r[1]), str(r[2])) for r in rows]

    async def status_of(self, msg_id: str) -> tuple[str, str]:
        doc = (await self.h.status(msg_id))["bob@b.test"]
        return str(doc["status"]), str(doc["reason"])

    async def wait_status(self, msg_id: str, status: str) -> tuple[str, str]:
        async def probe() -> tuple[str, str] | None:
            got = await self.status_of(msg_id)
            return got if got[0] == status else None

        found: tuple[str, str] = await wait_until(probe, what=f"{msg_id} {status}")
        return found

    async def wait_failures(self, at_least: int) -> PeerState:
        async def probe() -> PeerState | None:
            ps = await self.peer_state()
            return ps if ps.failures >= at_least else None

        found: PeerState = await wait_until(probe, what=f"{at_least} failures")
        return found


async def _start(node_dir: Path) -> Harness:
    """Start the node in `node_dir` on the wall clock, with a client session to it."""
    node = await start_node(node_dir, wall_clock_ms)
    assert node.state is not None
    me = Identity(NODE, node.state.key)  # the harness's peer roles are unused here
    return Harness(node, wall_clock_ms, node.state.key, aiohttp.ClientSession(), me, me, me)


async def _outbound(tmp_path: Path, peer: FakePeer, federation: dict[str, str]) -> Outbound:
    """Start `peer` and a node in `tmp_path` that delivers to it (its url pinned)."""
    await peer.start()
    node_dir = tmp_path / "n"
    node_key = write_toml(
        node_dir,
        peers=[Pinned(PEER, (peer.identity.key_string,), url=peer.url)],
        federation=federation,
    )
    peer.node_public = node_key.public_key()
    return Outbound(await _start(node_dir), peer, node_dir)


@pytest.fixture
async def out(tmp_path: Path) -> AsyncIterator[Outbound]:
    peer = FakePeer(Identity(PEER))
    o = await _outbound(tmp_path, peer, FAST_RETRY)
    try:
        yield o
    finally:
        await o.h.node.stop()
        await o.h.session.close()
        await peer.stop()
    assert peer.problems == []  # every request the node sent was well formed and signed


# --- (b) a correct signed result ---------------------------------------------------------


async def test_correct_result_dequeues_and_marks_sent(out: Outbound) -> None:
    msg_id = await out.h.submit(["bob@b.test"])
    await out.wait_status(msg_id, "sent")
    assert await out.queue_rows() == []
    ps = await out.peer_state()
    assert (ps.failures, ps.next_try, ps.delivered) == (0, 0, 1)
    assert [(s.ids, s.traces) for s in out.peer.seen] == [((bytes.fromhex(msg_id),), ((NODE,),))]


async def test_a_stated_delivery_marks_only_what_it_states_delivered(out: Outbound) -> None:
    # delivery-v1 (protocol.md §22): the node asks for it on every batch, and a peer
    # that answers with `delivered` is taken at its signed word, id by id
    asked: list[str] = []

    async def states_one(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        asked.append(request.headers.get(DELIVERY_HEADER, ""))
        stated = tuple(i for i, p in zip(seen.ids, seen.payloads, strict=True) if p == b"stated")
        body = sign_result(
            BatchResult(
                seen.batch_id,
                seen.nonce,
                dict.fromkeys(seen.ids, "accepted"),
                Delivered(wall_clock_ms(), "FR", "enforce", stated),
            ),
            peer.identity.key,
        )
        return web.Response(body=body, content_type="application/msgpack")

    out.peer.default = states_one
    stated, plain = await out.h.submit_batch(
        [{"to": ["bob@b.test"], "text": "stated"}, {"to": ["bob@b.test"], "text": "plain"}]
    )
    assert await out.wait_status(stated, "delivered") == ("delivered", "")
    assert (await out.status_of(plain))[0] == "sent"  # its receipt is still to come
    assert asked == [DELIVERY_V1]
    assert await out.queue_rows() == []
    log = [decode_entry(r.entry) for r in await out.h.state.store.audit_entries(0, 10_000)]
    (receipt,) = [e for e in log if e.kind == RECEIPT]
    assert (receipt.blob("envelope"), receipt.text("jurisdiction")) == (bytes.fromhex(stated), "FR")
    assert [e.text("peer") for e in log if e.kind == RESULT] == [PEER]


async def test_a_hop_that_is_not_the_destination_cannot_state_delivery(tmp_path: Path) -> None:
    # this node's message to c.test goes via b.test; b.test's result states it
    # delivered, but only the destination's word counts (protocol.md §22)
    peer = FakePeer(Identity(PEER))
    await peer.start()
    node_dir = tmp_path / "n"
    node_key = write_toml(
        node_dir,
        peers=[
            Pinned(PEER, (peer.identity.key_string,), url=peer.url),
            Pinned("c.test", (Identity("c.test").key_string,)),
        ],
        federation=FAST_RETRY,
    )
    with (node_dir / "node.toml").open("a") as f:
        f.write('[[routes]]\nto = "c.test"\nvia = "b.test"\n')
    peer.node_public = node_key.public_key()

    async def states_all(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        body = sign_result(
            BatchResult(
                seen.batch_id,
                seen.nonce,
                dict.fromkeys(seen.ids, "accepted"),
                Delivered(wall_clock_ms(), "FR", "enforce", seen.ids),
            ),
            peer.identity.key,
        )
        return web.Response(body=body, content_type="application/msgpack")

    peer.default = states_all
    o = Outbound(await _start(node_dir), peer, node_dir)
    try:
        relayed, direct = await o.h.submit_batch(
            [{"to": ["carol@c.test"], "text": "via b"}, {"to": ["bob@b.test"], "text": "to b"}]
        )
        assert await o.wait_status(direct, "delivered") == ("delivered", "")
        assert await o.queue_rows() == []
        doc = (await o.h.status(relayed))["carol@c.test"]
        assert doc["status"] == "sent"  # handed on; its receipt is still to come
        log = [decode_entry(r.entry) for r in await o.h.state.store.audit_entries(0, 10_000)]
        assert [e.blob("envelope") for e in log if e.kind == RECEIPT] == [bytes.fromhex(direct)]
    finally:
        await o.h.node.stop()
        await o.h.session.close()
        await peer.stop()
    assert peer.problems == []


async def test_rejected_result_ends_that_envelope_only(out: Outbound) -> None:
    async def split_verdict(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        results = {
            i: "rejected:unknown_mailbox" if p == b"refused" else "accepted"
            for i, p in zip(seen.ids, seen.payloads, strict=True)
        }
        return peer.result(seen, results)

    out.peer.default = split_verdict
    good, bad = await out.h.submit_batch(
        [{"to": ["bob@b.test"], "text": "fine"}, {"to": ["bob@b.test"], "text": "refused"}]
    )
    assert await out.wait_status(bad, "rejected") == ("rejected", "unknown_mailbox")
    assert (await out.status_of(good))[0] == "sent"
    assert await out.queue_rows() == []
    assert len(out.peer.seen) == 1 and len(out.peer.seen[0].ids) == 2


async def test_envelope_missing_from_the_result_stays_queued(out: Outbound) -> None:
    """A signed result that leaves an envelope out is a failed attempt for it, with backoff."""

    async def forgetful(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        return peer.result(seen, {})

    out.peer.default = forgetful
    msg_id = await out.h.submit(["bob@b.test"])
    ps = await out.wait_failures(1)
    assert "missing" in ps.last_error and ps.next_try > 0
    rows = await out.queue_rows()
    assert rows[0][0] == bytes.fromhex(msg_id) and rows[0][1] >= 1 and "missing" in rows[0][2]
    assert await out.status_of(msg_id) == ("queued", "")
    out.peer.default = accept
    await out.wait_status(msg_id, "sent")


async def test_result_arriving_in_pieces_is_read_whole(out: Outbound) -> None:
    """The signed result may reach the sender in several TCP segments."""

    async def dribble(peer: FakePeer, seen: Seen, request: web.Request) -> web.StreamResponse:
        body = peer.result(seen, dict.fromkeys(seen.ids, "accepted")).body
        assert isinstance(body, bytes)
        resp = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:10])
        await asyncio.sleep(0.05)
        await resp.write(body[10:])
        await resp.write_eof()
        return resp

    out.peer.default = dribble
    msg_id = await out.h.submit(["bob@b.test"])
    await out.wait_status(msg_id, "sent")
    assert len(out.peer.seen) == 1


# --- (a) a result signed by the wrong key ---------------------------------------------------


async def test_result_signed_by_the_wrong_key_is_a_failed_attempt(out: Outbound) -> None:
    out.peer.default = wrong_key
    msg_id = await out.h.submit(["bob@b.test"])
    ps = await out.wait_failures(1)
    assert "signature" in ps.last_error
    assert ps.next_try > 0 and ps.delivered == 0
    rows = await out.queue_rows()
    assert [r[0] for r in rows] == [bytes.fromhex(msg_id)]
    assert rows[0][1] >= 1 and "signature" in rows[0][2]
    assert await out.status_of(msg_id) == ("queued", "")
    # the peer fixes its key: the same envelope goes through on a later attempt
    out.peer.default = accept
    await out.wait_status(msg_id, "sent")
    ps = await out.peer_state()
    assert (ps.failures, ps.delivered) == (0, 1)


# --- (c) fresh nonces, same batch id ---------------------------------------------------------


async def test_retries_reuse_the_batch_id_with_fresh_nonces(out: Outbound) -> None:
    out.peer.answers = [hang_up, server_error, stale_nonce, wrong_key]
    msg_id = await out.h.submit(["bob@b.test"])
    await out.wait_status(msg_id, "sent")
    seen = out.peer.seen
    assert len(seen) == 5
    assert len({s.batch_id for s in seen}) == 1  # a retry of an unanswered batch
    assert len({s.nonce for s in seen}) == 5  # every attempt a fresh nonce
    assert all(s.ids == (bytes.fromhex(msg_id),) for s in seen)
    # the next batch is a new one
    second = await out.h.submit(["bob@b.test"], "again")
    await out.wait_status(second, "sent")
    assert out.peer.seen[-1].batch_id != seen[0].batch_id


# --- (d) HTTP 500: backoff, persisted -------------------------------------------------------


async def test_server_error_backs_off_and_the_state_survives_a_restart(out: Outbound) -> None:
    out.peer.default = server_error
    msg_id = await out.h.submit(["bob@b.test"])
    ps = await out.wait_failures(2)
    assert "500" in ps.last_error and ps.next_try > 0
    rows = await out.queue_rows()
    assert len(rows) == 1 and rows[0][1] >= 2 and "500" in rows[0][2]
    assert await out.status_of(msg_id) == ("queued", "")

    await out.h.node.stop()
    db = sqlite3.connect(f"file:{out.node_dir / 'relay.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT failures, next_try, last_error FROM peer_state WHERE peer = ?", (PEER,)
        ).fetchone()
        queued = db.execute("SELECT count(*) FROM queue WHERE hop = ?", (PEER,)).fetchone()
    finally:
        db.close()
    assert row is not None and row[0] >= 2 and row[1] > 0 and "500" in row[2]
    assert queued == (1,)

    # a restarted node picks the queue up again; this time the peer answers
    out.peer.default = accept
    await out.h.session.close()
    out.h = await _start(out.node_dir)
    await out.wait_status(msg_id, "sent")
    ps = await out.peer_state()
    assert (ps.failures, ps.next_try, ps.delivered) == (0, 0, 1)


# --- (e) a whole-batch 400 is split to find the culprit ------------------------------------


async def test_malformed_batch_is_split_until_only_the_culprit_is_rejected(
    out: Outbound,
) -> None:
    async def refuse_culprit(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        if b"poison" in seen.payloads:
            detail = "batch body: items[1]: header: no 16-byte bin id"
            return web.json_response({"error": "malformed", "detail": detail}, status=400)
        return peer.result(seen, dict.fromkeys(seen.ids, "accepted"))

    out.peer.default = refuse_culprit
    good, bad = await out.h.submit_batch(  # one commit: both in the first batch
        [{"to": ["bob@b.test"], "text": "fine"}, {"to": ["bob@b.test"], "text": "poison"}]
    )
    assert await out.wait_status(bad, "rejected") == ("rejected", "malformed")
    assert (await out.status_of(good))[0] == "sent"
    assert await out.queue_rows() == []
    sizes = [len(s.ids) for s in out.peer.seen]
    assert sizes[0] == 2 and set(sizes[1:]) == {1}
    ps = await out.peer_state()
    assert ps.failures == 0  # a split is not a failure of the peer


# --- (f) a 429 or 503 with Retry-After ------------------------------------------------------


async def test_retry_after_is_waited_at_least(tmp_path: Path) -> None:
    """The peer asks for 2 s; the jitter alone (retry_min 10 ms) would wait at most 10 ms."""

    async def slow_down(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        body = {"error": "rate_limited", "detail": "slow down"}
        return web.json_response(body, status=429, headers={"Retry-After": "2"})

    peer = FakePeer(Identity(PEER))
    peer.default = slow_down
    o = await _outbound(tmp_path, peer, {**FAST_RETRY, "retry_max": "1m"})
    try:
        await o.h.submit(["bob@b.test"])
        ps = await o.wait_failures(1)
        assert "429 rate_limited" in ps.last_error
        assert ps.next_try - wall_clock_ms() > 1000
        assert len(peer.seen) == 1
    finally:
        await o.h.node.stop()
        await o.h.session.close()
        await peer.stop()
    assert peer.problems == []


async def test_a_peer_that_asked_for_time_is_not_retried_when_it_contacts_us(
    tmp_path: Path,
) -> None:
    """Its own requests to us do not cut short a wait it asked for with Retry-After."""

    async def slow_down(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        body = {"error": "busy", "detail": "slow down"}
        return web.json_response(body, status=503, headers={"Retry-After": "60"})

    peer = FakePeer(Identity(PEER))
    peer.default = slow_down
    o = await _outbound(tmp_path, peer, {**FAST_RETRY, "retry_max": "10m"})
    try:
        await o.h.submit(["bob@b.test"])
        await o.wait_failures(1)
        o.h.state.peer_contacted(PEER)
        await asyncio.sleep(0.5)  # long enough for a woken sender to try again
        assert len(peer.seen) == 1
    finally:
        await o.h.node.stop()
        await o.h.session.close()
        await peer.stop()
    assert peer.problems == []


# --- (g) a redirect is a failed attempt, never followed -------------------------------------


async def test_a_redirect_is_not_followed(out: Outbound) -> None:
    """Following a 307 would re-send the signed request, nonce and all, where the peer points."""

    async def redirect(peer: FakePeer, seen: Seen, request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": f"{peer.url}{BATCH_PATH}"})

    out.peer.answers = [redirect]
    msg_id = await out.h.submit(["bob@b.test"])
    await out.wait_status(msg_id, "sent")
    nonces = [s.nonce for s in out.peer.seen]
    assert len(nonces) == 2 and len(set(nonces)) == 2  # the retry, not the redirect
