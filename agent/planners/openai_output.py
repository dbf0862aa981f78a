"""Structured output for the openai planner: the response formats it asks for, best first, and
how a server's refusal of one (or of `tools`) is recognised.

A refusal is recognised by what the error says, whatever its status (llama-cpp-python answers
500), so it is never retried as transient; the planner then steps down OUTPUT_MODES for the rest
of the run.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from agent.planners.base import ProposalReply, ToolCallsReply

OutputMode = Literal["json_schema", "json_object_schema", "json_object", "text"]
# best first; a refused mode is never asked for again in the run
OUTPUT_MODES: tuple[OutputMode, ...] = ("json_schema", "json_object_schema", "json_object", "text")
MODE_NAMES = {"json_schema": "json_schema", "json_object_schema": "json_object with the schema",
              "json_object": "json_object", "text": "JSON in plain text"}
# what servers say when they do not take a response_format: "Input should be 'text' or
# 'json_object'" (llama-cpp-python, HTTP 500), "'response_format' of type 'json_schema' is not
# supported" (OpenAI, 400), "Unrecognized request argument supplied: schema"...
REFUSAL = re.compile(r"response[_ ]?format|json_schema|json_object|\bschema\b|structured output",
                     re.IGNORECASE)
# what servers say when they do not take `tools`: "tools param requires --jinja flag"
# (llama.cpp), "Unrecognized request argument supplied: tools", "does not support tools"
TOOLS_REFUSAL = re.compile(r"\btools?\b|tool_choice|function[_ ]?call", re.IGNORECASE)


def next_mode(mode: OutputMode) -> OutputMode:
    """The mode to ask for once `mode` was refused."""
    return OUTPUT_MODES[OUTPUT_MODES.index(mode) + 1]


def response_format(mode: OutputMode, *, either: bool = False) -> dict[str, Any] | None:
    """The request's `response_format` for `mode` (None: plain text); `either` when the tools are
    offered in the prompt, so the reply may be a proposal or tool calls."""
    schema = ProposalReply.model_json_schema()
    if either:
        schema = {"anyOf": [schema, ToolCallsReply.model_json_schema()]}
    if mode == "json_schema":
        # not strict: OpenAI's strict mode forbids the schema's defaults and length bounds;
        # replies are validated here anyway
        return {"type": "json_schema",
                "json_schema": {"name": "proposal", "strict": False, "schema": schema}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None
