"""Removing a path whatever it is, never following it: what a run or an attempt left behind."""

from __future__ import annotations

import shutil
from pathlib import Path


def remove_path(path: Path, *, ignore_errors: bool = False) -> None:
    """`path` gone: a directory with its tree, anything else (a file, a symlink, even one to a
    directory, a FIFO, a device node) unlinked; already missing is fine. `ignore_errors`: a
    directory's tree is removed as far as it can be, silently."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=True)
