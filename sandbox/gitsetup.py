"""The workspace repository's own settings and hygiene, which only MAGNET writes: its config
(work tree, identity, excludes), a `.git` an experiment planted, and stale git lock files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandbox.gitcli import IDENTITY_EMAIL, IDENTITY_NAME, Git
from sandbox.removal import remove_path

_EXCLUDE = "__pycache__/\n*.pyc\n.pytest_cache/\n"
# what a killed git leaves behind besides refs/**/*.lock
_LOCK_FILES = ("index.lock", "HEAD.lock", "packed-refs.lock", "config.lock", "ORIG_HEAD.lock")


def configure(git: Git) -> None:
    """The repository's config, which only MAGNET writes: the work tree, and identity so plain
    `git commit` by a person works there too. (With the git directory out of the experiment's
    reach, no filter, diff driver or hook can be defined in it.)"""
    point_at_work_tree(git)
    git.run("config", "user.name", IDENTITY_NAME)
    git.run("config", "user.email", IDENTITY_EMAIL)
    exclude = git.git_dir / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a", encoding="utf-8") as f:
        f.write(_EXCLUDE)


def point_at_work_tree(git: Git) -> None:
    """core.worktree (relative: the run directory may move), so that plain git given the git
    directory finds the work tree. MAGNET passes both itself; written only when it differs."""
    assert git.work_tree is not None
    rel = os.path.relpath(git.work_tree, git.git_dir)
    if git.run("config", "--get", "core.worktree", check=False) != rel:
        git.run("config", "core.bare", "false")
        git.run("config", "core.worktree", rel)


def drop_planted_git(work_tree: Path) -> None:
    """A `.git` the experiment left in the work tree: MAGNET's git never reads it (it is told
    its git directory), but a person running git in the work tree would, with whatever filters
    or fsmonitor it names."""
    remove_path(work_tree / ".git", ignore_errors=True)


def clear_git_locks(git_dir: Path) -> None:
    """A killed git leaves *.lock files; the caller holds the workspace lock, so they are
    stale."""
    candidates = [git_dir / name for name in _LOCK_FILES]
    candidates += list((git_dir / "refs").rglob("*.lock"))
    for lock in candidates:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
