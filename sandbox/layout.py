"""Names inside a run directory and its workspace's git repository: the one place they are made.

    runs/<run-id>/
      workspace/            the git repository (branch magnet/<run-id>)
      sandbox.json          the workspace's journal      sandbox.lock   held by the controller
      logs/exp-007.log      outputs/exp-007/             a confirmation run: exp-007-run2

In git: every experiment's commit at refs/magnet/exp/007, its record as a note under
refs/notes/magnet, tags magnet/baseline and magnet/best. The workspace writes these names and
the reader (and through it the review commands) reads them; nobody else spells them out.
"""

from __future__ import annotations

from pathlib import Path

WORKSPACE_DIR = "workspace"
JOURNAL_FILE = "sandbox.json"
LOCK_FILE = "sandbox.lock"
LOGS_DIR = "logs"
OUTPUTS_DIR = "outputs"

NOTES_REF = "refs/notes/magnet"
BEST_TAG = "magnet/best"
BASELINE_TAG = "magnet/baseline"
EXP_REFS = "refs/magnet/exp"  # for `git log --glob=refs/magnet/exp`


def exp_ref(exp: int) -> str:
    """Where experiment `exp`'s commit is kept, whatever became of it."""
    return f"{EXP_REFS}/{exp:03d}"


def log_path(run_dir: Path, exp: int, repeat: int = 0) -> Path:
    """Experiment `exp`'s log; a repeat run (another seed, to confirm) has its own."""
    return Path(run_dir) / LOGS_DIR / f"exp-{exp:03d}{_repeat_suffix(repeat)}.log"


def output_dir(run_dir: Path, exp: int, repeat: int = 0) -> Path:
    """Where experiment `exp`'s run writes its checkpoint (MAGNET_OUTPUT_DIR)."""
    return Path(run_dir) / OUTPUTS_DIR / f"exp-{exp:03d}{_repeat_suffix(repeat)}"


def _repeat_suffix(repeat: int) -> str:
    return f"-run{repeat + 1}" if repeat else ""
