"""Metrics reported by a training command: `METRIC name=value` lines and `metrics.json`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

from sandbox.untrusted import UntrustedFileError, read_json

METRIC_LINE = re.compile(r"^\s*METRIC\s+([A-Za-z_][\w.\-/]*)\s*=\s*(\S+)\s*$")
INTEGER = re.compile(r"[+-]?[0-9]+")
# Longer integers are no measurement, and they break float(), formatting and Python's int()
# (which refuses more than 4,300 digits): such a value is not a number.
MAX_INT_DIGITS = 30
MAX_METRICS_JSON = 2**20  # bytes: the experiment writes metrics.json, so it may be anything

Number = int | float


def parse_number(text: str) -> Number | None:
    """int for integer literals (steps=1200), float otherwise, None when not a number.

    nan and inf stay floats: the runner names them as a diverged run.
    """
    if INTEGER.fullmatch(text):
        return int(text) if len(text.lstrip("+-")) <= MAX_INT_DIGITS else None
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


def refused_metric(line: str) -> str | None:
    """The name of a `METRIC name=value` line whose value is not a number (or an overlong one),
    so a run can say which metric it printed wrong instead of that it printed none."""
    m = METRIC_LINE.match(line)
    return m.group(1) if m and parse_number(m.group(2)) is None else None


def parse_metric_lines(lines: Iterable[str]) -> dict[str, Number]:
    """All `METRIC name=value` lines; a later line for the same name wins."""
    metrics: dict[str, Number] = {}
    for line in lines:
        hit = parse_metric_line(line)
        if hit:
            metrics[hit[0]] = hit[1]
    return metrics


def read_metrics_json(path: Path) -> dict[str, Number]:
    """Numeric top-level entries of a metrics.json; a missing, oversized or malformed file
    gives {}, and so does anything but a regular file (sandbox.untrusted: a symlink to a host
    file or a FIFO left by the experiment is never followed nor waited on)."""
    try:
        data = read_json(path.parent, path.name, MAX_METRICS_JSON, parse_int=parse_number,
                         parse_constant=float)  # nan: the runner names a diverged run
    except UntrustedFileError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Number] = {}
    for k, v in data.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):  # an overlong integer was parsed as None
            out[str(k)] = v
        elif isinstance(v, str) and (num := parse_number(v)) is not None:
            out[str(k)] = num
    return out


def is_finite(value: object) -> bool:
    """A real number usable as a float: not bool, nan, inf, or an int too large for a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
