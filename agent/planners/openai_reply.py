"""Reading a chat model's reply: the JSON proposal or the tool calls in it.

Whatever does not fit is a ReplyError whose one line goes back to the model in the repair round
(agent.planners.openai_planner), so each problem names the field and what it should be.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.planners.base import PlanContext, ProposalReply, ToolCall, ToolCallsReply

EDIT_KINDS = {"SearchReplaceEdit", "KnobEdit"}


class ReplyError(ValueError):
    """A reply that is not a valid proposal; str() is one line, sent back in the repair round."""


@dataclass(frozen=True)
class Reply:
    """What one chat completion said: its text and its function calls."""

    text: str
    calls: list[ToolCall]


def tool_call(call: Any) -> ToolCall:
    """A function call of the reply; arguments that are not a JSON object are a ReplyError."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        raise ReplyError(f"the arguments of tool call {call.function.name} are not valid JSON; "
                         "send a JSON object") from None
    if not isinstance(arguments, dict):
        raise ReplyError(f"the arguments of tool call {call.function.name} must be a JSON "
                         "object")
    return ToolCall(id=call.id or "", name=call.function.name, arguments=arguments)


def read_reply(reply: Reply, context: PlanContext) -> ProposalReply | ToolCallsReply:
    """The reply as a proposal or as tool calls (function calls, or JSON `tool_calls`)."""
    calls = reply.calls
    data: dict[str, Any] = {}
    if not calls and "tool_calls" in (reply.text or ""):
        with contextlib.suppress(ReplyError):  # no JSON: parse_reply below says why
            data = extract_json_object(reply.text)
    if "tool_calls" in data:
        try:
            calls = ToolCallsReply.model_validate(data).tool_calls
        except ValidationError as err:
            raise ReplyError(f"the tool_calls do not match the schema: "
                             f"{err.errors()[0]['msg']}") from None
        calls = [c.model_copy(update={"id": c.id or f"call_{i}"}) for i, c in enumerate(calls)]
    if calls:
        if not context.tools:
            raise ReplyError(context.tool_note or "no tools are available now; reply with "
                             "a proposal")
        return ToolCallsReply(tool_calls=calls)
    return parse_reply(reply.text)


def parse_reply(text: str) -> ProposalReply:
    """The first JSON object in `text` (prose and ``` fences around it are fine), validated."""
    data = extract_json_object(text)
    try:
        return ProposalReply.model_validate(data)
    except ValidationError as err:
        problems = [_problem(error, data) for error in err.errors()]
        shown = "; ".join(dict.fromkeys(p for p in problems if p))  # unique, in order
        raise ReplyError(f"the JSON does not match the schema: {shown}") from None


def _problem(error: Any, data: dict[str, Any]) -> str | None:
    """`edits.0.search: String should have ...`, or None for the union branch the edit is not.

    An edit fails against both union members; only the one its keys point at is worth telling.
    """
    loc = list(error["loc"])
    if len(loc) >= 3 and loc[0] == "edits" and loc[2] in EDIT_KINDS:
        edit = data["edits"][loc[1]]
        meant = "KnobEdit" if isinstance(edit, dict) and "knob" in edit else "SearchReplaceEdit"
        if loc[2] != meant:
            return None
        del loc[2]
    return f"{'.'.join(str(part) for part in loc) or 'reply'}: {error['msg']}"


def extract_json_object(text: str) -> dict[str, Any]:
    """Decode the first `{...}` in `text` that is a whole JSON object."""
    decoder = json.JSONDecoder()
    first_error: json.JSONDecodeError | None = None
    start = text.find("{")
    while start != -1:
        try:
            data, _ = decoder.raw_decode(text, start)
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError as err:
            first_error = first_error or err
        start = text.find("{", start + 1)
    if first_error is not None:
        raise ReplyError(f"the reply is not valid JSON ({first_error.msg} at line "
                         f"{first_error.lineno} column {first_error.colno})")
    raise ReplyError("the reply contains no JSON object")
