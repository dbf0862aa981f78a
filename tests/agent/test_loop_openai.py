"""A whole research run driven over HTTP by a scripted OpenAI-compatible server (real client).

Scripted: an improving proposal (kept), a worse one (reverted), an edit that does not apply
(fed back), a crashing edit (through reflect), a hanging one (timed out), a 500 error and a
malformed reply (survived); and a run against a server that, like llama-cpp-python's, refuses
json_schema with HTTP 500 (negotiated down to json_object with the schema, once).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, make_goal, sr
from openai_server import ScriptedServer, error, proposal, text

from agent.loop.launch import start_run
from agent.rundir import ranking

GOAL = """---
name: scripted
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 2s, grace: 3s, experiments: 5, wall: 10m}
planner: openai
model: scripted-model
knobs:
  X: {low: 0.0, high: 4.0}
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""


@pytest.fixture
def goal(tmp_path: Path) -> Path:
    return make_goal(tmp_path, MODES_TRAIN, GOAL)


def test_scripted_run(tmp_path, goal, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.setenv("MAGNET_OPENAI_RETRY_DELAY", "0.01")
    openai_server.push(
        proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")),                   # exp 2: keep
        proposal({"hypothesis": "overshoot X", "edits": [{"knob": "X", "value": 3.5}]}),  # 3
        proposal(sr("Y = 1", "Y = 2", "tune Y")),                     # exp 4: does not apply
        text("The search text Y = 1 is not in train.py; edit X instead."),      # diagnosis
        error(500),                                                     # survived by a retry
        proposal(sr('MODE = "ok"', 'MODE = "crash"', "try crash mode")),   # exp 5: crashes
        text("It raised RuntimeError in crash mode; do not use it."),           # diagnosis
        text("{not json at all"),                                       # malformed: repair
        proposal(sr('MODE = "ok"', 'MODE = "hang"', "try hang mode")),     # exp 6: hangs
        text("It hung past the time budget."),                                  # diagnosis
    )

    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    lines = (run_dir / "experiments.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["exp"] for r in records] == list(range(7))
    assert records[0]["status"] == records[1]["status"] == "baseline"
    assert [r["status"] for r in records[2:]] == [
        "keep", "discard", "invalid_edit", "crashed", "timeout"]
    assert records[2]["metric"] == 1.5 and records[3]["metric"] == 6.75
    assert openai_server.pending == 0  # every scripted reply was asked for, no more
    assert len(openai_server.requests) == 10

    # the edit that did not apply was fed back into the next proposal's prompt
    after_invalid = "\n".join(openai_server.user_messages(4))
    assert "Y = 1" in after_invalid and "did not apply" in after_invalid
    # the crash's log tail reached the planner
    after_crash = "\n".join(openai_server.user_messages(7))
    assert "boom: MODE crash" in after_crash
    assert "repair" in json.dumps(openai_server.requests[8]).lower() or \
        "not valid" in json.dumps(openai_server.requests[8]).lower()
    assert all(r["tokens"]["prompt"] > 0 for r in records[2:])

    # git holds the same story: the kept change on the branch, the others at their refs
    ws = run_dir / "workspace.git"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ws), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    kept_code = git("show", "HEAD:train.py")
    assert "X = 2.0" in kept_code and 'MODE = "ok"' in kept_code
    assert git("rev-parse", "magnet/best") == git("rev-parse", "refs/magnet/exp/002")
    assert 'MODE = "hang"' in git("show", "refs/magnet/exp/006:train.py")
    assert '"status": "crashed"' in git("notes", "--ref", "magnet", "show", "refs/magnet/exp/005")
    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert tsv[3].split("\t")[3] == "keep" and tsv[7].split("\t")[3] == "timeout"
    assert (run_dir / "progress.png").stat().st_size > 1000
    assert "Baseline 4.5000 → best 1.5000" in (run_dir / "report.md").read_text()


def test_a_repeated_change_never_runs_twice(tmp_path, goal, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    goal.write_text(goal.read_text().replace("experiments: 5", "experiments: 4"))
    overshoot = {"hypothesis": "overshoot X", "edits": [{"knob": "X", "value": 3.5}]}
    openai_server.push(
        proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")),                    # exp 2: keep
        proposal(overshoot),                                                     # exp 3: discard
        proposal(overshoot),                                 # exp 4: the same diff: not run
        text("That change was tried in exp 3."),                                # diagnosis
        proposal({"hypothesis": "set X to 2", "edits": [{"knob": "X", "value": 2.0}]}),  # 5
        text("X is already 2.0."),                                              # diagnosis
    )

    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    lines = (run_dir / "experiments.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["status"] == records[1]["status"] == "baseline"
    assert [r["status"] for r in records[2:]] == ["keep", "discard", "duplicate", "invalid_edit"]
    assert records[4]["diff_hash"] == records[3]["diff_hash"]
    assert "already tried" in records[4]["reason"] and "changes nothing" in records[5]["reason"]
    for exp in (4, 5):  # neither ran
        assert not (run_dir / "logs" / f"exp-{exp:03d}.log").exists()
        assert records[exp]["metric"] is None
    assert "already tried" in "\n".join(openai_server.user_messages(3))
    assert openai_server.pending == 0


def test_a_run_completes_through_the_structured_output_fallback(tmp_path, goal, monkeypatch):
    goal.write_text(goal.read_text().replace("experiments: 5", "experiments: 3"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.setenv("MAGNET_OPENAI_RETRY_DELAY", "0.01")
    hypotheses = ["set X to 2", "set X to 1", "set X to 3.5"]
    with ScriptedServer.like_llama_cpp() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.push(*[proposal({"hypothesis": h, "edits": [{"knob": "X", "value": v}]})
                      for h, v in zip(hypotheses, [2.0, 1.0, 3.5], strict=True)])
        run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = [json.loads(line) for line in
               (run_dir / "experiments.jsonl").read_text().splitlines()]
    tried = ranking.experiments(records)
    assert [r["hypothesis"] for r in tried] == hypotheses  # every proposal ran
    assert {r["status"] for r in tried} <= {"keep", "discard"}
    by_hypothesis = {r["hypothesis"]: r["metric"] for r in tried}
    assert by_hypothesis == {"set X to 2": 1.5, "set X to 1": 0.5, "set X to 3.5": 6.75}
    # one refused json_schema request, then the schema through json_object, no retries
    assert server.formats() == ["json_schema"] + ["json_object+schema"] * 3
    assert [r.status for r in server.replies_sent] == [500, 200, 200, 200]
    assert server.pending == 0
    assert "best 0.5000" in (run_dir / "report.md").read_text()


def test_an_unreachable_endpoint_stops_the_run_and_exits_non_zero(tmp_path, goal):
    # a port nothing listens on: bound (so no other test's server takes it) but not listening
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        env = {**os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
               "OPENAI_API_KEY": "sk-test-not-a-secret", "MAGNET_OPENAI_RETRY_DELAY": "0.01"}
        done = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(goal),
                               "--runs-dir", str(tmp_path / "runs")], capture_output=True,
                              text=True, env=env, timeout=120)

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("magnet-agent: the run failed: the planner failed: ")
    assert f"127.0.0.1:{port}" in last and "refused" in last.lower()
    run_dir = next((tmp_path / "runs").iterdir())
    records = [json.loads(line) for line in
               (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["baseline", "baseline"]  # no experiment invented
    report = (run_dir / "report.md").read_text()
    assert "the planner failed" in report and "Nothing beat the baseline" in report
