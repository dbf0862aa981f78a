"""The tools by name, what the planner is told about them, and calling one safely.

`call_tool` never raises for a tool's own failure: bad arguments, a ToolError or any other
error come back as one line for the planner, and the run goes on.
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any

from pydantic import ValidationError

from agent.tools.base import Tool, ToolContext, ToolError

RESULT_CHARS = 4000  # a result as the planner reads it: enough for a merge table


# where each tool lives: imported on first use, so a run that reads files does not load torch
# (merge) or web3 (ledger)
WHERE = {
    "record_contribution": "agent.tools.ledger_tools:RECORD_CONTRIBUTION",
    "verify_contribution": "agent.tools.ledger_tools:VERIFY_CONTRIBUTION",
    "merge_specialists": "agent.tools.merge_tool:MERGE_SPECIALISTS",
    "generate_data": "agent.tools.data_tool:GENERATE_DATA",
    "read_file": "agent.tools.files:READ_FILE",
    "read_log": "agent.tools.files:READ_LOG",
}


@functools.cache
def tool(name: str) -> Tool:
    module, _, attr = WHERE[name].partition(":")
    found = getattr(importlib.import_module(module), attr)
    assert found.name == name, f"{WHERE[name]} is tool {found.name}, not {name}"
    return found


def planner_specs(names: list[str]) -> list[dict[str, Any]]:
    """{name, description, parameters (JSON schema)} of each tool in `names`, for function
    calling or for the prompt."""
    return [{"name": name, "description": tool(name).description,
             "parameters": _schema(tool(name))} for name in names]


def _schema(found: Tool) -> dict[str, Any]:
    schema = found.args.model_json_schema(by_alias=True)
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def call_tool(ctx: ToolContext, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one tool: {"result": dict} or {"error": one line}."""
    allowed = ctx.goal.spec.tools
    if name not in allowed:
        known = "" if name in WHERE else "there is no such tool; "
        return {"error": f"tool {name!r}: {known}this run may call "
                         f"{', '.join(allowed) or 'no tools'} (the goal's `tools:`)"}
    found = tool(name)
    try:
        args = found.args.model_validate(arguments)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        return {"error": f"{name}: argument {where}: {first['msg']}; see the tool's parameters"}
    try:
        return {"result": found.run(ctx, args)}
    except ToolError as err:
        return {"error": f"{name}: {err}"}
    except Exception as err:  # noqa: BLE001 - any failure goes to the planner, not the run
        message = " ".join(str(err).split()) or type(err).__name__
        return {"error": f"{name} failed: {message[:500]}"}


def for_planner(outcome: dict[str, Any]) -> str:
    """What the planner reads back: the result as JSON, or `error: …`, cut to RESULT_CHARS."""
    if "error" in outcome and outcome["error"] is not None:
        return f"error: {outcome['error']}"
    text = json.dumps(outcome.get("result"), sort_keys=True, default=str)
    return text if len(text) <= RESULT_CHARS else text[: RESULT_CHARS - 1] + "…"
