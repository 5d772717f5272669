"""A reload re-checks the queue on every change that trust or routing depends on.

n.test (DE) queues mail for pinned peers without url and for c.test, which a
certificate from reg.test introduces (its url refuses connections): nothing
leaves, and the frozen clock keeps every sender backing off. Each test then
changes one thing in node.toml, reloads, and looks at what is still queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from relay.config.keyops import revoke, revoke_peer_key
from relay.config.model import DAY_MS
from relay.node.recheck import RULE_REVOKED_KEY
from relay.policy.certs import encode_line
from relay.policy.residency import RULE_PEER, RULE_UNKNOWN
from relay.protocol.certificate import Certificate, sign_certificate
from relay.protocol.envelope import open_envelope, verify_envelope
from relay.protocol.keystr import key_id, parse_public_key, private_key_from_seed, public_key_string
from relay.storage.records import NewEnvelope
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import (
    NODE,
    NOW_MS,
    Clock,
    Harness,
    Identity,
    Pinned,
    start_node,
    write_node_toml,
)

AUTHORITY = private_key_from_seed(bytes([9]) * 32)
AUTHORITY_TOML = (
    "[[authorities]]\n"
    'name = "reg.test"\n'
    f'key = "{public_key_string(AUTHORITY.public_key())}"\n'
    'jurisdictions = ["DE"]\n'
)


def write_extra(directory: Path, *, routes: str = "", authorities: str = AUTHORITY_TOML) -> None:
    """node.toml's tables after the peers and mailboxes, replaced as a whole."""
    toml = directory / "node.toml"
    base = toml.read_text().split("\n# --- extra\n")[0]
    trust = '[trust]\ncertificates_dir = "certs"\n'
    toml.write_text(f"{base}\n# --- extra\n{trust}{authorities}{routes}")


@dataclass
class World:
    h: Harness
    dir: Path
    x2: Identity  # x.test's second key, still pinned when the first is revoked

    def write_extra(self, *, routes: str = "", authorities: str = AUTHORITY_TOML) -> None:
        write_extra(self.dir, routes=routes, authorities=authorities)

    async def queue(self) -> dict[bytes, str]:
        """Queued envelope id -> hop."""
        rows = await sqlite_store(self.h.state.store).fetchall(
            "SELECT e.id, q.hop FROM queue q JOIN envelopes e ON e.rid = q.rid"
        )
        return {bytes(r[0]): str(r[1]) for r in rows}

    async def decisions(self) -> list[tuple[object, ...]]:
        rows = await sqlite_store(self.h.state.store).fetchall(
            "SELECT point, envelope, peer, outcome, rule FROM decisions WHERE point = 'recheck'"
        )
        return [tuple(r) for r in rows]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    a, x, x2 = Identity("a.test"), Identity("x.test"), Identity("x.test")
    peers = [Pinned(a.name, (a.key_string,)), Pinned(x.name, (x.key_string, x2.key_string))]
    peers += [Pinned(n, (Identity(n).key_string,)) for n in ("d.test", "e.test")]
    peers.append(Pinned("f.test", (Identity("f.test").key_string,), jurisdiction="FR"))
    node_dir = tmp_path / "n"
    key = write_node_toml(node_dir, peers=peers)
    c = Identity("c.test")
    cert = Certificate(
        c.name,
        (c.key_string,),
        "DE",
        "http://127.0.0.1:9",
        NOW_MS - DAY_MS,
        NOW_MS + DAY_MS,
        "reg.test",
    )
    (node_dir / "certs").mkdir()
    blob = sign_certificate(cert, AUTHORITY)
    (node_dir / "certs" / "c.cert").write_text(encode_line(blob) + "\n")
    write_extra(node_dir)
    clock = Clock()
    node = await start_node(node_dir, clock)
    try:
        async with aiohttp.ClientSession() as session:
            yield World(Harness(node, clock, key, session, a, Identity("a.test"), x), node_dir, x2)
    finally:
        await node.stop()


async def test_a_route_change_ends_mail_the_new_hop_may_not_carry(world: World) -> None:
    h = world.h
    kept = bytes.fromhex(await h.submit(["bob@a.test"], "route unchanged"))
    denied = bytes.fromhex(await h.submit(["bob@d.test"], "now via FR"))
    moved = bytes.fromhex(await h.submit(["bob@e.test"], "now via a.test"))
    assert await world.queue() == {kept: "a.test", denied: "d.test", moved: "e.test"}
    world.write_extra(
        routes='[[routes]]\nto = "d.test"\nvia = "f.test"\n'
        '[[routes]]\nto = "e.test"\nvia = "a.test"\n'
    )
    result = await h.node.reload()
    assert result.applied and result.recheck_for == ("routes",)
    assert await world.queue() == {kept: "a.test", moved: "a.test"}
    assert (await h.status(denied.hex()))["bob@d.test"]["status"] == "rejected"
    assert (await h.status(moved.hex()))["bob@e.test"]["status"] == "queued"
    assert await world.decisions() == [("recheck", denied, "f.test", "deny", RULE_PEER)]


async def test_removing_an_authority_ends_mail_to_the_nodes_it_certified(world: World) -> None:
    h = world.h
    kept = bytes.fromhex(await h.submit(["bob@a.test"], "pinned"))
    certified = bytes.fromhex(await h.submit(["bob@c.test"], "certified"))
    assert await world.queue() == {kept: "a.test", certified: "c.test"}
    world.write_extra(authorities="")
    result = await h.node.reload()
    assert result.applied and result.recheck_for == ("authorities",)
    assert await world.queue() == {kept: "a.test"}
    assert (await h.status(certified.hex()))["bob@c.test"]["status"] == "rejected"
    assert await world.decisions() == [("recheck", certified, "c.test", "deny", RULE_UNKNOWN)]


async def test_revoking_a_peer_key_ends_relayed_mail_it_signed(world: World) -> None:
    h, x = world.h, world.h.x
    bad = h.envelope(origin=x, to=("carol@a.test",), dest="a.test")
    good = h.envelope(
        origin=x, signer=world.x2.key, key_id=world.x2.key_id, to=("dan@a.test",), dest="a.test"
    )
    relayed = [
        NewEnvelope(
            env=e,
            trace=("x.test",),
            from_peer="x.test",
            hop="a.test",
            mailboxes=(),
            rule_id="",
            policy_hash=h.state.policy_hash,
        )
        for e in (bad, good)
    ]
    await h.state.store.write(lambda tx: tx.insert_envelopes(relayed, h.clock()))
    kept = bytes.fromhex(await h.submit(["bob@a.test"], "ours"))
    revoke_peer_key(world.dir, "x.test", x.key_string)
    result = await h.node.reload()
    assert result.applied and result.recheck_for == ("peers",)
    assert await world.queue() == {good.header.id: "a.test", kept: "a.test"}
    assert await world.decisions() == [
        ("recheck", bad.header.id, "a.test", "deny", RULE_REVOKED_KEY)
    ]
    receipts = await sqlite_store(h.state.store).fetchall(
        "SELECT origin, status, reason, id FROM pending_receipts"
    )
    assert [tuple(r) for r in receipts] == [("x.test", "rejected", "signature", bad.header.id)]


async def test_revoking_the_signing_key_re_signs_queued_mail_under_the_same_id(
    world: World,
) -> None:
    h = world.h
    ours = bytes.fromhex(await h.submit(["bob@a.test"], "signed before the revocation"))
    old_kid = h.state.key_id
    revoke(world.dir, old_kid, now_ms=h.clock())
    result = await h.node.reload()
    assert result.applied and result.recheck_for == ("revoked_keys",)
    new_kid = h.state.key_id
    assert new_kid != old_kid
    (row,) = await h.state.store.queue_head("a.test", 10)
    env = open_envelope(row.header, row.signature, b"")
    assert env.header.id == ours and env.header.key == new_kid
    verify_envelope(env, parse_public_key(h.state.key_string))
    assert key_id(h.state.key_string) == new_kid
    assert (await h.status(ours.hex()))["bob@a.test"]["status"] == "queued"
    digests = await h.state.store.write(lambda tx: tx.existing_digests([(NODE, ours)]))
    assert len(digests) == 1  # still one envelope under that id, with the new header's digest


async def test_removing_the_last_route_sends_queued_mail_direct(world: World) -> None:
    h = world.h
    world.write_extra(routes='[[routes]]\nto = "e.test"\nvia = "a.test"\n')
    assert (await h.node.reload()).recheck_for == ("routes",)
    routed = bytes.fromhex(await h.submit(["bob@e.test"], "via a.test"))
    assert await world.queue() == {routed: "a.test"}
    world.write_extra()
    assert (await h.node.reload()).recheck_for == ("routes",)
    assert await world.queue() == {routed: "e.test"}
    assert (await h.status(routed.hex()))["bob@e.test"]["status"] == "queued"
