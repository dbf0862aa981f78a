"""Re-check a whole ledger from its stored bytes: every signature, hash link, Merkle root and
rule. The first bad entry is named; nothing stored is trusted, not even the leaf column.

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
from ledger.canonical import LedgerError
from ledger.entries import GENESIS
from ledger.rules import Standing
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
    standing, frontier, prev = Standing(), merkle.Frontier(), GENESIS
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
    first = problems[min(problems)] if problems else None
    return AuditReport(len(signed), len(heads), frontier.root().hex(),
                       time.perf_counter() - start, first)


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
