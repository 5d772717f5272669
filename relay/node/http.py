"""What every HTTP shell of a node shares: reading a capped body, answering errors.

Invariants:
- A body is read in chunks and given up as soon as it passes its cap, so a
  hostile sender costs at most the cap in memory, whatever it declared.
- Each aiohttp app has one error middleware (`answer_errors`, or a guard that
  calls `answering`): handlers raise, it answers. A RelayError becomes its
  status and `{"error", "detail"}` body; any other exception becomes a 500 of
  the same shape and one `internal_error` log line (the traceback only when
  the logger is at DEBUG). aiohttp's own HTTP exceptions pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web

from relay.errors import RelayError, TooLarge
from relay.logs import event
from relay.policy.ratelimit import retry_headers

log = logging.getLogger("relay.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set by a handler that refuses a request before reading its body: the answer
# then closes the connection instead of keeping it for the rest of the body.
UNREAD_BODY = web.RequestKey("relay_unread_body", bool)


def refuse_declared(
    request: web.Request, limit: int, too_large: Callable[[int, int], TooLarge]
) -> None:
    """Raise `too_large(length, limit)` if the request declares a body over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes | None:
    """The whole body of a request or response, however segmented; None once it passes `cap`."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in content.iter_chunked(65536):
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(e: RelayError, headers: Mapping[str, str] | None = None) -> web.Response:
    """The answer to a refusal: its status and `{"error", "detail"}` as JSON."""
    return web.json_response(e.to_json(), status=e.status, headers=headers)


async def answering(
    request: web.Request,
    handler: Handler,
    headers: Callable[[RelayError], dict[str, str]] = retry_headers,
) -> web.StreamResponse:
    """`handler`'s answer, or the answer to what it raised (see the module invariants)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:
        if request.writer.output_size > 0:  # a streamed answer has begun: leave it to aiohttp
            raise
        return _answer(request, e, headers)


def _answer(
    request: web.Request, e: Exception, headers: Callable[[RelayError], dict[str, str]]
) -> web.Response:
    if isinstance(e, RelayError):
        extra = headers(e)
        if request.get(UNREAD_BODY, False):
            extra["Connection"] = "close"
        return error_response(e, extra)
    event(
        log,
        "internal_error",
        logging.ERROR,
        method=request.method,
        path=request.path,
        error=f"{type(e).__name__}: {e}",
    )
    log.debug("internal_error traceback", exc_info=e)
    return error_response(RelayError("the node failed to answer; see its log"))


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The error middleware of a node's HTTP apps (Retry-After on 429 and 503)."""
    return await answering(request, handler)
