"""The openai planner over real HTTP (the `openai` client) against the scripted server."""

from __future__ import annotations

import json
import time

import pytest
from openai_server import ScriptedServer, delay, error, proposal, text

from agent.planners.base import (
    KnobEdit,
    PlanContext,
    PlannerError,
    ProposalReply,
    SearchReplaceEdit,
)
from agent.planners.openai_planner import OpenAIPlanner, parse_reply, price

TRAIN = "X = 3.0\nMODE = 'ok'\nprint(f'METRIC score={(X - 1) ** 2}')\n"
GOOD = {"hypothesis": "move X towards 1", "rationale": "the score is (X-1)^2",
        "edits": [{"path": "train.py", "search": "X = 3.0", "replace": "X = 2.0"},
                  {"knob": "X", "value": 2.0}]}
OTHER = {"hypothesis": "switch mode", "edits": [
    {"path": "train.py", "search": "MODE = 'ok'", "replace": "MODE = 'fast'"}]}


def context(**changes) -> PlanContext:
    values = dict(brief="Make the score small.", metric_name="score", goal="minimize",
                  editable_files={"train.py": TRAIN}, knobs={}, current_knobs={}, history=[],
                  best_metric=4.0, baseline_metric=4.0)
    return PlanContext(**{**values, **changes})


def planner(server: ScriptedServer, model: str = "scripted-model", **options) -> OpenAIPlanner:
    options = {"timeout": 5.0, "base_delay": 0.01, **options}
    return OpenAIPlanner(model, base_url=server.base_url, api_key="sk-test", **options)


def test_structured_proposal_is_parsed_and_usage_counted(openai_server):
    openai_server.push(proposal(GOOD, usage=(1200, 80)))
    result = planner(openai_server, model="gpt-4o-mini").propose(context())

    assert result.hypothesis == "move X towards 1" and result.rationale.startswith("the score")
    assert isinstance(result.edits[0], SearchReplaceEdit) and result.edits[0].replace == "X = 2.0"
    assert isinstance(result.edits[1], KnobEdit) and result.edits[1].value == 2.0
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.attempts) == (1200, 80, 1)
    assert usage.cost_usd == pytest.approx((1200 * 0.15 + 80 * 0.60) / 1e6)
    assert 0 < usage.seconds < 5
    [body] = openai_server.requests
    assert body["model"] == "gpt-4o-mini"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == ProposalReply.model_json_schema()
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Make the score small." in body["messages"][1]["content"]


def test_unknown_model_has_no_cost_and_dated_snapshots_are_priced(openai_server):
    openai_server.push(proposal(GOOD, usage=(10, 5)))
    assert planner(openai_server).propose(context()).usage.cost_usd is None
    assert price("gpt-4o-2024-08-06", 10**6, 0) == pytest.approx(2.50)
    assert price("gpt-4o-mini-2024-07-18", 10**6, 0) == pytest.approx(0.15)  # longest prefix
    assert price("gpt-4omega", 10**6, 0) is None


@pytest.mark.parametrize("reply", [
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Here is my proposal, based on the {previous} runs:\n" + json.dumps(GOOD) + "\nGood luck!",
    "Sure!\n```\n" + json.dumps(GOOD) + "\n```\nThe {curly} aside is not JSON.",
])
def test_fenced_or_prosy_json_parses_without_repair(openai_server, reply):
    openai_server.push(text(reply))
    result = planner(openai_server).propose(context())
    assert result.hypothesis == GOOD["hypothesis"] and len(result.edits) == 2
    assert len(openai_server.requests) == 1


def test_malformed_json_gets_exactly_one_repair_round_then_fails(openai_server):
    openai_server.push(text('{"hypothesis": "oops", "edits": [}'),
                       text('{"hypothesis": "no edits at all"}', usage=(300, 7)))
    with pytest.raises(PlannerError) as caught:
        planner(openai_server).propose(context())

    message = str(caught.value)
    assert "\n" not in message and "repair" in message and "edits" in message
    assert len(openai_server.requests) == 2  # one repair round, no more
    repair = openai_server.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": '{"hypothesis": "oops", "edits": [}'}
    assert "not valid JSON" in repair[-1]["content"] and "JSON only" in repair[-1]["content"]
    assert caught.value.usage.attempts == 2  # the spent tokens are still reported
    assert caught.value.usage.completion_tokens >= 7


def test_repair_round_can_succeed_and_usage_sums_both_replies(openai_server):
    openai_server.push(text('{"hypothesis": "x", "edits": []}', usage=(100, 10)),
                       proposal(OTHER, usage=(150, 20)))
    result = planner(openai_server).propose(context())

    assert result.hypothesis == "switch mode"
    repair_text = openai_server.requests[1]["messages"][-1]["content"]
    # the validation error names the offending fields
    assert "hypothesis" in repair_text and "edits" in repair_text
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (250, 30)
    assert result.usage.attempts == 2


def test_server_error_then_valid_reply_succeeds(openai_server):
    openai_server.push(error(500), proposal(GOOD, usage=(50, 5)))
    result = planner(openai_server).propose(context())
    assert result.hypothesis == GOOD["hypothesis"]
    assert len(openai_server.requests) == 2
    assert result.usage.attempts == 2 and result.usage.prompt_tokens == 50


def test_rate_limit_is_retried_with_growing_backoff(openai_server):
    waits: list[float] = []
    openai_server.push(error(429), error(429), error(503), proposal(GOOD))
    result = planner(openai_server, base_delay=1.0, sleep=waits.append).propose(context())
    assert result.hypothesis == GOOD["hypothesis"]
    assert len(openai_server.requests) == 4
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2]  # exponential, jitter <= 20 %
    assert 0.8 <= waits[0] <= 1.2


def test_retry_after_header_is_honoured(openai_server):
    waits: list[float] = []
    openai_server.push(error(429, headers=(("retry-after", "7"),)), proposal(GOOD))
    planner(openai_server, base_delay=0.01, sleep=waits.append).propose(context())
    assert waits == [7.0]


def test_retries_are_bounded(openai_server):
    openai_server.push(*[error(500, "model overloaded")] * 5)
    with pytest.raises(PlannerError, match=r"failed 4 times.*500.*overloaded"):
        planner(openai_server, attempts=4).propose(context())
    assert len(openai_server.requests) == 4 and openai_server.pending == 1


def test_client_errors_are_not_retried(openai_server):
    openai_server.push(error(401, "bad key"), proposal(GOOD))
    with pytest.raises(PlannerError, match="401.*bad key"):
        planner(openai_server).propose(context())
    assert len(openai_server.requests) == 1


def test_rejected_response_format_falls_back_for_the_rest_of_the_run():
    with ScriptedServer(reject_response_format=True) as server:
        server.push(proposal(GOOD), text("```json\n" + json.dumps(OTHER) + "\n```"))
        plan = planner(server)
        assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
        assert plan.propose(context()).hypothesis == OTHER["hypothesis"]

        assert ["response_format" in body for body in server.requests] == [True, False, False]
        assert server.replies_sent[0].status == 400 and plan.structured is False


def test_a_400_unrelated_to_response_format_keeps_structured_output(openai_server):
    openai_server.push(error(400, "context too long"), error(400, "context too long"))
    plan = planner(openai_server)
    with pytest.raises(PlannerError, match="400.*context too long"):
        plan.propose(context())
    assert len(openai_server.requests) == 2 and plan.structured is True


def test_timeout_is_retried(openai_server):
    openai_server.push(delay(3.0, proposal(GOOD)), proposal(OTHER))
    started = time.perf_counter()
    result = planner(openai_server, timeout=0.4).propose(context())
    assert result.hypothesis == OTHER["hypothesis"]  # the slow reply never arrived
    assert len(openai_server.requests) == 2
    assert time.perf_counter() - started < 2.5
    assert result.usage.attempts == 2


def test_endpoint_and_key_come_from_the_environment(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    monkeypatch.setenv("MAGNET_OPENAI_RETRY_DELAY", "0.01")
    openai_server.push(error(502), proposal(GOOD))
    plan = OpenAIPlanner("local-model")
    assert plan.base_delay == 0.01
    assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
    assert openai_server.requests[0]["model"] == "local-model"


def test_missing_model_or_endpoint_is_one_clear_error(monkeypatch):
    with pytest.raises(PlannerError, match=r"set `model:` in the goal or pass --model"):
        OpenAIPlanner(None, base_url="http://127.0.0.1:9/v1", api_key="x")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PlannerError, match="OPENAI_API_KEY"):
        OpenAIPlanner("gpt-4o")


def test_diagnose_returns_a_short_plain_paragraph(openai_server):
    long_answer = "The run crashed because MODE crash raises RuntimeError.\n\n" + "Detail. " * 200
    openai_server.push(text(long_answer, usage=(400, 300)))
    ctx = context(history=[])
    diagnosis, usage = planner(openai_server).diagnose(
        ctx, "crashed (exit 1)\nTraceback...\nRuntimeError: boom: MODE crash",
        hypothesis="try crash mode")

    assert diagnosis.startswith("The run crashed because") and "\n" not in diagnosis
    assert len(diagnosis) <= 600
    assert (usage.prompt_tokens, usage.completion_tokens) == (400, 300)
    [body] = openai_server.requests
    assert "response_format" not in body
    prompt = body["messages"][-1]["content"]
    assert "try crash mode" in prompt and "crashed (exit 1)" in prompt
    assert "RuntimeError: boom: MODE crash" in prompt


def test_diagnose_failure_is_a_planner_error(openai_server):
    openai_server.push(*[error(500)] * 2, text("  \n "))
    plan = planner(openai_server, attempts=2)
    with pytest.raises(PlannerError, match="failed 2 times"):
        plan.diagnose(context(), "timeout\n(no output)")
    with pytest.raises(PlannerError, match="empty diagnosis") as caught:
        plan.diagnose(context(), "timeout\n(no output)")
    assert caught.value.usage.attempts == 1 and plan.total.attempts == 3


def test_parse_reply_errors_are_one_line():
    with pytest.raises(ValueError, match="no JSON object"):
        parse_reply("I think we should raise the learning rate.")
    with pytest.raises(ValueError, match=r"not valid JSON .*line 1"):
        parse_reply('{"hypothesis": "raise lr", ')
    with pytest.raises(ValueError, match=r"edits\.0\.search"):
        parse_reply('{"hypothesis": "raise lr", "edits": [{"path": "a", "search": "", '
                    '"replace": "b"}]}')
