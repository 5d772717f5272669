"""Reading node.toml and the files it names (key, TLS, certificates, revocation list).

relay.config.parse turns text into a Config without touching the disk and
lists the file checks the text calls for; this module reads node.toml, runs
those checks, and reports their problems at the line of the key that named
the file, in the same `FILE:LINE: key: reason` list as the text's problems.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from relay.config.keys import KeyFileError, load_private_key
from relay.config.model import CONFIG_NAME, Config
from relay.config.parse import (
    FileCheck,
    KeyFileCheck,
    OwnCertificateCheck,
    PasswordFileCheck,
    SealKeyFileCheck,
    TlsFilesCheck,
    TrustFilesCheck,
    parse_document,
    raise_problems,
)
from relay.config.sealkeys import load_seal_key
from relay.config.tls import tls_files_errors
from relay.config.tomledit import KeyPath, atomic_write_text
from relay.errors import FILE_KEY, ConfigError, ConfigErrors, MalformedError
from relay.policy.certs import certificate_lines, decode_line, parse_revoked
from relay.protocol.certificate import open_certificate
from relay.protocol.keystr import key_id, public_key_string


def config_file(path: Path) -> Path:
    """A node directory means its node.toml; a file path is taken as is."""
    return path / CONFIG_NAME if path.is_dir() else path


def load_config(path: Path) -> Config:
    """Load and validate `path` (a node directory or its node.toml); ConfigErrors if bad."""
    file = config_file(path).absolute()
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(str(file), 1, FILE_KEY, _missing(path))]) from None
    except UnicodeDecodeError as e:
        raise ConfigErrors([ConfigError(str(file), 1, FILE_KEY, f"not UTF-8: {e}")]) from None
    except OSError as e:
        raise ConfigErrors([ConfigError(str(file), 1, FILE_KEY, str(e.strerror))]) from None
    try:
        return validate_config(text, file)
    except ConfigErrors as e:
        if file.suffix == ".toml" or e.errors[0].key != "(syntax)":
            raise
        # `relay check DIR/node.key` and the like: say what was expected
        why = f"not TOML, so not a {CONFIG_NAME}; give the node directory or its {CONFIG_NAME}"
        raise ConfigErrors([ConfigError(str(file), 1, FILE_KEY, why)]) from None


def _missing(path: Path) -> str:
    """Why a node's config was not found, and how a node directory is made."""
    make = "`relay init DIR --name NAME --jurisdiction CC` creates a node directory"
    if path.is_dir():
        return f"no such file, so {path} is not a node directory; {make}"
    return f"no such node directory (or {CONFIG_NAME} file); {make}"


def validate_config(text: str, file: Path) -> Config:
    """parse_config, then check the files the text names; ConfigErrors lists both kinds."""
    parsed = parse_document(text, file)
    for key_path, reason in file_problems(parsed.checks):
        parsed.report.add(key_path, reason)
    return raise_problems(parsed.report, parsed.config)


def save_edited(path: Path, read_text: str, new_text: str) -> Config:
    """Validate `new_text` as a whole, then write it over `path` atomically.

    `read_text` is what the editor read from `path`; if the file changed
    since, nothing is written. ConfigErrors (nothing written) either way.
    """
    config = validate_config(new_text, path)
    if path.read_text(encoding="utf-8") != read_text:
        raise ConfigErrors(
            [ConfigError(str(path), 1, FILE_KEY, "changed while editing; try again")]
        )
    atomic_write_text(path, new_text)
    return config


def file_problems(checks: tuple[FileCheck, ...]) -> Iterator[tuple[KeyPath, str]]:
    """Run each check, yielding (key path, reason) for every problem found."""
    for check in checks:
        match check:
            case KeyFileCheck():
                yield from _key_file_problems(check)
            case TlsFilesCheck(tls_cert, tls_key, ca_file):
                for key, problem in tls_files_errors(tls_cert, tls_key, ca_file):
                    yield ("node", key), problem
            case OwnCertificateCheck(file, node_name):
                if (reason := own_certificate_error(file, node_name)) is not None:
                    yield ("node", "certificates"), reason
            case TrustFilesCheck():
                yield from _trust_file_problems(check)
            case SealKeyFileCheck(key, files, revoked):
                for file in files:
                    if (reason := _seal_key_problem(file, revoked)) is not None:
                        yield ("node", key), reason
            case PasswordFileCheck(file):
                try:
                    read_password_file(file)
                except ValueError as e:
                    yield ("storage", "password_file"), str(e)


def _seal_key_problem(file: Path, revoked: tuple[str, ...]) -> str | None:
    try:
        key = load_seal_key(file)
    except KeyFileError as e:
        return e.detail
    if key.public.string in revoked:
        return f"{file} holds a revoked seal key (in revoked_seal_keys); it opens nothing"
    return None


def _key_file_problems(check: KeyFileCheck) -> Iterator[tuple[KeyPath, str]]:
    try:
        signing = public_key_string(load_private_key(check.file).public_key())
    except KeyFileError as e:
        yield ("node", "key_file"), e.detail
        return
    for key in check.revoked:
        if key == signing:
            yield (
                ("node", "revoked_keys"),
                f"{key} is the signing key (key_file); a revoked key never signs: "
                "`relay key revoke DIR KEYID` makes a new signing key first",
            )
    for where, retired in check.retired:
        if key_id(retired) == key_id(signing):
            yield (
                ("node", "retired_keys"),
                f"{where}: {retired} has the key id {key_id(retired)!r} of the signing key",
            )


def _trust_file_problems(check: TrustFilesCheck) -> Iterator[tuple[KeyPath, str]]:
    if check.explicit_dir and not check.certificates_dir.is_dir():
        yield ("trust", "certificates_dir"), f"no such directory: {check.certificates_dir}"
    if check.explicit_revoked and not check.revoked.is_file():
        yield ("trust", "revoked"), f"no such file: {check.revoked}"
    elif check.revoked.is_file():
        for reason in revoked_file_errors(check.revoked):
            yield ("trust", "revoked"), reason


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


_MAX_PASSWORD_BYTES = 4096


def read_password_file(path: Path) -> str:
    """The database password in `path` (one line; a final newline is dropped).

    ValueError naming the file if it is missing, not a regular file, readable
    by group or others (it is a secret, like the node key), or empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"no such password file: {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot open password file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: the password file is not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(
                f"{path}: the password file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, _MAX_PASSWORD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_PASSWORD_BYTES:
        raise ValueError(f"{path}: the password file is larger than {_MAX_PASSWORD_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the password file is not UTF-8") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password or "\n" in password:
        raise ValueError(f"{path}: expected the password on one line")
    return password
