"""`relay audit export/verify/prove/consistency/heads`, run in-process on the log of a
node that delivered mail to its own mailboxes; then the log is rewritten under it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.cli import main as cli
from relay.protocol.audit import STORED, decode_entry, encode_entry
from relay.protocol.keystr import public_key_string
from relay.protocol.merkle import leaf_hash
from tests.inprocess import send, start_node, write_node


def run(*argv: str | Path) -> int:
    return cli.main([str(a) for a in argv])


async def node_with_mail(directory: Path, messages: int) -> str:
    """A node that stored `messages` messages to its own bob, then stopped (a head)."""
    key = write_node(directory, "n.test")
    node = await start_node(directory)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(messages):
                code, doc = await send(s, node, ["bob@n.test"], f"message {i}")
                assert code == 202, doc
    finally:
        await node.stop()
    return key


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, str]:
    directory = tmp_path / "n"
    key = asyncio.run(node_with_mail(directory, 3))
    return directory, key


@pytest.mark.slow
def test_export_verifies_offline_and_answers(
    logged: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, key = logged
    bundle = tmp_path / "bundle"
    assert run("audit", "export", directory, "--out", bundle) == 0
    assert "exported 4 entries (seq 0..3)" in capsys.readouterr().err
    assert run("audit", "verify", bundle, "--key", key, "--residency") == 0
    out = capsys.readouterr().out
    assert "verified: 4 entries (seq 0..3) of n.test" in out
    assert "stored outside the residency set: no; 3 stored" in out

    entry = decode_entry(
        sqlite3.connect(directory / "relay.db")
        .execute("SELECT entry FROM audit_log WHERE seq = 1")
        .fetchone()[0]
    )
    ident = entry.blob("envelope").hex()
    assert run("audit", "verify", bundle, "--key", key, "--message", ident) == 0
    assert "stored at n.test (DE) from a local client" in capsys.readouterr().out

    assert run("audit", "prove", directory, ident) == 0
    proof = json.loads(capsys.readouterr().out)
    assert (proof["seq"], proof["size"]) == (1, 4)

    # another key is no trust anchor: nothing verifies
    other = public_key_string(Ed25519PrivateKey.generate().public_key())
    assert run("audit", "verify", bundle, "--key", other) == 1
    assert "problem head_unknown_key" in capsys.readouterr().out
    # a key that is no key, or a time that is no time, is a usage error
    assert run("audit", "verify", bundle, "--key", "ed25519:nope") == 2
    assert run("audit", "export", directory, "--from", "last tuesday") == 2
    assert "neither unix ms nor an ISO 8601 time" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rewrite_after_a_kept_head_is_caught(
    logged: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, key = logged
    old_head = tmp_path / "old.head"
    assert run("audit", "heads", directory, "--latest") == 0
    old_head.write_text(capsys.readouterr().out)

    # More mail: a later head, which extends the kept one.
    asyncio.run(_more_mail(directory))
    new_head = tmp_path / "new.head"
    assert run("audit", "heads", directory, "--latest") == 0
    new_head.write_text(capsys.readouterr().out)
    assert run("audit", "consistency", old_head, new_head, "--dir", directory, "--key", key) == 0
    assert "consistent: the head of size 6" in capsys.readouterr().out  # config, stored

    # The operator rewrites entry 1 (the first message's store) in the database...
    db = sqlite3.connect(directory / "relay.db")
    entry = encode_entry(1, 1, STORED, {"envelope": b"\x00" * 16, "residency": ("DE",)})
    db.execute("UPDATE audit_log SET entry = ?, leaf = ? WHERE seq = 1", (entry, leaf_hash(entry)))
    db.execute("DELETE FROM audit_heads")
    db.commit()
    db.close()
    # ... and lets the node sign fresh heads over the rewritten log.
    asyncio.run(_restart(directory))
    bundle = tmp_path / "bundle"
    assert run("audit", "export", directory, "--out", bundle) == 0
    capsys.readouterr()
    assert run("audit", "verify", bundle, "--key", key) == 0  # alone it looks fine
    capsys.readouterr()
    assert run("audit", "verify", bundle, "--key", key, "--witness", old_head) == 1
    out = capsys.readouterr().out
    assert "problem history_rewritten" in out and "witnessed by" in out
    rewritten_head = tmp_path / "rewritten.head"
    assert run("audit", "heads", directory, "--latest") == 0
    rewritten_head.write_text(capsys.readouterr().out)
    assert run("audit", "consistency", old_head, rewritten_head, "--bundle", bundle) == 1
    assert "does not extend the earlier one (history was rewritten)" in capsys.readouterr().err


async def _more_mail(directory: Path) -> None:
    node = await start_node(directory)
    try:
        async with aiohttp.ClientSession() as s:
            code, doc = await send(s, node, ["bob@n.test"], "later")
            assert code == 202, doc
    finally:
        await node.stop()


async def _restart(directory: Path) -> None:
    node = await start_node(directory)
    await node.stop()
