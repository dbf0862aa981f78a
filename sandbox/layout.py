"""Names inside a run directory and its workspace's git repository: the one place they are made.

    runs/<run-id>/
      workspace/            the work tree (branch magnet/<run-id>); it holds no .git
      workspace.git/        its git directory, outside what an experiment may write
      sandbox.json          the workspace's journal      sandbox.lock   held by the controller
      logs/exp-007.log      outputs/exp-007/             a confirmation run: exp-007-run2
      logs/exp-007-eval.log the goal's `evaluate:` command on exp 007's outputs
      outputs/exp-007/metrics.json   the metrics a run may write beside its checkpoint

In git: every experiment's commit at refs/magnet/exp/007, its record as a note under
refs/notes/magnet, tags magnet/baseline and magnet/best, and what recovery found off the kept
commit at refs/magnet/recovered/<time>. What a run wrote to tracked files is never committed
(runs made before kept it at refs/magnet/leftover/007; such refs are left alone, unread).
The workspace writes these names and the reader (and through it the review commands) reads
them; nobody else spells them out.
Review with plain git: `git -C runs/<run-id>/workspace.git log --notes=magnet` (its config names
the work tree). Runs made before the git directory moved out kept it in workspace/.git;
`Workspace.open` moves it.
"""

from __future__ import annotations

from pathlib import Path

WORKSPACE_DIR = "workspace"
GIT_DIR = "workspace.git"
JOURNAL_FILE = "sandbox.json"
LOCK_FILE = "sandbox.lock"
LOGS_DIR = "logs"
OUTPUTS_DIR = "outputs"
METRICS_FILE = "metrics.json"  # in a run's output directory, beside its checkpoint
MAX_REPEATS = 2  # runs of one experiment: the first, and one confirmation with another seed

NOTES_REF = "refs/notes/magnet"
BEST_TAG = "magnet/best"
BASELINE_TAG = "magnet/baseline"
EXP_REFS = "refs/magnet/exp"  # for `git log --glob=refs/magnet/exp`
RECOVERED_REFS = "refs/magnet/recovered"


def exp_ref(exp: int) -> str:
    """Where experiment `exp`'s commit is kept, whatever became of it."""
    return f"{EXP_REFS}/{exp:03d}"


def recovered_ref(stamp: str) -> str:
    """Where recovery keeps what it found off the kept commit (`stamp`: when, %Y%m%d-%H%M%S)."""
    return f"{RECOVERED_REFS}/{stamp}"


def workspace_dir(run_dir: Path) -> Path:
    """The work tree experiments edit and run in."""
    return Path(run_dir) / WORKSPACE_DIR


def git_dir(run_dir: Path) -> Path:
    """The workspace's git directory: beside the work tree, never inside it."""
    return Path(run_dir) / GIT_DIR


def legacy_git_dir(run_dir: Path) -> Path:
    """Where a run made before the git directory moved out of the work tree keeps it."""
    return workspace_dir(run_dir) / ".git"


def log_path(run_dir: Path, exp: int, repeat: int = 0) -> Path:
    """Experiment `exp`'s log; a repeat run (another seed, to confirm) has its own."""
    return Path(run_dir) / LOGS_DIR / f"exp-{exp:03d}{_repeat_suffix(repeat)}.log"


def eval_log_path(run_dir: Path, exp: int, repeat: int = 0) -> Path:
    """The log of the goal's `evaluate:` command on that run's outputs."""
    return Path(run_dir) / LOGS_DIR / f"exp-{exp:03d}{_repeat_suffix(repeat)}-eval.log"


def output_dir(run_dir: Path, exp: int, repeat: int = 0) -> Path:
    """Where experiment `exp`'s run writes its checkpoint (MAGNET_OUTPUT_DIR)."""
    return Path(run_dir) / OUTPUTS_DIR / f"exp-{exp:03d}{_repeat_suffix(repeat)}"


def _repeat_suffix(repeat: int) -> str:
    return f"-run{repeat + 1}" if repeat else ""
