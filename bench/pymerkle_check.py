"""pymerkle 7.0.0 against RFC 6962 and against ledger/merkle.py.

    .venv/bin/python bench/pymerkle_check.py [--leaves 10000] [--repeat 5]

1. The Certificate Transparency vectors (loaded from tests/ledger/test_merkle.py: roots for
   sizes 0..8, inclusion paths, consistency proofs) against pymerkle's InmemoryTree (SHA-256,
   security prefixes on, so leaf = H(0x00 || d) and node = H(0x01 || l || r) as in the RFC).
   pymerkle's inclusion path starts with the leaf hash itself and its consistency path with
   the proof's base; both are compared as given and with that first hash dropped.
2. Speed at `--leaves` leaves: one append (leaf hash + Frontier.append for ours, append_entry
   for pymerkle, which also hashes the leaf), the same with a root after each append (what a
   signed tree head needs), and inclusion / consistency proof generation (mean over indices
   spread over the tree). Best of `--repeat` runs.

Ends with `RESULT pymerkle_matches_rfc6962=<0|1> roots=<0|1> inclusion=<0|1> consistency=<0|1>
ours_proof_ms=... pymerkle_proof_ms=... ours_append_us=... pymerkle_append_us=...`.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from pymerkle import InmemoryTree

from ledger.merkle import Frontier, consistency_proof, inclusion_proof, leaf_hash

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "ledger" / "test_merkle.py"


def load_vectors():
    spec = importlib.util.spec_from_file_location("merkle_vectors", VECTORS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_vectors(v) -> dict[str, bool]:
    """pymerkle on every vector; prints the mismatches."""
    ok = {"roots": InmemoryTree().get_root() == v.EMPTY_TREE_HASH}
    for n in range(1, 9):
        got = InmemoryTree.init_from_entries(v.LEAF_DATA[:n]).get_root()
        ok["roots"] &= got == v.ROOTS[n - 1]
    tree = InmemoryTree.init_from_entries(v.LEAF_DATA)

    ok["inclusion"] = True
    for index, size, path in v.INCLUSION:
        got = tree.prove_inclusion(index + 1, size).path  # pymerkle counts leaves from 1
        match = got[1:] == path and got[0] == v.LEAVES[index]
        ok["inclusion"] &= match
        if not match:
            print(f"  inclusion {index}/{size}: pymerkle {len(got)} hashes, RFC {len(path)}")

    ok["consistency"] = True
    for old, new, proof in v.CONSISTENCY:
        if old == new:  # RFC: empty proof; pymerkle returns the old root as its base
            continue
        got = tree.prove_consistency(old, new).path
        match = proof in (got, got[1:])
        ok["consistency"] &= match
        if not match:
            shared = len(set(got) & set(proof))
            print(
                f"  consistency {old}->{new}: pymerkle {len(got)} hashes, RFC {len(proof)} "
                f"({shared} in common)"
            )
    return ok


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(n: int, repeat: int) -> dict[str, dict[str, float]]:
    data = [i.to_bytes(8, "big") for i in range(n)]
    leaves = [leaf_hash(d) for d in data]
    indices = [0, n // 3, n // 2, n - 1]
    olds = [1, n // 3, n // 2 + 1, n - 1]

    def ours_append():
        f = Frontier()
        for d in data:
            f.append(leaf_hash(d))

    def ours_append_root():
        f = Frontier()
        for d in data:
            f.append(leaf_hash(d))
            f.root()

    def pm_append():
        t = InmemoryTree()
        for d in data:
            t.append_entry(d)

    def pm_append_root():
        t = InmemoryTree()
        for d in data:
            t.append_entry(d)
            t.get_root()

    tree = InmemoryTree.init_from_entries(data)
    assert tree.get_root() == Frontier(leaves).root()

    def per_call(fn, calls: int, unit: float) -> float:
        return best(fn, repeat) / calls * unit

    rows = {
        "append (us)": {
            "ours": per_call(ours_append, n, 1e6),
            "pymerkle": per_call(pm_append, n, 1e6),
        },
        "append + root (us)": {
            "ours": per_call(ours_append_root, n, 1e6),
            "pymerkle": per_call(pm_append_root, n, 1e6),
        },
        "inclusion proof (ms)": {
            "ours": per_call(lambda: [inclusion_proof(i, leaves) for i in indices], 4, 1e3),
            "pymerkle": per_call(lambda: [tree.prove_inclusion(i + 1) for i in indices], 4, 1e3),
        },
        "consistency proof (ms)": {
            "ours": per_call(lambda: [consistency_proof(m, leaves) for m in olds], 4, 1e3),
            "pymerkle": per_call(lambda: [tree.prove_consistency(m) for m in olds], 4, 1e3),
        },
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print("pymerkle 7.0.0 on the RFC 6962 vectors (transparency-dev/merkle proof/verify_test.go)")
    ok = check_vectors(load_vectors())
    for key, value in ok.items():
        print(f"  {key:<12} {'match' if value else 'MISMATCH'}")
    matches = all(ok.values())

    rows = measure(args.leaves, args.repeat)
    print(f"\nspeed at {args.leaves} leaves (best of {args.repeat})")
    print(f"  {'':<24}{'ours':>10}{'pymerkle':>10}")
    for name, row in rows.items():
        print(f"  {name:<24}{row['ours']:>10.3f}{row['pymerkle']:>10.3f}")

    proof = rows["inclusion proof (ms)"]
    append = rows["append (us)"]
    print(
        f"RESULT pymerkle_matches_rfc6962={int(matches)} roots={int(ok['roots'])} "
        f"inclusion={int(ok['inclusion'])} consistency={int(ok['consistency'])} "
        f"ours_proof_ms={proof['ours']:.3f} pymerkle_proof_ms={proof['pymerkle']:.3f} "
        f"ours_append_us={append['ours']:.2f} pymerkle_append_us={append['pymerkle']:.2f}"
    )


if __name__ == "__main__":
    main()
