"""Reading node.toml and the files it names (key, certificates, revocation list)."""

from __future__ import annotations

from pathlib import Path

from relay.config.model import CONFIG_NAME
from relay.errors import MalformedError
from relay.policy.certs import certificate_lines, decode_line, parse_revoked
from relay.protocol.certificate import open_certificate


def config_file(path: Path) -> Path:
    """A node directory means its node.toml; a file path is taken as is."""
    return path / CONFIG_NAME if path.is_dir() else path


def own_certificate_error(path: Path, node_name: str | None) -> str | None:
    """Why `path` is not a certificate file for this node (one base64 line), or None."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return f"no such certificate file: {path}"
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: cannot read: {e}"
    lines = certificate_lines(text)
    if len(lines) != 1:
        return f"{path}: expected one certificate line, found {len(lines)}"
    try:
        cert, _, _ = open_certificate(decode_line(lines[0][1]))
    except MalformedError as e:
        return f"{path}: {e.detail}"
    if node_name is not None and cert.name != node_name:
        return f"{path}: the certificate is for {cert.name!r}, not this node {node_name!r}"
    return None


def revoked_file_errors(path: Path) -> list[str]:
    """Problems of a revocation list file, each as `FILE:LINE: reason`."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        return [f"{path}: cannot read: {e}"]
    return [f"{path}:{line}: {reason}" for line, reason in parse_revoked(text)[1]]
