"""What the consistency proofs between peers (Relay-Tree-Proof, docs/protocol.md §19) cost.

Prints process CPU, best of three, for the work done once per pair of heads
(the sender builds the proof from the right edge of its tree at the earlier
size and the leaves since; the receiver decodes and verifies it once per new
head) and for what each batch pays (the sender looks the header value up, the
receiver compares it with the last one seen), with the header's size, for
logs of several sizes and a minute of entries between heads.

    python3 scripts/tree_proof_cost.py [--per-minute 60000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from collections.abc import Callable

from relay.errors import ProofFailed
from relay.protocol.audit import TreeProof, parse_tree_proof_header, tree_proof_header
from relay.protocol.merkle import consistency_proof_after, verify_consistency


def best(fn: Callable[[], object], repeat: int = 1) -> float:
    """Least process CPU seconds per call of `fn` over three rounds of `repeat` calls."""
    out = []
    for _ in range(3):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        out.append((time.process_time() - t) / repeat)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-minute", type=int, default=60_000, help="entries between two heads")
    args = ap.parse_args()
    span = args.per_minute
    tail = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(span)]
    for m in (10_000, 1_000_000, 1 << 30, (1 << 40) + 12345):
        # The edge of a tree of m leaves: its perfect subtrees, any hashes will do.
        edge = tuple(
            (1 << b, hashlib.sha256(bytes([b])).digest())
            for b in reversed(range(m.bit_length()))
            if m >> b & 1
        )
        n = m + span
        proof = consistency_proof_after(edge, tail)
        header = tree_proof_header(TreeProof(m, tuple(proof)))
        build = best(
            lambda e=edge, k=m: tree_proof_header(
                TreeProof(k, tuple(consistency_proof_after(e, tail)))
            )
        )
        parsed = parse_tree_proof_header(header)

        def check(p: TreeProof = parsed, k: int = n) -> None:
            with contextlib.suppress(ProofFailed):  # made-up roots: the work is the cost
                verify_consistency(p.from_size, k, b"\0" * 32, b"\1" * 32, p.hashes)

        receive = best(lambda h=header, c=check: c(parse_tree_proof_header(h)), repeat=2000)
        cache = {(m, n): header}
        seen = {"a.test": ("head", header)}
        per_batch = best(
            lambda k=(m, n), h=header, c=cache, s=seen: (
                c.get(k),
                s.get("a.test") == ("head", h),
            ),
            repeat=100_000,
        )
        print(
            f"log of {m} entries, +{span}: proof of {len(proof)} hashes,"
            f" header {len(header)} bytes; build once per pair {build * 1e3:.1f} ms;"
            f" check once per new head {receive * 1e6:.0f} µs; per batch {per_batch * 1e9:.0f} ns"
        )


if __name__ == "__main__":
    main()
