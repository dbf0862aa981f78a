"""Apply search/replace blocks and knob assignments to editable files, all or nothing."""

from __future__ import annotations

import ast
import difflib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import EditError
from sandbox.knobs import KnobSpec, parse_knobs
from sandbox.paths import resolve_editable


@dataclass(frozen=True)
class SearchReplace:
    """Replace the one occurrence of `search` in `path` with `replace`."""

    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class KnobSet:
    """Set the top-level constant `name = value`; `path` may be omitted when one file has it."""

    name: str
    value: Any
    path: str | None = None


Edit = SearchReplace | KnobSet


def parse_edit(obj: Edit | Mapping[str, Any] | Any) -> Edit:
    """Accept an Edit, a dict, or any object with the same attributes (e.g. a pydantic model)."""
    if isinstance(obj, SearchReplace | KnobSet):
        return obj
    get = obj.get if isinstance(obj, Mapping) else lambda k, d=None: getattr(obj, k, d)
    if get("search") is not None:
        return SearchReplace(str(get("path") or ""), str(get("search")), str(get("replace") or ""))
    name = get("knob") or get("name")
    if name is not None and (isinstance(obj, Mapping) and "value" in obj or hasattr(obj, "value")):
        return KnobSet(str(name), get("value"), get("path"))
    raise EditError(
        "edit is neither {path, search, replace} nor {knob, value}; send one of those shapes"
    )


def apply_edits(
    root: Path,
    edits: Iterable[Edit | Mapping[str, Any]],
    editable: Sequence[str],
    knobs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Apply `edits` in order; return the relative paths that changed.

    Every edit is checked and every changed Python file compiled before anything is written, so
    a refused edit leaves all files as they were.
    """
    specs = parse_knobs(knobs)
    # rel -> [real path, original text, new text]
    files: dict[str, list[Any]] = {}

    def load(path: str) -> str:
        rel, real = resolve_editable(root, path, editable)
        if rel not in files:
            try:
                text = real.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise EditError(f"{rel} is not UTF-8 text; only text files can be edited") from None
            files[rel] = [real, text, text]
        return rel

    for raw in edits:
        edit = parse_edit(raw)
        if isinstance(edit, SearchReplace):
            rel = load(edit.path)
            files[rel][2] = _search_replace(rel, files[rel][2], edit.search, edit.replace)
        else:
            spec = specs.get(edit.name)
            if spec is None:
                known = ", ".join(specs) or "none declared in the goal"
                raise EditError(f"unknown knob {edit.name}; known knobs: {known}")
            rel = (
                load(edit.path)
                if edit.path
                else _find_knob_file(root, edit.name, editable, load, files)
            )
            files[rel][2] = _set_knob(rel, files[rel][2], edit.name, edit.value, spec)

    changed = {rel: f for rel, f in files.items() if f[1] != f[2]}
    for rel, (_, _, new) in changed.items():
        if rel.endswith(".py"):
            check_compiles(rel, new)
    _write_all([(real, new) for real, _, new in changed.values()])
    return sorted(changed)


def check_compiles(rel: str, source: str) -> None:
    try:
        compile(source, rel, "exec", dont_inherit=True)
    except SyntaxError as e:
        line = (e.text or "").strip()
        where = f" at line {e.lineno}" + (f" ({line!r})" if line else "")
        raise EditError(
            f"{rel} would not compile after the edits: {e.msg}{where}; fix the replacement text"
        ) from None
    except ValueError as e:  # e.g. null bytes
        raise EditError(f"{rel} would not compile after the edits: {e}; fix the text") from None


# --- search/replace -----------------------------------------------------------------------------


def _occurrences(text: str, search: str) -> list[int]:
    found, start = [], text.find(search)
    while start != -1:
        found.append(start)
        start = text.find(search, start + 1)  # overlapping hits count too: they are ambiguous
    return found


def _search_replace(rel: str, text: str, search: str, replace: str) -> str:
    if not search:
        raise EditError(f"{rel}: search text is empty; copy the exact lines to replace")
    hits = _occurrences(text, search)
    if len(hits) == 1:
        return text[: hits[0]] + replace + text[hits[0] + len(search) :]
    lines = text.split("\n")
    if not hits:
        first, last = _closest(lines, search.rstrip("\n").split("\n"))
        shown = _show(lines, range(first, last))
        raise EditError(
            f"{rel}: search text occurs 0 times (must occur exactly once); copy it exactly from "
            f"the file, closest lines are {first + 1}-{last}:\n{shown}"
        )
    numbers = [text.count("\n", 0, h) for h in hits]
    shown = _show(lines, numbers[:10])
    raise EditError(
        f"{rel}: search text occurs {len(hits)} times, at lines "
        f"{', '.join(str(n + 1) for n in numbers)} (must occur exactly once); include more "
        f"surrounding lines to make it unique:\n{shown}"
    )


def _closest(lines: list[str], wanted: list[str]) -> tuple[int, int]:
    """Window of len(wanted) lines most similar to the search text (difflib ratio)."""
    if not lines:
        return 0, 0
    size = min(len(wanted), len(lines))
    target = "\n".join(wanted)
    windows = range(len(lines) - size + 1)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)

    def score(i: int, quick: bool) -> float:
        matcher.set_seq1("\n".join(lines[i : i + size]))
        return matcher.quick_ratio() if quick else matcher.ratio()

    # quick_ratio is an upper bound of ratio: rank cheaply, then score the best few exactly
    candidates = sorted(windows, key=lambda i: -score(i, True))[:25]
    best = max(candidates, key=lambda i: (score(i, False), -i))
    return best, best + size


def _show(lines: list[str], numbers: Iterable[int]) -> str:
    return "\n".join(f"  {n + 1:>4}| {lines[n]}" for n in list(numbers)[:12] if n < len(lines))


# --- knobs --------------------------------------------------------------------------------------


def _assignments(tree: ast.Module, name: str) -> list[ast.Assign | ast.AnnAssign]:
    found: list[ast.Assign | ast.AnnAssign] = []
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
        ) or (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            found.append(node)
    return found


def _parse(rel: str, text: str) -> ast.Module:
    try:
        return ast.parse(text, rel)
    except SyntaxError as e:
        raise EditError(
            f"{rel} does not parse (line {e.lineno}); fix it with a search/replace edit"
        ) from None


def _find_knob_file(root, name, editable, load, files) -> str:
    candidates = sorted(
        {p.relative_to(root).as_posix() for pat in editable for p in root.glob(pat) if p.is_file()}
    )
    owners = []
    for cand in candidates:
        if not cand.endswith(".py"):
            continue
        rel = load(cand)
        if _assignments(_parse(rel, files[rel][2]), name):
            owners.append(rel)
    if len(owners) != 1:
        where = ", ".join(owners) if owners else "no editable Python file"
        raise EditError(
            f"knob {name} is assigned at top level in {where}; give the edit a `path` naming "
            "the one file to change"
        )
    return owners[0]


def _literal(name: str, value: Any) -> str:
    text = repr(value)
    try:
        if ast.literal_eval(text) == value:
            return text
    except (ValueError, SyntaxError):
        pass
    raise EditError(f"knob {name}: {value!r} is not a Python literal; give a number or string")


def _set_knob(rel: str, text: str, name: str, value: Any, spec: KnobSpec) -> str:
    nodes = _assignments(_parse(rel, text), name)
    if len(nodes) != 1:
        lines = ", ".join(str(n.lineno) for n in nodes)
        problem = f"assigned {len(nodes)} times (lines {lines})" if nodes else "not assigned"
        raise EditError(
            f"knob {name} is {problem} at top level of {rel}; use a search/replace edit instead"
        )
    node = nodes[0].value
    assert node is not None
    try:
        current = ast.literal_eval(node)
    except ValueError:
        current = None
    new = _literal(name, spec.check(value, current))
    # ast offsets count UTF-8 bytes, so splice in bytes
    data = text.encode("utf-8")
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    assert node.end_lineno is not None and node.end_col_offset is not None
    begin = starts[node.lineno - 1] + node.col_offset
    end = starts[node.end_lineno - 1] + node.end_col_offset
    return (data[:begin] + new.encode("utf-8") + data[end:]).decode("utf-8")


def _write_all(items: list[tuple[Path, str]]) -> None:
    """Replace each file atomically; if one write fails, put back the ones already replaced."""
    done: list[tuple[Path, bytes]] = []
    try:
        for real, text in items:
            old = real.read_bytes()
            fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(text.encode("utf-8"))
                os.chmod(tmp, real.stat().st_mode & 0o7777)
                os.replace(tmp, real)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            done.append((real, old))
    except BaseException:
        for real, old in reversed(done):
            real.write_bytes(old)
        raise
