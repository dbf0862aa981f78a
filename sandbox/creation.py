"""Making a run's workspace (from a template or a clone of the user's repository) and opening
an existing one: the checks before anything is written, the run's lock, the first journal."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import WorkspaceError
from sandbox.gitcli import Git, run_git
from sandbox.gitsetup import configure, point_at_work_tree
from sandbox.journal import Journal
from sandbox.knobs import parse_knobs
from sandbox.layout import (
    BASELINE_TAG,
    JOURNAL_FILE,
    LOCK_FILE,
    git_dir,
    legacy_git_dir,
    workspace_dir,
)
from sandbox.paths import is_editable
from sandbox.reader import legacy_layout
from sandbox.templates import copy_template

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HALF_MADE = (
    "{run_dir} has a workspace/ but no journal: its creation was interrupted; delete {run_dir} "
    "and create the run again"
)


def create_run(
    run_dir: Path,
    *,
    template: str | Path | None,
    repo: Path | str | None,
    editable: Sequence[str],
    knobs: Mapping[str, Any] | None,
    goal: str,
) -> tuple[Journal, int]:
    """Make `run_dir/workspace` and its git directory; returns the journal and the lock held.

    The journal is written last: a workspace without one was never created.
    """
    run_id = run_dir.name
    if not _RUN_ID.match(run_id) or ".." in run_id or run_id.endswith((".lock", ".")):
        raise WorkspaceError(
            f"run id {run_id!r} is not usable as a git branch name; use letters, digits, . _ -"
        )
    if (template is None) == (repo is None):
        raise WorkspaceError("give exactly one of template= or repo= to create a workspace")
    if goal not in ("minimize", "maximize"):
        raise WorkspaceError(f"goal must be minimize or maximize, not {goal!r}")
    parse_knobs(knobs)  # refuse a bad knob spec before anything is created
    ws_path, gd = workspace_dir(run_dir), git_dir(run_dir)
    if (run_dir / JOURNAL_FILE).exists():
        raise WorkspaceError(
            f"{run_dir} already holds a workspace; reopen it with Workspace.open or pick "
            "another run id"
        )
    if ws_path.exists() or gd.exists():
        raise WorkspaceError(_HALF_MADE.format(run_dir=run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = lock_run(run_dir)
    branch = f"magnet/{run_id}"
    git = Git(gd, ws_path)
    try:
        if template is not None:
            src = copy_template(template, ws_path)
            source = f"template {template if isinstance(template, str) else src}"
            git.run("init", "-q", "-b", branch)
            configure(git)
            git.run("add", "-A")
            git.commit(f"baseline: {source}")
        else:
            assert repo is not None
            source = _clone(Path(repo).expanduser().absolute(), git, branch)
            configure(git)
        baseline = git.head()
        git.run("tag", "-f", BASELINE_TAG, baseline)
        _check_editable(git, editable)
    except BaseException:
        os.close(lock_fd)
        shutil.rmtree(ws_path, ignore_errors=True)
        shutil.rmtree(gd, ignore_errors=True)
        raise
    journal = Journal(
        run_dir / JOURNAL_FILE,
        {
            "version": 1,
            "run_id": run_id,
            "branch": branch,
            "source": source,
            "baseline": baseline,
            "kept": baseline,
            "best": None,
            "goal": goal,
            "editable": list(editable),
            "knobs": dict(knobs or {}),
            "next_exp": 0,
            "current": None,
            "history": [],
        },
    )
    journal.save()
    return journal, lock_fd


def open_run(run_dir: Path) -> tuple[Journal, int]:
    """Lock an existing run and load its journal; a run made before the git directory moved out
    of the work tree has it moved first. Returns the journal and the lock held."""
    jpath = run_dir / JOURNAL_FILE
    if not jpath.exists() and (workspace_dir(run_dir).exists() or git_dir(run_dir).exists()):
        raise WorkspaceError(_HALF_MADE.format(run_dir=run_dir))
    if not jpath.exists() or not (git_dir(run_dir).is_dir() or legacy_layout(run_dir)):
        raise WorkspaceError(
            f"{run_dir} holds no sandbox workspace (no {JOURNAL_FILE}); create one first"
        )
    lock_fd = lock_run(run_dir)
    try:
        if legacy_layout(run_dir):
            os.rename(legacy_git_dir(run_dir), git_dir(run_dir))
        journal = Journal.load(jpath)
        # also after a crash between the move and this
        point_at_work_tree(Git(git_dir(run_dir), workspace_dir(run_dir)))
    except BaseException:
        os.close(lock_fd)
        raise
    return journal, lock_fd


def lock_run(run_dir: Path) -> int:
    """Exclusive lock on the run: one controller at a time. The kernel drops it when the
    process dies, so a crash never leaves a stale lock."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkspaceError(
            f"{run_dir} is in use by another MAGNET process; stop it or wait for it to finish"
        ) from None
    return fd


def _clone(src: Path, git: Git, branch: str) -> str:
    """Clone the user's repository `src` into `git`'s git directory and work tree."""
    if not src.is_dir() or Git(src / ".git", src).rev("HEAD") is None:
        raise WorkspaceError(
            f"{src} is not a git repository with a commit; commit your code there first or use "
            "a template"
        )
    assert git.work_tree is not None
    # --no-hardlinks: the clone shares no files with the user's repository. Git leaves a `.git`
    # file in the work tree pointing at --separate-git-dir; it goes, as git is always told
    # where its git directory is. The file protocol is allowed for this one call.
    clone = ["clone", "-q", "--no-hardlinks", "--no-checkout", f"--separate-git-dir={git.git_dir}"]
    run_git(["-c", "protocol.file.allow=always", *clone, str(src), str(git.work_tree)], cwd=src)
    (git.work_tree / ".git").unlink()
    git.run("checkout", "-q", "-f", "-B", branch)
    git.run("remote", "remove", "origin")  # nothing can ever be pushed back
    return f"clone of {src} at {git.head()[:12]}"


def _check_editable(git: Git, editable: Sequence[str]) -> None:
    """Each editable entry must name a tracked file: an experiment commit can only hold those."""
    root = git.work_tree
    assert root is not None
    tracked = git.run("ls-files", "-z").split("\0")
    for pattern in editable:
        if not any(is_editable(f, [pattern]) for f in tracked):
            where = "is not tracked by git" if (root / pattern).exists() else "does not exist"
            raise WorkspaceError(
                f"editable file {pattern!r} {where} in the workspace; fix `editable:`"
                + (" or commit it in your repository" if "tracked" in where else "")
            )
