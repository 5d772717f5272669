"""relay.protocol.merkle against Certificate Transparency's test tree and, by property,
against RFC 9162 §2.1's recursive definitions written out plainly below."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ProofFailed, RelayError
from relay.protocol.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    consistency_proof_after,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "rfc6962-merkle.json").read_text("utf-8")
)
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]


# --- RFC 9162 §2.1, transcribed as directly as Python allows -------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) over entries (not leaf hashes)."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


entries = st.lists(st.binary(max_size=8), min_size=1, max_size=20)
some = settings(max_examples=60, deadline=None)


# --- vectors ----------------------------------------------------------------------


def test_empty_tree_root() -> None:
    assert root([]) == EMPTY_ROOT == bytes.fromhex(VECTORS["empty_root"])


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_of_the_ct_test_tree(n: int) -> None:
    assert root(LEAVES[:n]).hex() == VECTORS["roots"][n - 1]


@pytest.mark.parametrize("case", VECTORS["inclusion"])
def test_inclusion_vectors(case: dict[str, object]) -> None:
    index, size = int(str(case["index"])), int(str(case["size"]))
    path = [bytes.fromhex(h) for h in case["path"]]  # type: ignore[attr-defined]
    assert inclusion_proof(index, LEAVES[:size]) == path
    verify_inclusion(index, size, LEAVES[index], path, root(LEAVES[:size]))


@pytest.mark.parametrize("case", VECTORS["consistency"])
def test_consistency_vectors(case: dict[str, object]) -> None:
    old, size = int(str(case["old_size"])), int(str(case["size"]))
    path = [bytes.fromhex(h) for h in case["path"]]  # type: ignore[attr-defined]
    assert consistency_proof(old, LEAVES[:size]) == path
    verify_consistency(old, size, root(LEAVES[:old]), root(LEAVES[:size]), path)


@pytest.mark.parametrize("case", VECTORS["consistency"])
def test_consistency_vectors_from_the_edge(case: dict[str, object]) -> None:
    old, size = int(str(case["old_size"])), int(str(case["size"]))
    f = Frontier()
    for h in LEAVES[:old]:
        f.append(h)
    path = [bytes.fromhex(h) for h in case["path"]]  # type: ignore[attr-defined]
    assert consistency_proof_after(f.edge(), LEAVES[old:size]) == path


def test_the_edge_gives_every_proof_the_whole_tree_gives() -> None:
    """Every (m, n) up to 70 leaves: the proof from the edge at m and leaves m..n alone
    is the proof from all n leaves (the sender never rereads the first m)."""
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
    f = Frontier()
    for m in range(1, len(leaves)):
        f.append(leaves[m - 1])
        edge = f.edge()
        assert sum(count for count, _ in edge) == m
        for n in range(m, len(leaves) + 1):
            proof = consistency_proof_after(edge, leaves[m:n])
            assert proof == consistency_proof(m, leaves[:n]), (m, n)
            verify_consistency(m, n, root(leaves[:m]), root(leaves[:n]), proof)


def test_an_edge_from_another_history_gives_a_proof_that_fails() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(9)]
    forged = Frontier()
    for h in [leaf_hash(b"x"), *leaves[1:5]]:
        forged.append(h)
    proof = consistency_proof_after(forged.edge(), leaves[5:])
    with pytest.raises(ProofFailed, match="earlier root"):
        verify_consistency(5, 9, root(leaves[:5]), root(leaves), proof)


# --- properties against the definitions --------------------------------------------


@some
@given(entries)
def test_root_and_frontier_match_mth(d: list[bytes]) -> None:
    leaves = [leaf_hash(e) for e in d]
    f = Frontier()
    for i, h in enumerate(leaves):
        f.append(h)
        assert f.size == i + 1
        assert f.root() == ref_mth(d[: i + 1])
    assert root(leaves) == ref_mth(d)


@some
@given(entries, st.data())
def test_inclusion_matches_path_and_verifies(d: list[bytes], data: st.DataObject) -> None:
    m = data.draw(st.integers(0, len(d) - 1))
    leaves = [leaf_hash(e) for e in d]
    proof = inclusion_proof(m, leaves)
    assert proof == ref_path(m, d)
    verify_inclusion(m, len(d), leaves[m], proof, ref_mth(d))


@some
@given(entries, st.data())
def test_consistency_matches_subproof_and_verifies(d: list[bytes], data: st.DataObject) -> None:
    m = data.draw(st.integers(1, len(d)))
    leaves = [leaf_hash(e) for e in d]
    proof = consistency_proof(m, leaves)
    assert proof == ref_subproof(m, d, True)
    verify_consistency(m, len(d), ref_mth(d[:m]), ref_mth(d), proof)


@some
@given(entries, st.data())
def test_a_changed_leaf_fails_inclusion(d: list[bytes], data: st.DataObject) -> None:
    m = data.draw(st.integers(0, len(d) - 1))
    leaves = [leaf_hash(e) for e in d]
    proof = inclusion_proof(m, leaves)
    with pytest.raises(ProofFailed, match="does not lead"):
        verify_inclusion(m, len(d), leaf_hash(d[m] + b"x"), proof, root(leaves))


@some
@given(entries, st.data())
def test_rewritten_history_fails_consistency(d: list[bytes], data: st.DataObject) -> None:
    """Change one entry of the old prefix: the new tree no longer extends the old head."""
    m = data.draw(st.integers(1, len(d)))
    i = data.draw(st.integers(0, m - 1))
    old_root = ref_mth(d[:m])
    rewritten = [*d[:i], d[i] + b"!", *d[i + 1 :]]
    leaves = [leaf_hash(e) for e in rewritten]
    proof = consistency_proof(m, leaves)
    with pytest.raises(ProofFailed):
        verify_consistency(m, len(d), old_root, root(leaves), proof)


@given(
    st.integers(0, 70),
    st.integers(0, 70),
    st.lists(st.binary(min_size=0, max_size=40), max_size=10),
    st.binary(max_size=40),
)
def test_hostile_proofs_raise_only_proof_failed(
    index: int, size: int, proof: list[bytes], leaf: bytes
) -> None:
    for call in (
        lambda: root_from_inclusion(index, size, leaf, proof),
        lambda: verify_consistency(index, size, leaf, leaf, proof),
    ):
        try:
            call()
        except RelayError as e:
            assert isinstance(e, ProofFailed)


@pytest.mark.parametrize(
    ("old", "new", "proof_len", "match"),
    [
        (5, 3, 0, "smaller"),
        (3, 3, 1, "must be empty"),
        (0, 4, 2, "must be empty"),
        (3, 8, 0, "empty"),
        (3, 8, 9, "too many"),
        (3, 8, 1, "too few"),
    ],
)
def test_consistency_shapes_are_named(old: int, new: int, proof_len: int, match: str) -> None:
    with pytest.raises(ProofFailed, match=match):
        verify_consistency(old, new, LEAVES[0], LEAVES[1], [LEAVES[2]] * proof_len)


def test_same_size_different_roots_is_named() -> None:
    with pytest.raises(ProofFailed, match="history differs"):
        verify_consistency(4, 4, LEAVES[0], LEAVES[1], [])


def test_inclusion_shapes_are_named() -> None:
    with pytest.raises(ProofFailed, match="outside"):
        root_from_inclusion(8, 8, LEAVES[0], [])
    with pytest.raises(ProofFailed, match="too few"):
        root_from_inclusion(0, 8, LEAVES[0], [])
    with pytest.raises(ProofFailed, match="too many"):
        root_from_inclusion(0, 2, LEAVES[0], [LEAVES[1]] * 3)
    with pytest.raises(ProofFailed, match="33 bytes"):
        root_from_inclusion(0, 2, LEAVES[0], [b"x" * 33])
    with pytest.raises(ProofFailed, match="not in a tree"):
        inclusion_proof(3, LEAVES[:3])
