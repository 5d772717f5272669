"""Key rotation and revocation (issue 4.6, docs/keys.md).

Config and CLI checks first, then two in-process nodes a.test -> b.test on
127.0.0.1: an envelope signed with a.test's old key waits in a.test's queue
while the key is rotated and is still accepted by b.test, which pins both
keys; after a revocation the key leaves the node document and b.test refuses
requests signed with it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.cli import main as cli
from relay.config.files import load_config
from relay.config.keyops import default_grace_ms, key_infos, revoke, revoke_peer_key, rotate
from relay.config.keys import generate_key_file, load_private_key
from relay.errors import BadRequest, ConfigErrors, NotFound
from relay.federation.inbound import BATCH_PATH
from relay.node.app import Node
from relay.protocol import httpsig
from relay.protocol.batch import Batch, BatchItem, encode_batch, open_result
from relay.protocol.envelope import decode_header, make_header, seal
from relay.protocol.keystr import key_id, private_key_from_seed, public_key_string
from relay.storage.sqlite.store import sqlite_store
from tests.inprocess import PeerLine, send, start_node, token, url_of, write_node

DAY_MS = 86_400_000
TIMEOUT = aiohttp.ClientTimeout(total=15)
KEY_X = public_key_string(private_key_from_seed(bytes([7]) * 32).public_key())
KEY_Y = public_key_string(private_key_from_seed(bytes([8]) * 32).public_key())


def wall_ms() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def signing_key(directory: Path) -> str:
    return public_key_string(load_private_key(load_config(directory).node.key_file).public_key())


def add_to_node_table(directory: Path, lines: str) -> None:
    file = directory / "node.toml"
    text = file.read_text()
    file.write_text(text.replace('key_file = "node.key"\n', f'key_file = "node.key"\n{lines}', 1))


def problems(directory: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(directory)
    return [f"{e.key}: {e.reason}" for e in info.value.errors]


# --- config ------------------------------------------------------------------------


def test_retired_and_revoked_keys_load(tmp_path: Path) -> None:
    write_node(tmp_path, "a.test")
    add_to_node_table(
        tmp_path,
        f'retired_keys = [{{key = "{KEY_X}", valid_until = 2031-01-02T03:04:05Z}}]\n'
        f'revoked_keys = ["{KEY_Y}"]\n',
    )
    node = load_config(tmp_path).node
    assert [(r.key, r.valid_until_ms) for r in node.retired_keys] == [(KEY_X, 1_925_089_445_000)]
    assert node.revoked_keys == (KEY_Y,)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            f'retired_keys = [{{key = "{KEY_X}", valid_until = 2031-01-02T03:04:05}}]\n',
            "valid_until: expected a date-time with a UTC offset",
        ),
        (
            f'retired_keys = [{{key = "{KEY_X}", valid_until = 2031-01-02T00:00:00Z}}]\n'
            f'revoked_keys = ["{KEY_X}"]\n',
            "is also in revoked_keys",
        ),
        (
            f'retired_keys = [{{key = "{KEY_X}", until = 2031-01-02T00:00:00Z}}]\n',
            "unknown key 'until'",
        ),
        ('revoked_keys = ["ed25519:nope"]\n', "base64 part must be 43 characters"),
    ],
)
def test_bad_node_keys_are_refused(tmp_path: Path, lines: str, expected: str) -> None:
    write_node(tmp_path, "a.test")
    add_to_node_table(tmp_path, lines)
    found = problems(tmp_path)
    assert any(expected in p for p in found), found


def test_the_signing_key_cannot_be_revoked_or_retired(tmp_path: Path) -> None:
    own = write_node(tmp_path, "a.test")
    add_to_node_table(tmp_path, f'revoked_keys = ["{own}"]\n')
    assert any("is the signing key" in p for p in problems(tmp_path))
    write_node(tmp_path, "a.test")
    add_to_node_table(
        tmp_path, f'retired_keys = [{{key = "{own}", valid_until = 2031-01-02T00:00:00Z}}]\n'
    )
    assert any("of the signing key" in p for p in problems(tmp_path))


def test_a_peer_key_is_pinned_or_revoked_not_both(tmp_path: Path) -> None:
    write_node(tmp_path, "a.test", peers=[PeerLine("b.test", KEY_X)])
    file = tmp_path / "node.toml"
    pinned = f'keys = ["{KEY_X}"]\n'
    file.write_text(file.read_text().replace(pinned, pinned + f'revoked_keys = ["{KEY_X}"]\n'))
    assert problems(tmp_path) == [
        f"peers[0].revoked_keys: key {KEY_X!r} is also in keys; a revoked key is removed from keys"
    ]


def test_a_key_file_open_to_the_group_stops_the_node(tmp_path: Path) -> None:
    write_node(tmp_path, "a.test")
    rotate(tmp_path, now_ms=wall_ms())
    key_file = load_config(tmp_path).node.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.chmod(0o640)
    (found,) = problems(tmp_path)
    assert found.startswith("node.key_file:") and "mode 0640" in found


# --- rotate / revoke on files -------------------------------------------------------------


def test_rotate_retires_the_old_key_for_the_grace_period(tmp_path: Path) -> None:
    old = write_node(tmp_path, "a.test")
    now = wall_ms()
    r = rotate(tmp_path, now_ms=now)
    config = load_config(tmp_path)
    assert r.old_key == old and r.new_key == signing_key(tmp_path) != old
    assert config.node.key_file == r.key_file and r.key_file.name.startswith("node-")
    assert r.removed == tmp_path / "node.key" and not r.removed.exists()
    lifetime = config.node.queue_lifetime_ms
    assert default_grace_ms(config) == 2 * lifetime
    assert [(k.key, k.valid_until_ms) for k in config.node.retired_keys] == [
        (old, r.valid_until_ms)
    ]
    assert now + 2 * lifetime <= r.valid_until_ms < now + 2 * lifetime + 1000
    assert [(i.key, i.state) for i in key_infos(config, now)] == [
        (r.new_key, "signing"),
        (old, "retired"),
    ]


def test_rotate_refuses_a_grace_shorter_than_the_queue_lifetime(tmp_path: Path) -> None:
    old = write_node(tmp_path, "a.test")
    before = (tmp_path / "node.toml").read_text()
    with pytest.raises(BadRequest, match="shorter than the queue lifetime"):
        rotate(tmp_path, now_ms=wall_ms(), grace_ms=DAY_MS)
    assert (tmp_path / "node.toml").read_text() == before
    assert sorted(p.name for p in tmp_path.glob("*.key")) == ["node.key"]
    assert cli.main(["key", "rotate", str(tmp_path), "--grace", "1d"]) == 2
    assert signing_key(tmp_path) == old


def test_retired_keys_past_valid_until_are_dropped_at_the_next_rotation(tmp_path: Path) -> None:
    first = write_node(tmp_path, "a.test")
    now = wall_ms()
    r1 = rotate(tmp_path, now_ms=now)
    r2 = rotate(tmp_path, now_ms=r1.valid_until_ms + 1)
    assert r2.dropped == (first,)
    retired = load_config(tmp_path).node.retired_keys
    assert [k.key for k in retired] == [r1.new_key]


def test_revoking_the_signing_key_rotates_first(tmp_path: Path) -> None:
    old = write_node(tmp_path, "a.test")
    rv = revoke(tmp_path, key_id(old), now_ms=wall_ms())
    assert rv.rotation is not None and not rv.already
    node = load_config(tmp_path).node
    assert node.revoked_keys == (old,) and node.retired_keys == ()
    assert signing_key(tmp_path) == rv.rotation.new_key
    assert revoke(tmp_path, old, now_ms=wall_ms()).already
    with pytest.raises(NotFound):
        revoke(tmp_path, "AAAAAAAA", now_ms=wall_ms())


def test_cli_rotate_prints_the_peer_line_and_revoke_the_peer_revoke_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_node(tmp_path, "a.test")
    assert cli.main(["key", "rotate", str(tmp_path)]) == 0
    new = signing_key(tmp_path)
    out = capsys.readouterr().out.strip()
    assert out == f"relay peer update YOUR_NODE_DIR --name a.test --key {new} --key {old}"
    assert cli.main(["key", "revoke", str(tmp_path), key_id(old)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"relay key revoke YOUR_NODE_DIR {old} --peer a.test"
    assert cli.main(["key", "list", str(tmp_path)]) == 0
    states = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert states == ["signing", "revoked"]


def test_revoking_a_peer_key_keeps_at_least_one(tmp_path: Path) -> None:
    write_node(tmp_path, "b.test", peers=[PeerLine("a.test", KEY_X)])
    with pytest.raises(BadRequest, match="only key pinned"):
        revoke_peer_key(tmp_path, "a.test", key_id(KEY_X))
    rv = revoke_peer_key(tmp_path, "a.test", key_id(KEY_X), new_keys=(KEY_Y,))
    assert rv.added == (KEY_Y,)
    peer = load_config(tmp_path).peer("a.test")
    assert peer is not None and peer.keys == (KEY_Y,) and peer.revoked_keys == (KEY_X,)


# --- two nodes ------------------------------------------------------------------------------


async def inbox(session: aiohttp.ClientSession, node: Node, mailbox: str) -> list[dict[str, Any]]:
    async with session.get(
        url_of(node) + "/v1/inbox?limit=100",
        headers={"Authorization": f"Bearer {token(mailbox)}"},
        timeout=TIMEOUT,
    ) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
        messages: list[dict[str, Any]] = doc["messages"]
        return messages


async def node_document(session: aiohttp.ClientSession, node: Node) -> dict[str, Any]:
    async with session.get(url_of(node) + "/.well-known/relay", timeout=TIMEOUT) as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def wait_for(probe: Any, what: str, timeout: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {got!r}")
        await asyncio.sleep(0.05)


async def header_key(node: Node, msg_id: str) -> str:
    """The `key` field of the header of the message `msg_id` as stored at its origin."""
    assert node.state is not None
    rows = await sqlite_store(node.state.store).fetchall("SELECT id, header FROM envelopes")
    (header,) = [h for i, h in rows if bytes(i).hex() == msg_id]
    return decode_header(bytes(header)).key


def forged_batch(
    *, signer: Ed25519PrivateKey, request_key: Ed25519PrivateKey, to: str
) -> tuple[bytes, bytes, dict[str, str]]:
    """A batch from a.test with one envelope signed by `signer`, the request by `request_key`."""
    now = wall_ms()
    payload = os.urandom(8)
    ident = os.urandom(16)
    header = make_header(
        id=ident,
        kind="message",
        origin="a.test",
        key_id=key_id(public_key_string(signer.public_key())),
        sender="alice@a.test",
        to=[to],
        dest="b.test",
        created=now,
        expires=now + 3_600_000,
        residency=["DE"],
        ctype="application/octet-stream",
        payload=payload,
    )
    env = seal(header, payload, signer)
    item = BatchItem(env.header_bytes, env.signature, env.payload, ("a.test",))
    body = encode_batch(Batch(os.urandom(16), (item,)))
    headers = httpsig.sign_request(
        method="POST",
        path=BATCH_PATH,
        content_digest=httpsig.content_digest(body),
        origin="a.test",
        destination="b.test",
        key=request_key,
        key_id=key_id(public_key_string(request_key.public_key())),
        created=now // 1000,
        nonce=os.urandom(32),
    )
    headers["Content-Type"] = "application/msgpack"
    return ident, body, headers


async def post(
    session: aiohttp.ClientSession, node: Node, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    async with session.post(
        url_of(node) + BATCH_PATH, data=body, headers=headers, timeout=TIMEOUT
    ) as resp:
        return resp.status, await resp.read()


async def test_rotation_and_revocation_between_two_nodes(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_dir.mkdir()
    b_key = generate_key_file(b_dir / "node.key")
    b_port = free_port()
    k1 = write_node(
        a_dir,
        "a.test",
        peers=[
            PeerLine("b.test", public_key_string(b_key.public_key()), f"http://127.0.0.1:{b_port}")
        ],
    )
    a = await start_node(a_dir)
    b: Node | None = None
    try:
        assert a.state is not None
        async with aiohttp.ClientSession() as s:
            # m1 is signed with k1 and waits: b.test is not up yet.
            status, doc = await send(s, a, ["bob@b.test"], "before the rotation")
            assert status == 202, doc
            m1 = doc["id"]
            assert await header_key(a, m1) == key_id(k1)

            rotation = rotate(a_dir, now_ms=wall_ms())
            k2 = rotation.new_key
            k1_private_gone = rotation.removed
            assert k1_private_gone is not None and not k1_private_gone.exists()
            result = await a.reload()
            assert result.applied and "node.key_file" not in result.restart_needed
            assert a.state.key_id == key_id(k2)

            keys = (await node_document(s, a))["keys"]
            assert set(keys) == {key_id(k1), key_id(k2)}
            assert keys[key_id(k1)] == {"key": k1, "valid_until": rotation.valid_until_ms}
            lifetime = a.config.node.queue_lifetime_ms
            assert keys[key_id(k2)]["key"] == k2
            assert keys[key_id(k2)]["valid_until"] >= wall_ms() + lifetime - 60_000

            status, doc = await send(s, a, ["bob@b.test"], "after the rotation")
            assert status == 202, doc
            m2 = doc["id"]
            assert await header_key(a, m2) == key_id(k2)

            # b.test pins both keys, as the printed `relay peer update` line says.
            write_node(b_dir, "b.test", peers=[PeerLine("a.test", k1, url_of(a))])
            text = (b_dir / "node.toml").read_text()
            (b_dir / "node.toml").write_text(
                text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{b_port}"')
            )
            argv = ["peer", "update", str(b_dir), "--name", "a.test", "--key", k2, "--key", k1]
            assert cli.main(argv) == 0
            b = await start_node(b_dir)
            got = await wait_for(lambda: _texts(s, b), "both messages at b.test", timeout=30)
            assert got == {"before the rotation", "after the rotation"}

            # While k2 is pinned, a request signed with it is accepted ...
            k2_private = a.state.key
            ident, body, headers = forged_batch(
                signer=k2_private, request_key=k2_private, to="bob@b.test"
            )
            code, reply = await post(s, b, body, headers)
            assert code == 200, reply
            assert open_result(reply, b_key.public_key()).results == {ident: "accepted"}

            # ... a.test revokes k2 (a new key k3 signs from now on) ...
            revocation = revoke(a_dir, key_id(k2), now_ms=wall_ms())
            assert revocation.rotation is not None
            k3 = revocation.rotation.new_key
            assert (await a.reload()).applied
            keys = (await node_document(s, a))["keys"]
            assert set(keys) == {key_id(k1), key_id(k3)}
            assert a.state.key_id == key_id(k3)

            # ... and b.test refuses k2 as the printed `relay key revoke` line does.
            rv = revoke_peer_key(b_dir, "a.test", k2, new_keys=(k3,))
            assert rv.added == (k3,)
            assert (await b.reload()).applied
            assert b.state is not None
            before = await b.state.store.row_counts()
            _, body, headers = forged_batch(
                signer=k2_private, request_key=k2_private, to="bob@b.test"
            )
            code, reply = await post(s, b, body, headers)
            assert code == 401, reply
            assert b'"unknown_key"' in reply and b"revoked" in reply
            # b's own background work (receipts to a.test, their sender's state)
            # may move other tables; what a refused request could write may not.
            after = await b.state.store.row_counts()
            request_tables = ("nonces", "batches", "inbox", "decisions", "recipients")
            assert {t: after[t] for t in request_tables} == {t: before[t] for t in request_tables}

            # An envelope signed with k2 inside a request signed with k3 is refused too.
            k3_private = a.state.key
            ident, body, headers = forged_batch(
                signer=k2_private, request_key=k3_private, to="bob@b.test"
            )
            code, reply = await post(s, b, body, headers)
            assert code == 200, reply
            assert open_result(reply, b_key.public_key()).results == {ident: "rejected:signature"}

            # The node still delivers what it signs now, with k3.
            status, doc = await send(s, a, ["bob@b.test"], "after the revocation")
            assert status == 202, doc
            assert await header_key(a, doc["id"]) == key_id(k3)
            got = await wait_for(
                lambda: _has(s, b, "after the revocation"), "the k3 message at b.test"
            )
            assert got
    finally:
        if b is not None:
            await b.stop()
        await a.stop()


async def _texts(s: aiohttp.ClientSession, b: Node) -> set[str] | None:
    texts = {m.get("text", "") for m in await inbox(s, b, "bob")}
    return texts if len(texts) >= 2 else None


async def _has(s: aiohttp.ClientSession, b: Node, text: str) -> bool:
    return any(m.get("text") == text for m in await inbox(s, b, "bob"))
