"""What another machine needs to re-run an experiment's run and reach the same number.

Built once, when a run is scored (agent.scoring.scorer), into the run summary and so into the
experiment's record (`replay`); a ledger claim carries it as is, and agent.claims.replay reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEDULE_FILE = "schedule.json"  # the template's record of its progress at every step
STAGE2 = 0.5  # the progress where the template's schedule switches to stage 2
MAX_SCHEDULE = 16 * 2**20  # bytes: ~1M steps; a larger file is not a schedule


def torch_version() -> str:
    """This process's torch release, without the build tag (2.13.0, not 2.13.0+cpu)."""
    import torch

    return torch.__version__.split("+")[0]


def replay_facts(run: Mapping[str, Any], *, time_budget: float, threads: int,
                 corpus: Any | None, out_dir: Path | None) -> dict[str, Any]:
    """The facts of one scored run: seed, steps, threads, where the schedule switched to stage
    2, corpus fingerprint, Python and torch versions, and the sha256 of the checkpoint it saved
    and of the schedule it followed (its progress at every step, which a replay follows)."""
    from bitnet.checkpoint import CheckpointError, checkpoint_hash

    steps = (run.get("metrics") or {}).get("steps")  # the template's METRIC steps
    facts: dict[str, Any] = {"seed": run["seed"], "time_budget": time_budget,
                             "steps": int(steps) if isinstance(steps, int | float) else None,
                             "threads": threads, "python": platform.python_version(),
                             "torch": torch_version()}
    facts["corpus"] = ({"name": corpus.name, "sha256": corpus.sha256} if corpus is not None
                       else None)
    facts["schedule_sha256"] = facts["switch_step"] = None
    schedule = out_dir / SCHEDULE_FILE if out_dir is not None else None
    if schedule is not None and schedule.is_file() and schedule.stat().st_size <= MAX_SCHEDULE:
        data = schedule.read_bytes()
        facts["schedule_sha256"] = hashlib.sha256(data).hexdigest()
        # edited code may write anything there
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            facts["switch_step"] = sum(p < STAGE2 for p in json.loads(data))
    facts["checkpoint_sha256"] = None
    if out_dir is not None and (out_dir / "config.json").is_file():
        # unreadable: the evaluator's status says so (a repository's own files: no checkpoint)
        with contextlib.suppress(CheckpointError, OSError):
            facts["checkpoint_sha256"] = checkpoint_hash(out_dir)
    return facts
