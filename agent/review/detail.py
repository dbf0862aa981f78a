"""One experiment or tool call in full (`show`, the REPL's `show` and `best`), and diffs."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from agent.review.lines import fmt_metric, status_text, tool_line
from agent.review.run import Run, missing_exp
from agent.rundir import ranking
from agent.rundir.records import tokens_of
from agent.rundir.runs import RunError
from sandbox.errors import WorkspaceError

LOG_TAIL_LINES = 15


def show_tool_call(run: Run, call: int) -> Group:
    """One tool call: what was asked, by whom, before which experiment, and what came back."""
    found = next((c for c in run.tool_calls() if c.call == call), None)
    if found is None:
        raise RunError(f"{run.id} has no tool call {call}; `history` lists them")
    parts: list[RenderableType] = [tool_line(found)]
    parts.append(Text.assemble(("arguments: ", "bold"), json.dumps(found.args)))
    if found.seconds is not None:
        parts.append(Text.assemble(("seconds: ", "bold"), f"{found.seconds:g}"))
    if found.error:
        parts.append(Text.assemble(("error: ", "bold"), found.error))
    elif found.result is not None:
        parts += [Text("result:", "bold"), Text(json.dumps(found.result, indent=1), "dim")]
    return Group(*parts)


def diff_text(diff: str) -> Text:
    text = Text()
    for line in diff.splitlines():
        style = ("bold" if line.startswith(("diff ", "+++", "---", "index ")) else
                 "green" if line.startswith("+") else "red" if line.startswith("-") else
                 "cyan" if line.startswith("@@") else "")
        text.append(line + "\n", style)
    return text


def experiment_diff(run: Run, exp: int) -> str:
    """What experiment `exp` changed, relative to the commit it started from."""
    try:
        return run.sandbox.diff(exp)
    except WorkspaceError as err:
        raise RunError(f"{err}; see its record with `show`") from None


def diff_between(run: Run, a: int, b: int) -> str:
    """The code of experiment `b` against that of experiment `a`."""
    records = run.records()
    for exp in (a, b):
        if not any(r.get("exp") == exp for r in records):
            raise RunError(missing_exp(exp, records, run.status()))
    try:
        return run.sandbox.diff_between(a, b)
    except WorkspaceError as err:
        raise RunError(str(err)) from None


def experiment_detail(run: Run, exp: int) -> dict[str, Any]:
    """`show --json`: the record as experiments.jsonl holds it, its diff (None with the reason
    in `diff_error` when it has no commit), and its log: path and tail (None: it never ran)."""
    record = run.record(exp)
    detail: dict[str, Any] = {"record": record}
    try:
        detail["diff"] = experiment_diff(run, exp)
    except RunError as err:
        detail |= {"diff": None, "diff_error": str(err)}
    tail = run.sandbox.log_tail(exp, LOG_TAIL_LINES)
    detail["log_path"] = None if tail is None else str(run.sandbox.log_path(exp))
    detail["log_tail"] = tail
    detail["repeat_log_paths"] = _repeat_logs(run, record)
    return detail


def _repeat_logs(run: Run, record: dict[str, Any]) -> list[str]:
    """Logs of the record's confirmation runs (another seed): one per value in `runs` after
    the first."""
    paths = (run.sandbox.log_path(record["exp"], repeat)
             for repeat in range(1, len(record.get("runs") or [])))
    return [str(path) for path in paths if path.exists()]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_experiment(run: Run, exp: int) -> Group:
    """Hypothesis, rationale, hints, numbers, judgement, diff and log tail of one experiment."""
    records = run.records()
    record = run.record(exp)
    detail = experiment_detail(run, exp)
    best = ranking.best_so_far(records, run.goal)[records.index(record)]
    parts: list[RenderableType] = [Text.assemble(
        (f"exp {exp:03d}  ", "bold"), status_text(record["status"]),
        f"  {run.metric}={fmt_metric(record.get('metric'))}  best so far {fmt_metric(best)}")]
    fields = [("hypothesis", record.get("hypothesis")), ("rationale", record.get("rationale")),
              ("hints", "; ".join(record.get("hints") or [])), ("reason", record.get("reason"))]
    runs = record.get("runs") or []
    if len(runs) > 1:
        fields.append(("runs", ", ".join(fmt_metric(v) for v in runs)
                       + f" (judged on {fmt_metric(record.get('metric'))})"))
    judgement = record.get("judgement")
    if isinstance(judgement, dict):  # its reasoning is the record's reason, shown above
        fields.append(("judgement", ", ".join(f"{k}={_number(v)}" for k, v in judgement.items()
                                              if k != "reason")))
    size = record.get("diff")
    if isinstance(size, dict):
        fields.append(("diff size", f"+{size.get('added', 0)} -{size.get('removed', 0)} lines"))
    extras = {k: v for k, v in (record.get("metrics") or {}).items() if k != run.metric}
    numbers = [f"planner {record.get('planner', '-')}",
               f"tokens {tokens_of(record)}",
               f"seconds {record.get('seconds') if record.get('seconds') is not None else '-'}",
               f"commit {(record.get('commit') or '-')[:10]}"]
    fields += [("metrics", ", ".join(f"{k}={v:g}" for k, v in extras.items())),
               ("knobs", ", ".join(f"{k}={v}" for k, v in (record.get("knobs") or {}).items())),
               ("", "  ".join(numbers))]
    for label, value in fields:
        if value:
            parts.append(Text.assemble((f"{label}: " if label else "", "bold"), str(value)))
    if detail["diff"] is None:
        parts.append(Text(f"diff: {detail['diff_error']}", "dim"))
    else:
        parts += [Text("diff:", "bold"), diff_text(detail["diff"]) if detail["diff"].strip()
                  else Text("(no change: the code as it was)\n", "dim")]
    if detail["log_tail"] is None:
        parts.append(Text("log: none (it never ran)", "dim"))
    else:
        parts += [Text(f"log tail ({detail['log_path']}):", "bold"),
                  Text(detail["log_tail"] or "(empty)", "dim")]
    for path in detail["repeat_log_paths"]:
        parts.append(Text(f"confirmation run's log: {path}", "dim"))
    calls = [c for c in run.tool_calls() if c.exp == exp]
    if calls:
        parts.append(Text("tool calls before it (`show RUN tool:N` for one in full):", "bold"))
        parts += [tool_line(c) for c in calls]
    return Group(*parts)
