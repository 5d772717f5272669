"""TLS (issue 4.7, docs/tls.md): HTTPS listener, verified outbound, `--ca-file`.

Every certificate is made here: a CA, and a server certificate for 127.0.0.1
and localhost that it signs. Nodes run in-process on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.tls import TLSFileError, client_context
from relay.errors import ConfigErrors
from relay.node.app import Node
from relay.protocol.keystr import public_key_string
from relay.storage.records import PeerState
from relay.storage.sqlite.store import sqlite_store
from tests.inprocess import PeerLine, start_node, token, write_node

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = aiohttp.ClientTimeout(total=15)
UTC = datetime.UTC


@dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def make_ca(name: str) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(key, cert)


def issue(
    ca: CA, directory: Path, name: str = "server", *, days: float = 1, mode: int = 0o600
) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost; return (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(mode)
    return cert_file, key_file


def add_node_keys(directory: Path, **values: str) -> None:
    """Add string keys to [node] of the node.toml write_node wrote."""
    file = directory / "node.toml"
    lines = "".join(f'{k} = "{v}"\n' for k, v in values.items())
    text = file.read_text()
    file.write_text(text.replace('key_file = "node.key"\n', f'key_file = "node.key"\n{lines}', 1))


def problems(directory: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(directory)
    return [f"{e.key}: {e.reason}" for e in info.value.errors]


def https_url(node: Node) -> str:
    return f"https://127.0.0.1:{node.port}"


# --- config --------------------------------------------------------------------------------


def test_tls_files_load_and_public_url_defaults_to_https(tmp_path: Path) -> None:
    ca = make_ca("test CA")
    issue(ca, tmp_path)
    ca.write(tmp_path / "ca.pem")
    write_node(tmp_path, "b.test")
    add_node_keys(tmp_path, tls_cert="server.crt", tls_key="server.key", ca_file="ca.pem")
    node = load_config(tmp_path).node
    assert (node.tls_cert, node.tls_key, node.ca_file) == (
        tmp_path / "server.crt",
        tmp_path / "server.key",
        tmp_path / "ca.pem",
    )
    assert node.public_url == "https://127.0.0.1:0"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("key readable by group", "node.tls_key: "),
        ("key of another certificate", "node.tls_key: "),
        ("expired certificate", "node.tls_cert: "),
        ("encrypted key", "node.tls_key: "),
        ("missing CA file", "node.ca_file: no such file"),
        ("CA file without certificates", "node.ca_file: "),
    ],
)
def test_bad_tls_files_are_refused(tmp_path: Path, case: str, expected: str) -> None:
    ca = make_ca("test CA")
    cert, key = issue(ca, tmp_path, days=-1 if case == "expired certificate" else 1)
    values = {"tls_cert": cert.name, "tls_key": key.name}
    reason = {
        "key readable by group": "mode 0640",
        "key of another certificate": "is not a PEM private key matching",
        "expired certificate": "the certificate expired at",
        "encrypted key": "is encrypted",
        "missing CA file": "no such file",
        "CA file without certificates": "no PEM certificate",
    }[case]
    if case == "key readable by group":
        key.chmod(0o640)
    elif case == "key of another certificate":
        _, other = issue(ca, tmp_path, "other")
        values["tls_key"] = other.name
    elif case == "encrypted key":
        pem = serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        key.write_bytes(pem)
    elif case == "missing CA file":
        values["ca_file"] = "nowhere.pem"
    elif case == "CA file without certificates":
        (tmp_path / "empty.pem").write_text("nothing here\n")
        values["ca_file"] = "empty.pem"
    write_node(tmp_path, "b.test")
    add_node_keys(tmp_path, **values)
    found = problems(tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(expected) and reason in found[0], found


def test_the_cli_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TLSFileError, match="no such file"):
        client_context(tmp_path / "nowhere.pem")


# --- two nodes over https -------------------------------------------------------------------


async def inbox_texts(session: aiohttp.ClientSession, url: str) -> set[str]:
    async with session.get(
        url + "/v1/inbox?limit=100",
        headers={"Authorization": f"Bearer {token('bob')}"},
        timeout=TIMEOUT,
    ) as resp:
        doc: dict[str, Any] = await resp.json()
        assert resp.status == 200, doc
        return {m.get("text", "") for m in doc["messages"]}


async def submit(session: aiohttp.ClientSession, node: Node, text: str) -> str:
    async with session.post(
        f"http://127.0.0.1:{node.port}/v1/messages",
        json={"to": ["bob@b.test"], "text": text},
        headers={"Authorization": f"Bearer {token('alice')}"},
        timeout=TIMEOUT,
    ) as resp:
        doc: dict[str, Any] = await resp.json()
        assert resp.status == 202, doc
        return str(doc["id"])


async def wait_for(probe: Any, what: str, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {got!r}")
        await asyncio.sleep(0.05)


async def relay_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_nodes_deliver_over_https_only_to_a_trusted_issuer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.federation.out")
    ca, stranger = make_ca("federation CA"), make_ca("some other CA")
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a_dir, b_dir, c_dir):
        d.mkdir()
    a_key = public_key_string(generate_key_file(a_dir / "node.key").public_key())
    c_key = public_key_string(generate_key_file(c_dir / "node.key").public_key())
    b_key = write_node(
        b_dir, "b.test", peers=[PeerLine("a.test", a_key), PeerLine("c.test", c_key)]
    )
    issue(ca, b_dir)
    add_node_keys(b_dir, tls_cert="server.crt", tls_key="server.key")
    b = await start_node(b_dir)
    nodes = [b]
    try:
        b_url = https_url(b)
        # a.test trusts the CA that issued b.test's certificate; c.test trusts another one.
        write_node(a_dir, "a.test", peers=[PeerLine("b.test", b_key, b_url)])
        add_node_keys(a_dir, ca_file=str(ca.write(a_dir / "ca.pem")))
        write_node(c_dir, "c.test", peers=[PeerLine("b.test", b_key, b_url)])
        add_node_keys(c_dir, ca_file=str(stranger.write(c_dir / "ca.pem")))
        a = await start_node(a_dir)
        nodes.append(a)
        c = await start_node(c_dir)
        nodes.append(c)

        trusting = aiohttp.TCPConnector(ssl=client_context(a_dir / "ca.pem"))
        async with aiohttp.ClientSession(connector=trusting) as s:
            async with s.get(b_url + "/.well-known/relay", timeout=TIMEOUT) as resp:
                doc = await resp.json()
            assert doc["name"] == "b.test" and doc["url"].startswith("https://")

            await submit(s, a, "over https")
            await submit(s, c, "from an untrusting node")
            got = await wait_for(lambda: inbox_texts(s, b_url), "a.test's message at b.test")
            assert got == {"over https"}

            assert c.state is not None
            store = c.state.store

            async def failing() -> PeerState | None:
                st = await store.peer_state("b.test")
                return st if st.failures >= 2 else None

            state = await wait_for(failing, "c.test backing off from b.test")
            assert "certificate verify failed" in state.last_error.lower(), state.last_error
            assert state.next_try > 0
            queued = await sqlite_store(store).fetchall(
                "SELECT rid FROM queue WHERE hop = 'b.test'"
            )
            assert len(queued) == 1
            assert await inbox_texts(s, b_url) == {"over https"}
        logged = [r for r in caplog.records if r.getMessage() == "delivery"]
        assert any(
            "certificate verify failed" in str(getattr(r, "relay_fields", {}).get("error", ""))
            for r in logged
        ), [getattr(r, "relay_fields", None) for r in logged]
    finally:
        for n in reversed(nodes):
            await n.stop()


@pytest.mark.slow
async def test_cli_send_verifies_the_node_with_ca_file(tmp_path: Path) -> None:
    ca = make_ca("client CA")
    write_node(tmp_path, "b.test")
    issue(ca, tmp_path)
    add_node_keys(tmp_path, tls_cert="server.crt", tls_key="server.key")
    ca_file = ca.write(tmp_path / "ca.pem")
    b = await start_node(tmp_path)
    try:
        url = https_url(b)
        send = ("send", "--node", url, "--token", token("alice"), "--to", "bob@b.test")
        rc, out, err = await relay_cli(*send, "--text", "one", "--ca-file", str(ca_file))
        assert rc == 0, err
        assert len(out.strip()) == 32
        rc, out, err = await relay_cli(*send, "--text", "two", env={"RELAY_CA_FILE": str(ca_file)})
        assert rc == 0, err
        rc, out, err = await relay_cli(*send, "--text", "three", env={"RELAY_CA_FILE": ""})
        assert rc == 1 and out == ""
        assert "certificate verify failed" in err.lower(), err
        trusting = aiohttp.TCPConnector(ssl=client_context(ca_file))
        async with aiohttp.ClientSession(connector=trusting) as s:
            assert await inbox_texts(s, url) == {"one", "two"}
    finally:
        await b.stop()


async def test_sighup_serves_a_renewed_certificate(tmp_path: Path) -> None:
    ca = make_ca("renewing CA")
    write_node(tmp_path, "b.test")
    issue(ca, tmp_path, "server")
    add_node_keys(tmp_path, tls_cert="server.crt", tls_key="server.key")
    b = await start_node(tmp_path)
    try:
        assert await served_name(b, ca) == "server"
        renewed_cert, renewed_key = issue(ca, tmp_path, "renewed")
        os.replace(renewed_cert, tmp_path / "server.crt")
        os.replace(renewed_key, tmp_path / "server.key")
        assert (await b.reload()).applied
        assert await served_name(b, ca) == "renewed"
    finally:
        await b.stop()


async def served_name(node: Node, ca: CA) -> str:
    """The common name of the certificate the node presents in a new handshake."""
    ctx = ssl.create_default_context(
        cadata=ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    _, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cn.value)
    finally:
        writer.close()
        await writer.wait_closed()
