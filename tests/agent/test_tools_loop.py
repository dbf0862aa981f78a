"""Tools in the research loop, through the real `openai` client against the scripted server.

The planner calls tools (function calling, or JSON replies where the server refuses `tools`),
their results reach its next request, each call is recorded append-only and shown by `show`,
`history` and the git note, a failing call is an error for the planner (the run goes on), and
the per-experiment budget caps the calls.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, make_goal, sr
from openai_server import ScriptedServer, calls, proposal

from agent.loop.launch import start_run
from agent.rundir.tool_records import ToolRecords
from sandbox.reader import RunReader

GOAL = """---
name: tools
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 2s, grace: 3s, experiments: 2, wall: 10m, tool_calls: 2}
planner: openai
model: scripted-model
tools: [read_file, read_log]
knobs:
  X: {low: 0.0, high: 4.0}
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""


@pytest.fixture
def goal(tmp_path: Path) -> Path:
    return make_goal(tmp_path, MODES_TRAIN, GOAL)


@pytest.fixture
def endpoint(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.setenv("MAGNET_OPENAI_RETRY_DELAY", "0.01")
    return openai_server


def _tool_messages(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def test_planner_calls_tools_and_reads_their_results(tmp_path, goal, endpoint):
    endpoint.push(
        calls(("read_file", {"path": "train.py", "lines": 3})),       # before exp 2
        calls(("read_file", {"path": "../goal.md"}),                   # fails: outside
              ("read_log", {"exp": 1, "lines": 5})),                  # over budget (2 per exp)
        proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")),       # exp 2: keep
        calls(("read_log", {"exp": 2})),                               # before exp 3
        proposal({"hypothesis": "overshoot X", "edits": [{"knob": "X", "value": 3.5}]}),
    )
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    assert endpoint.pending == 0
    # tools were offered by function calling while the budget lasted, then not at all
    assert endpoint.offered_tools(0) == ["read_file", "read_log"]
    assert endpoint.offered_tools(2) == []  # 2 calls spent before exp 2
    assert "tool budget of 2 calls" in json.dumps(endpoint.requests[2]["messages"])
    assert endpoint.offered_tools(3) == ["read_file", "read_log"]  # a new experiment, a new budget
    # results went back as tool messages paired with the call ids
    first = _tool_messages(endpoint.requests[1])
    shown = "\n".join(MODES_TRAIN.splitlines()[:3])  # the code as it was then
    assert len(first) == 1 and json.loads(first[0]["content"])["text"] == shown
    second = _tool_messages(endpoint.requests[2])
    assert [m["tool_call_id"] for m in second[1:]] == ["call_2_0", "call_2_1"]
    assert "outside the workspace" in second[1]["content"]
    assert "budget" in second[2]["content"]
    assert "METRIC score=" in _tool_messages(endpoint.requests[4])[0]["content"]

    records = ToolRecords(run_dir).read()
    assert [(c.call, c.exp, c.tool, c.status) for c in records] == [
        (1, 2, "read_file", "ok"), (2, 2, "read_file", "error"), (3, 2, "read_log", "error"),
        (4, 3, "read_log", "ok")]
    assert records[0].result["lines"] == "1-3 of " + str(
        len((run_dir / "workspace" / "train.py").read_text().splitlines()))
    # the records of the experiments hold the calls that preceded them, and so do their notes
    exps = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert [c["call"] for c in exps[2]["tool_calls"]] == [1, 2, 3]
    assert [c["call"] for c in exps[3]["tool_calls"]] == [4]
    note = RunReader(run_dir).note(2)
    assert [c["tool"] for c in note["tool_calls"]] == ["read_file", "read_file", "read_log"]


def test_tools_in_the_prompt_where_the_server_refuses_function_calling(tmp_path, goal,
                                                                         monkeypatch):
    with ScriptedServer(takes_tools=False) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
        server.push(
            proposal({"tool_calls": [{"name": "read_file", "arguments": {"path": "train.py"}}]}),
            proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")),
            proposal({"hypothesis": "overshoot X", "edits": [{"knob": "X", "value": 3.5}]}),
        )
        run_dir = start_run(goal, runs_dir=tmp_path / "runs")
        assert server.pending == 0
    # refused once with tools, then asked with the tools' schemas in the prompt
    assert "tools" in server.requests[0] and "tools" not in server.requests[1]
    assert '"tool_calls"' in server.user_messages(1)[0]
    assert "Tool results:" in server.user_messages(2)[-1]
    assert [c.status for c in ToolRecords(run_dir).read()] == ["ok"]


def test_history_and_show_list_the_calls(tmp_path, goal, endpoint):
    endpoint.push(
        calls(("read_log", {"exp": 1, "lines": 2})),
        calls(("read_file", {"path": "missing.py"})),
        proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")),
        proposal({"hypothesis": "overshoot X", "edits": [{"knob": "X", "value": 3.5}]}),
    )
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")
    cli = [sys.executable, "-m", "agent.cli"]

    def magnet(*args: str) -> str:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, check=True)
        return done.stdout

    history = magnet("history", str(run_dir)).splitlines()
    rows = [line.split("\t") for line in history]
    # the two calls are listed, in order, just before the experiment they preceded
    kinds = [row[0] or row[1] for row in rows[1:]]
    assert kinds == ["000", "001", "tool #1", "tool #2", "002", "003"]
    assert "read_file(path='missing.py') failed" in history[4]
    shown = magnet("show", str(run_dir), "2")
    assert "tool #1" in shown and "tool #2" in shown and "not a file in the workspace" in shown
    call = json.loads(magnet("show", str(run_dir), "tool:1", "--json"))
    assert call["tool"] == "read_log" and call["status"] == "ok" and call["exp"] == 2
    assert call["result"]["tail"].endswith("METRIC score=4.5")
    missing = subprocess.run([*cli, "show", str(run_dir), "tool:9"], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "has no tool call 9" in missing.stderr
