"""deploy/: the image built and the compose federation run, where a container engine answers.

Skipped, with the reason, where none does: this project's machines and CI have
the docker client only (no daemon), so this runs on an admin's or a
developer's machine with Docker. The images the compose file names must be
there or pullable; where no registry can be reached, RELAY_BASE_IMAGE (the
Dockerfile's BASE, default python:3.11-slim) and RELAY_POSTGRES_IMAGE (default
postgres:15) name local stand-ins (deploy/README.md, "Containers").

The federation's client ports are published on 127.0.0.1 only, on ports this
test picks; its containers talk to each other on the project's own compose
network.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import free_port, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
NODES = {"msk": "msk.demo.ru", "ala": "ala.demo.kz", "ber": "ber.demo.de", "spb": "spb.demo.ru"}
NOFILE = 65536  # compose.yaml's ulimit for the nodes


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _ok(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _compose_command() -> list[str] | None:
    if _ok(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _ok(["docker-compose", "version"]).returncode == 0:
        return ["docker-compose"]
    return None


def _have_image(image: str) -> bool:
    if _ok(["docker", "image", "inspect", image]).returncode == 0:
        return True
    return _ok(["docker", "pull", image]).returncode == 0


@dataclass
class Federation:
    compose: list[str]  # the compose command with the project and its files
    env: dict[str, str]
    ports: dict[str, int]

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def exec(self, node: str, *cmd: str) -> str:
        return _run([*self.compose, "exec", "-T", node, *cmd], self.env, timeout=120)

    def token(self, node: str) -> str:
        return self.exec(node, "cat", f"/var/lib/relay/{node}/tokens.txt").strip()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    """deploy/compose.yaml up, with the image built from this tree; down afterwards."""
    if shutil.which("docker") is None:
        pytest.skip("CONTAINERS NOT TESTED: no docker client on this machine")
    info = _ok(["docker", "info"])
    if info.returncode != 0:
        pytest.skip(
            "CONTAINERS NOT TESTED: no container engine answers (docker info:"
            f" {info.stderr.strip()[:200]}); the image and compose federation need one"
        )
    compose = _compose_command()
    if compose is None:
        pytest.skip("CONTAINERS NOT TESTED: neither `docker compose` nor docker-compose is here")
    base = os.environ.get("RELAY_BASE_IMAGE", "python:3.11-slim")
    postgres = os.environ.get("RELAY_POSTGRES_IMAGE", "postgres:15")
    for image, var in ((base, "RELAY_BASE_IMAGE"), (postgres, "RELAY_POSTGRES_IMAGE")):
        if not _have_image(image):
            pytest.skip(
                f"CONTAINERS NOT TESTED: image {image} is not here and cannot be pulled;"
                f" set {var} to a local one (deploy/README.md, Containers)"
            )
    tag = f"relay-test-{os.getpid()}:latest"
    project = f"relaytest{os.getpid()}"
    # --network host: the build fetches packages from the package index directly
    _run(
        [
            *("docker", "build", "--network", "host", "--build-arg", f"BASE={base}"),
            *("-f", str(REPO / "deploy" / "Dockerfile"), "-t", tag, str(REPO)),
        ]
    )
    ports = {node: free_port() for node in NODES}
    env = {
        **os.environ,
        "RELAY_IMAGE": tag,
        "RELAY_BASE_IMAGE": base,
        "RELAY_POSTGRES_IMAGE": postgres,
        **{f"RELAY_{node.upper()}_PORT": str(port) for node, port in ports.items()},
    }
    files = ["-f", str(COMPOSE_FILE)]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if 0 < hard < NOFILE:
        # An engine started under a lower hard limit cannot hand out compose.yaml's
        # (a node then warns open_files_low and runs).
        override = tmp_path / "limits.yaml"
        limit = f"    ulimits:\n      nofile: {{ soft: {hard}, hard: {hard} }}\n"
        override.write_text("services:\n" + "".join(f"  {n}:\n{limit}" for n in NODES))
        files += ["-f", str(override)]
    command = [*compose, "-p", project, *files]
    try:
        _run([*command, "up", "-d", "--no-build"], env)
        yield Federation(command, env, ports)
    finally:
        logs = _ok([*command, "logs", "--no-color", "--tail", "40"])
        print(logs.stdout[-6000:])
        _ok([*command, "down", "-v", "--remove-orphans"])
        _ok(["docker", "image", "rm", "-f", tag])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _status(fed: Federation, token: str, msg: str) -> dict[str, str]:
    out = relay(
        "status", "--node", fed.url("msk"), "--token", token, msg, "--json", check=False
    )  # fmt: skip
    doc = json.loads(out.stdout)
    return {addr: r["status"] for addr, r in doc["recipients"].items()}


def test_the_compose_federation_carries_a_message(federation: Federation) -> None:
    fed = federation
    tokens = wait_for(
        lambda: {n: fed.token(n) for n in ("msk", "spb")},
        timeout=180,
        what="the setup service's tokens",
    )
    for node in NODES:  # each node ready on its published port
        wait_for(lambda node=node: _ready(fed.url(node)), timeout=180, what=f"{node} ready")
    # msk (SQLite) to spb (PostgreSQL, two workers): RU to RU, as the default residency allows
    out = relay(
        "send", "--node", fed.url("msk"), "--token", tokens["msk"], "--to", "dina@spb.demo.ru",
        "--text", "across the compose federation",
    )  # fmt: skip
    msg = out.stdout.strip()
    wait_for(
        lambda: _status(fed, tokens["msk"], msg) == {"dina@spb.demo.ru": "delivered"},
        timeout=180,
        what="spb's receipt at msk",
    )
    got = relay("inbox", "--node", fed.url("spb"), "--token", tokens["spb"], "--json")
    docs = [json.loads(ln) for ln in got.stdout.splitlines() if ln.strip()]
    assert [(d["id"], d["text"]) for d in docs] == [(msg, "across the compose federation")]
    trace = fed.exec("msk", "relay", "trace", "/var/lib/relay/msk", msg)
    assert "to spb.demo.ru: accepted" in trace, trace
