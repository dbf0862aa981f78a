"""What another machine needs to re-run an experiment's run and reach the same number.

Built once, when a run is scored (agent.scoring.scorer), into the run summary and so into the
experiment's record (`replay`); a ledger claim carries it as is, and agent.claims.replay reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitnet.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
from sandbox.untrusted import (
    MAX_SCHEDULE_BYTES,
    UntrustedFileError,
    check_regular,
    read_schedule,
    sha256_file,
)

SCHEDULE_FILE = "schedule.json"  # the template's record of its progress at every step
STAGE2 = 0.5  # the progress where the template's schedule switches to stage 2
MAX_SCHEDULE = MAX_SCHEDULE_BYTES  # bytes: ~1M steps; a larger file is not a schedule
MAX_CHECKPOINT = 2**34  # bytes of model.safetensors: 16 GiB, far above any CPU-trained model


def torch_version() -> str:
    """This machine's torch release, without the build tag (2.13.0, not 2.13.0+cpu): the
    imported torch's, else the installed one's as pip recorded it, without importing torch (two
    seconds of a core that a repository goal's controller, or a verify whose replays are all
    cached, would spend for this string alone)."""
    torch = sys.modules.get("torch")
    version = torch.__version__ if torch is not None else importlib.metadata.version("torch")
    return version.split("+")[0]


def replay_facts(run: Mapping[str, Any], *, time_budget: float, threads: int,
                 corpus: Any | None, out_dir: Path | None,
                 tokenizer: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The facts of one scored run: seed, steps, threads, where the schedule switched to stage
    2, corpus fingerprint, tokenizer (spec and fingerprint, agent.scoring.run_tokenizer), Python
    and torch versions, and the sha256 of the checkpoint it saved and of the schedule it
    followed (its progress at every step, which a replay follows)."""
    steps = (run.get("metrics") or {}).get("steps")  # the template's METRIC steps
    facts: dict[str, Any] = {"seed": run["seed"], "time_budget": time_budget,
                             "steps": int(steps) if isinstance(steps, int | float) else None,
                             "threads": threads, "python": platform.python_version(),
                             "torch": torch_version()}
    facts["corpus"] = ({"name": corpus.name, "sha256": corpus.sha256} if corpus is not None
                       else None)
    facts["tokenizer"] = dict(tokenizer) if tokenizer is not None else None
    facts["schedule_sha256"] = facts["switch_step"] = None
    facts["checkpoint_sha256"] = None
    if out_dir is None:
        return facts
    # What the run left is untrusted input (sandbox.untrusted): a symlink, FIFO, oversized or
    # misshapen file is not a schedule or checkpoint, and nothing of it reaches the record.
    with contextlib.suppress(UntrustedFileError):
        data, schedule = read_schedule(out_dir, SCHEDULE_FILE, MAX_SCHEDULE)
        facts["schedule_sha256"] = hashlib.sha256(data).hexdigest()
        facts["switch_step"] = sum(p < STAGE2 for p in schedule)
    # unreadable: the evaluator's status says so (a repository's own files: no checkpoint)
    with contextlib.suppress(UntrustedFileError):
        check_regular(out_dir, [CONFIG_FILE])
        facts["checkpoint_sha256"] = sha256_file(out_dir, WEIGHTS_FILE, MAX_CHECKPOINT)
    return facts
