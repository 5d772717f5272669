"""Seal key files: a node's HPKE private keys for sealed payloads (protocol §21).

A seal key file holds one line, `<suite>-secret:<unpadded base64>`
(relay.protocol.sealing), and is held to the same rules as the signing key
file (relay.config.keys): created 0600 with O_EXCL, refused if group or
others may read it.
"""

from __future__ import annotations

import os
from pathlib import Path

from relay.config.keys import KeyFileError, read_secret_file, write_secret_file
from relay.errors import MalformedError
from relay.protocol.sealing import (
    HYBRID,
    SealPrivateKey,
    parse_seal_secret,
    seal_secret,
    secret_size,
)

SEAL_KEY_NAME = "node.seal"


def generate_seal_key_file(path: Path, suite: str = HYBRID) -> SealPrivateKey:
    """Create a new seal key at `path` (mode 0600); FileExistsError if it exists."""
    key = seal_secret(suite, os.urandom(secret_size(suite)))
    write_secret_file(path, (key.string + "\n").encode("ascii"))
    return key


def load_seal_key(path: Path) -> SealPrivateKey:
    """Read a seal key file; KeyFileError names the file and what is wrong with it."""
    data = read_secret_file(path, "`relay seal init DIR` creates one")
    try:
        return parse_seal_secret(data.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFileError(path, "not a seal key file (not ASCII)") from None
    except MalformedError as e:
        raise KeyFileError(path, f"not a seal key file: {e.detail}") from None


def check_seal_key_file(path: Path) -> str | None:
    """Why the seal key file at `path` is unusable (path included), or None."""
    try:
        load_seal_key(path)
    except KeyFileError as e:
        return e.detail
    return None
