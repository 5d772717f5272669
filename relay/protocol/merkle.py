"""Merkle trees as RFC 9162 §2.1 defines them: leaf and node hashing, inclusion and
consistency proofs, and their verification. Pure: hashes in, hashes or ProofFailed out.

Invariants:
- A leaf hash is SHA-256(0x00 || entry bytes); an interior node is
  SHA-256(0x01 || left || right); the root of no leaves is SHA-256 of nothing.
  The tree over n leaves splits at k, the largest power of two below n (MTH).
- Proof builders take the leaf hashes (not the entries), so a store that keeps
  leaf hashes builds proofs without re-reading entries.
- Verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 and raise ProofFailed (a
  RelayError) naming what did not match; a proof of the wrong length never
  indexes past its end.
- `Frontier` keeps the right edge of a growing tree (one hash per set bit of
  its size), so appending a leaf and asking the root cost O(log n).
- A consistency proof from m to n names subtrees that are either on the right
  edge of the tree at m or after m, so `consistency_proof_after` builds it from
  that edge and the leaves m..n alone, without the first m leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from relay.errors import ProofFailed

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """MTH of one entry: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash over these leaf hashes."""
    return _mth(leaves, 0, len(leaves))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf `index` in the tree over `leaves`."""
    if not 0 <= index < len(leaves):
        raise ProofFailed(f"leaf {index} is not in a tree of {len(leaves)} entries")
    path: list[bytes] = []
    lo, hi, m = 0, len(leaves), index
    # Walk down from the root; each step records the sibling subtree's hash.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]): shows the tree of `old_size` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise ProofFailed(f"a tree of {old_size} entries cannot precede one of {n}")
    return _consistency(old_size, n, lambda lo, hi: _mth(leaves, lo, hi))


def consistency_proof_after(
    old_edge: Sequence[tuple[int, bytes]], tail: Sequence[bytes]
) -> list[bytes]:
    """PROOF(m, D[m + len(tail)]) without the first m leaves: from the right edge of the
    tree at m (`Frontier.edge()`) and the leaf hashes appended after it.

    Every subtree such a proof names either lies in the old tree, where it is
    one of the perfect subtrees of its right edge, or after it, in `tail`.
    """
    m = sum(count for count, _ in old_edge)
    blocks: dict[tuple[int, int], bytes] = {}
    start = 0
    for count, h in old_edge:
        blocks[(start, count)] = h
        start += count

    def mth(lo: int, hi: int) -> bytes:
        if lo >= m:
            return _mth(tail, lo - m, hi - m)
        found = blocks.get((lo, hi - lo))
        if found is None:  # cannot happen for a well-formed edge; say so rather than guess
            raise ProofFailed(f"entries {lo}..{hi} are not a subtree of the edge at {m}")
        return found

    return _consistency(m, m + len(tail), mth)


def _consistency(m: int, n: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], true), with subtree hashes from `mth(lo, hi)`."""
    if m in (0, n):
        return []
    path: list[bytes] = []
    lo, hi, whole = 0, n, True
    while True:
        if m == hi - lo:
            if not whole:
                path.append(mth(lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            path.append(mth(lo + k, hi))
            hi = lo + k
        else:
            path.append(mth(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    path.reverse()
    return path


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofFailed(f"{what}: hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` gives leaf hash `leaf` at `index` of a tree of `size`
    (RFC 9162 §2.1.3.2); ProofFailed if the proof has the wrong shape."""
    what = f"inclusion proof of entry {index} in a tree of {size}"
    if not 0 <= index < size:
        raise ProofFailed(f"{what}: the entry is outside the tree")
    _check_hashes(proof, what)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofFailed(f"{what}: {len(proof)} hashes are too many")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofFailed(f"{what}: {len(proof)} hashes are too few")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """ProofFailed unless `proof` puts leaf hash `leaf` at `index` under `expected_root`."""
    if root_from_inclusion(index, size, leaf, proof) != expected_root:
        raise ProofFailed(
            f"inclusion proof of entry {index} in a tree of {size}: "
            "the proof does not lead to the tree head's root"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """ProofFailed unless the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`)
    (RFC 9162 §2.1.4.2); the detail says which side failed."""
    what = f"consistency of {old_size} entries with {new_size}"
    if not 0 <= old_size <= new_size:
        raise ProofFailed(f"{what}: the later tree is smaller, so it cannot extend the earlier")
    _check_hashes(proof, what)
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofFailed(f"{what}: the proof must be empty, it has {len(proof)} hashes")
        if old_size == new_size and old_root != new_root:
            raise ProofFailed(f"{what}: two different roots for the same size: history differs")
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise ProofFailed(f"{what}: the proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofFailed(f"{what}: {len(proof)} hashes are too many")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofFailed(f"{what}: {len(proof)} hashes are too few")
    if fr != old_root:
        raise ProofFailed(f"{what}: the proof does not lead to the earlier root")
    if sr != new_root:
        raise ProofFailed(
            f"{what}: the later tree does not extend the earlier one (history was rewritten)"
        )


class Frontier:
    """The right edge of a growing tree: the roots of its perfect subtrees, largest first."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (leaf count, subtree root)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        count, h = 1, leaf
        while self._stack and self._stack[-1][0] == count:
            _, left = self._stack.pop()
            h = node_hash(left, h)
            count *= 2
        self._stack.append((count, h))
        self.size += 1

    def edge(self) -> tuple[tuple[int, bytes], ...]:
        """The right edge now: (leaf count, subtree root) per perfect subtree, largest
        first; with the leaves after it, enough for a consistency proof from this size
        (`consistency_proof_after`)."""
        return tuple(self._stack)

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h
