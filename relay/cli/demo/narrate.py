"""`relay demo`: a three-node federation on loopback, narrated.

Three nodes (RU, KZ, DE) are set up in a fresh temp dir with the same `relay`
commands an admin would type, run as `relay run` subprocesses with their own
SQLite files, and driven through the client API. The narration says what
happened and why; then the federation keeps running until Ctrl-C (or exits at
once with --once), and every node is stopped with SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from relay.cli.main import main
from relay.config.tomledit import atomic_write_text
from relay.errors import RelayError


class DemoError(RelayError):
    status = 500
    code = "demo"


EAEU = ["AM", "BY", "KG", "KZ", "RU"]


@dataclass
class DemoNode:
    name: str
    jurisdiction: str
    dir: Path
    port: int
    peer_line: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _relay(*args: str | Path) -> str:
    """Run one `relay` admin command in this process (each would otherwise pay a
    Python start-up); its stdout, or DemoError with what it printed on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    if code != 0:
        raise DemoError(f"relay {' '.join(map(str, args))} failed: {err.getvalue().strip()}")
    return out.getvalue()


def relay_command() -> str:
    """How to run this `relay` from another terminal, as it can be pasted: `relay`
    if that is this one on PATH, else the path of this virtualenv's script."""
    script = Path(sys.executable).with_name("relay")
    on_path = shutil.which("relay")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return "relay"
    if script.exists():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m relay"


def _set_policy(node: DemoNode, policy: dict[str, Any]) -> None:
    path = node.dir / "node.toml"
    doc = tomlkit.parse(path.read_text())
    table = doc["policy"]
    assert isinstance(table, dict)
    groups = policy.pop("groups", None)
    rules = policy.pop("rules", None)
    for key, value in policy.items():
        table[key] = value
    if groups:
        gt = tomlkit.table()
        for gname, codes in groups.items():
            gt[gname] = codes
        table["groups"] = gt
    if rules:
        aot = tomlkit.aot()
        for rule in rules:
            rt = tomlkit.table()
            for key, value in rule.items():
                rt[key] = value
            aot.append(rt)
        table["rules"] = aot
    atomic_write_text(path, tomlkit.dumps(doc))


def _api(node: DemoNode, method: str, path: str, token: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        node.url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read() or b"{}")
        doc["status"] = e.code
        return doc


def _wait_ready(node: DemoNode, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc is not None and node.proc.poll() is not None:
            raise DemoError(f"{node.name} exited early; see {node.dir / 'node.log'}")
        try:
            with urllib.request.urlopen(node.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise DemoError(f"{node.name} did not become ready; see {node.dir / 'node.log'}")


def _wait_status(node: DemoNode, token: str, msg_id: str, want: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    doc: Any = {}
    while time.monotonic() < deadline:
        doc = _api(node, "GET", f"/v1/messages/{msg_id}", token)
        states = [r["status"] for r in doc.get("recipients", {}).values()]
        if states and all(s == want for s in states):
            return doc
        time.sleep(0.1)
    return doc


def setup(base: Path) -> list[DemoNode]:
    """Create, peer and configure the three demo nodes with the admin commands."""
    nodes = [
        DemoNode("msk.demo.ru", "RU", base / "msk", _free_port()),
        DemoNode("ala.demo.kz", "KZ", base / "ala", _free_port()),
        DemoNode("ber.demo.de", "DE", base / "ber", _free_port()),
    ]
    _say("  relay init: a key and node.toml for each node")
    for n in nodes:
        out = _relay(
            "init", n.dir, "--name", n.name, "--jurisdiction", n.jurisdiction,
            "--listen", f"127.0.0.1:{n.port}",
        )  # fmt: skip
        n.peer_line = [ln for ln in out.splitlines() if ln.startswith("relay peer add")][-1]
    _say("  relay peer add: each node pins the other two (name, URL, jurisdiction, key)")
    for n in nodes:
        for other in nodes:
            if other is not n:
                words = shlex.split(other.peer_line)
                _relay("peer", "add", n.dir, *words[4:])
    msk, ala, ber = nodes
    eaeu_policy = {
        "groups": {"EAEU": EAEU},
        "allowed_residency": ["EAEU"],
        "export_to": ["EAEU"],
        "import_from": ["EAEU"],
    }
    msk_rule = {
        "id": "no-transfer-to-de",
        "dest_jurisdiction": ["DE"],
        "effect": "deny",
    }
    _say("  [policy] in node.toml: residency groups, export/import lists, one rule")
    _set_policy(msk, {**eaeu_policy, "rules": [msk_rule]})
    _set_policy(ala, dict(eaeu_policy))
    _set_policy(ber, {"groups": {"EU": ["DE", "FR", "NL"]}, "allowed_residency": ["EU"]})
    _say("  relay mailbox add: alice at msk, bob at ala, carl at ber; relay check each")
    for n, mailbox in ((msk, "alice"), (ala, "bob"), (ber, "carl")):
        n.tokens[mailbox] = _relay("mailbox", "add", n.dir, mailbox).strip().splitlines()[-1]
    for n in nodes:
        _relay("check", n.dir)
    return nodes


def start(nodes: list[DemoNode]) -> None:
    _say("  relay run: starting the three nodes ...")
    for n in nodes:
        log = open(n.dir / "node.log", "ab")  # noqa: SIM115 - handed to the child
        n.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", str(n.dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        log.close()
    for n in nodes:
        _wait_ready(n)


def stop(nodes: list[DemoNode]) -> None:
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    for n in nodes:
        if n.proc is not None:
            try:
                n.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()


def narrate(nodes: list[DemoNode]) -> bool:
    """Send the demo's messages and say what happened; True if all went as expected."""
    msk, ala, ber = nodes
    alice, bob, carl = msk.tokens["alice"], ala.tokens["bob"], ber.tokens["carl"]
    ok = True

    _say("1. alice@msk.demo.ru writes to bob@ala.demo.kz and asks for EAEU residency.")
    sent = _api(msk, "POST", "/v1/messages", alice, {
        "to": ["bob@ala.demo.kz"], "text": "Привет из Москвы", "residency": ["EAEU"],
    })  # fmt: skip
    msg_id = sent.get("id", "")
    _say(f"   msk accepted it as message {msg_id}: signed, stored, queued for ala.")
    inbox: dict[str, Any] = {"messages": []}
    deadline = time.monotonic() + 20
    while not inbox["messages"] and time.monotonic() < deadline:
        inbox = _api(ala, "GET", "/v1/inbox?wait=5", bob)
    if inbox["messages"]:
        m = inbox["messages"][0]
        _say(
            f"   bob's inbox at ala: from {m['from']}: {m.get('text')!r}, "
            f"residency {','.join(m['residency'])}"
        )
    else:
        ok = False
        _say("   !! the message did not reach ala")
    doc = _wait_status(msk, alice, msg_id, "delivered")
    status = doc.get("recipients", {}).get("bob@ala.demo.kz", {}).get("status")
    _say(f"   ala sent a signed receipt back; msk now says: {status}.")
    ok = ok and status == "delivered"

    _say()
    _say("2. alice writes to bob again without asking: msk's default residency is RU only.")
    refused = _api(msk, "POST", "/v1/messages", alice, {
        "to": ["bob@ala.demo.kz"], "text": "this may stay in Russia only",
    })  # fmt: skip
    _say(f"   refused at submit (HTTP {refused.get('status')}), rule {refused.get('rule')}:")
    _say(f"   {refused.get('detail')}")
    ok = ok and refused.get("status") == 422

    _say()
    _say("3. alice writes to carl@ber.demo.de (Germany); msk's rule no-transfer-to-de denies it.")
    refused = _api(msk, "POST", "/v1/messages", alice, {
        "to": ["carl@ber.demo.de"], "text": "to Berlin?", "residency": ["EAEU"],
    })  # fmt: skip
    _say(f"   refused at submit (HTTP {refused.get('status')}), rule {refused.get('rule')}:")
    _say(f"   {refused.get('detail')}")
    _say("   Nothing was queued: no copy of it exists outside msk.")
    ok = ok and refused.get("status") == 422

    _say()
    _say("4. carl@ber.demo.de writes to bob; ber's default residency is DE only.")
    refused = _api(ber, "POST", "/v1/messages", carl, {"to": ["bob@ala.demo.kz"], "text": "hi"})
    _say(f"   refused at submit (HTTP {refused.get('status')}), rule {refused.get('rule')}:")
    _say(f"   {refused.get('detail')}")
    ok = ok and refused.get("status") == 422
    return ok


def how_to_poke(nodes: list[DemoNode], base: Path, kept: bool) -> None:
    msk, ala, _ = nodes
    relay = relay_command()
    _say()
    _say("The federation keeps running. Try it from another terminal:")
    _say(
        f"  RELAY_TOKEN={msk.tokens['alice']} {relay} send --node {msk.url}"
        " --to bob@ala.demo.kz --residency EAEU --text 'hello again'"
    )
    _say(f"  RELAY_TOKEN={ala.tokens['bob']} {relay} inbox --node {ala.url} --wait 10 --json")
    _say(
        f"  RELAY_TOKEN={msk.tokens['alice']} {relay} send --node {msk.url}"
        " --to carl@ber.demo.de --text x"
    )
    _say("      (exits 3: refused by policy)")
    _say(f"  {relay} trace {shlex.quote(str(msk.dir))} ID     (ID: what send printed)")
    _say(f"  {relay} peers {shlex.quote(str(msk.dir))}")
    _say("  (RELAY_TOKEN or --token-file keeps a token out of the process list; --token does not)")
    where = shlex.quote(str(base))
    if kept:
        _say(f"Node logs: {where}/*/node.log; the directory stays after Ctrl-C.")
    else:
        _say(
            f"Node logs: {where}/*/node.log. Ctrl-C stops every node and keeps {where}:"
            f" remove it with rm -r {where}"
        )
    _say("Ctrl-C stops every node.")


def run_demo(once: bool, keep: Path | None) -> int:
    """Set up, start and narrate; then wait for Ctrl-C unless `once`.

    The directory is kept when the user was told to look in it (after the
    narration, or when something failed), and removed after a clean --once.
    """
    base = keep if keep is not None else Path(tempfile.mkdtemp(prefix="relay-demo-"))
    nodes: list[DemoNode] = []
    remove = False
    try:
        _say(f"Setting up three nodes in {base} (RU, KZ, DE) on 127.0.0.1 ...")
        nodes = setup(base)
        for n in nodes:
            _say(f"  {n.name:<12} {n.jurisdiction}  {n.url}")
        _say("msk and ala allow EAEU residency and trade only within EAEU; ber keeps to the EU.")
        _say("msk also has a rule, no-transfer-to-de, that denies anything for German nodes.")
        start(nodes)
        _say("All three nodes are running (`relay run`, one SQLite file each).")
        _say()
        ok = narrate(nodes)
        if once:
            remove = ok and keep is None
            return 0 if ok else 1
        how_to_poke(nodes, base, keep is not None)
        stop_event = {"stop": False}

        def _handler(signum: int, frame: object) -> None:
            stop_event["stop"] = True

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        while not stop_event["stop"]:
            for n in nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    _say(f"{n.name} exited ({n.proc.returncode}); stopping the demo")
                    stop_event["stop"] = True
            time.sleep(0.2)
        return 0
    finally:
        stop(nodes)
        if nodes:
            _say("Stopped every node.")
        if remove:
            shutil.rmtree(base, ignore_errors=True)
        elif keep is None:
            _say(f"The nodes' directories and logs are kept in {base}.")
