"""relay.federation.witness: n.test keeps the tree heads a.test sends in its batches,
reports a forked or shrunk log, checks the consistency proof sent with a head
(Relay-Tree-Proof), and ignores a head or proof that does not check out without
refusing the batch (docs/protocol.md §19)."""

from __future__ import annotations

import logging
import os

import pytest

from relay.config.model import DAY_MS
from relay.node.retention import prune_witnessed, purge, purge_node
from relay.protocol.audit import (
    TREE_HEAD_HEADER,
    TREE_PROOF_HEADER,
    TreeHead,
    TreeProof,
    decode_signed_head,
    sign_head,
    tree_head_header,
    tree_proof_header,
)
from relay.protocol.merkle import consistency_proof, leaf_hash, root
from relay.storage.audit import PROOF_CONSISTENT, PROOF_FORKED
from tests.federation.conftest import Harness, Identity


def head(who: Identity, size: int, root: bytes, at: int) -> str:
    return tree_head_header(sign_head(TreeHead(who.name, size, root, at, who.key_id), who.key))


async def post_with(h: Harness, value: str, proof: str | None = None) -> None:
    env = h.envelope()
    body = h.body([h.item(env)])
    headers = h.sign(body)
    headers[TREE_HEAD_HEADER] = value
    if proof is not None:
        headers[TREE_PROOF_HEADER] = proof
    reply = await h.post(body, headers)
    assert reply.status == 200, reply.body[:300]
    assert b"accepted" in reply.body  # the batch's item is judged as without either header


LOG = [leaf_hash(i.to_bytes(4, "big")) for i in range(40)]  # a.test's log, as leaf hashes


def log_head(who: Identity, size: int, at: int, leaves: list[bytes] = LOG) -> str:
    return head(who, size, root(leaves[:size]), at)


def proof_of(old: int, new: int, leaves: list[bytes] = LOG) -> str:
    return tree_proof_header(TreeProof(old, tuple(consistency_proof(old, leaves[:new]))))


def counted(h: Harness, outcome: str) -> float:
    value = h.state.metrics.registry.get_sample_value(
        "relay_tree_heads_total", {"peer": "a.test", "outcome": outcome}
    )
    return value or 0.0


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
    kept = await h.state.store.witnessed_heads("a.test")  # all kept, as evidence
    assert [(w.size, w.at, w.evidence) for w in kept] == [
        (4, 3000, 5),
        (5, 1000, None),
        (5, 2000, 5),
    ]


async def test_a_restart_forgets_no_head_a_fork_is_found_by(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The last head kept from a peer is in storage: the head that contradicts it is
    reported after a restart as before it (the memory lost is only a shortcut)."""
    h = harness
    await post_with(h, log_head(h.a, 5, 1000))
    await post_with(h, log_head(h.a, 9, 2000), proof_of(5, 9))
    await h.restart()
    assert h.state.witnessed == {}
    await post_with(h, head(h.a, 9, b"\x09" * 32, 3000))
    assert events(caplog, "tree_head_conflict")
    await post_with(h, log_head(h.a, 7, 4000))
    assert events(caplog, "tree_head_shrank")
    forged = [*LOG[:2], leaf_hash(b"rewritten"), *LOG[3:]]
    await post_with(h, log_head(h.a, 20, 5000, forged), proof_of(9, 20, forged))
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.evidence, w.proof) for w in kept] == [
        (5, None, ""),
        (7, 9, ""),
        (9, None, PROOF_CONSISTENT),
        (9, 9, ""),
        (20, 9, PROOF_FORKED),
    ]


async def test_retention_prunes_old_heads_but_not_the_evidence(harness: Harness) -> None:
    h = harness
    for i, size in enumerate((3, 5, 8, 13)):  # an ordinary chain, each proven
        proof = proof_of((3, 5, 8)[i - 1], size) if i else None
        await post_with(h, log_head(h.a, size, 1000 + i), proof)
    await post_with(h, head(h.a, 5, b"\x09" * 32, 2000))  # two roots of size 5
    await post_with(h, log_head(h.a, 21, 3000), proof_of(13, 21))
    store = h.state.store
    later = h.clock() + (h.state.config.retention.witnessed_heads_days + 1) * DAY_MS
    assert await prune_witnessed(store, h.state.config.retention, h.clock()) == 0  # too new
    assert await prune_witnessed(store, h.state.config.retention, later) == 3
    kept = await store.witnessed_heads("a.test")
    assert [(w.size, w.at) for w in kept] == [(5, 1001), (5, 2000), (21, 3000)]


async def test_only_the_node_purge_job_prunes_witnessed_heads(harness: Harness) -> None:
    h = harness
    for i, size in enumerate((3, 5, 8)):
        proof = proof_of((3, 5)[i - 1], size) if i else None
        await post_with(h, log_head(h.a, size, 1000 + i), proof)
    store, retention = h.state.store, h.state.config.retention
    later = h.clock() + (retention.witnessed_heads_days + 1) * DAY_MS
    # `relay purge` offline: it neither counts nor previews heads, so it leaves them
    await purge(store, retention, h.state.name, later, source="cli")
    assert [w.size for w in await store.witnessed_heads("a.test")] == [3, 5, 8]
    h.state.now_ms = lambda: later
    await purge_node(h.state)  # the node's job: all but the peer's last go
    assert [w.size for w in await store.witnessed_heads("a.test")] == [8]


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


async def test_a_proof_from_a_kept_head_marks_the_new_one_consistent(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    await post_with(h, log_head(h.a, 5, 1000))  # the first head: nothing to prove from
    await post_with(h, log_head(h.a, 13, 2000), proof_of(5, 13))
    await post_with(h, log_head(h.a, 13, 2000), proof_of(5, 13))  # again: nothing new
    await post_with(h, log_head(h.a, 32, 3000), proof_of(13, 32))
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.proof_from, w.proof) for w in kept] == [
        (5, None, ""),
        (13, 5, PROOF_CONSISTENT),
        (32, 13, PROOF_CONSISTENT),
    ]
    assert (counted(h, "unproven"), counted(h, "consistent")) == (1, 2)
    assert not events(caplog, "tree_head_forked")


async def test_a_rewritten_history_is_named_by_its_own_proof(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """a.test sent a head of 5, then rewrote entry 2 and signs a head of 9 over the new
    log: the proof it builds from that log does not lead to the root it signed at 5."""
    h = harness
    await post_with(h, log_head(h.a, 5, 1000))
    forged = [*LOG[:2], leaf_hash(b"rewritten"), *LOG[3:]]
    await post_with(h, log_head(h.a, 9, 2000, forged), proof_of(5, 9, forged))
    (forked,) = [
        dict(getattr(r, "relay_fields", {}))
        for r in caplog.records
        if r.getMessage() == "tree_head_forked"
    ]
    assert (forked["peer"], forked["size"], forked["from_size"]) == ("a.test", 9, 5)
    assert forked["earlier_root"] == root(LOG[:5]).hex()
    assert forked["root"] == root(forged[:9]).hex()
    assert "earlier root" in str(forked["detail"])
    kept = await h.state.store.witnessed_heads("a.test")  # both heads, as evidence
    assert [(w.size, w.proof_from, w.proof) for w in kept] == [(5, None, ""), (9, 5, PROOF_FORKED)]
    assert counted(h, "forked") == 1


async def test_a_proof_to_a_root_not_signed_is_forked(harness: Harness) -> None:
    """A good proof of the true log sent with a head whose root is another: forked."""
    h = harness
    await post_with(h, log_head(h.a, 6, 1000))
    await post_with(h, head(h.a, 10, b"\x07" * 32, 2000), proof_of(6, 10))
    kept = await h.state.store.witnessed_heads("a.test")
    assert kept[-1].proof == PROOF_FORKED


@pytest.mark.parametrize(
    ("make", "event_name", "why"),
    [
        (lambda: "garbage", "tree_proof_refused", "not a byte sequence"),
        (lambda: ":AAAA:", "tree_proof_refused", "tree proof"),
        (lambda: proof_of(12, 20), "tree_proof_refused", "from_size 12 is not below"),
        (
            lambda: tree_proof_header(TreeProof(4, (b"\x01" * 32,) * 3)),
            "tree_proof_unmatched",
            "no head of that size",
        ),
    ],
)
async def test_a_bad_or_unmatched_proof_leaves_the_head_unproven(
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    make: object,
    event_name: str,
    why: str,
) -> None:
    h = harness
    caplog.set_level(logging.INFO, logger="relay.witness")
    await post_with(h, log_head(h.a, 5, 1000))
    await post_with(h, log_head(h.a, 12, 2000), make())  # type: ignore[operator]
    said = events(caplog, event_name)
    assert said and why in said[0]
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.proof) for w in kept] == [(5, ""), (12, "")]
    assert counted(h, "unproven") == 2


async def test_a_missing_proof_is_tolerated_and_a_later_one_fills_it_in(harness: Harness) -> None:
    h = harness
    await post_with(h, log_head(h.a, 5, 1000))
    await post_with(h, log_head(h.a, 8, 2000))  # no proof (the sender had none ready yet)
    assert counted(h, "unproven") == 2
    await post_with(h, log_head(h.a, 8, 2000), proof_of(5, 8))  # the same head, with one
    await post_with(h, log_head(h.a, 8, 2000))  # and without again: nothing changes
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.proof_from, w.proof) for w in kept] == [
        (5, None, ""),
        (8, 5, PROOF_CONSISTENT),
    ]
    assert (counted(h, "unproven"), counted(h, "consistent")) == (2, 1)


async def test_heads_sent_again_in_turns_are_not_news(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender's workers carry the leader's heads, some a minute late: an older head
    kept before, sent again after a newer one, is no shrink and no new head."""
    h = harness
    older, newer = log_head(h.a, 5, 1000), log_head(h.a, 9, 2000)
    await post_with(h, older)
    await post_with(h, newer, proof_of(5, 9))
    await post_with(h, older)
    await post_with(h, newer, proof_of(5, 9))
    await post_with(h, newer, tree_proof_header(TreeProof(5, (b"\x01" * 32,))))  # proven already
    assert not events(caplog, "tree_head_shrank")
    assert not events(caplog, "tree_head_forked")
    kept = await h.state.store.witnessed_heads("a.test")
    assert [(w.size, w.proof) for w in kept] == [(5, ""), (9, PROOF_CONSISTENT)]
    assert (counted(h, "unproven"), counted(h, "consistent"), counted(h, "shrank")) == (1, 1, 0)
