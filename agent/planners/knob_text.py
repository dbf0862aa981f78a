"""Small helpers the knob planners share: value formatting, change text, configuration keys."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

HYPOTHESIS_MAX = 300  # ProposalReply.hypothesis max_length


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def round_sig(value: float, digits: int) -> float:
    """`value` rounded to `digits` significant digits (0.0061283 -> 0.0061 for 2)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def format_value(value: Any) -> str:
    """A short, exact-enough text for a knob value: 0.004, 3, True, pycode."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def same_value(a: Any, b: Any) -> bool:
    """Equal as knob values: 4 == 4.0, floats equal up to printing noise."""
    if is_number(a) and is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def change_verb(old: Any, new: Any) -> str:
    if is_number(old) and is_number(new):
        return "raise" if new > old else "lower"
    return "set"


def describe_change(name: str, old: Any, new: Any) -> str:
    """`LEARNING_RATE 0.004 -> 0.0061` (or `LEARNING_RATE -> 0.0061` when the old is unknown)."""
    if old is None:
        return f"{name} -> {format_value(new)}"
    return f"{name} {format_value(old)} -> {format_value(new)}"


def describe_changes(changes: Iterable[tuple[str, Any, Any]], limit: int = HYPOTHESIS_MAX) -> str:
    """Comma-separated changes, cut to `limit` characters with a count of what was left out."""
    parts = [describe_change(*change) for change in changes]
    text = ", ".join(parts)
    for shown in range(len(parts) - 1, 0, -1):
        if len(text) <= limit:
            break
        text = ", ".join(parts[:shown]) + f" (+{len(parts) - shown} more)"
    return text[:limit]


def config_key(values: Mapping[str, Any], names: Iterable[str]) -> tuple:
    """A hashable key for the knob configuration `values` restricted to `names`.

    Numbers are normalised (4 and 4.0, 0.1 and 0.1000000001 match) so a configuration read back
    from a file compares equal to the one proposed.
    """
    key = []
    for name in sorted(names):
        value = values.get(name)
        if is_number(value):
            value = ("n", float(f"{float(value):.9g}"))
        key.append((name, value))
    return tuple(key)


def changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for every knob in `new` whose value differs from `current`."""
    return [(name, current.get(name), value) for name, value in new.items()
            if name not in current or not same_value(current[name], value)]
