"""Client API (DESIGN §6): JSON over HTTP, one bearer token per mailbox.

Handlers are thin: authenticate, decode JSON, call `relay.node.submit` or a
storage read, encode the answer. They raise RelayError; the app's middleware
(relay.node.http) answers every refusal as `{"error", "detail"}`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from typing import Any

import orjson
from aiohttp import web

from relay.api import jsonbody, openapi
from relay.config.model import Config
from relay.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PolicyRefused,
    RelayError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from relay.logs import event
from relay.node import backpressure, erasure, submit
from relay.node.http import read_capped, refuse_declared
from relay.node.state import NodeState
from relay.node.submitgroup import Submission, SubmitGroups
from relay.protocol.envelope import stored_fields
from relay.protocol.sealing import body_of
from relay.storage.interface import WriteTx
from relay.storage.records import InboxPage

log = logging.getLogger("relay.api")

MAX_LIMIT = 1000
MAX_WAIT_S = 60
MAX_IDEMPOTENCY_KEY = 200
# Messages planned (and sealed) between pauses for other requests: planning a
# 1,000-message batch in one piece held the loop for 0.5-1 s.
PLAN_RUN = 32
# Submits waiting for the store writer, stored by one job (relay.node.submitgroup)
SUBMIT_GROUPS = web.AppKey("relay_submit_groups", SubmitGroups)
# 1,000 ids of 34 bytes each, with room for spaces: small enough to decode on the loop
ACK_BODY_BYTES = 64 * 1024


def authenticate(state: NodeState, request: web.Request) -> str:
    """The mailbox a bearer token belongs to, looked up by the token's SHA-256 digest."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <mailbox token>'")
    try:  # aiohttp hands over bytes that are not UTF-8 as lone surrogates
        raw = token.strip().encode()
    except UnicodeEncodeError:
        raise Unauthorized("the token is not UTF-8 text") from None
    digest = hashlib.sha256(raw).hexdigest()
    mailbox = _TOKENS.of(state.config).get(digest)
    if mailbox is None:
        raise Unauthorized("the token does not belong to any mailbox of this node")
    return mailbox


class _TokenIndex:
    """Mailboxes by token digest, built once per config (each reload brings a new one).

    One look-up per request instead of a comparison per mailbox. The key is
    the SHA-256 of the token, so the look-up's timing (hashing, then string
    equality on a digest the caller cannot steer byte by byte) tells nothing
    useful about a token: no further constant-time comparison is needed. A
    reloaded config gets a new index, so a token it dropped stops at once.
    """

    def __init__(self) -> None:
        self._config: Config | None = None
        self._index: dict[str, str] = {}  # token digest -> mailbox

    def of(self, config: Config) -> dict[str, str]:
        if config is not self._config:
            # the last mailbox with a digest wins, as the comparison loop had it
            self._index = {mb.token_sha256: mb.name for mb in config.mailboxes}
            self._config = config
        return self._index


_TOKENS = _TokenIndex()


def _too_large(length: int, limit: int) -> TooLarge:
    return TooLarge(f"request body over {limit} bytes")


async def read_json(request: web.Request, limit: int) -> Any:
    """The request body as JSON; TooLarge over `limit` bytes, MalformedError if not JSON."""
    return jsonbody.parse_json(await read_body(request, limit))


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body; TooLarge over `limit` bytes, BadRequest if the client went away."""
    refuse_declared(request, limit, _too_large)
    try:
        raw = await read_capped(request.content, limit)
    except ConnectionResetError:  # aiohttp's "Connection lost": nobody is left to answer
        got = request.content.total_bytes
        raise BadRequest(f"the client went away before the end of the body ({got} bytes)") from None
    if raw is None:
        raise _too_large(request.content.total_bytes, limit)
    return raw


def _check_ready(state: NodeState) -> None:
    if state.stopping:
        raise Unavailable("the node is shutting down; retry on another attempt")


async def _earlier_answer(state: NodeState, mailbox: str, scoped: str) -> dict[str, Any] | None:
    """The stored answer of this same request, or None if its key is unused;
    Conflict if the key part of `scoped` was used for another request."""
    earlier = await state.store.idempotent_answer(mailbox, scoped)
    if earlier is None and await state.store.key_used(mailbox, scoped.partition("\n")[0]):
        # the same request, sent concurrently, may have committed between the two reads
        earlier = await state.store.idempotent_answer(mailbox, scoped)
        if earlier is None:
            raise Conflict("this Idempotency-Key was already used for a different request")
    return earlier


async def _submit(request: web.Request, batch: bool) -> web.Response:
    state = request.app[NodeState.KEY]
    mailbox = ""
    to: list[str] = []
    try:
        _check_ready(state)
        mailbox = authenticate(state, request)
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 0 < len(idem) <= MAX_IDEMPOTENCY_KEY:
            raise BadRequest(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
        await backpressure.admit_submit(state, mailbox, request)  # 503 busy before the body is read
        raw = await read_body(request, state.config.limits.client_body_bytes)
        # a large body is decoded in another process; a hostile one never comes back
        scoped, parsed = await state.decoders.check_submit(f"mailbox {mailbox}", raw, batch, idem)
        if scoped is not None:  # a retry gets the first answer, for the same request only
            earlier = await _earlier_answer(state, mailbox, scoped)
            if earlier is not None:
                return web.json_response(earlier, status=202, dumps=_dumps)
        state.limits.client(mailbox, len(parsed))  # 429: a batch counts its messages
        for p in parsed:
            to.extend(p["to"])
        planned: list[submit.PlannedMessage] = []
        for i, p in enumerate(parsed):
            planned.append(submit.plan(state, mailbox, p, i if batch else None))
            if i % PLAN_RUN == PLAN_RUN - 1:  # a large batch does not hold the loop in one piece
                await asyncio.sleep(0)
        ids = [pm.msg_id.hex() for pm in planned]
        answer: dict[str, Any] = {"ids": ids} if batch else {"id": ids[0]}

        sub = Submission(mailbox, scoped, answer, planned)
        result = await request.app[SUBMIT_GROUPS].write(state, sub)
    except PolicyRefused as e:
        event(log, "submit_refused", logging.WARNING, mailbox=mailbox, rule=e.rule, detail=e.detail)
        await submit.record_refusal(state, mailbox, e, to)
        state.metrics.submit_refusal(e.code, e.rule)
        raise
    except RelayError as e:
        event(log, "submit_refused", logging.INFO, mailbox=mailbox, code=e.code, detail=e.detail)
        state.metrics.submit_refusal(e.code)
        raise
    finally:
        backpressure.release(state, request)
    return web.json_response(result, status=202, dumps=_dumps)


async def post_message(request: web.Request) -> web.Response:
    return await _submit(request, batch=False)


async def post_batch(request: web.Request) -> web.Response:
    return await _submit(request, batch=True)


def _msg_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BadRequest(f"{text!r} is not a message id (32 lowercase hex digits)") from None
    if len(raw) != 16 or text != raw.hex():
        raise BadRequest(f"{text!r} is not a message id (32 lowercase hex digits)")
    return raw


async def get_message(request: web.Request) -> web.Response:
    state = request.app[NodeState.KEY]
    mailbox = authenticate(state, request)
    state.limits.client(mailbox)
    ident = _msg_id(request.match_info["id"])
    rows = await state.store.recipient_statuses(ident, mailbox)
    if not rows:
        raise NotFound(f"no message {ident.hex()} sent by {mailbox}")
    doc: dict[str, Any] = {
        "id": ident.hex(),
        "recipients": {
            r.address: {"status": r.status, "reason": r.reason, "at": r.at} for r in rows
        },
    }
    if erased := await erasure.erasure_status(state, mailbox, ident):
        doc["erasure"] = erased
    return web.json_response(doc)


async def delete_message(request: web.Request) -> web.Response:
    state = request.app[NodeState.KEY]
    _check_ready(state)
    mailbox = authenticate(state, request)
    state.limits.client(mailbox)
    ident = _msg_id(request.match_info["id"])
    result = await erasure.erase_for_mailbox(state, mailbox, ident)
    return web.json_response(result.to_json())


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}")
    return value


async def fetch_inbox(
    state: NodeState, mailbox: str, after: int, limit: int
) -> tuple[list[dict[str, Any]], InboxPage]:
    """The oldest unacked messages of `mailbox` past `after`, as `GET /v1/inbox` shows them.

    At most `limit` of them, and no more payload bytes than `[limits] inbox_page_bytes`
    (but always the first).
    """
    page = await state.store.inbox_page(mailbox, after, limit, state.config.limits.inbox_page_bytes)
    return [inbox_item(r.header, r.payload, r.erased) for r in page.items], page


def _dumps(doc: Any) -> str:
    """JSON for inbox pages and submit answers: orjson encodes an inbox item in ~0.3 µs,
    json in 11-13; a submit's `{"id"}` in ~1 µs with the response, json in ~3."""
    return orjson.dumps(doc).decode()


def inbox_item(
    header_bytes: bytes, body: bytes | None, erased: int | None = None
) -> dict[str, Any]:
    """One message as `GET /v1/inbox` (and a webhook) shows it; an erased one as its
    tombstone: `event` "message.erased" and when, no body (docs/erasure.md)."""
    h = stored_fields(header_bytes)  # checked on arrival, before it was stored
    payload = bytes(body) if body is not None else b""
    if "seal" in h:  # stored opened, as salt || body (relay.protocol.sealing)
        payload = body_of(payload)
    ctype: str = h["ctype"]
    item: dict[str, Any] = {
        "id": h["id"].hex(),
        "from": h["from"],
        "to": h["to"],
        "origin": h["origin"],
        "created": h["created"],
        "ctype": ctype,
        "residency": h["residency"],
    }
    if erased is not None:
        item["event"] = "message.erased"
        item["erased"] = erased
        return item
    item["body_b64"] = base64.b64encode(payload).decode()
    if ctype.startswith("text/"):
        # binary under a text type: body_b64 alone carries it
        with contextlib.suppress(UnicodeDecodeError):
            item["text"] = payload.decode("utf-8")
    return item


async def get_inbox(request: web.Request) -> web.Response:
    state = request.app[NodeState.KEY]
    mailbox = authenticate(state, request)
    state.limits.client(mailbox)
    wait = _int_param(request, "wait", 0, 0, MAX_WAIT_S)
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        ev = state.inbox_event(mailbox)
        messages, page = await fetch_inbox(state, mailbox, after, limit)
        remaining = deadline - asyncio.get_running_loop().time()
        if messages or remaining <= 0 or state.stopping:
            break
        # when the long-poll runs out, answer what there is (nothing)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout=remaining)
    cursor = page.items[-1].seq if page.items else after
    doc = {"messages": messages, "more": page.more, "next": cursor}
    # orjson's bytes as the body: a page of 1,000 is ~2.5 MB, not decoded to str and
    # encoded back (json_response's text) for the same header, ~0.5 µs per message
    body = orjson.dumps(doc)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def post_ack(request: web.Request) -> web.Response:
    state = request.app[NodeState.KEY]
    _check_ready(state)
    mailbox = authenticate(state, request)
    state.limits.client(mailbox)
    doc = await read_json(request, ACK_BODY_BYTES)
    if not isinstance(doc, dict) or set(doc) != {"ids"} or not isinstance(doc["ids"], list):
        raise BadRequest('the body is {"ids": [message id, ...]}')
    if len(doc["ids"]) > MAX_LIMIT:
        raise BadRequest(f"at most {MAX_LIMIT} ids per ack")
    idents = [_msg_id(i) if isinstance(i, str) else _msg_id(repr(i)) for i in doc["ids"]]
    now = state.now_ms()

    async def job(tx: WriteTx) -> int:
        return await tx.ack_inbox(mailbox, idents, now)

    acked = await state.store.write(job, admit=True)
    return web.json_response({"acked": acked})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[NodeState.KEY]
    if state.stopping:
        return web.json_response({"status": "shutting down"}, status=503)
    try:
        await state.store.ping()
    except RelayError as e:
        return web.json_response({"status": f"store: {e.detail}"}, status=503)
    if state.store.trouble is not None:  # the last transaction failed: disk full, read-only
        return web.json_response({"status": f"store: {state.store.trouble}"}, status=503)
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app[SUBMIT_GROUPS] = SubmitGroups()
    app.router.add_post("/v1/messages", post_message)
    app.router.add_post("/v1/messages/batch", post_batch)
    # any id, even one with "{" or "/", reaches the handler and its JSON 400
    app.router.add_get(r"/v1/messages/{id:[\s\S]+}", get_message)
    app.router.add_delete(r"/v1/messages/{id:[\s\S]+}", delete_message)
    app.router.add_get("/v1/inbox", get_inbox)
    app.router.add_post("/v1/inbox/ack", post_ack)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(openapi.PATH, openapi.serve)
