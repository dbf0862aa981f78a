"""The ledger in one SQLite file (WAL): entries, signed tree heads and the artifacts claims name.

Appends run in `BEGIN IMMEDIATE` transactions: two processes appending at once queue on the
write lock, and each builds its entry on the head it sees inside the lock, so nothing is lost
and the chain never forks. Every append also signs a tree head over the new size.

Only the signed bytes are stored; what they mean (claims, balances) is re-derived by
`ledger.rules` from the entries in order, kept in memory and brought up to date from the rows
another process added.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from ledger.canonical import LedgerError, sha256_hex
from ledger.entries import GENESIS, Entry, TreeHead, sign_tree_head
from ledger.rules import SETTLE_VOTES, Standing

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, data BLOB NOT NULL, signature BLOB NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tree_heads (
    tree_size INTEGER PRIMARY KEY, root BLOB NOT NULL, time TEXT NOT NULL, signer TEXT NOT NULL,
    signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
"""
TABLES = ("entries", "tree_heads", "artifacts")
HEAD_COLUMNS = "tree_size, root, time, signer, signature"
BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for another's transaction


class SqliteStore:
    def __init__(self, path: str | Path, *, quorum: int = SETTLE_VOTES) -> None:
        """`quorum`: agreeing verdicts that settle a disputed claim (ledger.rules); an EVM
        ledger passes its contract's, so the local log settles as the chain does."""
        self.path = Path(path).expanduser()
        self.quorum = quorum
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None)
            tables = {name for (name,) in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not set(TABLES) <= tables:  # someone else's database: leave it alone
                raise LedgerError(f"{self.path} is a SQLite database but not a ledger (tables "
                                  f"{', '.join(sorted(tables))}); pass another --ledger")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL is atomic
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise LedgerError(f"{self.path} is not a ledger ({err}); move it away or pass another "
                              "--ledger") from None
        self._reset()

    def close(self) -> None:
        self.db.close()

    def set_quorum(self, quorum: int) -> None:
        """Settle disputes at `quorum` agreeing verdicts; the entries are read again under it."""
        if quorum != self.quorum:
            self.quorum = quorum
            self._reset()

    @property
    def head_hash(self) -> str:
        """The hash the next entry names as `prev`."""
        return self.leaves[-1].hex() if self.leaves else GENESIS

    # --- reading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the derived state up to date with rows appended since (by any process)."""
        for seq, data, signature, leaf in self.db.execute(
                "SELECT seq, data, signature, leaf FROM entries WHERE seq >= ? ORDER BY seq",
                (self.standing.size,)):
            try:
                self._take(Entry(bytes(data), bytes(signature)), bytes(leaf))
            except (KeyError, TypeError, ValueError) as err:
                raise LedgerError(f"entry {seq} is corrupt ({err!r}); run `magnet-agent ledger "
                                  "audit` to find the first bad entry") from None

    def rows(self) -> Iterator[tuple[int, Entry, bytes]]:
        """(seq, entry, stored leaf) of every entry, in order, exactly as stored."""
        for seq, data, signature, leaf in self.db.execute(
                "SELECT seq, data, signature, leaf FROM entries ORDER BY seq"):
            yield seq, Entry(bytes(data), bytes(signature)), bytes(leaf)

    def entry(self, seq: int) -> Entry | None:
        row = self.db.execute("SELECT data, signature FROM entries WHERE seq = ?",
                              (seq,)).fetchone()
        return Entry(bytes(row[0]), bytes(row[1])) if row else None

    def tree_heads(self) -> list[TreeHead]:
        rows = self.db.execute(f"SELECT {HEAD_COLUMNS} FROM tree_heads ORDER BY tree_size")
        return [_tree_head(row) for row in rows]

    def latest_tree_head(self) -> TreeHead | None:
        row = self.db.execute(f"SELECT {HEAD_COLUMNS} FROM tree_heads "
                              "ORDER BY tree_size DESC LIMIT 1").fetchone()
        return _tree_head(row) if row else None

    def artifacts(self) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every stored artifact, as stored."""
        for name, data in self.db.execute("SELECT sha256, data FROM artifacts ORDER BY sha256"):
            yield str(name), bytes(data)

    def artifact(self, sha256: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
        return bytes(row[0]) if row else None

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:  # the write lock first, then read the head
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise LedgerError(f"{self.path} stayed locked by another writer for "
                              f"{BUSY_TIMEOUT_MS // 1000} s ({err}); retry when it is "
                              "done") from None
        try:
            self.refresh()
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._reset()  # the in-memory state may hold what was rolled back
            self.refresh()
            raise
        self.db.execute("COMMIT")

    def append(self, build: Callable[[int, str], Entry], key: Ed25519PrivateKey,
               artifacts: Mapping[str, bytes] = {}) -> Entry:  # noqa: B006 (read only)
        """Append the entry `build(seq, prev)` makes on the current head, after checking its
        signature and the rules, with the artifacts it names; sign the new tree head."""
        with self._writing():
            seq, prev = self.standing.size, self.head_hash
            entry = build(seq, prev)
            fields = entry.fields
            if fields.get("seq") != seq or fields.get("prev") != prev:
                raise LedgerError(f"the entry is for position {fields.get('seq')} after "
                                  f"{str(fields.get('prev'))[:12]}, but the ledger's head is "
                                  f"{seq} after {prev[:12]}; sign it again on the current head")
            if not entry.signed_ok():
                raise LedgerError(f"entry {seq}: its signature is not {fields['author'][:12]}'s "
                                  "(a forged or altered entry); sign it with the author's key")
            self.standing.check(entry)
            for data in artifacts.values():
                self.db.execute("INSERT OR IGNORE INTO artifacts VALUES (?, ?)",
                                (sha256_hex(data), data))
            self.db.execute("INSERT INTO entries VALUES (?, ?, ?, ?)",
                            (seq, entry.data, entry.signature, entry.leaf))
            self._take(entry, entry.leaf)
            head = sign_tree_head(key, self.frontier.size, self.frontier.root())
            self.db.execute("INSERT INTO tree_heads VALUES (?, ?, ?, ?, ?)",
                            (head.tree_size, head.root, head.time, head.signer, head.signature))
        return entry

    # --- the derived state -------------------------------------------------------------------

    def _reset(self) -> None:
        self.standing = Standing(quorum=self.quorum)
        self.frontier = merkle.Frontier()  # the root, incrementally
        self.leaves: list[bytes] = []  # every leaf hash, for proofs

    def _take(self, entry: Entry, leaf: bytes) -> None:
        """Add one entry (stored, or about to be) to the derived state."""
        self.standing.add(entry)
        self.frontier.append(leaf)
        self.leaves.append(leaf)


def _tree_head(row: tuple) -> TreeHead:
    size, root, time, signer, signature = row
    return TreeHead(size, bytes(root), time, signer, bytes(signature))
