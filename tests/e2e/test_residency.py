"""Residency and retention end to end: RU, KZ and DE nodes on loopback, via the CLI.

ru.test and kz.test share an `EAEU` group; de.test's own config claims RU,
but ru.test pins it as DE, and only what ru.test pins counts.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.e2e.harness import NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EAEU = ["AM", "BY", "KG", "KZ", "RU"]


def edit_config(node: NodeProc, table: str, **values: Any) -> None:
    """Set keys of one table of node.toml as an admin would, then `relay check` it."""
    path = node.dir / "node.toml"
    doc = tomlkit.parse(path.read_text())
    section = doc[table]
    assert isinstance(section, tomlkit.items.Table)
    for key, value in values.items():
        section[key] = value
    path.write_text(tomlkit.dumps(doc))
    relay("check", node.dir)


def eaeu_policy(node: NodeProc, **extra: Any) -> None:
    groups = tomlkit.table()
    groups["EAEU"] = EAEU
    edit_config(node, "policy", allowed_residency=["EAEU"], export_to=["EAEU"], groups=groups)
    if extra:
        edit_config(node, "policy", **extra)


def build(tmp_path: Path, *, with_de: bool) -> dict[str, NodeProc]:
    ru = make_node(tmp_path, "ru.test", "RU")
    kz = make_node(tmp_path, "kz.test", "KZ")
    nodes = {"ru": ru, "kz": kz}
    ru.add_peer(kz)
    kz.add_peer(ru)
    ru.add_mailbox("alice")
    kz.add_mailbox("bob")
    eaeu_policy(ru)
    eaeu_policy(kz, import_from=["EAEU"])
    if with_de:
        de = make_node(tmp_path, "de.test", "RU")  # what de.test claims about itself
        ru.add_peer(de)
        de.add_peer(ru)
        relay("peer", "update", ru.dir, "--name", "de.test", "--jurisdiction", "DE")
        de.add_mailbox("hans")
        nodes["de"] = de
    return nodes


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[dict[str, NodeProc]]:
    nodes = build(tmp_path, with_de=True)
    yield nodes
    for n in nodes.values():
        n.kill()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, NodeProc]]:
    nodes = build(tmp_path, with_de=False)
    yield nodes
    for n in nodes.values():
        n.kill()


def send(node: NodeProc, to: str, text: str, *extra: str, check: bool = True) -> Any:
    return relay(
        "send",
        "--node",
        node.url,
        f"--token={node.tokens['alice']}",  # a token may start with "-"
        "--to",
        to,
        "--text",
        text,
        *extra,
        check=check,
    )


def decisions(node: NodeProc, *args: str) -> list[dict[str, Any]]:
    out = relay("decisions", node.dir, "--json", *args)
    return [json.loads(line) for line in out.stdout.splitlines()]


def status_of(node: NodeProc, msg_id: str, address: str) -> dict[str, Any]:
    recipient: dict[str, Any] = node.status("alice", msg_id)["recipients"][address]
    return recipient


def test_residency_decided_at_submit_forward_and_accept(trio: dict[str, NodeProc]) -> None:
    ru, kz, de = trio["ru"], trio["kz"], trio["de"]
    for n in (ru, kz, de):
        n.start()

    # EAEU residency: RU -> KZ is inside the set at every point
    m = send(ru, "bob@kz.test", "в пределах ЕАЭС", "--residency", "EAEU").stdout.strip()
    got = wait_for(lambda: kz.inbox("bob"), what="bob's inbox at kz")
    assert [(x["id"], x["text"], x["residency"]) for x in got] == [(m, "в пределах ЕАЭС", EAEU)]
    wait_for(lambda: status_of(ru, m, "bob@kz.test")["status"] == "delivered", what="receipt")

    # RU-only mail to the node ru.test pins as DE: refused at submit, whatever de.test claims
    before = de.row_counts()
    for extra in ((), ("--residency", "RU"), ("--residency", "EAEU")):
        out = send(ru, "hans@de.test", "only in Russia", *extra, check=False)
        assert out.returncode == 3, out.stderr
        assert out.stdout == ""
        assert "builtin:dest_jurisdiction" in out.stderr
        assert "de.test is in DE" in out.stderr
    assert ru.row_counts()["queue"] == 0

    explained = relay(
        "rules", "explain", ru.dir, "--from", "alice", "--to", "hans@de.test", check=False
    )
    assert explained.returncode == 3
    assert explained.stdout.splitlines()[-1].startswith(
        "result: refused by builtin:dest_jurisdiction: destination node de.test is in DE"
    )
    refused = relay(
        *("rules", "explain", ru.dir, "--from", "alice", "--to", "hans@de.test", "--json"),
        check=False,
    )
    assert refused.returncode == 3
    doc = json.loads(refused.stdout)
    assert doc["allowed"] is False and doc["mode"] == "enforce"
    assert doc["destinations"][0]["rule"] == "builtin:dest_jurisdiction"
    assert doc["destinations"][0]["jurisdiction"] == "DE"
    allowed = relay(
        "rules", "explain", ru.dir, "--from", "alice", "--to", "bob@kz.test", "--residency", "EAEU"
    )
    assert allowed.stdout.splitlines()[-1] == "result: allowed"

    denials = decisions(ru, "--outcome", "deny")
    assert [(d["point"], d["peer"], d["rule"]) for d in denials] == [
        ("submit", "de.test", "builtin:dest_jurisdiction")
    ] * 3
    allows = decisions(ru, "--outcome", "allow", "--envelope", m)
    assert [(a["point"], a["peer"], a["outcome"]) for a in allows] == [
        ("submit", "kz.test", "allow")
    ]
    text = relay("decisions", ru.dir, "--outcome", "deny", "--limit", "1").stdout
    assert len(text.splitlines()) == 1
    assert "  submit  deny  -  de.test  builtin:dest_jurisdiction  alice: " in text

    # de.test never received anything
    assert de.row_counts() == before
    assert de.inbox("hans") == []

    # audit mode: the same mail passes, and every would-be denial is recorded
    assert ru.stop() == 0
    edit_config(ru, "policy", mode="audit")
    ru.start()
    with urllib.request.urlopen(f"{ru.url}/.well-known/relay", timeout=10) as r:
        assert json.load(r)["mode"] == "audit"
    m2 = send(ru, "hans@de.test", "audit lets this pass").stdout.strip()
    got = wait_for(lambda: de.inbox("hans"), what="hans's inbox at de")
    assert [x["id"] for x in got] == [m2]
    wait_for(lambda: status_of(ru, m2, "hans@de.test")["status"] == "delivered", what="receipt")
    # de states the delivery in its signed batch result (protocol.md §22): no
    # receipt envelope comes back to ru, so there is no accept decision on one
    audits = decisions(ru, "--outcome", "audit")
    assert [(a["point"], a["peer"], a["rule"], a["outcome"]) for a in audits] == [
        ("submit", "de.test", "builtin:dest_jurisdiction", "audit"),
        ("forward", "de.test", "builtin:peer_jurisdiction", "audit"),
    ]
    assert audits[0]["envelope"] == audits[1]["envelope"] == m2
    assert len(decisions(ru, "--outcome", "deny")) == 3  # nothing new was denied


def test_policy_change_ends_queued_mail_and_retention_purges(pair: dict[str, NodeProc]) -> None:
    ru, kz = pair["ru"], pair["kz"]
    edit_config(ru, "retention", content_min_days=1)
    edit_config(kz, "retention", content_max_days=0)

    # kz.test is down: two messages wait in ru.test's queue
    ru.start()
    queued = [
        send(ru, "bob@kz.test", f"queued {i}", "--residency", "EAEU").stdout.strip()
        for i in range(2)
    ]
    assert [status_of(ru, i, "bob@kz.test")["status"] for i in queued] == ["queued"] * 2
    payloads = ru.row_counts()["payloads"]

    # the admin stops exporting to KZ and restarts: the queued mail ends, never sent
    assert ru.stop() == 0
    edit_config(ru, "policy", export_to=["RU"])
    ru.start()
    for i in queued:
        assert status_of(ru, i, "bob@kz.test") | {"at": 0} == {
            "status": "rejected",
            "reason": "residency",
            "at": 0,
        }
    assert ru.row_counts()["queue"] == 0
    rechecked = decisions(ru, "--outcome", "deny")
    assert [(d["point"], d["peer"], d["rule"], d["envelope"]) for d in rechecked] == [
        ("recheck", "kz.test", "builtin:export_to", i) for i in queued
    ]
    assert "export_to" in rechecked[0]["reason"]
    # content_min_days = 1 still holds the content; the purge job takes it a day later
    assert ru.row_counts()["payloads"] == payloads
    now = json.loads(relay("purge", ru.dir, "--dry-run", "--json").stdout)
    assert now["would_purge"]["contents"] == 0
    later = json.loads(relay("purge", ru.dir, "--dry-run", "--json", "--as-of", "+25h").stdout)
    assert later["would_purge"]["contents"] == 2
    assert sorted(d["id"] for d in later["content"]) == sorted(queued)
    assert {d["why"] for d in later["content"]} == {"discarded"}
    assert relay("purge", ru.dir, "--as-of", "+25h", check=False).returncode == 2

    # back to EAEU: new mail reaches kz.test, whose content maximum is 0 days
    assert ru.stop() == 0
    edit_config(ru, "policy", export_to=["EAEU"])
    ru.start()
    kz.start()
    m = send(ru, "bob@kz.test", "delivered, then purged", "--residency", "EAEU").stdout.strip()
    wait_for(lambda: status_of(ru, m, "bob@kz.test")["status"] == "delivered", what="receipt")
    assert [x["id"] for x in kz.inbox("bob", ack=True)] == [m]
    preview = relay("purge", kz.dir, "--dry-run")
    assert f"content  {m}  message from ru.test" in preview.stdout
    assert ": content_max" in preview.stdout
    running = relay("purge", kz.dir, check=False)
    assert running.returncode == 1
    assert "running" in running.stderr and "--dry-run" in running.stderr
    assert kz.row_counts()["purges"] == 0

    assert kz.stop() == 0
    purged = json.loads(relay("purge", kz.dir, "--json").stdout)["purged"]
    assert purged["contents"] >= 1 and purged["payloads"] >= 1
    counts = kz.row_counts()
    assert counts["payloads"] == 0 and counts["purges"] == 1
    assert counts["envelopes"] >= 1  # metadata is kept for metadata_max_days
    after = json.loads(relay("purge", kz.dir, "--dry-run", "--json").stdout)
    assert after["would_purge"]["contents"] == 0
