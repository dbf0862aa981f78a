"""Thin wrapper around the git command line.

The CLI is used instead of GitPython because one `git` process per call is faster than GitPython's
object layer for the handful of commands an experiment needs, and its behaviour is plain git's.

Git runs programs named by its configuration and environment (filters, hooks, fsmonitor, pagers,
editors, diff drivers, transports). Experiment code is hostile, so every call here names its
repository explicitly, gets an environment built from an allow-list and a command line that
switches those programs off. The repository's own config is written only by MAGNET (identity,
work tree), and its git directory lies outside what an experiment may write: that is why no
filter or diff driver can be defined there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from sandbox.errors import GitError

IDENTITY_NAME = "MAGNET"
IDENTITY_EMAIL = "magnet@localhost"
_PASSED = ("PATH", "LANG", "TZ")  # all git takes from the caller's environment

# Given on every call (and passed on by git to the gits it starts, via GIT_CONFIG_PARAMETERS).
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",  # no hooks
    "core.fsmonitor=false",  # no fsmonitor hook or daemon
    "core.pager=cat",  # `cat` is never started: git prints itself
    "core.editor=:",  # `:` is never started either; every message is given with -m
    "commit.gpgsign=false",  # no gpg program
    "tag.gpgsign=false",
    "protocol.allow=never",  # no transport (ext:: runs commands); the clone allows `file` alone
    "maintenance.auto=false",  # no `gc --auto` detaching a process that outlives the call
    "gc.auto=0",
)


def git_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for git: PATH, LANG and TZ from `environ` (os.environ), nothing else of it.

    No secret reaches a program git might start, and no GIT_* variable (GIT_DIR,
    GIT_EXTERNAL_DIFF, GIT_SSH_COMMAND, GIT_CONFIG_PARAMETERS...) or PAGER changes what it
    does. Identity is fixed; user and system config are ignored, so commits work on a machine
    without `git config --global` and a user's hooks, signing or aliases change nothing. No HOME:
    git needs none, and without it reads no ~/.config/git/attributes or ignore file.
    """
    src = os.environ if environ is None else environ
    env = {name: src[name] for name in _PASSED if name in src}
    env.update(
        GIT_AUTHOR_NAME=IDENTITY_NAME,
        GIT_AUTHOR_EMAIL=IDENTITY_EMAIL,
        GIT_COMMITTER_NAME=IDENTITY_NAME,
        GIT_COMMITTER_EMAIL=IDENTITY_EMAIL,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return env


def run_git(
    args: Sequence[str], *, cwd: Path, input: str | None = None, check: bool = True
) -> str:
    """Run `git ARGS` (with SAFE_CONFIG, in git_env()) and return stdout without the final
    newline. `args` must name the repository itself: see `Git`."""
    safe = [a for item in SAFE_CONFIG for a in ("-c", item)]
    proc = subprocess.run(
        ["git", *safe, *args],
        cwd=cwd,
        env=git_env(),
        input=input,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        detail = msg[-1] if msg else f"exit code {proc.returncode}"
        shown = [a for a in args if not a.startswith("--git-dir=")][:4]
        raise GitError(f"git {' '.join(shown)} failed in {cwd}: {detail}")
    return proc.stdout.rstrip("\n")


class Git:
    """Runs git commands in one repository: its git directory and work tree are passed on every
    call, never found from the current directory (where a planted `.git` could redirect git).

    Without a work tree only history can be read (log, show, notes, diff between commits); the
    git directory then stands in as one, so a work tree that is gone stops nothing.
    """

    def __init__(self, git_dir: Path, work_tree: Path | None = None) -> None:
        self.git_dir = Path(git_dir).absolute()
        self.work_tree = Path(work_tree).absolute() if work_tree is not None else None

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run `git ARGS` in this repository (paths relative to the work tree)."""
        tree = self.work_tree or self.git_dir
        where = [f"--git-dir={self.git_dir}", f"--work-tree={tree}"]
        return run_git([*where, *args], cwd=tree, input=input, check=check)

    def rev(self, ref: str) -> str | None:
        """Commit id `ref` points to, or None when it does not exist."""
        out = self.run("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
        return out or None

    def head(self) -> str:
        return self.run("rev-parse", "HEAD")

    def dirty(self) -> bool:
        """True when tracked files differ from HEAD (untracked files are run artefacts)."""
        return bool(self.run("status", "--porcelain", "--untracked-files=no"))

    def commit(self, message: str, paths: Sequence[str] = ()) -> str:
        """Commit `paths` (staged by the commit itself) or, without paths, the index.

        Empty commits are allowed: an experiment (the baseline, say) may change nothing.
        """
        only = ["--only", "--", *paths] if paths else []
        self.run("commit", "-q", "--allow-empty", "--no-verify", "-m", message, *only)
        return self.head()
