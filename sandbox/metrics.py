"""Metrics reported by a training command: `METRIC name=value` lines and `metrics.json`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

METRIC_LINE = re.compile(r"^\s*METRIC\s+([A-Za-z_][\w.\-/]*)\s*=\s*(\S+)\s*$")

Number = int | float


def parse_number(text: str) -> Number | None:
    """int for integer literals (steps=1200), float otherwise, None when not a number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def parse_metric_line(line: str) -> tuple[str, Number] | None:
    m = METRIC_LINE.match(line)
    if not m:
        return None
    value = parse_number(m.group(2))
    return None if value is None else (m.group(1), value)


def parse_metric_lines(lines: Iterable[str]) -> dict[str, Number]:
    """All `METRIC name=value` lines; a later line for the same name wins."""
    metrics: dict[str, Number] = {}
    for line in lines:
        hit = parse_metric_line(line)
        if hit:
            metrics[hit[0]] = hit[1]
    return metrics


def read_metrics_json(path: Path) -> dict[str, Number]:
    """Numeric top-level entries of a metrics.json; a missing or malformed file gives {}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Number] = {}
    for k, v in data.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[str(k)] = v
        elif isinstance(v, str) and (num := parse_number(v)) is not None:
            out[str(k)] = num
    return out


def is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
