"""relay.federation.witness: n.test keeps the tree heads a.test sends in its batches,
reports a forked or shrunk log, and ignores a head that does not check out without
refusing the batch (docs/protocol.md §19)."""

from __future__ import annotations

import os

import pytest

from relay.protocol.audit import (
    TREE_HEAD_HEADER,
    TreeHead,
    decode_signed_head,
    sign_head,
    tree_head_header,
)
from tests.federation.conftest import Harness, Identity


def head(who: Identity, size: int, root: bytes, at: int) -> str:
    return tree_head_header(sign_head(TreeHead(who.name, size, root, at, who.key_id), who.key))


async def post_with(h: Harness, value: str) -> None:
    env = h.envelope()
    body = h.body([h.item(env)])
    headers = h.sign(body)
    headers[TREE_HEAD_HEADER] = value
    reply = await h.post(body, headers)
    assert reply.status == 200, reply.body[:300]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The details of the `name` log events."""
    return [
        str(dict(getattr(r, "relay_fields", {})).get("detail", ""))
        for r in caplog.records
        if r.getMessage() == name
    ]


async def test_new_heads_are_kept_once_each(harness: Harness) -> None:
    h = harness
    first = head(h.a, 3, b"\x01" * 32, 1000)
    await post_with(h, first)
    await post_with(h, first)  # the same head again: nothing new to keep
    await post_with(h, head(h.a2, 5, b"\x02" * 32, 2000))  # a.test's other pinned key
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.at) for w in kept] == [(3, 1000), (5, 2000)]
    assert decode_signed_head(kept[1].wire).head.root == b"\x02" * 32


async def test_a_fork_and_a_shrink_are_reported(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    await post_with(h, head(h.a, 5, b"\x01" * 32, 1000))
    await post_with(h, head(h.a, 5, b"\x09" * 32, 2000))
    assert events(caplog, "tree_head_conflict")
    await post_with(h, head(h.a, 4, b"\x01" * 32, 3000))
    assert events(caplog, "tree_head_shrank")
    assert len(await h.state.store.witnessed_heads("a.test")) == 3  # all kept, as evidence


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda h: ":bm90IGEgaGVhZA==:", "tree head"),
        (lambda h: "garbage", "canonical padded base64"),
        (lambda h: head(h.x, 1, os.urandom(32), 1), "not the sender's"),
        (lambda h: head(Identity("a.test"), 1, os.urandom(32), 1), "not one trusted"),
    ],
)
async def test_a_bad_head_is_ignored_and_the_batch_accepted(
    harness: Harness, caplog: pytest.LogCaptureFixture, make: object, why: str
) -> None:
    h = harness
    await post_with(h, make(h))  # type: ignore[operator]
    refused = events(caplog, "tree_head_refused")
    assert refused and why in refused[0]
    assert await h.state.store.witnessed_heads("a.test") == []
