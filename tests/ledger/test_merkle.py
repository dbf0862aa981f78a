"""ledger.merkle against the RFC 6962 test vectors of Certificate Transparency.

The vectors (leaves, roots, inclusion and consistency proofs) are copied from
transparency-dev/merkle, proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472),
the Go successor of google/certificate-transparency's merkle_tree_test.cc. There, leaf
indices are 1-based; here they are 0-based. The corruption probes port the same file's
corruptInclusionProof / corruptConsistencyProof.
"""

from __future__ import annotations

import random
import time

import pytest

from ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

LEAF_DATA = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
LEAVES = [leaf_hash(d) for d in LEAF_DATA]

EMPTY_TREE_HASH = h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")

ROOTS = [  # ROOTS[n - 1] is the root of the first n leaves
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

INCLUSION = [  # (0-based leaf index, tree size, PATH)
    (0, 1, []),
    (0, 8, [
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ]),
    (5, 8, [
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
    (2, 3, [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    ]),
    (1, 5, [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]),
]  # fmt: skip

CONSISTENCY = [  # (old size, new size, PROOF)
    (1, 1, []),
    (1, 8, [
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ]),
    (6, 8, [
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
    (2, 5, [
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]),
    (6, 7, [
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
]  # fmt: skip


# --- the literal recursive definitions of RFC 6962 section 2.1, as an independent reference ---


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return EMPTY_TREE_HASH
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


# --- vectors ---


def test_hashing_primitives():
    assert EMPTY_ROOT == EMPTY_TREE_HASH == root([])
    assert leaf_hash(b"") == ROOTS[0]  # a one-leaf tree's root is its leaf hash
    assert node_hash(LEAVES[0], LEAVES[1]) == ROOTS[1]


@pytest.mark.parametrize("n", range(1, 9))
def test_root_vectors(n):
    assert root(LEAVES[:n]) == ROOTS[n - 1]
    assert Frontier(LEAVES[:n]).root() == ROOTS[n - 1]


def test_frontier_empty():
    f = Frontier()
    assert f.size == 0 and f.root() == EMPTY_ROOT


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_vectors(index, size, path):
    assert inclusion_proof(index, LEAVES[:size]) == path
    assert verify_inclusion(LEAVES[index], index, size, path, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors(old, new, proof):
    assert consistency_proof(old, LEAVES[:new]) == proof
    assert verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


# --- rejection ---


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    wrong = list(proof)
    wrong[i] = bytes([wrong[i][0] ^ bit]) + wrong[i][1:]
    return wrong


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_rejects_corruption(index, size, path):
    leaf, rt = LEAVES[index], ROOTS[size - 1]
    probes = {
        "index - 1": (leaf, index - 1, size, path, rt),
        "index + 1": (leaf, index + 1, size, path, rt),
        "index ^ 2": (leaf, index ^ 2, size, path, rt),
        "size * 2": (leaf, index, size * 2, path, rt),
        "size // 2": (leaf, index, size // 2, path, rt),
        "wrong leaf": (b"WrongLeaf", index, size, path, rt),
        "other leaf": (leaf_hash(b"other"), index, size, path, rt),
        "empty root": (leaf, index, size, path, EMPTY_TREE_HASH),
        "random root": (leaf, index, size, path, SOME_HASH),
        "trailing garbage": (leaf, index, size, [*path, b""], rt),
        "trailing root": (leaf, index, size, [*path, rt], rt),
        "preceding garbage": (leaf, index, size, [b"", *path], rt),
        "preceding root": (leaf, index, size, [rt, *path], rt),
    }
    for i in range(len(path)):
        probes[f"modified proof[{i}]"] = (leaf, index, size, _flip(path, i, 8), rt)
    if path:
        probes["removed component"] = (leaf, index, size, path[:-1], rt)
    if len(path) > 1:
        probes["inserted component"] = (leaf, index, size, [path[0], SOME_HASH, *path[1:]], rt)
    accepted = [name for name, args in probes.items() if verify_inclusion(*args)]
    assert accepted == []


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY if v[2]])
def test_consistency_rejects_corruption(old, new, proof):
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = {
        "old - 1": (old - 1, new, r1, r2, proof),
        "old + 1": (old + 1, new, r1, r2, proof),
        "old ^ 2": (old ^ 2, new, r1, r2, proof),
        "new * 2": (old, new * 2, r1, r2, proof),
        "new // 2": (old, new // 2, r1, r2, proof),
        "wrong old root": (old, new, b"WrongRoot", r2, proof),
        "wrong new root": (old, new, r1, b"WrongRoot", proof),
        "random new root": (old, new, r1, SOME_HASH, proof),
        "swapped roots": (old, new, r2, r1, proof),
        "empty proof": (old, new, r1, r2, []),
        "trailing garbage": (old, new, r1, r2, [*proof, b""]),
        "trailing old root": (old, new, r1, r2, [*proof, r1]),
        "trailing new root": (old, new, r1, r2, [*proof, r2]),
        "preceding garbage": (old, new, r1, r2, [b"", *proof]),
        "preceding old root": (old, new, r1, r2, [r1, *proof]),
        "preceding new root": (old, new, r1, r2, [r2, *proof]),
        "preceding proof[0]": (old, new, r1, r2, [proof[0], *proof]),
        "truncated proof": (old, new, r1, r2, proof[:-1]),
    }
    for i in range(len(proof)):
        probes[f"modified proof[{i}]"] = (old, new, r1, r2, _flip(proof, i, 16))
    accepted = [name for name, args in probes.items() if verify_consistency(*args)]
    assert accepted == []


def test_trivial_consistency():
    r = ROOTS[2]
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 3, EMPTY_ROOT, r, [])
    assert verify_consistency(3, 3, r, r, [])
    assert not verify_consistency(0, 3, SOME_HASH, r, [])  # the empty tree has a fixed root
    assert not verify_consistency(3, 3, r, SOME_HASH, [])
    assert not verify_consistency(3, 3, r, r, [EMPTY_ROOT])
    assert not verify_consistency(0, 3, EMPTY_ROOT, r, [EMPTY_ROOT])
    assert not verify_consistency(4, 3, r, r, [])  # time travel
    assert consistency_proof(0, LEAVES) == consistency_proof(8, LEAVES) == []


def test_verifiers_never_raise_on_junk():
    assert not verify_inclusion(LEAVES[0], 0, 1, [None], ROOTS[0])  # type: ignore[list-item]
    assert not verify_inclusion(LEAVES[0], -1, 1, [], ROOTS[0])
    assert not verify_inclusion(LEAVES[0], 0, 0, [], ROOTS[0])
    assert not verify_inclusion("x", 0, 1, [], ROOTS[0])  # type: ignore[arg-type]
    assert not verify_consistency(1, 2, ROOTS[0], ROOTS[1], [42])  # type: ignore[list-item]
    assert not verify_consistency(-1, 2, ROOTS[0], ROOTS[1], [LEAVES[1]])
    assert not verify_consistency(1, 2, ROOTS[0], None, [LEAVES[1]])  # type: ignore[arg-type]


def test_proof_generation_errors():
    for bad in (-1, 8, 9):
        with pytest.raises(MerkleError, match="outside a tree of 8 leaves"):
            inclusion_proof(bad, LEAVES)
    with pytest.raises(MerkleError, match="outside a tree of 0 leaves"):
        inclusion_proof(0, [])
    for bad in (-1, 9):
        with pytest.raises(MerkleError, match="outside 0..8"):
            consistency_proof(bad, LEAVES)
    assert issubclass(MerkleError, ValueError)
    with pytest.raises(MerkleError) as info:
        inclusion_proof(8, LEAVES)
    assert "\n" not in str(info.value)


# --- properties ---


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_frontier_matches_root_at_every_size():
    leaves = _leaves(300)
    f = Frontier()
    assert f.root() == root([])
    for n, leaf in enumerate(leaves, 1):
        f.append(leaf)
        assert f.size == n
        assert f.root() == root(leaves[:n]) == f.root()
    assert root(leaves[:64]) == ref_mth(leaves[:64])
    assert root(leaves[:300]) == ref_mth(leaves[:300])


def test_random_sizes_round_trip():
    rng = random.Random(6962)
    sizes = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 255, 256, 257, 300]
    sizes += rng.sample(range(1, 301), 10)
    all_leaves = _leaves(300)
    for n in sizes:
        leaves = all_leaves[:n]
        rt = root(leaves)
        assert rt == ref_mth(leaves)
        for i in range(n):
            path = inclusion_proof(i, leaves)
            assert verify_inclusion(leaves[i], i, n, path, rt)
            if n > 1:
                assert not verify_inclusion(leaves[i], (i + 1) % n, n, path, rt)
        for i in rng.sample(range(n), min(n, 5)):
            assert inclusion_proof(i, leaves) == ref_path(i, leaves)
        for m in {1, n, *rng.sample(range(1, n + 1), min(n, 12))}:
            proof = consistency_proof(m, leaves)
            old = root(leaves[:m])
            assert verify_consistency(m, n, old, rt, proof)
            if m < n:
                assert proof == ref_subproof(m, leaves, True)
                assert not verify_consistency(m, n, old, rt, _flip(proof, 0, 1))
                assert not verify_consistency(m, n, rt, rt, proof)


def test_proofs_are_fast_at_10k_leaves():
    leaves = _leaves(10_000)
    t = time.perf_counter()
    for i in (0, 4_999, 9_999):
        inclusion_proof(i, leaves)
    consistency_proof(6_000, leaves)
    assert (time.perf_counter() - t) / 4 < 0.05
