"""`GET /v1/openapi.json`: the OpenAPI 3.0 description of the client API.

The document is hand-written in `openapi.json` beside this module (package
data) and served as is. It names no server: OpenAPI then takes the URL it
was fetched from, which stays right behind a reverse proxy. The test suite
runs schemathesis against a live node with it, so a route or error that
drifts from the document fails the tests.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web

PATH = "/v1/openapi.json"


@functools.cache
def _text() -> str:
    return resources.files("relay.api").joinpath("openapi.json").read_text(encoding="utf-8")


def document() -> dict[str, Any]:
    """The OpenAPI document, freshly parsed."""
    doc: dict[str, Any] = json.loads(_text())
    return doc


async def serve(request: web.Request) -> web.Response:
    return web.Response(text=_text(), content_type="application/json")
