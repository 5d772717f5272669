"""Client API bodies as JSON documents: decoded with bounds, and a submit's messages checked.

Pure: no node state and no I/O, so a large body can be decoded in another
process (relay.node.decoders) as well as on the event loop. `loop_sized`
says which: Python's JSON decoder holds the interpreter lock for a whole
document, so decoding in a thread would stop the event loop all the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from relay.errors import BadRequest, MalformedError
from relay.node.messages import parse_message

MAX_BATCH = 1000
MAX_JSON_DEPTH = 32  # a client document nests 4 deep; deep nesting only exhausts the stack
TOO_DEEP = f"request body nests arrays and objects over {MAX_JSON_DEPTH} deep"
# A batch of 1,000 messages to 100 recipients each holds about 115,000 values.
MAX_JSON_VALUES = 250_000
# Decoded on the event loop only if this small: JSON's decoder takes about 0.1 µs
# per byte of a string and 0.1-0.2 µs per value, and holds the interpreter lock.
LOOP_BYTES = 256 * 1024
LOOP_TOKENS = 4096


def _check_shape(doc: dict[str, Any] | list[Any]) -> None:
    """MalformedError if `doc` nests over MAX_JSON_DEPTH or holds over MAX_JSON_VALUES
    values (no recursion; the walk stops as soon as either is passed)."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(doc, 1)]
    values = 0
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise MalformedError(TOO_DEEP)
        children = value.values() if isinstance(value, dict) else value
        values += len(children)
        if values > MAX_JSON_VALUES:
            raise MalformedError(f"request body holds over {MAX_JSON_VALUES} JSON values")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def parse_json(raw: bytes) -> Any:
    """`raw` as a client JSON document; MalformedError if it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedError(f"request body is not JSON: {e}") from None
    except RecursionError:  # json.loads recurses per level: far too deep
        raise MalformedError(TOO_DEEP) from None
    if isinstance(doc, dict | list):
        _check_shape(doc)
    _refuse_surrogates(doc)
    return doc


def _refuse_surrogates(doc: Any) -> None:
    """MalformedError if a string of `doc` holds a lone surrogate: "\ud800" is valid JSON
    syntax but no Unicode text (RFC 7493 I-JSON refuses it).

    orjson refuses such a string in ~0.2 µs for a 1 KiB message; json takes ~4.
    orjson also refuses what json encodes (integers past 64 bits): those documents
    are asked again of json, which fails on surrogates only.
    """
    try:
        orjson.dumps(doc)
        return
    except orjson.JSONEncodeError:
        pass
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError("request body holds a lone UTF-16 surrogate") from None


def parse_submit(raw: bytes, batch: bool) -> tuple[Any, list[dict[str, Any]]]:
    """A submit's JSON document and its messages, parsed (touches no node state)."""
    doc = parse_json(raw)
    if not batch:
        return doc, [parse_message(doc)]
    if not isinstance(doc, dict) or set(doc) != {"messages"}:
        raise BadRequest('the body is {"messages": [message, ...]}')
    msgs = doc["messages"]
    if not isinstance(msgs, list) or not 1 <= len(msgs) <= MAX_BATCH:
        raise BadRequest(f"'messages' must hold 1..{MAX_BATCH} messages")
    return doc, [parse_message(m, i) for i, m in enumerate(msgs)]


def check_submit(
    raw: bytes, batch: bool, idem: str | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """A submit body's stored Idempotency-Key (None without `idem`) and its messages.

    What a submit needs of its body, and nothing more: in a decoder process
    (relay.node.decoders) only this comes back, never the document itself.
    """
    doc, parsed = parse_submit(raw, batch)
    return (None if idem is None else idempotency_key(idem, batch, doc)), parsed


def loop_sized(raw: bytes) -> bool:
    """Whether `raw` decodes in about a millisecond: at most LOOP_BYTES bytes, and at
    most LOOP_TOKENS of `,`, `[` and `{`, which bound the values it can hold.

    Counting those bytes is far cheaper than decoding; commas inside strings
    count too, so the bound errs toward deciding a body is not small.
    """
    if len(raw) > LOOP_BYTES:
        return False
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") <= LOOP_TOKENS


def idempotency_key(idem: str, batch: bool, doc: Any) -> str:
    """The stored form of an Idempotency-Key: the key, then the route and request digest.

    A retry must be the same request (same route, same JSON up to key order
    and spacing) to get the first answer back.
    """
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    route = "batch" if batch else "message"
    return f"{idem}\n{route}:{hashlib.sha256(canonical).hexdigest()}"
