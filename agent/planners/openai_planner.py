"""The `openai` planner: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp).

One proposal = one chat request (plus at most one repair round when the reply is not a valid
ProposalReply, read by agent.planners.openai_reply). Structured output is negotiated once per run
and remembered (agent.planners.openai_output): `response_format` json_schema, then json_object
with the schema (llama.cpp's extension), then plain json_object, then JSON in text.
429 / 5xx / timeouts / connection errors are retried here with exponential backoff (the SDK's
own retries are off, so the attempts and the time they take are counted in one place); what
survives the retries, and any other HTTP error, is PlannerUnavailable naming the endpoint, the
status and the server's message (agent.planners.openai_endpoint). Without a model name the
planner takes the one model the endpoint lists, and says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agent.planners.base import (
    PlanContext,
    PlannerError,
    PlannerUnavailable,
    Proposal,
    ToolCallsReply,
    ToolRequest,
    Usage,
)
from agent.planners.openai_endpoint import (
    backoff,
    endpoint_fix,
    env_seconds,
    error_line,
    retryable,
    served_model,
    server_message,
)
from agent.planners.openai_output import (
    MODE_NAMES,
    REFUSAL,
    TOOLS_REFUSAL,
    OutputMode,
    next_mode,
    response_format,
)
from agent.planners.openai_reply import Reply, ReplyError, parse_reply, read_reply, tool_call
from agent.planners.prompt import (
    DEFAULT_TOKEN_BUDGET,
    Message,
    build_messages,
    estimate_tokens,
    messages_tokens,
    reflect_messages,
    repair_prompt,
)

if TYPE_CHECKING:  # the SDK takes about a second to import: only once a planner is made
    import openai

# the names other modules import from here
__all__ = ["OpenAIPlanner", "endpoint_fix", "env_seconds", "error_line", "parse_reply", "price"]

log = logging.getLogger(__name__)

# USD per million (prompt, completion) tokens; dated snapshots match by prefix. Approximate list
# prices (2025) for a few OpenAI models; any other model gets cost_usd=None.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
DIAGNOSIS_CHARS = 600


class _ToolsRefused(Exception):
    """The server refused `tools`: the planner asks again with the tools in the prompt."""


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost in USD when the price table knows `model` (longest matching prefix), else None."""
    known = [name for name in PRICES_PER_MTOK if model == name or model.startswith(name + "-")]
    if not known:
        return None
    prompt_rate, completion_rate = PRICES_PER_MTOK[max(known, key=len)]
    return (prompt_tokens * prompt_rate + completion_tokens * completion_rate) / 1e6


@dataclass
class _Tally:
    """Usage accumulated over the requests of one proposal or diagnosis."""

    model: str
    started: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     seconds=round(time.perf_counter() - self.started, 3),
                     cost_usd=price(self.model, self.prompt_tokens, self.completion_tokens),
                     attempts=max(1, self.requests))


class OpenAIPlanner:
    """Proposals from a chat model behind an OpenAI-compatible endpoint."""

    name = "openai"
    chooses_tools = True

    def __init__(self, model: str | None, *, base_url: str | None = None,
                 api_key: str | None = None, timeout: float | None = None, attempts: int = 4,
                 base_delay: float | None = None, max_delay: float = 60.0,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, temperature: float | None = None,
                 max_tokens: int | None = None, structured: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise PlannerError("the openai planner needs OPENAI_API_KEY, or OPENAI_BASE_URL "
                                   "for a local server (vLLM, Ollama, llama.cpp)")
            api_key = "none"  # local servers ignore it, but the SDK insists on one
        # unset: MAGNET_OPENAI_TIMEOUT / MAGNET_OPENAI_RETRY_DELAY (seconds), so tests and slow
        # local servers can tune them without code
        timeout = timeout if timeout is not None else env_seconds("MAGNET_OPENAI_TIMEOUT", 120.0)
        if base_delay is None:
            base_delay = env_seconds("MAGNET_OPENAI_RETRY_DELAY", 2.0)
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                                    max_retries=0)
        if not model:
            model = served_model(self.client, self.endpoint)
            log.warning("using model %s, the only one %s serves", model, self.endpoint)
        self.model = model
        self.attempts, self.base_delay, self.max_delay = max(1, attempts), base_delay, max_delay
        self.token_budget = token_budget
        self.temperature, self.max_tokens = temperature, max_tokens
        # the response_format asked for; steps down OUTPUT_MODES when refused, for the whole run
        self.output_mode: OutputMode = "json_schema" if structured else "text"
        # how tools are offered: function calling, or (when the server refuses it) in the
        # prompt with JSON replies; for the whole run once refused
        self.tool_mode: Literal["functions", "json"] = "functions"
        self.negotiated = not structured  # True once a reply came back in output_mode
        self.last_unavailable: PlannerUnavailable | None = None  # cleared by any reply
        self.total = Usage(attempts=0)  # everything this planner has spent, failures included
        self._sleep = sleep

    @property
    def structured(self) -> bool:
        """Whether replies are asked for with a response_format."""
        return self.output_mode != "text"

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url).rstrip("/")

    # --- the Planner interface --------------------------------------------------------------

    def propose(self, context: PlanContext) -> Proposal | ToolRequest:
        """Ask for a proposal, or tool calls when the context offers tools; one repair round if
        the reply is invalid, then PlannerError."""
        tally = _Tally(self.model, time.perf_counter())
        try:
            try:
                return self._propose(context, tally)
            except _ToolsRefused:  # asked again with the tools in the prompt instead
                return self._propose(context, tally)
        except PlannerError as err:
            err.usage = self._spend(tally)  # type: ignore[attr-defined] - tokens still spent
            raise

    def _propose(self, context: PlanContext, tally: _Tally) -> Proposal | ToolRequest:
        calling = self.tool_mode == "functions"
        messages = build_messages(context, token_budget=self.token_budget,
                                  function_calling=calling)
        tools = context.tools if calling and context.tools else None
        either = bool(context.tools) and not calling  # a proposal or tool calls, as JSON
        reply = self._complete(messages, tally, want_json=True, tools=tools, either=either)
        try:
            answer = read_reply(reply, context)
        except ReplyError as err:
            log.info("invalid reply (%s); asking for a repair", err)
            messages = [*messages, {"role": "assistant", "content": reply.text or
                                    json.dumps([c.model_dump() for c in reply.calls])},
                        {"role": "user", "content": repair_prompt(str(err))}]
            try:
                answer = read_reply(self._complete(messages, tally, want_json=True,
                                                   tools=tools, either=either), context)
            except ReplyError as again:
                raise PlannerError(f"invalid reply after one repair round: {again}") from None
        if isinstance(answer, ToolCallsReply):
            return ToolRequest(tool_calls=answer.tool_calls, usage=self._spend(tally))
        return Proposal(hypothesis=answer.hypothesis, rationale=answer.rationale,
                        edits=answer.edits, usage=self._spend(tally))

    def observe(self, proposal: Proposal, knobs: dict[str, Any], metric: float | None,
                status: str) -> None:
        """Nothing to learn here: the outcome reaches the model through the next prompt."""

    def warm_up(self, context: PlanContext) -> None:
        """Nothing to load: the model is the endpoint's."""

    def diagnose(self, context: PlanContext, failure_text: str,
                 hypothesis: str | None = None) -> tuple[str, Usage]:
        """A one-paragraph diagnosis of a failure (`status` line, then the log tail).

        The hypothesis defaults to the newest experiment's, which is the failed one once the
        loop has recorded it.
        """
        if self.last_unavailable is not None:
            # the failure is the endpoint itself: the model has nothing to diagnose, and an
            # answer would only feed its guess about a transport error to the next prompt
            raise PlannerUnavailable(str(self.last_unavailable))
        status, _, log_tail = failure_text.strip().partition("\n")
        if hypothesis is None:
            hypothesis = context.history[-1].hypothesis if context.history else "(unknown)"
        tally = _Tally(self.model, time.perf_counter())
        messages = reflect_messages(context, hypothesis=hypothesis, status=status,
                                    log_tail=log_tail)
        try:
            text = " ".join(self._complete(messages, tally, want_json=False).text.split())
            if not text:
                raise PlannerError("the model sent an empty diagnosis")
        except PlannerError as err:
            err.usage = self._spend(tally)  # type: ignore[attr-defined] - tokens still spent
            raise
        usage = self._spend(tally)
        if len(text) > DIAGNOSIS_CHARS:
            text = text[: DIAGNOSIS_CHARS - 1].rsplit(" ", 1)[0] + "…"
        return text, usage

    # --- one reply, with retries and the structured-output negotiation ----------------------

    def _complete(self, messages: list[Message], tally: _Tally, *, want_json: bool,
                  tools: list[dict[str, Any]] | None = None, either: bool = False) -> Reply:
        import openai  # imported by __init__ already: a lookup

        attempt = 0
        while True:
            mode: OutputMode = self.output_mode if want_json else "text"
            attempt += 1
            tally.requests += 1
            try:
                response = self.client.chat.completions.create(
                    **self._request(messages, mode, tools=tools, either=either))
            except openai.APIStatusError as err:
                if tools and TOOLS_REFUSAL.search(server_message(err)):
                    self.tool_mode = "json"
                    log.warning("%s does not take function calling (%s); tools are offered in "
                                "the prompt from now on", self.endpoint, error_line(err))
                    raise _ToolsRefused from None
                if mode != "text" and REFUSAL.search(server_message(err)):
                    self._refused(mode, err)
                    attempt -= 1  # the endpoint works: a refusal does not use up a retry
                    continue
                if not retryable(err) or attempt >= self.attempts:
                    raise self._unavailable(err, attempt) from None
                self._wait(attempt, err)
                continue
            except openai.APIConnectionError as err:  # includes APITimeoutError
                if attempt >= self.attempts:
                    raise self._unavailable(err, attempt) from None
                self._wait(attempt, err)
                continue
            except openai.OpenAIError as err:  # e.g. a response the SDK cannot read
                raise self._unavailable(err, attempt) from None
            self.last_unavailable = None
            if mode != "text" and not self.negotiated:
                self.negotiated = True
                log.info("structured output from %s: %s", self.endpoint, MODE_NAMES[mode])
            return self._account(response, messages, tally)

    def _refused(self, mode: OutputMode, err: openai.APIStatusError) -> None:
        """Step down to the next output mode, for the rest of the run."""
        self.output_mode = next_mode(mode)
        log.warning("%s refused response_format %s (%s); asking for %s from now on",
                    self.endpoint, MODE_NAMES[mode], error_line(err),
                    MODE_NAMES[self.output_mode])

    def _wait(self, attempt: int, err: Exception) -> None:
        wait = backoff(attempt, err, self.base_delay, self.max_delay)
        log.warning("%s: %s; retrying in %.1fs", self.endpoint, error_line(err), wait)
        self._sleep(wait)

    def _unavailable(self, err: Exception, attempts: int) -> PlannerUnavailable:
        """The one-line transport failure: endpoint, status, the server's message, the fix."""
        tries = f" {attempts} times, giving up" if attempts > 1 else ""
        fix = endpoint_fix(getattr(err, "status_code", None))
        error = PlannerUnavailable(f"the openai endpoint {self.endpoint} failed{tries}: "
                                   f"{error_line(err)}; {fix}")
        self.last_unavailable = error
        return error

    def _request(self, messages: list[Message], mode: OutputMode, *,
                 tools: list[dict[str, Any]] | None = None, either: bool = False
                 ) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            request["tools"] = [{"type": "function", "function": tool} for tool in tools]
            request["tool_choice"] = "auto"
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if (fmt := response_format(mode, either=either)) is not None:
            request["response_format"] = fmt
        return request

    def _account(self, response: Any, messages: list[Message], tally: _Tally) -> Reply:
        choice = response.choices[0] if response.choices else None
        message = choice.message if choice else None
        content = (message.content if message else None) or ""
        calls = [tool_call(c) for c in (getattr(message, "tool_calls", None) or [])]
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            tally.prompt_tokens += usage.prompt_tokens
            tally.completion_tokens += usage.completion_tokens or 0
        else:  # some servers send no usage; estimate so token budgets still hold
            tally.prompt_tokens += messages_tokens(messages)
            tally.completion_tokens += estimate_tokens(content + json.dumps(
                [c.model_dump() for c in calls]))
        return Reply(content, calls)

    def _spend(self, tally: _Tally) -> Usage:
        usage, total = tally.usage(), self.total
        self.total = Usage(
            prompt_tokens=total.prompt_tokens + usage.prompt_tokens,
            completion_tokens=total.completion_tokens + usage.completion_tokens,
            seconds=round(total.seconds + usage.seconds, 3),
            cost_usd=None if usage.cost_usd is None else (total.cost_usd or 0.0) + usage.cost_usd,
            attempts=total.attempts + usage.attempts)
        return usage
