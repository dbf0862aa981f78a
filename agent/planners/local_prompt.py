"""What the local model sees and may answer: every untried single-knob change (a knob's choices
or a small grid over its range), the JSON schema a reply must match, and the short ASCII chat
prompt a 135M model reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from agent.planners.base import ExperimentSummary, PlanContext
from agent.planners.knob_text import (
    changed,
    config_key,
    describe_change,
    format_value,
    is_number,
    round_sig,
    same_value,
)
from agent.planners.prompt import direction
from sandbox.knobs import KnobSpec

GRID_SIZE = 7  # values per numeric range: enough spread, few tokens in the prompt
HISTORY_HEADER = "Past experiments (change: {metric} status):"
SYSTEM = ("You tune the constants of a machine-learning training script. Reply with one JSON "
          "object naming one knob to change and its new value.")


# --- what the model may choose -------------------------------------------------------------------


def value_grid(spec: KnobSpec, size: int = GRID_SIZE) -> list[Any]:
    """The knob's choices, or `size` values spaced (log-)evenly over its range, cleanly rounded."""
    if spec.choices is not None:
        return list(spec.choices)
    assert spec.low is not None and spec.high is not None
    low, high = spec.low, spec.high
    if low == high or size < 2:
        return [low]
    if spec.log:
        points = [low * (high / low) ** (i / (size - 1)) for i in range(size)]
    else:
        points = [low + (high - low) * i / (size - 1) for i in range(size)]
    values: list[Any] = []
    for point in points:
        value: Any = round(point) if spec.integer else round_sig(point, 2)
        value = min(max(value, low), high)
        if not any(same_value(value, v) for v in values):
            values.append(value)
    return values


def _near(spec: KnobSpec, value: Any, current: Any, size: int) -> bool:
    """True when `value` is the current value or too close to it to be a real change."""
    if same_value(value, current):
        return True
    if spec.choices is not None or not is_number(current):
        return False
    assert spec.low is not None and spec.high is not None
    if spec.integer or spec.low == spec.high:
        return False
    scale = math.log if spec.log and spec.low > 0 and current > 0 else (lambda x: x)
    step = (scale(spec.high) - scale(spec.low)) / (size - 1)
    return abs(scale(value) - scale(current)) < 0.3 * step


def candidate_changes(context: PlanContext, tried: set[tuple],
                      size: int = GRID_SIZE) -> dict[str, list[Any]]:
    """{knob: new values} for every single-knob change that leads to an untried configuration."""
    names = list(context.knobs)
    options: dict[str, list[Any]] = {}
    for name, spec in context.knobs.items():
        current = context.current_knobs.get(name)
        values = [
            v for v in value_grid(spec, size)
            if not _near(spec, v, current, size)
            and config_key({**context.current_knobs, name: v}, names) not in tried
        ]
        if values:
            options[name] = values
    return options


def proposal_schema(options: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The JSON schema of a reply: one of the knobs, with one of that knob's values."""
    return {"anyOf": [
        {"type": "object",
         "properties": {"knob": {"const": name}, "value": {"enum": list(values)}},
         "required": ["knob", "value"], "additionalProperties": False}
        for name, values in options.items()
    ]}


def parse_reply(text: str, options: Mapping[str, Sequence[Any]]) -> tuple[str, Any] | None:
    """(knob, value) from a reply, or None when it is not one of the options."""
    try:
        reply = json.loads(text)
        name, raw = reply["knob"], reply["value"]
    except (ValueError, TypeError, KeyError):
        return None
    for value in options.get(name, ()) if isinstance(name, str) else ():
        if json.dumps(value) == json.dumps(raw):  # the exact literal the schema allowed
            return name, value
    return None


# --- the prompt ----------------------------------------------------------------------------------


def history_rows(history: Sequence[ExperimentSummary]) -> list[str]:
    """One line per experiment: its knob changes from the best configuration of the time."""
    rows, reference = [], None
    for summary in history:
        if summary.status == "baseline":
            what = "baseline"
        elif reference is None:
            what = _ascii(summary.hypothesis, 60)
        else:
            diff = changed(reference, {k: v for k, v in summary.knobs.items() if k in reference})
            what = (", ".join(describe_change(*d) for d in diff) if diff
                    else _ascii(summary.hypothesis, 60))
        metric = "-" if summary.metric is None else f"{summary.metric:.4g}"
        rows.append(f"{what}: {metric} {summary.status}")
        if summary.knobs and summary.status in ("baseline", "keep"):
            reference = dict(summary.knobs)
    return rows


def build_messages(context: PlanContext, rows: Sequence[str],
                   grid_size: int = GRID_SIZE) -> list[dict[str, str]]:
    """The chat messages: what stays from one proposal to the next first (the goal, each knob's
    grid, then the history, which only grows), so the planner reads again only what follows the
    rows it read last time. What was tried is in the history; the schema (proposal_schema over
    candidate_changes) leaves the model only untried changes."""
    better = direction(context.goal)
    current = " ".join(f"{k}={format_value(v)}" for k, v in context.current_knobs.items()
                       if k in context.knobs)
    grids = "\n".join(f"{k}: {' '.join(format_value(v) for v in value_grid(spec, grid_size))}"
                      for k, spec in context.knobs.items())
    lines = [f"Goal: {_ascii(context.brief, 900)}",
             f"Metric: {context.metric_name}, {better} is better.",
             f"Values each knob can take:\n{grids}"]
    if rows:
        lines.append(f"{HISTORY_HEADER.format(metric=context.metric_name)}\n" + "\n".join(rows))
    lines.append(f"Current values: {current}")
    if context.best_metric is not None:
        lines.append(f"Best {context.metric_name} so far: {context.best_metric:.4g}")
    if context.last_failure:
        lines.append(f"Last failure: {_ascii(context.last_failure.head, 240)}")
    if context.hints:
        lines.append("Hints from the person: "
                     + " / ".join(_ascii(h, 160) for h in context.hints[-3:]))
    lines.append(f"Choose one change, not tried before, likely to make {context.metric_name} "
                 f"{better}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def prompt_segments(prompt: str, rows: Sequence[str]) -> list[str]:
    """`prompt` cut before each history row and after the last (the rows as build_messages
    wrote them), so a prompt that repeats the last one's rows reads only what follows them
    (agent.planners.local_model.PromptCache); uncut where the rows are not found."""
    header = prompt.find(HISTORY_HEADER.split("{")[0])
    if header < 0 or not rows:
        return [prompt]
    at = prompt.index("\n", header) + 1
    cuts = []
    for row in rows:
        if not prompt.startswith(row + "\n", at):
            return [prompt]
        cuts.append(at)
        at += len(row) + 1
    cuts.append(at)
    return [prompt[a:b] for a, b in zip([0, *cuts], [*cuts, len(prompt)], strict=True)]


def _ascii(text: str, limit: int) -> str:
    """One line of plain ASCII, at most `limit` characters (the model reads little else well)."""
    flat = " ".join(text.encode("ascii", "replace").decode().split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
