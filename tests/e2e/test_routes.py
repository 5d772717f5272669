"""Routes, relays and certificates with whole nodes, set up through the CLI.

Tables the CLI has no command for ([[routes]], [relay], [policy.groups]) are
appended to node.toml as an admin would write them, and `relay check`
validates every file before a node starts.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.e2e.harness import NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EAEU = '["AM", "BY", "KG", "KZ", "RU"]'


def append(node: NodeProc, text: str) -> None:
    with (node.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text)


def allow_eaeu(node: NodeProc) -> None:
    path = node.dir / "node.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[policy]\n", '[policy]\nallowed_residency = ["EAEU"]\n', 1))
    append(node, f"[policy.groups]\nEAEU = {EAEU}\n")


def route(node: NodeProc, to: str, via: str) -> None:
    append(node, f'[[routes]]\nto = "{to}"\nvia = "{via}"\n')


def relays_for(node: NodeProc, *origins: str) -> None:
    append(node, "[relay]\nfor_origins = [" + ", ".join(f'"{o}"' for o in origins) + "]\n")


def check(*nodes: NodeProc) -> None:
    for n in nodes:
        relay("check", n.dir)


def envelopes(node: NodeProc) -> list[dict[str, Any]]:
    """Stored envelopes of a node, read through a separate read-only connection."""
    db = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT origin, id, kind, dest, trace, hop, from_peer FROM envelopes ORDER BY rid"
        ).fetchall()
    finally:
        db.close()
    keys = ("origin", "id", "kind", "dest", "trace", "hop", "from_peer")
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for e in out:
        e["id"] = bytes(e["id"]).hex()
        e["trace"] = msgpack.unpackb(e["trace"])
    return out


def status_of(node: NodeProc, mailbox: str, msg_id: str, address: str) -> dict[str, Any]:
    doc = node.status(mailbox, msg_id)
    st: dict[str, Any] = doc["recipients"][address]
    return st


def refused_send(node: NodeProc, to: str, *extra: str) -> str:
    """Send and expect a policy refusal (exit 3); return stderr."""
    out = relay(
        "send",
        "--node",
        node.url,
        "--token",
        node.tokens["alice"],
        "--to",
        to,
        "--text",
        "should not leave",
        *extra,
        check=False,
    )
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    return out.stderr


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    for n in started:
        n.kill()


def start(nodes: list[NodeProc], *which: NodeProc) -> None:
    for n in which:
        nodes.append(n)
        n.start()


# --- A(RU) -> R(RU) -> B(KZ) ---------------------------------------------------------------


def test_relayed_delivery_with_receipt_back_and_residency_at_submit(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    a = make_node(tmp_path, "a.test", "RU")
    r = make_node(tmp_path, "r.test", "RU")
    b = make_node(tmp_path, "b.test", "KZ")
    g = make_node(tmp_path, "g.test", "KZ")  # a KZ relay, never started
    z = make_node(tmp_path, "z.test", "RU")  # reached only through g, never started
    a.add_peer(r)
    a.add_peer(b, with_url=False)  # A knows B's key and jurisdiction, not its address
    a.add_peer(g)
    a.add_peer(z, with_url=False)
    r.add_peer(a)
    r.add_peer(b)
    b.add_peer(a, with_url=False)
    b.add_peer(r)
    a.add_mailbox("alice")
    b.add_mailbox("bob")
    route(a, "b.test", "r.test")
    route(a, "z.test", "g.test")
    relays_for(r, "a.test")
    route(b, "a.test", "r.test")  # receipts to A go back through R
    for n in (a, r, b):
        allow_eaeu(n)
    check(a, r, b)
    start(nodes, a, r, b)

    msg = a.send("alice", ["bob@b.test"], "через Москву в Алматы", "--residency", "EAEU")
    got = wait_for(lambda: b.inbox("bob"), what="bob's inbox at b")
    assert [(m["id"], m["from"], m["origin"], m["text"]) for m in got] == [
        (msg, "alice@a.test", "a.test", "через Москву в Алматы")
    ]
    wait_for(
        lambda: status_of(a, "alice", msg, "bob@b.test")["status"] == "delivered",
        what="delivered receipt back at a",
    )

    (at_a,) = [e for e in envelopes(a) if e["id"] == msg]
    assert (at_a["hop"], at_a["trace"]) == ("r.test", [])
    at_r = {e["id"]: e for e in envelopes(r)}
    assert at_r[msg]["trace"] == ["a.test"] and at_r[msg]["hop"] == "b.test"
    assert at_r[msg]["from_peer"] == "a.test"
    (receipt_at_r,) = [e for e in at_r.values() if e["kind"] == "receipt"]
    assert (receipt_at_r["origin"], receipt_at_r["dest"], receipt_at_r["hop"]) == (
        "b.test",
        "a.test",
        "a.test",
    )
    (at_b,) = [e for e in envelopes(b) if e["id"] == msg]
    assert at_b["trace"] == ["a.test", "r.test"] and at_b["hop"] is None
    assert r.row_counts()["inbox"] == 0  # a relay delivers nothing locally

    # RU only: B is in KZ, so the submit is refused and names B.
    before = a.row_counts()["envelopes"]
    why = refused_send(a, "bob@b.test", "--residency", "RU")
    assert "b.test" in why and "KZ" in why and "builtin:dest_jurisdiction" in why
    # RU only to z.test, itself in RU, but planned through g.test in KZ: refused naming g.
    why = refused_send(a, "bob@z.test", "--residency", "RU")
    assert "planned hop g.test is in KZ" in why and "builtin:hop_jurisdiction" in why
    assert a.row_counts()["envelopes"] == before


# --- two relays routed at each other ---------------------------------------------------------


def test_two_relays_routed_at_each_other_refuse_the_loop(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    a = make_node(tmp_path, "a.test", "RU")
    r1 = make_node(tmp_path, "r1.test", "RU")
    r2 = make_node(tmp_path, "r2.test", "RU")
    b = make_node(tmp_path, "b.test", "RU")  # never started: nothing reaches it
    a.add_peer(r1)
    a.add_peer(b, with_url=False)
    for relay_node, other in ((r1, r2), (r2, r1)):
        relay_node.add_peer(a)
        relay_node.add_peer(other)
        route(relay_node, "b.test", other.name)
        relays_for(relay_node, "a.test")
    route(a, "b.test", "r1.test")
    a.add_mailbox("alice")
    check(a, r1, r2)
    start(nodes, a, r1, r2)

    msg = a.send("alice", ["bob@b.test"], "round and round")
    st = wait_for(
        lambda: (s := status_of(a, "alice", msg, "bob@b.test"))["status"] == "rejected" and s,
        what="rejected status at a",
    )
    assert st["reason"] == "loop"
    assert re.search(r"envelope_refused .*code=loop", r2.logs()), r2.logs()
    held = {n.name: [e for e in envelopes(n) if e["id"] == msg] for n in (r1, r2)}
    assert [e["trace"] for e in held["r1.test"]] == [["a.test"]]
    assert held["r2.test"] == []  # the loop was refused before r2 stored it


# --- certificates ----------------------------------------------------------------------------


def issue(auth: Path, name: str, key: str, cc: str, url: str, *extra: str) -> tuple[str, str]:
    """`relay authority issue`; return (certificate line, fingerprint)."""
    out = relay(
        "authority",
        "issue",
        auth,
        "--node-name",
        name,
        "--node-key",
        key,
        "--jurisdiction",
        cc,
        "--url",
        url,
        "--days",
        "30",
        *extra,
    )
    line = out.stdout.strip()
    assert "\n" not in line
    fp = re.search(r"fingerprint \(for revocation lists\): ([0-9a-f]{64})", out.stderr)
    assert fp is not None, out.stderr
    return line, fp.group(1)


def test_a_certified_node_receives_mail_and_bad_certificates_are_refused(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    auth = tmp_path / "registry"
    out = relay("authority", "init", auth, "--name", "registry.test", "--jurisdictions", "RU,KZ")
    (add_line,) = out.stdout.splitlines()
    assert add_line.startswith("relay authority add YOUR_NODE_DIR --name registry.test --key ")
    assert (auth / "authority.key").stat().st_mode & 0o777 == 0o600

    a = make_node(tmp_path, "a.test", "RU")
    c = make_node(tmp_path, "c.test", "RU")
    words = add_line.split()
    words[words.index("--jurisdictions") + 1] = "RU"  # A trusts it for RU only
    relay(*words[1:3], a.dir, *words[4:])
    c.add_peer(a)  # C pins A; A has never pinned C
    a.add_mailbox("alice")
    c.add_mailbox("bob")

    c_key = relay("key", "show", c.dir).stdout.strip()
    c_line, _ = issue(auth, "c.test", c_key, "RU", c.url)
    (c.dir / "node.cert").write_text(c_line + "\n")
    toml = c.dir / "node.toml"
    toml.write_text(
        toml.read_text().replace(
            'key_file = "node.key"\n', 'key_file = "node.key"\ncertificates = ["node.cert"]\n'
        )
    )
    certs = a.dir / "certs"
    certs.mkdir()
    (certs / "c.cert").write_text(c_line + "\n")
    kz_line, _ = issue(auth, "d.test", c_key, "KZ", "http://127.0.0.1:9")
    old_line, _ = issue(
        auth, "e.test", c_key, "RU", "http://127.0.0.1:9", "--not-before", "2020-01-01T00:00:00Z"
    )
    f_line, f_fp = issue(auth, "f.test", c_key, "RU", "http://127.0.0.1:9")
    (certs / "others.cert").write_text(f"{kz_line}\n# expired\n{old_line}\n{f_line}\n")
    (a.dir / "revoked.txt").write_text(f"# revoked by the registry\n{f_fp}\n")
    refused = relay(
        "authority",
        "issue",
        auth,
        "--node-name",
        "x.test",
        "--node-key",
        c_key,
        "--jurisdiction",
        "DE",
        "--url",
        "http://x",
        "--days",
        "1",
        check=False,
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert "attests only KZ, RU, not DE" in refused.stderr
    check(a, c)
    assert "c.test" not in (a.dir / "node.toml").read_text()
    start(nodes, a, c)

    with urllib.request.urlopen(f"{c.url}/.well-known/relay", timeout=5) as resp:
        assert json.loads(resp.read())["certificates"] == [c_line]

    msg = a.send("alice", ["bob@c.test"], "to a certified node")
    got = wait_for(lambda: c.inbox("bob"), what="bob's inbox at c")
    assert [(m["id"], m["origin"], m["text"]) for m in got] == [
        (msg, "a.test", "to a certified node")
    ]
    wait_for(
        lambda: status_of(a, "alice", msg, "bob@c.test")["status"] == "delivered",
        what="delivered receipt from c at a",
    )

    before = a.row_counts()["envelopes"]
    assert "may not attest KZ (only RU)" in refused_send(a, "bob@d.test")
    assert "expired at 2020-01-31" in refused_send(a, "bob@e.test")
    assert "revoked" in refused_send(a, "bob@f.test")
    why = refused_send(a, "bob@unknown.test")
    assert "no certificate names it" in why and "builtin:unknown_destination" in why
    assert a.row_counts()["envelopes"] == before
