"""Node key files: Ed25519 private keys as PEM PKCS#8 (DESIGN §3).

Invariants:
- A key file is created with O_CREAT|O_EXCL and mode 0600 in the same call, so
  it is never readable by others, not even for an instant, and an existing
  file is never overwritten.
- A key file is used only if it is a regular file with no group or other
  permission bit, holding an unencrypted Ed25519 PKCS#8 PEM. The mode is read
  from the opened descriptor, so the file checked is the file read.
- Public key strings live in relay.protocol.keystr; this module only touches files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from relay.config.tomledit import fsync_dir
from relay.errors import RelayError

_MAX_KEY_FILE_BYTES = 64 * 1024


class KeyFileError(RelayError):
    """A private key file that cannot be used; `reason` says why, `path` which."""

    status = 500
    code = "key_file"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def generate_key_file(path: Path) -> Ed25519PrivateKey:
    """Create a new Ed25519 key at `path` (mode 0600); FileExistsError if it exists."""
    key = Ed25519PrivateKey.generate()
    write_key_file(path, key)
    return key


def write_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` to a new file at `path` (mode 0600); FileExistsError if it exists."""
    write_secret_file(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


def write_secret_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` (mode 0600); FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits, never added; be exact
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_dir(path.parent)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the node key; KeyFileError names the file and what is wrong with it."""
    data = read_secret_file(path, "`relay init` creates one")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(path, "key file is encrypted; relay needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(path, "not a PEM PKCS#8 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, f"not an Ed25519 key ({type(key).__name__.lstrip('_')})")
    return key


def read_secret_file(path: Path, how_to_create: str) -> bytes:
    """The bytes of a private key file, refused (KeyFileError) unless it is mode 0600-like."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(path, f"no such key file ({how_to_create})") from None
    except OSError as e:
        raise KeyFileError(path, f"cannot open key file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "key file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                path,
                f"key file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
            )
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(path, f"key file is too large ({st.st_size} bytes)")
        return os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(path, f"cannot read key file: {e.strerror}") from None
    finally:
        os.close(fd)


def check_key_file(path: Path) -> str | None:
    """Why the key file at `path` is unusable (path included), or None if it is fine."""
    try:
        load_private_key(path)
    except KeyFileError as e:
        return e.detail
    return None
