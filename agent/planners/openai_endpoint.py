"""The openai planner's side of the wire: which model an endpoint serves, which failures are
retried and for how long, and how a failure reads in one line naming the endpoint and the fix.

The teacher (agent.teacher.models) reads its errors and timeouts the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import TYPE_CHECKING

from agent.planners.base import PlannerError

if TYPE_CHECKING:  # the SDK takes about a second to import: only where a request is made
    import openai

RETRY_STATUS = {408, 409, 429}  # plus every 5xx, as the SDK itself would retry
MODELS_SHOWN = 8  # an OpenAI key lists dozens of models; a refusal names the first few


def served_model(client: openai.OpenAI, endpoint: str) -> str:
    """The model to use when none was given: the only one `endpoint` lists, else a PlannerError
    naming what it lists (llama.cpp's and vLLM's servers serve one model, OpenAI many)."""
    import openai

    ask = "set `model:` in the goal or pass --model"
    try:
        models = list(dict.fromkeys(model.id for model in client.models.list()))
    except openai.OpenAIError as err:
        raise PlannerError(f"the openai planner needs a model name (listing the models of "
                           f"{endpoint} failed: {error_line(err)}); {ask}") from None
    if len(models) == 1:
        return models[0]
    if not models:
        raise PlannerError(f"the openai planner needs a model name ({endpoint} lists no "
                           f"models); {ask}")
    shown = ", ".join(models[:MODELS_SHOWN])
    more = f" and {len(models) - MODELS_SHOWN} more" if len(models) > MODELS_SHOWN else ""
    raise PlannerError(f"the openai planner needs a model name ({endpoint} serves {shown}{more});"
                       f" {ask}")


def retryable(err: openai.APIStatusError) -> bool:
    return err.status_code in RETRY_STATUS or err.status_code >= 500


def backoff(attempt: int, err: Exception, base_delay: float, max_delay: float) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential with jitter, at least what the
    server's Retry-After asks, at most `max_delay`."""
    wait = base_delay * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
    response = getattr(err, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    with contextlib.suppress(ValueError):  # an HTTP date is ignored: the wait is bounded
        wait = max(wait, float(retry_after)) if retry_after else wait
    return min(wait, max_delay)


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise PlannerError(f"{name}={raw!r} is not a number of seconds; e.g. {name}=30") from None


def endpoint_fix(status: int | None) -> str:
    if status in (401, 403):
        return "check OPENAI_API_KEY"
    if status == 404:
        return "check OPENAI_BASE_URL (it usually ends in /v1) and the model name"
    if status is None or status >= 500:
        return "check that the server is running and answering"
    return "check the model name and the server's limits"


def server_message(err: Exception) -> str:
    """What the server said (its JSON error message when there is one), or the exception text."""
    import openai

    body = getattr(err, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    if message is None and isinstance(err, openai.APIConnectionError) and err.__cause__:
        message = f"{err} ({err.__cause__})"  # "Connection error. ([Errno 111] Connection refused)"
    return str(message or err)


def error_line(err: Exception) -> str:
    status = getattr(err, "status_code", None)
    text = " ".join(server_message(err).split()) or type(err).__name__
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"HTTP {status}: {text}" if status else f"{type(err).__name__}: {text}"
