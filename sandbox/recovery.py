"""Crash recovery: bring a workspace back to a consistent state whatever moment its controller
died at, and say what became of the unfinished experiment (`Recovery`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.env import OUTPUT_DIR_VAR
from sandbox.gitcli import Git
from sandbox.gitsetup import clear_git_locks
from sandbox.journal import Journal
from sandbox.layout import MAX_REPEATS, exp_ref, output_dir, recovered_ref
from sandbox.proctree import kill_by_env, kill_group
from sandbox.settle import finish_discard, finish_keep, make_note


@dataclass(frozen=True)
class Recovery:
    """What `recover()` found and did about an experiment a crash left unfinished."""

    exp: int
    hypothesis: str
    step: str  # the step it stopped in: editing, committing, committed, running, ran, ...
    status: str  # `interrupted`, or the keep/discard status whose completion it finished
    commit: str | None  # the preserved commit (at `ref`), None if nothing was left to keep
    ref: str | None
    killed_run: bool  # an orphaned training process group was still running and was killed


def recover(git: Git, journal: Journal, run_dir: Path) -> Recovery | None:
    """Bring the workspace to a consistent state after a crash at any moment.

    Kills an orphaned run, clears stale git locks, then finishes a keep/discard whose decision
    was already journaled, or else preserves the unfinished experiment (its commit plus any
    uncommitted edits) at refs/magnet/exp/NNN, notes it as `interrupted` and checks out the last
    kept commit. Returns None when there was nothing to do. The caller holds the run's lock.
    """
    cur = journal["current"]
    killed = False
    if cur is not None:
        # An orphaned run would go on writing into the workspace: stop it first.
        killed = bool(cur.get("pid")) and kill_group(int(cur["pid"]))
        for repeat in range(MAX_REPEATS):
            out_dir = str(output_dir(run_dir, cur["exp"], repeat))
            killed = kill_by_env(OUTPUT_DIR_VAR, out_dir) > 0 or killed
    clear_git_locks(git.git_dir)
    if cur is None:
        _tidy(git, journal)
        return None
    step = cur["step"]
    if step == "keeping":
        finish_keep(git, journal, cur)
    elif step == "discarding":
        finish_discard(git, journal, cur)
    else:
        record = {"step": step, "reason": "the controller stopped during this experiment"}
        cur.update(step="discarding", note=make_note(cur, record, "interrupted"))
        journal.save()
        finish_discard(git, journal, cur)
    entry = journal["history"][-1]
    return Recovery(
        exp=cur["exp"],
        hypothesis=cur["hypothesis"],
        step=step,
        status=entry["status"],
        commit=entry["commit"],
        ref=exp_ref(cur["exp"]) if entry["commit"] else None,
        killed_run=killed,
    )


def _tidy(git: Git, journal: Journal) -> None:
    """No experiment in flight: HEAD must be the kept commit on the branch, tree clean.

    Anything else (e.g. hand edits) is preserved under refs/magnet/recovered/ first.
    """
    branch, kept = journal["branch"], journal["kept"]
    on_branch = git.run("symbolic-ref", "-q", "HEAD", check=False)
    head = git.head()
    dirty = git.dirty()
    if on_branch == f"refs/heads/{branch}" and head == kept and not dirty:
        return
    if dirty or head != kept:
        stash = git.run("stash", "create", "found at recovery") if dirty else ""
        git.run("update-ref", recovered_ref(time.strftime("%Y%m%d-%H%M%S")), stash or head)
    git.run("checkout", "-q", "-f", "-B", branch, kept)
