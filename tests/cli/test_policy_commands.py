"""`relay rules explain`, `relay decisions` and `relay purge`, run in-process.

The node n.test (DE, allowed EU = DE, FR, NL) pins a.test as DE and f.test
as FR; mailboxes alice and bob. No node runs: explain reads only node.toml,
decisions and purge read (or, stopped, write) the database.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.cli import main as cli
from relay.config.files import load_config
from relay.protocol.keystr import public_key_string
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord
from relay.storage.sqlite.store import open_store
from tests.federation.conftest import Pinned, write_node_toml

RULES = """
[[policy.rules]]
id = "no-fr-for-bob"
sender = "bob"
dest_jurisdiction = "FR"
effect = "deny"

[[policy.rules]]
id = "pdfs-stay-home"
ctype = "application/pdf"
effect = "limit"
residency = ["DE"]
"""


def make_node(tmp_path: Path, *, extra_policy: str = "", extra: str = "") -> Path:
    def key() -> str:
        return public_key_string(Ed25519PrivateKey.generate().public_key())

    node = tmp_path / "n"
    write_node_toml(
        node,
        peers=[
            Pinned("a.test", (key(),)),
            Pinned("f.test", (key(),), jurisdiction="FR"),
            Pinned("far.test", (key(),)),  # DE, no url: reached through a route
        ],
    )
    toml = node / "node.toml"
    text = toml.read_text()
    anchor = 'allowed_residency = ["EU"]\n'
    text = text.replace(anchor, anchor + extra_policy)
    toml.write_text(text + RULES + extra)
    return node


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def explain_json(
    capsys: pytest.CaptureFixture[str], node: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, "rules", "explain", node, "--json", *args)
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return code, doc


# --- rules explain ---------------------------------------------------------------


def test_explain_allowed_and_refused_exit_like_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path)
    code, out, _ = run(capsys, "rules", "explain", node, "--from", "alice", "--to", "x@a.test")
    assert code == 0
    assert out.splitlines()[-1] == "result: allowed"
    assert "  allowed, residency {DE}" in out

    # the default residency {DE} does not hold FR
    code, doc = explain_json(capsys, node, "--from", "alice", "--to", "x@f.test")
    assert code == 3 and doc["allowed"] is False
    (dest,) = doc["destinations"]
    assert dest["rule"] == "builtin:dest_jurisdiction"
    assert [s["point"] for s in dest["steps"]] == ["stamp", "submit"]

    # asking for EU makes it allowed, and the limit rule names itself for PDFs
    code, doc = explain_json(
        capsys, node, "--from", "alice", "--to", "x@f.test", "--residency", "EU"
    )
    assert code == 0 and doc["allowed"] is True
    pdf = ("--ctype", "application/pdf")
    code, doc = explain_json(
        capsys, node, "--from", "alice", "--to", "x@f.test", "--residency", "EU", *pdf
    )
    assert code == 3
    (dest,) = doc["destinations"]
    assert dest["steps"][0]["rule"] == "pdfs-stay-home"
    assert dest["matching_rules"] == [
        {"id": "pdfs-stay-home", "effect": "limit", "residency": ["DE"]}
    ]


def test_explain_deny_rule_unknown_node_and_several_destinations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path)
    code, doc = explain_json(
        capsys, node, "--from", "bob@n.test", "--to", "x@f.test", "--residency", "EU"
    )
    assert code == 3
    assert doc["destinations"][0]["rule"] == "no-fr-for-bob"

    code, doc = explain_json(
        capsys, node, "--from", "alice", "--to", "x@a.test", "y@nowhere.test", "bob@n.test"
    )
    assert code == 3
    by_node = {d["node"]: d for d in doc["destinations"]}
    assert by_node["a.test"]["allowed"] and by_node["n.test"]["allowed"]
    assert by_node["nowhere.test"]["rule"] == "builtin:unknown_destination"
    assert by_node["nowhere.test"]["jurisdiction"] is None


def test_explain_checks_the_planned_hop_of_a_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, extra='\n[[routes]]\nto = "far.test"\nvia = "f.test"\n')
    code, out, _ = run(capsys, "rules", "explain", node, "--from", "alice", "--to", "x@far.test")
    assert code == 3
    assert "  via f.test ([[routes]]), trusted jurisdiction FR" in out
    assert "refused by builtin:hop_jurisdiction" in out
    code, doc = explain_json(
        capsys, node, "--from", "alice", "--to", "x@far.test", "--residency", "DE,FR"
    )
    assert code == 0
    assert doc["destinations"][0]["via"] == {"node": "f.test", "jurisdiction": "FR"}


def test_explain_in_audit_mode_passes_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, extra_policy='mode = "audit"\n')
    code, out, _ = run(capsys, "rules", "explain", node, "--from", "alice", "--to", "x@f.test")
    assert code == 0
    assert "result: allowed (audit mode: would be refused by builtin:dest_jurisdiction)" in out
    assert "policy: mode audit;" in out


def test_explain_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = make_node(tmp_path)
    assert run(capsys, "rules", "explain", node, "--from", "carol", "--to", "x@a.test")[0] == 2
    code, _, err = run(
        capsys, "rules", "explain", node, "--from", "alice@a.test", "--to", "x@a.test"
    )
    assert code == 2 and "mailbox of this node" in err
    code, _, err = run(
        capsys, "rules", "explain", node, "--from", "alice", "--to", "x@a.test", "--residency", "XX"
    )
    assert code == 1 and "unknown residency 'XX'" in err
    code, _, err = run(capsys, "rules", "explain", node, "--from", "alice", "--to", "nobody@n.test")
    assert code == 1 and "no mailbox nobody@n.test" in err


# --- decisions and purge -----------------------------------------------------------------


async def _decide(tx: WriteTx) -> None:
    await tx.record_decisions(
        [
            DecisionRecord(
                at=1_000_000_000_000 + i * 1000,  # long past metadata_max_days
                point="submit" if envelope is None else "accept",
                envelope=envelope,
                peer="f.test",
                outcome=outcome,
                rule=f"rule-{i}",
                reason=f"reason {i}",
                policy_hash="ab" * 8,
            )
            for i, (outcome, envelope) in enumerate(
                [("deny", None), ("audit", b"\x01" * 16), ("deny", b"\x02" * 16)]
            )
        ]
    )


async def _fill(db: Path) -> None:
    store = await open_store(db)
    try:
        await store.write(_decide)
    finally:
        await store.close()


def test_decisions_filters_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = make_node(tmp_path)
    db = load_config(node).node.database
    asyncio.run(_fill(db))
    # what a running node holds: the lock file next to the database
    lock = os.open(db.with_name(db.name + ".lock"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        code, out, _ = run(capsys, "decisions", node)
        assert code == 0
        assert out.splitlines() == [
            "2001-09-09T01:46:40Z  submit  deny  -  f.test  rule-0  reason 0",
            f"2001-09-09T01:46:41Z  accept  audit  {'01' * 16}  f.test  rule-1  reason 1",
            f"2001-09-09T01:46:42Z  accept  deny  {'02' * 16}  f.test  rule-2  reason 2",
        ]
        code, out, _ = run(capsys, "decisions", node, "--outcome", "deny", "--limit", "1", "--json")
        (doc,) = [json.loads(line) for line in out.splitlines()]
        assert (doc["rule"], doc["envelope"], doc["policy_hash"]) == ("rule-2", "02" * 16, "ab" * 8)
        code, out, _ = run(capsys, "decisions", node, "--envelope", "01" * 16)
        assert len(out.splitlines()) == 1 and "  audit  " in out
        code, out, err = run(capsys, "decisions", node, "--outcome", "allow")
        assert code == 0 and out == "" and "no decisions match" in err
        assert run(capsys, "decisions", node, "--envelope", "xyz")[0] == 2

        # a purge that would write refuses while the node holds the database
        code, _, err = run(capsys, "purge", node)
        assert code == 1 and "the node is running" in err
        code, out, _ = run(capsys, "purge", node, "--dry-run", "--json")
        assert code == 0 and json.loads(out)["would_purge"]["decisions"] == 3
    finally:
        os.close(lock)
    code, out, _ = run(capsys, "purge", node, "--json")
    assert code == 0 and json.loads(out)["purged"]["decisions"] == 3
    assert run(capsys, "decisions", node)[1] == ""


def test_purge_without_a_database_and_as_of_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path)
    code, _, err = run(capsys, "purge", node)
    assert code == 0 and "no database" in err
    code, _, err = run(capsys, "purge", node, "--dry-run")
    assert code == 1 and "no database yet" in err
    assert run(capsys, "purge", node, "--as-of", "+1d")[0] == 2
    assert run(capsys, "purge", node, "--dry-run", "--as-of", "tomorrow")[0] == 2
