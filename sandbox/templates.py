"""Built-in workspace templates: directories shipped inside the `bitnet` package."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sandbox.errors import TemplateError

_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".git")


def templates_root() -> Path | None:
    """`bitnet/templates/` of the installed bitnet package, found without importing bitnet."""
    spec = importlib.util.find_spec("bitnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "templates"


def known_templates() -> list[str]:
    root = templates_root()
    if root is None or not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )


def template_dir(name: str | Path) -> Path:
    """Directory of the template `name`, or `name` itself when it is a path to a directory."""
    if isinstance(name, Path):
        if not name.is_dir():
            raise TemplateError(f"template directory {name} does not exist; pass an existing one")
        return name
    root = templates_root()
    path = (
        root / name
        if root is not None and "/" not in name and name not in ("", ".", "..")
        else None
    )
    if path is None or not path.is_dir() or not any(path.iterdir()):
        known = ", ".join(known_templates()) or "none installed"
        raise TemplateError(
            f"unknown template {name!r}; use one of: {known} (or `workspace: PATH` for a git repo)"
        )
    return path


def copy_template(name: str | Path, dest: Path) -> Path:
    """Copy every file of the template (no caches) into `dest`, which must not exist yet."""
    src = template_dir(name)
    shutil.copytree(src, dest, ignore=_SKIP, symlinks=True)
    return src
