"""Whole nodes inside the test's event loop, on 127.0.0.1 port 0 (DESIGN §10, second layer).

Used by the metrics, OpenAPI and webhook tests. Each node gets a fresh key,
a node.toml written from the arguments, and the mailboxes `alice` and `bob`
(tokens `alice-token`, `bob-token`) unless told otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.config.files import load_config
from relay.config.keys import generate_key_file, load_private_key
from relay.config.values import mailbox_token_sha256
from relay.node.app import Node
from relay.protocol.keystr import public_key_string

TIMEOUT = aiohttp.ClientTimeout(total=15)


def token(mailbox: str) -> str:
    return f"{mailbox}-token"


def toml_value(v: object) -> str:
    """A TOML literal for a string, an int or a list of strings (JSON spells them alike)."""
    return json.dumps(v)


@dataclass(frozen=True)
class PeerLine:
    """One `[[peers]]` entry."""

    name: str
    key: str
    url: str | None = None
    jurisdiction: str = "DE"


def write_node(
    directory: Path,
    name: str,
    *,
    jurisdiction: str = "DE",
    peers: Sequence[PeerLine] = (),
    mailboxes: Mapping[str, Mapping[str, object]] | None = None,
    tables: Mapping[str, Mapping[str, object]] | None = None,
    federation: Mapping[str, object] | None = None,
) -> str:
    """Write node.toml (and node.key unless there is one); return the node's public key string.

    `mailboxes` maps names to extra keys of their `[[mailboxes]]` entry;
    `tables` adds whole tables such as `metrics`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "node.key"
    key = load_private_key(key_file) if key_file.exists() else generate_key_file(key_file)
    fed: dict[str, object] = {"receipt_window": "100ms", "retry_min": "20ms", "retry_max": "200ms"}
    fed |= dict(federation or {})
    lines = [
        "[node]",
        f"name = {toml_value(name)}",
        f"jurisdiction = {toml_value(jurisdiction)}",
        'listen = "127.0.0.1:0"',
        'key_file = "node.key"',
        'database = "relay.db"',
        "",
        "[policy]",
        f"default_residency = [{toml_value(jurisdiction)}]",
        'allowed_residency = ["EU"]',
        "[policy.groups]",
        'EU = ["DE", "FR", "NL"]',
        "",
        "[federation]",
        *(f"{k} = {toml_value(v)}" for k, v in fed.items()),
        "",
    ]
    for table, values in (tables or {}).items():
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
    for p in peers:
        lines += ["[[peers]]", f"name = {toml_value(p.name)}"]
        if p.url is not None:
            lines.append(f"url = {toml_value(p.url)}")
        lines += [
            f"jurisdiction = {toml_value(p.jurisdiction)}",
            f"keys = [{toml_value(p.key)}]",
            "",
        ]
    for mb, extra in (mailboxes if mailboxes is not None else {"alice": {}, "bob": {}}).items():
        lines += [
            "[[mailboxes]]",
            f"name = {toml_value(mb)}",
            f"token_sha256 = {toml_value(mailbox_token_sha256(token(mb)))}",
            *(f"{k} = {toml_value(v)}" for k, v in extra.items()),
            "",
        ]
    (directory / "node.toml").write_text("\n".join(lines))
    return public_key_string(key.public_key())


async def start_node(directory: Path) -> Node:
    """Load `directory`'s node.toml and start the node on a free port."""
    node = Node(load_config(directory))
    await node.start()
    assert node.port > 0
    return node


async def down_at_port(directory: Path) -> int:
    """Start the node in `directory` once and stop it: the port it had, where
    its peers will look for it. `listen_on` brings it back there."""
    node = await start_node(directory)
    port = node.port
    await node.stop()
    return port


def listen_on(directory: Path, port: int) -> None:
    """Make the node in `directory` listen on `port` (the one down_at_port gave)."""
    toml = directory / "node.toml"
    toml.write_text(toml.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))


def url_of(node: Node) -> str:
    return f"http://127.0.0.1:{node.port}"


async def send(
    session: aiohttp.ClientSession,
    node: Node,
    to: Sequence[str],
    text: str = "hi",
    *,
    mailbox: str = "alice",
    **fields: Any,
) -> tuple[int, dict[str, Any]]:
    """POST /v1/messages as `mailbox`; return the status and the JSON answer."""
    async with session.post(
        url_of(node) + "/v1/messages",
        json={"to": list(to), "text": text, **fields},
        headers={"Authorization": f"Bearer {token(mailbox)}"},
        timeout=TIMEOUT,
    ) as resp:
        doc: dict[str, Any] = await resp.json()
        return resp.status, doc


async def status(
    session: aiohttp.ClientSession, node: Node, msg_id: str, mailbox: str = "alice"
) -> dict[str, dict[str, Any]]:
    """Per-recipient status of a message `mailbox` sent."""
    async with session.get(
        url_of(node) + f"/v1/messages/{msg_id}",
        headers={"Authorization": f"Bearer {token(mailbox)}"},
        timeout=TIMEOUT,
    ) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
        recipients: dict[str, dict[str, Any]] = doc["recipients"]
        return recipients
