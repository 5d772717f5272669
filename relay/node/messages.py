"""A client's message object checked field by field (DESIGN §6), before anything is planned.

Pure: no node state, so it runs wherever a client body is decoded
(relay.api.jsonbody, in a decoder process for large bodies).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from relay.errors import BadRequest
from relay.protocol.envelope import MAX_LIFETIME_MS, MAX_RECIPIENTS

TEXT_CTYPE = "text/plain; charset=utf-8"
BINARY_CTYPE = "application/octet-stream"
MESSAGE_KEYS = frozenset({"to", "text", "body_b64", "ctype", "residency", "ttl"})


def field_error(index: int | None, detail: str) -> BadRequest:
    where = "" if index is None else f"messages[{index}]: "
    return BadRequest(where + detail)


def parse_message(doc: Any, index: int | None = None) -> dict[str, Any]:
    """Check one message object's shape; BadRequest naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise field_error(index, "a message is a JSON object")
    unknown = set(doc) - MESSAGE_KEYS
    if unknown:
        raise field_error(index, f"unknown field(s): {', '.join(sorted(unknown))}")
    to = doc.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) for a in to):
        raise field_error(index, "'to' must be a non-empty list of addresses")
    if len(to) > MAX_RECIPIENTS:
        raise field_error(index, f"'to' has {len(to)} addresses, at most {MAX_RECIPIENTS}")
    has_text, has_body = "text" in doc, "body_b64" in doc
    if has_text == has_body:
        raise field_error(index, "give exactly one of 'text' or 'body_b64'")
    if has_text:
        if not isinstance(doc["text"], str):
            raise field_error(index, "'text' must be a string")
        body = doc["text"].encode("utf-8")
        ctype = TEXT_CTYPE
    else:
        if not isinstance(doc["body_b64"], str):
            raise field_error(index, "'body_b64' must be a base64 string")
        try:
            body = base64.b64decode(doc["body_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise field_error(index, "'body_b64' is not valid base64") from None
        ctype = BINARY_CTYPE
    if "ctype" in doc:
        if not isinstance(doc["ctype"], str) or not doc["ctype"] or not doc["ctype"].isascii():
            raise field_error(index, "'ctype' must be a non-empty ASCII string")
        ctype = doc["ctype"]
    residency = doc.get("residency")
    if isinstance(residency, str):
        residency = [r.strip() for r in residency.split(",") if r.strip()]
    if residency is not None and (
        not isinstance(residency, list) or not all(isinstance(r, str) for r in residency)
    ):
        raise field_error(index, "'residency' must be a list of country codes or group names")
    ttl = doc.get("ttl")
    if ttl is not None and (
        not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_LIFETIME_MS // 1000
    ):
        raise field_error(index, f"'ttl' must be seconds from 1 to {MAX_LIFETIME_MS // 1000}")
    return {"to": to, "body": body, "ctype": ctype, "residency": residency, "ttl": ttl}
