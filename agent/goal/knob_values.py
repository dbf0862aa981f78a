"""Top-level constants of the editable files: which exist, and the values the knobs hold."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Mapping
from typing import Any


def top_level_assignments(source: str) -> dict[str, ast.expr | None]:
    """{name: assigned expression} for module-level `NAME = ...` (None for `NAME: type`).

    Raises SyntaxError for source that does not parse.
    """
    found: dict[str, ast.expr | None] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        found.update((t.id, value) for t in targets if isinstance(t, ast.Name))
    return found


def read_knob_values(files: Mapping[str, str], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """{knob: value} for every knob assigned a literal at module top level in `files`."""
    values: dict[str, Any] = {}
    for path, source in files.items():
        if not path.endswith(".py"):
            continue
        try:
            assignments = top_level_assignments(source)
        except SyntaxError:
            continue
        for name, value in assignments.items():
            if name in knobs and value is not None:
                # an expression, not a literal, is skipped: the planner sees it in the code
                with contextlib.suppress(ValueError):
                    values[name] = ast.literal_eval(value)
    return values
