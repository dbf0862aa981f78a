"""A run killed (SIGKILL) in the middle of a tool call resumes without losing or repeating it.

The planner (scripted, over HTTP) asks for `generate_data`; the teacher (the same scripted
server, routed: slow, distinct English documents) is partway through when the whole run is
killed. `magnet-agent resume` finishes that call under the same number, keeps every document
written before the kill, writes none twice, hands the planner the result once, and goes on.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, make_goal, sr, wait_for
from openai_server import ScriptedServer, calls, proposal, text

from agent.rundir.names import TOOLS_FILE
from agent.rundir.tool_records import ToolRecords

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

CLI = str(Path(sys.executable).with_name("magnet-agent"))
GOAL = """---
name: kill-tool
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 2s, grace: 5s, experiments: 1, wall: 10m}
planner: openai
model: scripted-model
tools: [generate_data]
teacher: {model: scripted-model}
knobs:
  X: {low: 0.0, high: 4.0}
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""
PLANNER_SYSTEM = "You are MAGNET's research planner"


def stdlib_docstrings() -> list[str]:
    """Long English docstrings of standard-library modules: text the teacher 'writes'."""
    found = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        if doc and 400 <= len(doc) <= 3000 and doc.isascii():
            found.append(doc)
    return found


def teacher(documents: list[str]):
    """Answer every request that is not the planner's with the next document, slowly."""
    queue = iter(documents)

    def route(body: dict) -> object:
        system = body["messages"][0]["content"] or ""
        if system.startswith(PLANNER_SYSTEM):
            return None
        return text(next(queue), delay=0.4)
    return route


def corpus_files(run_dir: Path) -> dict[str, str]:
    folder = run_dir / "tools" / "call-001" / "corpus"
    return {p.name: p.read_text() for p in sorted(folder.glob("*"))} if folder.is_dir() else {}


def test_resume_after_sigkill_mid_tool_call(tmp_path: Path) -> None:
    goal = make_goal(tmp_path, MODES_TRAIN, GOAL)
    runs = tmp_path / "runs"
    server = ScriptedServer(route=teacher(stdlib_docstrings()))
    server.push(calls(("generate_data", {"topic": "how Python's standard library works",
                                         "bytes": 9000, "seconds": 300})),
                proposal(sr("X = 3.0", "X = 2.0", "move X towards 1")))
    with server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url,
               "OPENAI_API_KEY": "sk-test-not-a-secret", "MAGNET_OPENAI_RETRY_DELAY": "0.01"}
        run = subprocess.Popen([CLI, "run", str(goal), "--runs-dir", str(runs)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            run_dir = wait_for(lambda: next(runs.glob("kill-tool-*"), None), 60, "the run")
            wait_for(lambda: len(corpus_files(run_dir)) >= 2, 120, "two documents written")
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        before = corpus_files(run_dir)
        cut = ToolRecords(run_dir).read()
        assert [(c.call, c.tool, c.status) for c in cut] == [(1, "generate_data", "running")]

        done = subprocess.run([CLI, "resume", run_dir.name, "--runs-dir", str(runs)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert server.pending == 0  # the planner was asked for exactly what was scripted

    calls_made = ToolRecords(run_dir).read()
    assert [(c.call, c.tool, c.status) for c in calls_made] == [(1, "generate_data", "ok")]
    events = [json.loads(line) for line in (run_dir / TOOLS_FILE).read_text().splitlines()]
    assert [(e["call"], e["event"]) for e in events] == [(1, "started"), (1, "finished")]
    after = corpus_files(run_dir)
    assert before.items() <= after.items()  # nothing written before the kill was lost
    assert len(set(after.values())) == len(after)  # and nothing was written twice
    result = calls_made[0].result
    assert result["documents"] == len(after) and result["bytes"] >= 9000
    # the planner read the result once, paired with its call, and went on to experiment 2
    answered = [m for body in server.requests for m in body["messages"] if m["role"] == "tool"]
    assert len(answered) == 1 and json.loads(answered[0]["content"])["documents"] == len(after)
    records = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text()
               .splitlines()]
    assert [r["status"] for r in records] == ["baseline", "baseline", "keep"]
    assert [c["call"] for c in records[2]["tool_calls"]] == [1]
