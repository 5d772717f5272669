"""relay.node.decoders: large client bodies are decoded in a child process, one per principal."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest

from relay import logs
from relay.api import jsonbody
from relay.errors import BadRequest, MalformedError, Unavailable
from relay.node import decoders
from relay.node.decoders import Decoders


@pytest.fixture
async def pool() -> AsyncIterator[Decoders]:
    d = Decoders(processes=1)
    yield d
    await d.close()


def _die(raw: bytes, batch: bool, idem: str | None) -> tuple[str | None, list[bytes]]:
    """Stands in for the child's work (imported by name in the child): the child dies."""
    os._exit(3)


async def test_a_small_body_is_decoded_on_the_loop(pool: Decoders) -> None:
    raw = b'{"to": ["a@n.test"], "text": "hi"}'
    assert await pool.check_submit("mailbox a", raw, False, "k") == jsonbody.check_submit(
        raw, False, "k"
    )
    assert pool.decoded == 0


async def test_a_large_body_comes_back_from_a_child_as_decoded_here(pool: Decoders) -> None:
    msgs = [{"to": [f"r{j}@n.test" for j in range(100)], "text": f"m{i}"} for i in range(40)]
    raw = json.dumps({"messages": msgs}).encode()
    assert not jsonbody.loop_sized(raw)
    got = await pool.check_submit("mailbox a", raw, True, "k")
    assert got == jsonbody.check_submit(raw, True, "k")
    assert len(got[1]) == 40 and got[1][39]["body"] == b"m39"
    assert pool.decoded == 1


@pytest.mark.parametrize(
    ("raw", "error", "detail"),
    [
        (b'{"to": ["a@n.test"], "text": [' + b"0," * 300_000 + b"0]}", MalformedError,
         "over 250000 JSON values"),
        (b'{"to": ["a@n.test"], "text": [' + b"0," * 5000 + b"0]}", BadRequest,
         "'text' must be a string"),
        (b'{"to": [' + b'"a@n.test",' * 5000, MalformedError, "not JSON"),
    ],
    ids=["too-many-values", "bad-message", "cut"],
)  # fmt: skip
async def test_a_body_refused_in_the_child_is_refused_the_same(
    pool: Decoders, raw: bytes, error: type[Exception], detail: str
) -> None:
    with pytest.raises(error, match=detail):
        await pool.check_submit("mailbox a", raw, False, None)
    assert pool.decoded == 1


async def test_a_dead_child_is_a_503_and_the_next_body_gets_a_new_one(
    pool: Decoders, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    raw = b"[" + b"0," * 5000 + b"0]"
    monkeypatch.setattr(decoders, "_check_submit_pieces", _die)
    with pytest.raises(Unavailable, match="ended before it answered"):
        await pool.check_submit("mailbox a", raw, False, None)
    (record,) = [r for r in caplog.records if r.getMessage() == "decoder_died"]
    assert vars(record)[logs._FIELDS] == {"principal": "mailbox a", "bytes": len(raw)}
    monkeypatch.undo()
    honest = json.dumps({"to": ["a@n.test"], "text": "," * 5000}).encode()
    assert (await pool.check_submit("mailbox a", honest, False, None))[1][0]["body"] == b"," * 5000


async def test_a_principal_waits_for_its_own_turn_not_for_others() -> None:
    pool = Decoders(processes=2)  # no child is started: only the turns are used
    order: list[str] = []
    a_holds = asyncio.Event()
    release = asyncio.Event()

    async def hold(principal: str, name: str, until: asyncio.Event | None) -> None:
        async with pool._turn(principal):
            order.append(name)
            if until is not None:
                a_holds.set()
                await until.wait()

    first = asyncio.create_task(hold("mailbox a", "a1", release))
    await a_holds.wait()
    second = asyncio.create_task(hold("mailbox a", "a2", None))
    other = asyncio.create_task(hold("mailbox b", "b1", None))
    await other
    assert order == ["a1", "b1"]  # b did not wait for a's body; a's second did
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a1", "b1", "a2"]
    assert pool._turns == {} and not pool._waiting
