"""The openai planner over real HTTP (the `openai` client) against the scripted server."""

from __future__ import annotations

import json
import socket
import time

import pytest
from openai_server import LLAMA_CPP_REFUSAL, ScriptedServer, delay, error, proposal, text

from agent.planners.base import (
    KnobEdit,
    PlanContext,
    PlannerError,
    PlannerUnavailable,
    ProposalReply,
    SearchReplaceEdit,
    ToolRequest,
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


def test_a_genuine_500_is_retried_then_reported_as_the_endpoint_failing(openai_server):
    # "model overloaded" says nothing about response_format: transient, not a refusal
    openai_server.push(*[error(500, "model overloaded")] * 5)
    plan = planner(openai_server, attempts=4)
    with pytest.raises(PlannerUnavailable) as caught:
        plan.propose(context())

    message = str(caught.value)
    assert "\n" not in message
    assert f"endpoint {openai_server.base_url} failed 4 times" in message
    assert "HTTP 500: model overloaded" in message
    assert len(openai_server.requests) == 4 and openai_server.pending == 1
    assert openai_server.formats() == ["json_schema"] * 4 and plan.output_mode == "json_schema"
    assert caught.value.usage.attempts == 4  # the loop still learns what was spent


@pytest.mark.parametrize(("status", "said", "fix"), [
    (401, "Incorrect API key provided", "check OPENAI_API_KEY"),
    (404, "The model `gpt-9` does not exist",
     "check OPENAI_BASE_URL (it usually ends in /v1) and the model name"),
])
def test_client_errors_are_not_retried_and_name_the_fix(openai_server, status, said, fix):
    openai_server.push(error(status, said), proposal(GOOD))
    with pytest.raises(PlannerUnavailable) as caught:
        planner(openai_server).propose(context())
    assert str(caught.value) == (f"the openai endpoint {openai_server.base_url} failed: "
                                 f"HTTP {status}: {said}; {fix}")
    assert len(openai_server.requests) == 1


def test_connection_refused_is_planner_unavailable():
    # a port nothing listens on: bound (so no other test's server takes it) but not listening
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        waits: list[float] = []
        plan = OpenAIPlanner("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                             attempts=3, base_delay=0.01, sleep=waits.append)
        with pytest.raises(PlannerUnavailable, match=(
                rf"endpoint http://127.0.0.1:{port}/v1 failed 3 times, giving up: "
                r"APIConnectionError: Connection error\. \(.*Connection refused\); check that "
                r"the server is running")):
            plan.propose(context())
    assert len(waits) == 2  # retried: a server that is starting up gets its chance


def test_llama_cpp_refusal_is_negotiated_once_and_remembered():
    waits: list[float] = []
    with ScriptedServer.like_llama_cpp() as server:
        server.push(proposal(GOOD), text('{"hypothesis": "x", "edits": []}'), proposal(OTHER),
                    proposal(GOOD))
        plan = planner(server, sleep=waits.append)
        first = plan.propose(context())
        second = plan.propose(context())  # with a repair round
        third = plan.propose(context())

        assert [first.hypothesis, second.hypothesis, third.hypothesis] == [
            GOOD["hypothesis"], OTHER["hypothesis"], GOOD["hypothesis"]]
        assert server.formats() == ["json_schema"] + ["json_object+schema"] * 4
        assert server.replies_sent[0].status == 500  # the refusal, then only answers
        assert [r.status for r in server.replies_sent[1:]] == [200] * 4
        schema = server.requests[1]["response_format"]["schema"]
        assert schema == ProposalReply.model_json_schema()
        assert waits == []  # a refusal is not a transient failure: no backoff
        assert plan.output_mode == "json_object_schema" and plan.negotiated
        assert first.usage.attempts == 2  # the refused request counts as a request


@pytest.mark.parametrize(("status", "said"), [
    (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with "
          "this model."),                                                          # OpenAI
    (422, "response_format.type: unexpected value; permitted: 'text', 'json_object'"),
    (500, LLAMA_CPP_REFUSAL),                                                 # llama-cpp-python
])
def test_each_refusal_status_is_recognised_by_its_message(status, said):
    waits: list[float] = []
    with ScriptedServer(response_formats={"json_object"}, refusal=(status, said)) as server:
        server.push(proposal(GOOD))
        plan = planner(server, sleep=waits.append)
        assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
        assert server.formats() == ["json_schema", "json_object+schema"]
        assert waits == [] and plan.output_mode == "json_object_schema"


def test_no_response_format_at_all_falls_back_to_json_in_text_for_the_rest_of_the_run():
    with ScriptedServer(reject_response_format=True) as server:
        server.push(proposal(GOOD), text("```json\n" + json.dumps(OTHER) + "\n```"))
        plan = planner(server)
        assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
        assert plan.propose(context()).hypothesis == OTHER["hypothesis"]

        assert server.formats() == ["json_schema", "json_object+schema", "json_object", "-", "-"]
        assert [r.status for r in server.replies_sent] == [400, 400, 400, 200, 200]
        assert plan.output_mode == "text" and plan.structured is False


def test_json_object_without_a_schema_when_the_server_takes_no_schema():
    with ScriptedServer(response_formats={"json_object"}, json_object_schema=False,
                        refusal=(400, "Unrecognized request argument supplied: schema")) as server:
        server.push(proposal(GOOD), proposal(OTHER))
        plan = planner(server)
        plan.propose(context())
        plan.propose(context())
        assert server.formats() == ["json_schema", "json_object+schema", "json_object",
                                    "json_object"]


def test_a_400_unrelated_to_response_format_keeps_structured_output(openai_server):
    openai_server.push(error(400, "context too long"), proposal(GOOD))
    plan = planner(openai_server)
    with pytest.raises(PlannerUnavailable, match="400: context too long"):
        plan.propose(context())
    assert len(openai_server.requests) == 1 and plan.output_mode == "json_schema"
    assert plan.propose(context()).hypothesis == GOOD["hypothesis"]  # asked the same way
    assert openai_server.formats() == ["json_schema", "json_schema"]


def test_timeouts_that_outlast_the_retries_are_planner_unavailable(openai_server):
    openai_server.push(delay(3.0, proposal(GOOD)), delay(3.0, proposal(GOOD)))
    with pytest.raises(PlannerUnavailable, match=r"failed 2 times.*APITimeoutError"):
        planner(openai_server, timeout=0.3, attempts=2).propose(context())
    assert len(openai_server.requests) == 2


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


def test_without_a_model_the_one_model_the_endpoint_serves_is_used(caplog):
    """llama-cpp-python's server lists exactly one model: the run goes on with it, and says so."""
    with ScriptedServer(models=["smollm2-135m"]) as server:
        server.push(proposal(GOOD))
        with caplog.at_level("WARNING", logger="agent.planners.openai_planner"):
            plan = OpenAIPlanner(None, base_url=server.base_url, api_key="x", base_delay=0.01)
        assert plan.model == "smollm2-135m"
        assert [r.getMessage() for r in caplog.records] == [
            f"using model smollm2-135m, the only one {server.base_url} serves"]
        assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
        assert server.requests[0]["model"] == "smollm2-135m"


def test_without_a_model_an_endpoint_serving_several_is_refused_naming_them():
    with ScriptedServer(models=["llama-3-8b", "qwen2.5-7b"]) as server:
        with pytest.raises(PlannerError) as caught:
            OpenAIPlanner(None, base_url=server.base_url, api_key="x")
        assert str(caught.value) == (
            f"the openai planner needs a model name ({server.base_url} serves llama-3-8b, "
            "qwen2.5-7b); set `model:` in the goal or pass --model")
        assert server.requests == []  # nothing was asked of a model


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
    openai_server.push(text("  \n "), *[error(500)] * 2)
    plan = planner(openai_server, attempts=2)
    with pytest.raises(PlannerError, match="empty diagnosis") as caught:
        plan.diagnose(context(), "timeout\n(no output)")
    assert not isinstance(caught.value, PlannerUnavailable)
    assert caught.value.usage.attempts == 1
    with pytest.raises(PlannerUnavailable, match="failed 2 times"):
        plan.diagnose(context(), "timeout\n(no output)")
    assert plan.total.attempts == 3


def test_a_transport_failure_is_never_diagnosed(openai_server):
    openai_server.push(*[error(503, "loading model")] * 2, proposal(GOOD),
                       text("Try a smaller learning rate."))
    plan = planner(openai_server, attempts=2)
    with pytest.raises(PlannerUnavailable) as caught:
        plan.propose(context())
    # what the loop would hand to reflect: the model is not asked to explain its own endpoint
    failure = f"the planner gave no valid proposal: {caught.value}"
    with pytest.raises(PlannerUnavailable, match="503: loading model"):
        plan.diagnose(context(), f"{failure}\n")
    assert len(openai_server.requests) == 2

    # once the endpoint answers again, failures of experiments are diagnosed as before
    assert plan.propose(context()).hypothesis == GOOD["hypothesis"]
    diagnosis, _ = plan.diagnose(context(), "crashed (exit 1)\nValueError: lr", hypothesis="lr")
    assert diagnosis == "Try a smaller learning rate." and openai_server.pending == 0


def test_parse_reply_errors_are_one_line():
    with pytest.raises(ValueError, match="no JSON object"):
        parse_reply("I think we should raise the learning rate.")
    with pytest.raises(ValueError, match=r"not valid JSON .*line 1"):
        parse_reply('{"hypothesis": "raise lr", ')
    with pytest.raises(ValueError, match=r"edits\.0\.search"):
        parse_reply('{"hypothesis": "raise lr", "edits": [{"path": "a", "search": "", '
                    '"replace": "b"}]}')


def test_json_tool_calls_that_miss_the_schema_get_a_repair_naming_it():
    """Where tools are offered in the prompt, a JSON `tool_calls` reply that does not match
    their schema is repaired with that problem named, not read as a broken proposal."""
    tools = [{"name": "read_log", "description": "a log", "parameters": {"type": "object"}}]
    with ScriptedServer(takes_tools=False) as server:
        server.push(proposal({"tool_calls": [{"arguments": {"exp": 1}}]}),
                    proposal({"tool_calls": [{"name": "read_log", "arguments": {"exp": 1}}]}))
        answer = planner(server).propose(context(tools=tools))
    assert isinstance(answer, ToolRequest)
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("read_log", {"exp": 1})]
    repair = server.user_messages(-1)[-1]
    assert "the tool_calls do not match the schema: Field required" in repair
