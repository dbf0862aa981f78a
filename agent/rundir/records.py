"""The run's append-only records: `experiments.jsonl` (full) and `results.tsv` (one line each).

Appends are idempotent by experiment number, so a node re-executed after a crash never writes an
experiment twice; a torn last line (crash mid-write) is ignored when reading.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from agent.rundir.names import EXPERIMENTS_FILE, RESULTS_FILE

TSV_HEADER = "exp\tcommit\tmetric\tstatus\tdescription\n"


class RunRecords:
    def __init__(self, run_dir: Path) -> None:
        self.jsonl = run_dir / EXPERIMENTS_FILE
        self.tsv = run_dir / RESULTS_FILE
        # the loop reads the records at every node and while paused: parse only when they grew
        self._parsed: tuple[tuple[int, int], list[dict[str, Any]]] | None = None

    def read(self) -> list[dict[str, Any]]:
        """Every complete record, oldest first."""
        try:
            st = self.jsonl.stat()
        except FileNotFoundError:
            return []
        key = (st.st_size, st.st_mtime_ns)
        if self._parsed is None or self._parsed[0] != key:
            records = []
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a crash mid-append
            self._parsed = (key, records)
        return list(self._parsed[1])

    def has(self, exp: int) -> bool:
        return any(r.get("exp") == exp for r in self.read())

    def append(self, record: dict[str, Any]) -> bool:
        """Append one experiment's record unless it is already there; True if written."""
        if self.has(record["exp"]):
            return False
        record = strict_json(record)
        append_line(self.jsonl, json.dumps(record, sort_keys=True, allow_nan=False))
        if not self.tsv.exists():
            append_line(self.tsv, TSV_HEADER.rstrip("\n"))
        metric = record.get("metric")
        description = " ".join(str(record.get("hypothesis", "")).split())
        append_line(self.tsv, "\t".join([
            f"{record['exp']:03d}", (record.get("commit") or "")[:7],
            "" if metric is None else f"{metric:.6f}", record["status"], description,
        ]))
        return True


def strict_json(value: Any) -> Any:
    """`value` as strict JSON: a NaN or infinite float (a diverged run's metrics) is None, so
    every JSON reader (jq, a browser) can read the records."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def append_line(path: Path, line: str) -> None:
    # A torn previous line (crash mid-write) must not swallow this one: start on a new line.
    prefix = ""
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            prefix = "" if f.read(1) == b"\n" else "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(prefix + line + "\n")
        f.flush()
        os.fsync(f.fileno())


def tokens_of(record: dict[str, Any]) -> int:
    """The LLM tokens an experiment's record says its proposal cost (prompt + completion)."""
    return sum((record.get("tokens") or {}).values())
