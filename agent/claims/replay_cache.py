"""A verifier's own replays, kept, so it replays each run once.

Every claim on one run states the same "before" (the keep rule's reference: the baseline runs,
or a confirmed best's), and a claim is often verified again (a second verifier on the same
machine, a dispute, `--sample` passes over a group): without this, each verification replays
the same runs again, each a training run and a scoring.

A replayed run is a function of what its key covers, and of nothing else: the commit (its tree,
through the claim's bundle), the goal file, the run's replay facts (seed, steps, threads, torch,
corpus fingerprint, checkpoint hash), the schedule it followed, the init checkpoint, whether it
was confined, and this verifier's own MAGNET code (scorer, evaluator, sandbox). Change any of
them and the run is replayed again. Only runs that finished and were scored are kept (a run
that timed out on a busy machine is tried again next time). The results are the verifier's, on
its own disk: `~/.cache/magnet/replays`, or MAGNET_REPLAY_CACHE; a claim cannot put one there.
A lock per key makes a second verifier that asks for a run being replayed wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ledger.canonical import canonical

ENV = "MAGNET_REPLAY_CACHE"
PACKAGES = ("agent", "bitnet", "sandbox", "ledger", "merge")  # MAGNET's code, for the key
ROOT = Path(__file__).resolve().parents[2]


class ReplayCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def default(cls) -> ReplayCache:
        where = os.environ.get(ENV) or Path.home() / ".cache" / "magnet" / "replays"
        return cls(Path(where))

    @staticmethod
    def key(*, commit: str, goal_file: bytes, facts: Mapping[str, Any], schedule: bytes | None,
            init: bytes | None, confined: bool) -> str:
        parts = {"commit": commit, "goal": _sha(goal_file), "facts": facts,
                 "schedule": _sha(schedule), "init": _sha(init), "confined": confined,
                 "code": code_fingerprint()}
        # the ledger's canonical form: a claim read back from the ledger states its facts as
        # the one built in process does (its time_budget 3.0 comes back as 3: one run, one key)
        return _sha(canonical(parts))

    @contextlib.contextmanager
    def held(self, key: str) -> Iterator[dict[str, Any] | None]:
        """The kept result for `key`, or None: then the caller replays and `put`s, while this
        holds the key's lock (another verifier asking for it waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.get(key)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            result = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # none yet, or damaged: replayed again
        return result if isinstance(result, dict) else None

    def put(self, key: str, result: Mapping[str, Any]) -> None:
        """Keep a replay that finished and was scored; anything else is tried again."""
        if result.get("status") != "ok":
            return
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            tmp.write_text(json.dumps(result, default=str), encoding="utf-8")
            tmp.replace(self.root / f"{key}.json")


@functools.cache
def code_fingerprint() -> str:
    """sha256 over MAGNET's own Python files: another version of the scorer replays again."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None
