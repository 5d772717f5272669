"""Key files: created 0600 and never overwritten; loaded only when private and Ed25519."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from relay.config.keys import KeyFileError, check_key_file, generate_key_file, load_private_key


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def test_generate_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    made = generate_key_file(path)
    loaded = load_private_key(path)
    assert raw_public(loaded) == raw_public(made)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert check_key_file(path) is None


def test_generated_file_is_0600_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "node.key"
        generate_key_file(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_file(path)
    assert path.read_bytes() == before


def test_generate_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "node.key"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        generate_key_file(link)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o620, 0o610])
def test_load_refuses_group_or_other_bits(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    generate_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.path == path
    assert info.value.detail == (
        f"{path}: key file is accessible by group or others (mode {mode:04o}); "
        f"run: chmod 600 {path}"
    )
    assert check_key_file(path) == info.value.detail


def test_load_accepts_owner_read_only(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    generate_key_file(path)
    path.chmod(0o400)
    load_private_key(path)


def test_load_refuses_non_ed25519_pem(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    write_private(path, pem)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.reason.startswith("not an Ed25519 key")
    assert str(path) in info.value.detail


def test_load_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_private(path, b"-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.reason == "not a PEM PKCS#8 private key"


def test_load_refuses_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
    )
    write_private(path, pem)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(path)


def test_load_refuses_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    assert check_key_file(missing) == f"{missing}: no such key file (`relay init` creates one)"
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    assert check_key_file(directory) == f"{directory}: key file is not a regular file"
