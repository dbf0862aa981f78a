"""Resolve an edit's path to a file inside the workspace, or refuse it."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sandbox.errors import EditError


def is_editable(rel: str, editable: Sequence[str]) -> bool:
    """`editable` holds workspace-relative paths; shell-style patterns (src/*.py) also work."""
    return any(rel == pat or fnmatch.fnmatchcase(rel, pat) for pat in editable)


def resolve_editable(root: Path, path: str, editable: Sequence[str]) -> tuple[str, Path]:
    """Return (normalised relative path, real absolute path) of an editable file in `root`.

    Refused: absolute paths, `..`, anything in a `.git` (the workspace has none of its own: git
    would take one for a repository), files not listed as editable, and symlinks whose target
    lies outside the workspace or is itself not editable.
    """
    allowed = ", ".join(editable) or "none"
    raw = str(path).strip().replace("\\", "/")
    if not raw:
        raise EditError(f"edit has an empty path; name one of the editable files: {allowed}")
    pure = PurePosixPath(raw)
    if pure.is_absolute() or raw.startswith("~") or (len(raw) > 1 and raw[1] == ":"):
        raise EditError(
            f"absolute path {path!r} refused; give a workspace-relative path, one of: {allowed}"
        )
    if ".." in pure.parts:
        raise EditError(f"path {path!r} uses `..` and is refused; edit only: {allowed}")
    rel = PurePosixPath(*[p for p in pure.parts if p != "."]).as_posix()
    if rel == "." or _in_git(rel):
        raise EditError(f"path {path!r} is refused; edit only: {allowed}")
    if not is_editable(rel, editable):
        raise EditError(f"{rel} is not editable; edit only: {allowed}")
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root_real / rel))
    if real != root_real / rel:
        if not real.is_relative_to(root_real):
            raise EditError(f"{rel} is a symlink that leads outside the workspace; refused")
        target = real.relative_to(root_real).as_posix()
        if not is_editable(target, editable) or _in_git(target):
            raise EditError(f"{rel} is a symlink to {target}, which is not editable; refused")
    if not real.is_file():
        raise EditError(f"{rel} does not exist in the workspace; edit an existing file")
    return rel, real


def _in_git(rel: str) -> bool:
    return ".git" in PurePosixPath(rel).parts
