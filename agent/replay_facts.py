"""What another machine needs to re-run an experiment's run and reach the same number.

Built once, when a run is scored (agent.scoring), into the run summary and so into the
experiment's record (`replay`); a ledger claim carries it as is, and agent.replay reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEDULE_FILE = "schedule.json"  # the template's record of its progress at every step
# the template reports these as METRIC lines: steps trained, the step where stage 2 of the
# schedule began (by the clock) and the torch threads it ran with
REPORTED = {"steps": "steps", "switch_step": "switch_step", "threads": "threads"}


def replay_facts(run: Mapping[str, Any], *, time_budget: float, corpus: Any | None,
                 out_dir: Path | None) -> dict[str, Any]:
    """The facts of one scored run: seed, steps, schedule switch, threads, corpus fingerprint,
    Python and torch versions, and the sha256 of the checkpoint it saved and of the schedule it
    followed (its progress at every step, which a replay follows exactly)."""
    import torch

    from bitnet.checkpoint import CheckpointError, checkpoint_hash

    metrics = run.get("metrics") or {}
    facts: dict[str, Any] = {"seed": run["seed"], "time_budget": time_budget,
                             "python": platform.python_version(),
                             "torch": torch.__version__.split("+")[0]}
    for key, metric in REPORTED.items():
        value = metrics.get(metric)
        facts[key] = int(value) if isinstance(value, int | float) else None
    facts["corpus"] = ({"name": corpus.name, "sha256": corpus.sha256} if corpus is not None
                       else None)
    schedule = out_dir / SCHEDULE_FILE if out_dir is not None else None
    facts["schedule_sha256"] = (hashlib.sha256(schedule.read_bytes()).hexdigest()
                                if schedule is not None and schedule.is_file() else None)
    facts["checkpoint_sha256"] = None
    if out_dir is not None and (out_dir / "config.json").is_file():
        # an unreadable checkpoint: the run's status already says so
        with contextlib.suppress(CheckpointError):
            facts["checkpoint_sha256"] = checkpoint_hash(out_dir)
    return facts
