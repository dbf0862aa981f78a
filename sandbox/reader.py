"""Reading a run's sandbox without opening it: no lock taken, nothing written.

`Workspace.open` takes the run's lock and recovers; a reviewer must do neither (taking the lock,
even briefly, could make the run's own start fail). `RunReader` reads the same journal, refs,
notes and files instead, so it is safe on a live run. `Workspace` reads its notes and diffs
through the functions here too, so both sides agree on what an experiment changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import WorkspaceError
from sandbox.gitcli import Git
from sandbox.layout import (
    BEST_TAG,
    GIT_DIR,
    JOURNAL_FILE,
    LOCK_FILE,
    NOTES_REF,
    exp_ref,
    git_dir,
    legacy_git_dir,
    log_path,
    output_dir,
)

# A diff never starts a program named by config or attributes (a legacy run's config was
# writable by its experiments).
_PLAIN_DIFF = ("--no-ext-diff", "--no-textconv")


def legacy_layout(run_dir: Path) -> bool:
    """A run made before the git directory moved out of the work tree: it has workspace/.git
    (a real directory) and no workspace.git."""
    legacy = legacy_git_dir(run_dir)
    return not git_dir(run_dir).exists() and legacy.is_dir() and not legacy.is_symlink()


def read_note(git: Git, exp: int) -> dict[str, Any] | None:
    """The JSON note (record) of experiment `exp`'s commit, or None."""
    out = git.run("notes", "--ref", NOTES_REF, "show", exp_ref(exp), check=False)
    try:
        return json.loads(out) if out else None
    except ValueError:
        return None


def read_diff(git: Git, history: Sequence[Mapping[str, Any]], exp: int) -> str:
    """What experiment `exp` changed, relative to the commit it started from (its `base` in the
    journal's history; the commit's own parent when the history does not know it)."""
    ref = exp_ref(exp)
    if git.rev(ref) is None:
        raise WorkspaceError(f"experiment {exp:03d} has no commit (it stopped before its edit "
                             "was committed)")
    base = next((h.get("base") for h in history if h.get("exp") == exp), None)
    if base is None:
        return git.run("show", *_PLAIN_DIFF, "--format=", ref)
    return git.run("diff", *_PLAIN_DIFF, base, ref)


TAIL_CHUNK = 64 * 1024


def read_tail(path: Path, lines: int, max_bytes: int = 4 * 2**20) -> str:
    """The last `lines` lines of a text file, reading backwards in chunks (at most `max_bytes`,
    so lines of any length cannot make it read the whole file)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, start = b"", end
        while start > 0 and data.count(b"\n") <= lines and end - start < max_bytes:
            size = min(TAIL_CHUNK, start)
            start -= size
            f.seek(start)
            data = f.read(size) + data
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class RunReader:
    """Read-only view of `runs/<run-id>/`'s sandbox: journal, experiment commits, notes, logs."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)

    @property
    def git(self) -> Git:
        """The run's repository, history only: workspace.git, or workspace/.git in a run made
        before it moved (looked up at each use: reopening the run moves it)."""
        if legacy_layout(self.run_dir):
            return Git(legacy_git_dir(self.run_dir))
        return Git(git_dir(self.run_dir))

    def journal(self) -> dict[str, Any]:
        """The journal as last saved ({} when there is none: creation never finished)."""
        try:
            return json.loads((self.run_dir / JOURNAL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # saved by atomic rename, so never torn: missing or not ours

    def history(self) -> list[dict[str, Any]]:
        """One entry per finished experiment: exp, status, commit, base, metric."""
        return list(self.journal().get("history") or [])

    def commit(self, exp: int) -> str | None:
        """Experiment `exp`'s commit (kept or not), or None when it never got one."""
        return self.git.rev(exp_ref(exp)) if self._has_repo() else None

    def note(self, exp: int) -> dict[str, Any] | None:
        return read_note(self.git, exp) if self.commit(exp) else None

    def diff(self, exp: int) -> str:
        """What experiment `exp` changed (WorkspaceError when it has no commit)."""
        if not self._has_repo():
            raise WorkspaceError(f"{self.run_dir} has no {GIT_DIR}/ repository; is the run "
                                 "directory intact?")
        return read_diff(self.git, self.history(), exp)

    def diff_between(self, a: int, b: int) -> str:
        """The code of experiment `b` against that of experiment `a`."""
        for exp in (a, b):
            if self.commit(exp) is None:
                raise WorkspaceError(f"experiment {exp:03d} has no commit to compare; pick "
                                     "another")
        return self.git.run("diff", *_PLAIN_DIFF, exp_ref(a), exp_ref(b))

    def best(self) -> dict[str, Any] | None:
        """{exp, commit} that tag magnet/best points at (exp None if the journal does not know
        that commit), or None before anything was kept."""
        if not self._has_repo() or (sha := self.git.rev(BEST_TAG)) is None:
            return None
        exp = next((h["exp"] for h in self.history() if h.get("commit") == sha), None)
        return {"exp": exp, "commit": sha}

    def log_path(self, exp: int, repeat: int = 0) -> Path:
        return log_path(self.run_dir, exp, repeat)

    def output_dir(self, exp: int, repeat: int = 0) -> Path:
        return output_dir(self.run_dir, exp, repeat)

    def log_tail(self, exp: int, lines: int, repeat: int = 0) -> str | None:
        """The last `lines` lines of a run's log; None when it never ran. Reads only the end of
        the file, so a log of any size costs the same."""
        try:
            return read_tail(self.log_path(exp, repeat), lines)
        except OSError:
            return None

    def lock_holder(self) -> tuple[bool, int | None]:
        """(known, pid): who holds the run's lock per /proc/locks; known is False where
        /proc/locks cannot tell. Only reads: it never takes the lock."""
        try:
            table = Path("/proc/locks").read_text()
        except OSError:
            return False, None
        try:
            st = (self.run_dir / LOCK_FILE).stat()
        except OSError:
            return True, None
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in table.splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
                return True, int(fields[4])
        return True, None

    def _has_repo(self) -> bool:
        return (self.git.git_dir / "HEAD").is_file()
