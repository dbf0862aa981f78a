"""Re-check a whole ledger from its stored bytes: every signature, hash link, Merkle root and
rule, and every stored artifact (each one's bytes against the sha256 it is stored by, and each
one a claim names present). The first bad entry is named; nothing stored is trusted, not even
the leaf column or an artifact's name.

Signatures dominate the cost (~0.1 ms each to verify, two per append: the entry and its tree
head), so they are checked on every core.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ledger import keys, merkle
from ledger.canonical import LedgerError, sha256_hex
from ledger.entries import CLAIM, GENESIS, Entry
from ledger.rules import ARTIFACTS, Standing
from ledger.sqlite_store import SqliteStore

PARALLEL_FROM = 2_000  # signatures; below this a process pool costs more than it saves


@dataclass(frozen=True)
class AuditReport:
    entries: int
    tree_heads: int
    root: str  # hex Merkle root over all entries
    seconds: float
    problem: str | None  # the first bad entry or tree head, in one line; None: all good

    @property
    def ok(self) -> bool:
        return self.problem is None


def audit(store: SqliteStore) -> AuditReport:
    start = time.perf_counter()
    problems: dict[tuple[int, int], str] = {}  # (position, 0 entry / 1 tree head) -> problem
    standing, frontier, prev = Standing(quorum=store.quorum), merkle.Frontier(), GENESIS
    stored, altered = _stored_artifacts(store)  # altered: sha256 -> why its bytes are not that
    roots: dict[int, bytes] = {0: frontier.root()}
    signed: list[tuple[str, bytes, bytes]] = []  # (public key, signature, data)
    for position, (seq, entry, stored_leaf) in enumerate(store.rows()):
        def bad(why: str, position: int = position) -> None:
            problems.setdefault((position, 0), f"entry {position}: {why}")

        try:
            fields = entry.fields
            if seq != position or fields["seq"] != position:
                bad(f"it is numbered {fields['seq']} (row {seq}) at position {position}")
            if fields["prev"] != prev:
                bad(f"it names {str(fields['prev'])[:12]} as previous, but entry "
                    f"{position - 1}'s hash is {prev[:12]} (the chain is broken)")
            signed.append((fields["author"], entry.signature, entry.data))
            standing.check(entry)
            standing.add(entry)
            if why := _artifact_problem(entry, stored, altered):
                bad(why)
        except (LedgerError, KeyError, TypeError, ValueError) as err:
            bad(f"{err}" if isinstance(err, LedgerError) else f"unreadable ({err!r})")
            signed.append(("", entry.signature, entry.data))
        leaf = entry.leaf
        if leaf != stored_leaf:
            bad("its stored leaf hash is not the hash of its bytes")
        prev = leaf.hex()
        frontier.append(leaf)
        roots[frontier.size] = frontier.root()
    heads = store.tree_heads()
    for head in heads:
        if roots.get(head.tree_size) != head.root:
            problems.setdefault((head.tree_size, 1), (
                f"tree head at size {head.tree_size}: its root is not the Merkle root of the "
                f"first {head.tree_size} entries"))
    valid = _verify_all([*signed, *((h.signer, h.signature, h.data) for h in heads)])
    for position, ok in enumerate(valid[:len(signed)]):
        if not ok:
            problems.setdefault((position, 0), (
                f"entry {position}: its signature does not verify (forged, or its bytes were "
                "changed after signing)"))
    for head, ok in zip(heads, valid[len(signed):], strict=True):
        if not ok:
            problems.setdefault((head.tree_size, 1),
                                f"tree head at size {head.tree_size}: bad signature")
    for sha256, why in altered.items():  # stored, named by no claim, and still not intact
        problems.setdefault((len(signed), 2), f"artifact {sha256[:12]}: {why}")
    first = problems[min(problems)] if problems else None
    return AuditReport(len(signed), len(heads), frontier.root().hex(),
                       time.perf_counter() - start, first)


def _stored_artifacts(store: SqliteStore) -> tuple[set[str], dict[str, str]]:
    """The names of every stored artifact, and those whose bytes do not hash to their name."""
    stored, altered = set(), {}
    for name, data in store.artifacts():
        stored.add(name)
        if (actual := sha256_hex(data)) != name:
            altered[name] = f"its stored bytes hash to {actual[:12]}, not to its name (altered)"
    return stored, altered


def _artifact_problem(entry: Entry, stored: set[str], altered: dict[str, str]) -> str | None:
    """What is wrong with the artifacts claim `entry` names (ledger.rules.ARTIFACTS), or None.
    An altered artifact is named here, by the first claim naming it, and not again."""
    fields = entry.fields
    if fields["kind"] != CLAIM:
        return None
    for name in ARTIFACTS:
        sha256 = fields["body"].get(name)
        if sha256 is None:
            continue
        if sha256 in altered:
            return (f"its {name} artifact ({str(sha256)[:12]}): {altered.pop(sha256)}; restore "
                    "it from the claimant's run")
        if sha256 not in stored:
            return (f"its {name} artifact ({str(sha256)[:12]}) is not stored; restore it from "
                    "the claimant's run")
    return None


def _verify_all(items: Sequence[tuple[str, bytes, bytes]]) -> list[bool]:
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1, 8)
    if len(items) < PARALLEL_FROM or workers < 2:
        return _verify_chunk(items)
    size = -(-len(items) // workers)
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [ok for chunk in pool.map(_verify_chunk, chunks) for ok in chunk]


def _verify_chunk(items: Sequence[tuple[str, bytes, bytes]]) -> list[bool]:
    return [keys.verify(public, signature, data) for public, signature, data in items]
