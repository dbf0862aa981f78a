"""The planner's messages, rendered from the templates in `prompts/` (string.Template, `$name`).

Token budget: tokens are estimated as ceil(len(text) / 3.5) rather than with a tokenizer, because
the endpoint's model (and so its tokenizer) is unknown; code and tables tokenise denser than
prose (~4 characters per token), so 3.5 errs on the safe side. The budget covers the system and
the user message together. When the prompt is too long, parts are cut in this order:
  1. the last failure's log tail, from the top (its newest lines matter most), down to a few lines;
  2. older experiments, replaced by a one-line summary, down to the newest few rows;
  3. the rest of the log tail;
  4. only then the code, each file cut at a line boundary, and the prompt says so.
The brief, knobs and hints are never cut; if they alone exceed the budget the prompt is longer.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from agent.planners.base import ExperimentSummary, Failure, PlanContext, ProposalReply
from agent.rundir import ranking
from sandbox.knobs import KnobSpec

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
CHARS_PER_TOKEN = 3.5
# the template's two files whole (~4,900 tokens by this estimate), the brief and a few rows,
# with room left for a reply in an 8,192-token context (llama.cpp's server as README runs it)
DEFAULT_TOKEN_BUDGET = 7000
MAX_ROWS = 40  # newest experiments shown as table rows even when the budget would allow more
MIN_ROWS = 5  # newest rows kept verbatim however tight the budget
MAX_KEPT_LISTED = 8  # kept experiments named in the summary line
MAX_LOG_LINES = 40  # newest log lines shown at most: the error is at the end
MIN_LOG_LINES = 8  # log lines kept until the history has been summarised
MAX_HINTS = 5  # newest hints shown
HINT_CHARS = 500
HYPOTHESIS_CHARS = 120
FAILURE_HEAD_CHARS = 1200
LOG_TAIL_MARKER = "Log tail:"

Message = dict[str, Any]  # role, content; tool calls and their results add keys


def estimate_tokens(text: str) -> int:
    """Rough token count of `text` (see the module docstring)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def messages_tokens(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens((m.get("content") or "")
                               + (json.dumps(m["tool_calls"]) if m.get("tool_calls") else ""))
               for m in messages)


@cache
def template(name: str, prompts_dir: Path = PROMPTS_DIR) -> Template:
    """`prompts/<name>.md` as a string.Template."""
    return Template((prompts_dir / f"{name}.md").read_text(encoding="utf-8"))


def render(name: str, **values: Any) -> str:
    return template(name).substitute({k: str(v) for k, v in values.items()}).strip() + "\n"


# --- messages ----------------------------------------------------------------------------------


def build_messages(context: PlanContext, *, token_budget: int = DEFAULT_TOKEN_BUDGET,
                   function_calling: bool = True) -> list[Message]:
    """System + user messages asking for the next proposal, within `token_budget` tokens, then
    this experiment's tool calls and their results. With `function_calling` off the tools'
    schemas are in the prompt and calls are JSON replies."""
    system = system_prompt(context)
    tools = tools_section(context, schemas=not function_calling)
    exchanges = exchange_messages(context, function_calling=function_calling)
    rest = estimate_tokens(system) + estimate_tokens(tools) + messages_tokens(exchanges)
    user = propose_prompt(context, token_budget=token_budget - rest) + tools
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            *exchanges]


def tools_section(context: PlanContext, *, schemas: bool) -> str:
    """What the planner may call before proposing (empty when the goal enables no tool)."""
    if not context.tools:
        return f"\n# Tools\n{context.tool_note}\n" if context.tool_note else ""
    lines = ["", "# Tools",
             "Before proposing you may call tools; their results come back to you, then call "
             f"more or propose. {context.tool_note}".rstrip()]
    for tool in context.tools:
        params = f" Parameters (JSON schema): {json.dumps(tool['parameters'])}" if schemas else ""
        lines.append(f"- {tool['name']}: {tool['description']}{params}")
    if schemas:
        lines.append('To call tools, reply with {"tool_calls": [{"name": "<tool>", "arguments": '
                     '{...}}]} instead of a proposal.')
    return "\n".join(lines) + "\n"


def exchange_messages(context: PlanContext, *, function_calling: bool) -> list[Message]:
    """The assistant's tool calls and their results, one round per planner reply."""
    messages: list[Message] = []
    rounds: dict[int, list[Any]] = {}
    for exchange in context.tool_exchanges:
        rounds.setdefault(exchange.reply, []).append(exchange)
    for exchanges in rounds.values():
        calls = [x.call for x in exchanges]
        if function_calling:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in calls]})
            messages += [{"role": "tool", "tool_call_id": x.call.id, "content": x.result}
                         for x in exchanges]
        else:
            reply = {"tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}
            results = "\n".join(f"{x.call.name}: {x.result}" for x in exchanges)
            messages += [{"role": "assistant", "content": json.dumps(reply)},
                         {"role": "user", "content": f"Tool results:\n{results}\n\nCall more "
                                                     "tools or reply with the proposal."}]
    return messages


def system_prompt(context: PlanContext) -> str:
    """Role, reply schema and rules."""
    schema = json.dumps(ProposalReply.model_json_schema(), separators=(",", ":"))
    return render("system", metric_name=context.metric_name, direction=direction(context.goal),
                  editable=", ".join(context.editable_files) or "(none)", schema=schema,
                  example=json.dumps(_example(context)))


def repair_prompt(error: str) -> str:
    """The follow-up message after an invalid reply."""
    return render("repair", error=error)


def reflect_messages(context: PlanContext, *, hypothesis: str, status: str, log_tail: str,
                     max_log_lines: int = 60, max_log_chars: int = 6000) -> list[Message]:
    """One user message asking for a short diagnosis of a failed experiment."""
    lines = log_tail.strip().splitlines()[-max_log_lines:]
    tail = "\n".join(lines)[-max_log_chars:] or "(no output)"
    text = render("reflect", hypothesis=_one_line(hypothesis) or "(unknown)",
                  status=_one_line(status) or "failed", log_tail=tail)
    return [{"role": "user", "content": text}]


def propose_prompt(context: PlanContext, *, token_budget: int = DEFAULT_TOKEN_BUDGET) -> str:
    """The user message: goal, code, knobs, history, last failure, hints; cut to the budget."""
    fixed = {
        "brief": context.brief.strip(),
        "metric_name": context.metric_name,
        "direction": direction(context.goal),
        "baseline": _metric_or(context.baseline_metric, "not measured yet"),
        "best": _metric_or(context.best_metric, "none yet (nothing has beaten the baseline)"),
        "knobs": knobs_section(context.knobs, context.current_knobs),
        "hints": hints_section(context.hints),
    }
    history = context.history
    head, log = split_failure(context.last_failure)
    n_rows, n_log = min(len(history), MAX_ROWS), min(len(log), MAX_LOG_LINES)

    def text(code: str) -> str:
        return render("propose", **fixed, code=code,
                      history=history_section(history, n_rows, context.goal,
                                                      context.metric_name),
                      failure=failure_section(head, log, n_log))

    full_code = code_section(context.editable_files)
    prompt = text(full_code)
    while estimate_tokens(prompt) > token_budget:
        if n_log > MIN_LOG_LINES:
            n_log = max(MIN_LOG_LINES, n_log // 2)
        elif n_rows > MIN_ROWS:
            n_rows -= 1
        elif n_log > 0:
            n_log = 0
        else:
            break
        prompt = text(full_code)
    excess = estimate_tokens(prompt) - token_budget
    if excess > 0:  # the code alone does not fit: the last resort, said in the prompt
        keep_chars = max(0, len(full_code) - math.ceil(excess * CHARS_PER_TOKEN) - 400)
        prompt = text(code_section(context.editable_files, max_chars=keep_chars))
    return prompt


# --- sections ----------------------------------------------------------------------------------


def code_section(files: dict[str, str], max_chars: int | None = None) -> str:
    """Each editable file in a fenced block; cut at line boundaries only if `max_chars` is given."""
    total = sum(len(code) for code in files.values()) or 1
    parts = []
    for path, code in files.items():
        shown, note = code, ""
        if max_chars is not None and len(code) > max_chars * len(code) / total:
            shown = _head_lines(code, int(max_chars * len(code) / total))
            hidden = code.count("\n") - shown.count("\n")
            note = (f"\n[{path} continues for {hidden} more lines, not shown: the code alone "
                    "exceeds the prompt budget. Take search text only from the lines shown.]")
        fence = "````" if "```" in shown else "```"
        lang = "python" if path.endswith(".py") else ""
        parts.append(f"## {path}\n{fence}{lang}\n{shown.rstrip()}\n{fence}{note}")
    return "\n\n".join(parts) or "(no editable files)"


def knobs_section(knobs: dict[str, KnobSpec], current: dict[str, Any]) -> str:
    if not knobs:
        return "None declared: change constants with search/replace edits."
    rows = ["Set these top-level constants with a knob edit; stay within the allowed values.",
            "", "| knob | current | allowed |", "|---|---|---|"]
    for name, spec in knobs.items():
        value = current.get(name)
        rows.append(f"| {name} | {'?' if value is None else value!r} | {describe_knob(spec)} |")
    return "\n".join(rows)


def describe_knob(spec: KnobSpec) -> str:
    if spec.choices is not None:
        return "one of " + ", ".join(repr(choice) for choice in spec.choices)
    kind = "integer " if spec.integer else ""
    scale = ", log scale" if spec.log else ""
    return f"{kind}{spec.low:g} to {spec.high:g}{scale}"


def history_section(history: Sequence[ExperimentSummary], n_rows: int, goal: str,
                    metric_name: str = "metric") -> str:
    """A summary line for all but the newest `n_rows` experiments, then a table of those."""
    if not history:
        return "None yet."
    older, recent = history[: len(history) - n_rows], history[len(history) - n_rows :]
    lines = [summarise(older, goal)] if older else []
    if recent:
        lines += [f"| exp | hypothesis | {metric_name} | status |", "|---|---|---|---|"]
        lines += [f"| {row.exp} | {_cell(row.hypothesis)} | {_metric_or(row.metric, '-')} "
                  f"| {row.status} |" for row in recent]
    return "\n".join(lines)


def summarise(rows: Sequence[ExperimentSummary], goal: str) -> str:
    """One line for many experiments: counts by status, the best metric, the kept ones.

    e.g. `exps 1-20 (summarised): 12 discard, 3 crashed, 5 keep; best 3.21 at exp 7; kept: ...`
    """
    counts = Counter(row.status for row in rows)
    text = f"exps {rows[0].exp}-{rows[-1].exp} (summarised): " + ", ".join(
        f"{n} {status}" for status, n in counts.most_common())
    best = ranking.best_record([asdict(row) for row in rows], goal)
    if best is not None:
        text += f"; best kept {_metric_or(best['metric'], '-')} at exp {best['exp']}"
    kept = [str(row.exp) for row in rows if row.status == ranking.KEEP]
    if kept:  # the newest few: a long run keeps many
        more = f" ({len(kept)} in all)" if len(kept) > MAX_KEPT_LISTED else ""
        text += f"; kept: exp {', '.join(kept[-MAX_KEPT_LISTED:])}{more}"
    return text


def split_failure(failure: Failure | None) -> tuple[str, list[str]]:
    """(what failed + diagnosis, log lines): the log is the part that may be cut."""
    if failure is None:
        return "", []
    log = [line for line in failure.log_tail.splitlines() if line.strip()]
    return failure.head.strip()[:FAILURE_HEAD_CHARS], log


def failure_section(head: str, log: list[str], n_log: int) -> str:
    if not head and not log:
        return "None."
    parts = [head] if head else []
    if log and n_log > 0:
        cut = len(log) - n_log
        shown = log[-n_log:]
        parts.append(f"{LOG_TAIL_MARKER}\n```\n"
                     + (f"[... {cut} earlier lines cut]\n" if cut > 0 else "")
                     + "\n".join(shown) + "\n```")
    elif log:
        parts.append(f"[log tail of {len(log)} lines cut to fit the prompt budget]")
    return "\n".join(parts)


def hints_section(hints: Sequence[str]) -> str:
    shown = [_one_line(hint)[:HINT_CHARS] for hint in hints[-MAX_HINTS:] if hint.strip()]
    return "\n".join(f"- {hint}" for hint in shown) if shown else "None."


# --- helpers -----------------------------------------------------------------------------------


def direction(goal: str) -> str:
    """`lower` or `higher`: which way the metric gets better, as ranking.better reads `goal`."""
    return "lower" if ranking.better(0.0, 1.0, goal) else "higher"


def _metric_or(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.6g}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    text = _one_line(text).replace("|", "/")
    return text if len(text) <= HYPOTHESIS_CHARS else text[: HYPOTHESIS_CHARS - 1] + "…"


def _head_lines(code: str, max_chars: int) -> str:
    cut = code[:max_chars]
    return cut[: cut.rfind("\n") + 1] if "\n" in cut else ""


def _example(context: PlanContext) -> dict[str, Any]:
    """A valid-looking reply for this goal: one search/replace edit, plus a knob edit if any."""
    path = next(iter(context.editable_files), "train.py")
    edits: list[dict[str, Any]] = [{"path": path,
                                    "search": "<exact line(s) copied from the current code>",
                                    "replace": "<the new line(s)>"}]
    for name, spec in list(context.knobs.items())[:1]:
        edits.append({"knob": name, "value": _example_value(spec, context.current_knobs.get(name))})
    return {"hypothesis": "<one line: the change and why it should improve "
                          f"{context.metric_name}>",
            "rationale": "<a few sentences: the evidence from the code and past experiments>",
            "edits": edits}


def _example_value(spec: KnobSpec, current: Any) -> Any:
    if spec.choices is not None:
        return next((c for c in spec.choices if c != current), spec.choices[0])
    assert spec.low is not None and spec.high is not None
    mid = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
    return round(mid) if spec.integer else float(f"{mid:.3g}")
