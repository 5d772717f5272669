"""TLS for the node's listener and its outbound connections (DESIGN §9, issue 4.7).

Invariants:
- The listener serves HTTPS exactly when `[node] tls_cert` and `tls_key` are
  both set; the certificate chain and key are PEM files. The key file, like
  node.key, is used only if it is a regular file with no group or other
  permission bit.
- Outbound HTTPS (federation, node documents, webhooks) verifies the peer's
  certificate and host name: against the CAs in `[node] ca_file` alone when
  it is set, else against the system's CAs. Verification is never turned off.
- An encrypted key is refused with a clear reason; nothing here ever prompts
  for a password.
- Files are read when a context is built (start, and SIGHUP for the server
  certificate, so a renewed certificate needs no restart).
"""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from relay.errors import RelayError

if TYPE_CHECKING:
    from cryptography import x509

_MAX_PEM_BYTES = 1024 * 1024


class TLSFileError(RelayError):
    """A certificate, key or CA file that cannot be used: `key` (of node.toml) and `reason`."""

    status = 500
    code = "tls_file"

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class _Encrypted(RelayError):
    """Raised from the password callback: relay never decrypts a TLS key."""


def _refuse_password() -> bytes:
    raise _Encrypted("the key file is encrypted")


def private_file_error(path: Path) -> str | None:
    """Why `path` is not usable as a private key file (missing, not regular, too open)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: not a regular file"
    if st.st_mode & 0o077:
        return (
            f"{path}: key file is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An SSL context serving `cert` (PEM chain) with `key`; TLSFileError says what is wrong."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_server_files(ctx, cert, key)
    return ctx


def load_server_files(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """(Re)load the certificate chain and key into `ctx`; new handshakes use them."""
    if (reason := private_file_error(key)) is not None:
        raise TLSFileError("tls_key", reason)
    if (reason := certificate_file_error(cert)) is not None:
        raise TLSFileError("tls_cert", reason)
    try:
        ctx.load_cert_chain(cert, key, password=_refuse_password)
    except _Encrypted:
        raise TLSFileError(
            "tls_key", f"{key} is encrypted; relay needs an unencrypted key (mode 0600)"
        ) from None
    except ssl.SSLError as e:
        raise TLSFileError(
            "tls_key", f"{key} is not a PEM private key matching {cert} ({e.reason or e})"
        ) from None
    except OSError as e:
        raise TLSFileError("tls_key", f"{key}: cannot read: {e.strerror or e}") from None


def reload_server_files(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load renewed files into a serving `ctx`, only once a fresh context took them.

    A pair that fails half-way would leave `ctx` with a certificate and a key
    that do not match, so the files are tried on a new context first.
    """
    server_context(cert, key)
    load_server_files(ctx, cert, key)


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the CAs of `ca_file` only, else the system's CAs."""
    if ca_file is None:
        return ssl.create_default_context()
    if (reason := ca_file_error(ca_file)) is not None:
        raise TLSFileError("ca_file", reason)
    return ssl.create_default_context(cafile=str(ca_file))


def certificate_file_error(path: Path, *, now: datetime.datetime | None = None) -> str | None:
    """Why `path` is not a PEM certificate chain in force now, or None."""
    certs = _read_certificates(path)
    if isinstance(certs, str):
        return certs
    leaf = certs[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        return f"{path}: the certificate expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
    return None


def ca_file_error(path: Path) -> str | None:
    """Why `path` is not a PEM file of CA certificates, or None."""
    certs = _read_certificates(path)
    if isinstance(certs, str):
        return certs
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as e:
        return f"{path}: not usable as CA certificates ({e.reason or e})"
    return None


def _read_certificates(path: Path) -> list[x509.Certificate] | str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"no such file: {path}"
    except IsADirectoryError:
        return f"{path}: not a regular file"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror}"
    if len(data) > _MAX_PEM_BYTES:
        return f"{path}: over {_MAX_PEM_BYTES} bytes; not a certificate file"
    # here, not at the top: `relay send` and the other client commands import this
    # module for client_context, and cryptography.x509 is a tenth of their start-up
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"{path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
    return certs


def tls_files_errors(
    cert: Path | None, key: Path | None, ca_file: Path | None
) -> list[tuple[str, str]]:
    """Problems of the configured TLS files as (node.toml key, reason) pairs."""
    problems: list[tuple[str, str]] = []
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        present = "tls_cert" if key is None else "tls_key"
        problems.append((present, f"{present} needs {missing} as well (HTTPS needs both)"))
    elif cert is not None and key is not None:
        key_problem = private_file_error(key)
        cert_problem = certificate_file_error(cert)
        if key_problem is not None:
            problems.append(("tls_key", key_problem))
        if cert_problem is not None:
            problems.append(("tls_cert", cert_problem))
        if key_problem is None and cert_problem is None:
            try:
                server_context(cert, key)
            except TLSFileError as e:
                problems.append((e.key, e.reason))
    if ca_file is not None and (reason := ca_file_error(ca_file)) is not None:
        problems.append(("ca_file", reason))
    return problems
