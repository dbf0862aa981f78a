"""Read the current values of the goal's knobs (top-level constants) from the editable files."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Mapping
from typing import Any


def read_knob_values(files: Mapping[str, str], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """{knob: value} for every knob assigned a literal at module top level in `files`."""
    values: dict[str, Any] = {}
    for path, source in files.items():
        if not path.endswith(".py"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name) and target.id in knobs:
                    # an expression, not a literal, is skipped: the planner sees it in the code
                    with contextlib.suppress(ValueError):
                        values[target.id] = ast.literal_eval(value)
    return values
