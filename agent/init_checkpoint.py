"""The checkpoint a goal's runs start from (`init:`, `train --init`): found, checked, copied.

The run keeps its own copy in `runs/<id>/init/`, so its experiments start from the same bytes
however the base's run goes on (or is deleted), and `resume` needs nothing outside the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.checkpoint_ref import resolve_checkpoint
from agent.rundir import RunError

INIT_DIR = "init"
ENV_NAME = "MAGNET_INIT_CHECKPOINT"


def find_init(ref: str, runs_dir: str | Path | None = None) -> Path:
    """The checkpoint directory `ref` names, checked to load; RunError (one line) otherwise."""
    from bitnet.checkpoint import CheckpointError, load_checkpoint

    try:
        path = resolve_checkpoint(ref, runs_dir).resolve()
    except RunError as err:
        raise RunError(f"init: {err}") from None
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        raise RunError(f"init: {ref}: {err}") from None
    return path


def copy_init(checkpoint: Path, run_dir: Path) -> Path:
    """Copy the checkpoint's files into the run (atomically: a stop never leaves half a copy)."""
    target, partial = run_dir / INIT_DIR, run_dir / f"{INIT_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoint, partial, ignore=shutil.ignore_patterns("*.tmp", "metrics.json"))
    partial.rename(target)
    return target


def init_dir(run_dir: Path) -> Path:
    return run_dir / INIT_DIR
