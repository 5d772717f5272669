"""Network namespaces for the partition tests: a router and one namespace per node.

Topology: namespace R forwards between the node namespaces; node i sits at
10.231.i.2/30 with R at 10.231.i.1 on a veth pair, its default route via R.
Every name and address exists only inside namespaces created here, and
`Net.close` deletes them all (deleting a namespace deletes its veth ends).

A node runs as `ip netns exec NS python -m relay run DIR`; its client calls
go through an `NsClient` living in the same namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import NodeProc, relay

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PORT = 8700


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ip("netns", "exec", ns, *cmd, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"rfprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip without namespaces, or fail when RELAY_REQUIRE_NETNS=1 (CI as root)."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("RELAY_REQUIRE_NETNS") == "1":
        pytest.fail(f"RELAY_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


def _remove_stale() -> None:
    """Delete namespaces left by a test process that was killed before its teardown."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"rf(\d+)(?:r|n\d+)", name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            ip("netns", "del", name, check=False)
        except PermissionError:
            pass  # alive, someone else's


class NsClient:
    """Client API calls made from inside a namespace (tests/fault/nsclient.py)."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "nsclient.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()

    def call(
        self,
        method: str,
        url: str,
        token: str | None = None,
        body: Any = None,
        key: str | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        req = {"method": method, "url": url, "token": token, "body": body, "key": key}
        req["timeout"] = timeout
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        assert line, "the namespace client died"
        doc = json.loads(line)
        return int(doc["status"]), doc.get("body", doc.get("error"))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class NetNode(NodeProc):
    """A node in its own namespace, listening on all of its addresses."""

    ns: str = ""
    address: str = ""
    client: NsClient | None = None

    def init(self) -> None:
        out = relay(
            "init",
            self.dir,
            "--name",
            self.name,
            "--jurisdiction",
            self.jurisdiction,
            "--listen",
            f"0.0.0.0:{self.port}",
            "--public-url",
            f"http://{self.address}:{self.port}",
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("relay peer add")]
        assert lines, f"init printed no peer line: {out.stdout!r}"
        self.peer_line = lines[-1].strip()

    def start(self, *args: str, timeout: float = 30) -> None:
        assert self.ns, f"{self.name} has no namespace"
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.ns),
                *(sys.executable, "-m", "relay", "run", str(self.dir), *args),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.logs()}")
            with open(self.log_path, "rb") as f:
                f.seek(before)
                if b" node_started " in f.read():
                    return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start:\n{self.logs()}")

    def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        """Call this node's client API as its first mailbox, from its namespace."""
        assert self.client is not None
        token = next(iter(self.tokens.values()))
        status, doc = self.client.call(method, f"{self.url}{path}", token, body, key)
        assert status in (200, 202), f"{method} {path}: {status} {doc}"
        return doc


class Net:
    """Namespaces made for one test; `close` removes every one of them."""

    def __init__(self) -> None:
        self.tag = f"rf{os.getpid()}"  # interface names stay within 15 characters
        self.router = f"{self.tag}r"
        self.namespaces: list[str] = []
        self.clients: list[NsClient] = []
        self.nodes: list[NetNode] = []
        self.emulator: subprocess.Popen[str] | None = None

    def open(self) -> None:
        """Make the router namespace; call `close` afterwards even if this fails."""
        _remove_stale()
        self._add_ns(self.router)
        in_ns(self.router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

    def _add_ns(self, ns: str) -> None:
        ip("netns", "del", ns, check=False)  # left over from a killed run
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def router_if(self, i: int) -> str:
        return f"{self.tag}r{i}"

    def subnet(self, i: int) -> str:
        return f"10.231.{i}.0/30"

    def add_node(self, base: Path, i: int, name: str, jurisdiction: str = "RU") -> NetNode:
        """A namespace for node i joined to the router, and the node initialised in it."""
        ns = f"{self.tag}n{i}"
        self._add_ns(ns)
        node_if, router_if = f"{self.tag}n{i}", self.router_if(i)
        ip("link", "add", node_if, "type", "veth", "peer", "name", router_if)
        ip("link", "set", node_if, "netns", ns)
        ip("link", "set", router_if, "netns", self.router)
        ip("-n", ns, "addr", "add", f"10.231.{i}.2/30", "dev", node_if)
        ip("-n", self.router, "addr", "add", f"10.231.{i}.1/30", "dev", router_if)
        ip("-n", ns, "link", "set", node_if, "up")
        ip("-n", self.router, "link", "set", router_if, "up")
        ip("-n", ns, "route", "add", "default", "via", f"10.231.{i}.1")
        node = self.unplaced_node(base, i, name, jurisdiction)
        node.ns = ns
        node.client = NsClient(ns)
        self.clients.append(node.client)
        return node

    def unplaced_node(self, base: Path, i: int, name: str, jurisdiction: str = "RU") -> NetNode:
        """A node initialised at 10.231.i.2 whose namespace is never made (it is dead)."""
        node = NetNode(base / name, name, jurisdiction, PORT, address=f"10.231.{i}.2")
        node.init()
        self.nodes.append(node)
        return node

    def blackhole(self, i: int) -> None:
        """The router silently drops everything for node i's subnet."""
        ip("-n", self.router, "route", "add", "blackhole", self.subnet(i))

    def cut(self, i: int) -> None:
        ip("-n", self.router, "link", "set", self.router_if(i), "down")

    def heal(self, i: int) -> None:
        ip("-n", self.router, "link", "set", self.router_if(i), "up")

    def degrade(self, links: list[int], loss_pct: int, delay_ms: int) -> str:
        """Loss and delay on every packet the router forwards to these links.

        `tc netem` where the kernel has it; otherwise the same done in user
        space by tests/fault/linkemu.py on a TUN device. Returns which.
        """
        netem = [
            "tc", "qdisc", "add", "dev", self.router_if(links[0]), "root",
            "netem", "loss", f"{loss_pct}%", "delay", f"{delay_ms}ms",
        ]  # fmt: skip
        if in_ns(self.router, *netem, check=False).returncode == 0:
            for i in links[1:]:
                netem[4] = self.router_if(i)
                in_ns(self.router, *netem)
            return "tc netem"
        tun = f"{self.tag}t"
        self.emulator = subprocess.Popen(
            [
                "ip", "netns", "exec", self.router, sys.executable, str(HERE / "linkemu.py"),
                tun, str(loss_pct / 100), str(delay_ms), str(os.getpid()),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.emulator.stdout is not None
        assert self.emulator.stdout.readline().strip() == "ready", "linkemu did not start"
        ip("-n", self.router, "link", "set", tun, "up")
        # the reverse path of a forwarded packet is the TUN device, not its veth
        in_ns(
            self.router,
            "sh",
            "-c",
            "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
        )
        ip("-n", self.router, "route", "add", "default", "dev", tun, "table", "100")
        for i in links:
            ip("-n", self.router, "rule", "add", "iif", self.router_if(i), "lookup", "100")
        return "user-space TUN link emulator (this kernel has no netem)"

    def emulator_counts(self) -> dict[str, int]:
        """Stop the user-space emulator and return its packet counts ({} if none)."""
        if self.emulator is None:
            return {}
        self.emulator.terminate()
        out, _ = self.emulator.communicate(timeout=10)
        self.emulator = None
        counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counts

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        for client in self.clients:
            client.close()
        if self.emulator is not None:
            self.emulator.kill()
            self.emulator.wait()
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)
        left = ip("netns", "list").stdout
        assert not any(ns in left.split() for ns in self.namespaces), left
