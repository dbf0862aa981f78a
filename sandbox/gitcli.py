"""Thin wrapper around the git command line.

The CLI is used instead of GitPython because one `git` process per call is faster than GitPython's
object layer for the handful of commands an experiment needs, and its behaviour is plain git's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import GitError

IDENTITY_NAME = "MAGNET"
IDENTITY_EMAIL = "magnet@localhost"


def git_env() -> dict[str, str]:
    """Environment for git: fixed identity, no user/system config, never prompt.

    Ignoring the global config makes commits work on a machine without `git config --global` and
    keeps a user's hooks, signing or aliases from changing what the sandbox does.
    """
    env = dict(os.environ)
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
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(name, None)  # inherited from a hook or a test runner they would redirect us
    return env


_ENV = git_env()


class Git:
    """Runs git commands in one repository."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def run(
        self, *args: str, input: str | None = None, check: bool = True, cwd: Path | None = None
    ) -> str:
        """Run `git ARGS` and return its stdout without the trailing newline."""
        cmd = ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", *args]
        proc = subprocess.run(
            cmd,
            cwd=cwd or self.path,
            env=_ENV,
            input=input,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            detail = msg[-1] if msg else f"exit code {proc.returncode}"
            raise GitError(f"git {' '.join(args[:3])} failed in {self.path}: {detail}")
        return proc.stdout.rstrip("\n")

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
