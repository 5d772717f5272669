"""The client API against its OpenAPI document, fuzzed by schemathesis.

A live in-process node serves `GET /v1/openapi.json`; schemathesis reads that
document and, for every operation, sends a bounded number of generated
requests with a valid mailbox token: schema-valid ones (answers must be
documented, well-typed, never 5xx) and schema-invalid ones (which must be
refused with a 4xx). The fuzzing runs in a worker thread while the node
serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from relay.api.openapi import document
from relay.node.app import Node
from tests.inprocess import TIMEOUT, send, start_node, token, url_of, write_node

MAX_EXAMPLES = 30  # per operation and generation mode
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
NO_INPUT = frozenset({"/healthz", "/readyz", "/v1/openapi.json"})


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    write_node(tmp_path / "n", "n.test", federation={"receipt_window": "1h"})
    node = await start_node(tmp_path / "n")
    try:
        yield node
    finally:
        await node.stop()


def run_operation(
    op: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    base_url: str,
    http: requests.Session,
    auth: dict[str, str],
) -> int:
    """Send up to MAX_EXAMPLES generated requests for `op`; return how many were sent."""
    checks = NEGATIVE_CHECKS if mode == GenerationMode.NEGATIVE else POSITIVE_CHECKS
    sent = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
        nonlocal sent
        if case.query and "wait" in case.query:
            case.query["wait"] = 0  # a long-poll would only slow the run down
        response = case.call(base_url=base_url, session=http, headers=auth, timeout=10)
        sent += 1
        case.validate_response(response, checks=checks, headers=auth)

    one()
    return sent


def to_local_mailboxes(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with `to` narrowed to this node's mailboxes.

    Random addresses name no node this node trusts, so every generated
    message would be refused; narrowed, valid messages reach the store and
    their 202 answers are checked too.
    """
    doc = copy.deepcopy(doc)
    local = {"type": "string", "enum": ["alice@n.test", "bob@n.test"]}
    to = doc["components"]["schemas"]["Message"]["properties"]["to"]
    to["oneOf"] = [{"type": "array", "minItems": 1, "maxItems": 100, "items": local}, local]
    return doc


def fuzz(base_url: str, doc: dict[str, Any]) -> dict[str, int]:
    """Run every operation through schemathesis; return the requests sent per operation."""
    schema = schemathesis.openapi.from_dict(to_local_mailboxes(doc))
    # The token is ours to add, not schemathesis's to generate or mutate; and
    # like most HTTP APIs, relay ignores query parameters it does not know.
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    auth = {"Authorization": f"Bearer {token('alice')}"}
    sent: dict[str, int] = {}
    with requests.Session() as http:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            op = result.ok()
            modes = [GenerationMode.POSITIVE]
            if op.path not in NO_INPUT:  # nothing there to make invalid
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                sent[f"{op.label} {mode.value}"] = run_operation(op, mode, base_url, http, auth)
    return sent


@pytest.mark.slow
async def test_client_api_conforms_to_its_openapi_document(node: Node) -> None:
    base = url_of(node)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/openapi.json", timeout=TIMEOUT) as resp:
            assert resp.status == 200
            served: dict[str, Any] = await resp.json()
        # a message in alice's inbox, so that /v1/inbox answers at once
        code, doc = await send(session, node, ["alice@n.test"], "seed")
        assert code == 202, doc
    assert served == document()
    sent = await asyncio.to_thread(fuzz, base, served)
    print("schemathesis requests per operation:", json.dumps(sent, sort_keys=True))
    operations = {label.rsplit(" ", 1)[0] for label in sent}
    assert operations == {
        "POST /v1/messages",
        "POST /v1/messages/batch",
        "GET /v1/messages/{id}",
        "DELETE /v1/messages/{id}",
        "GET /v1/inbox",
        "POST /v1/inbox/ack",
        "GET /healthz",
        "GET /readyz",
        "GET /v1/openapi.json",
    }
    assert all(n > 0 for n in sent.values()), sent


def test_document_describes_every_client_route_and_error() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in (
        ("/v1/messages", "post"),
        ("/v1/messages/batch", "post"),
        ("/v1/messages/{id}", "get"),
        ("/v1/messages/{id}", "delete"),
        ("/v1/inbox", "get"),
        ("/v1/inbox/ack", "post"),
    ):
        responses = paths[path][method]["responses"]
        for status in ("400", "401", "429", "503"):
            assert status in responses, (path, status)
    for path in ("/v1/messages", "/v1/messages/batch"):
        responses = paths[path]["post"]["responses"]
        assert {"413", "422"} <= set(responses)
        schema = responses["422"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/PolicyError"}
    assert "404" in paths["/v1/messages/{id}"]["get"]["responses"]
    assert {"403", "404"} <= set(paths["/v1/messages/{id}"]["delete"]["responses"])
    assert doc["components"]["schemas"]["PolicyError"]["required"] == ["error", "detail", "rule"]
    assert paths["/healthz"]["get"]["security"] == []
    assert doc["security"] == [{"mailboxToken": []}]


async def test_bugs_the_fuzzing_found_stay_fixed(node: Node) -> None:
    """Regressions: each answer is checked against the document as well."""
    base = url_of(node)
    auth = {"Authorization": f"Bearer {token('alice')}", "Content-Type": "application/json"}
    message = b'{"to": "bob@n.test", "text": "hi"}'
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: bytes, key: str | None = None) -> tuple[int, Any]:
            headers = {**auth, **({"Idempotency-Key": key} if key else {})}
            async with session.post(base + path, data=body, headers=headers) as resp:
                return resp.status, await resp.json()

        # a lone surrogate is valid JSON syntax but no text: 400, not a 500
        status, doc = await post("/v1/messages", b'{"to": "bob@n.test", "text": "\\ud800"}')
        assert (status, doc["error"]) == (400, "malformed"), doc
        # an idempotent retry is answered only for the same, well-formed request
        first = await post("/v1/messages", message, "k1")
        assert first[0] == 202
        assert await post("/v1/messages", b'{"to": "bob@n.test",  "text":"hi"}', "k1") == first
        status, doc = await post("/v1/messages", b"\x00", "k1")
        assert (status, doc["error"]) == (400, "malformed"), doc
        status, doc = await post("/v1/messages", b'{"to": "bob@n.test", "text": "other"}', "k1")
        assert (status, doc["error"]) == (409, "conflict"), doc
        status, doc = await post("/v1/messages/batch", b'{"messages": [' + message + b"]}", "k1")
        assert (status, doc["error"]) == (409, "conflict"), doc
        status, doc = await post("/v1/messages/batch", b'{"messages": [' + message + b"]}", "k2")
        assert status == 202 and set(doc) == {"ids"}, doc
