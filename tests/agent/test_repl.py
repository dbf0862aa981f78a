"""`magnet-agent repl` through a real pseudo-terminal, on real runs driven by the scripted server.

One run is started in "another terminal" (a subprocess) and steered from the REPL: pause (the run
holds), a hint (in the very next request), approval (edit, reject, approve), stop. Another is
started by the REPL itself, outlives the REPL's SIGKILL, and is then reviewed from a new REPL.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest
from goal_repo import make_goal, sr, wait_for
from openai_server import proposal, text
from rich.console import Console

from agent.repl.session import Repl
from agent.review.run import Run

# The baselines (X = 3.0) take longer: time for the REPL to attach before the first proposal.
TRAIN = """import time
X = 3.0
MODE = "ok"
if MODE == "crash":
    raise RuntimeError("boom: MODE crash")
time.sleep(1.2 if X == 3.0 else 0.3)
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
GOAL = """---
name: steered
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 20s, experiments: 10, wall: 10m}
planner: openai
model: scripted-model
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""
CLI = [sys.executable, "-m", "agent.cli"]
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")


class Term:
    """A program on a pseudo-terminal; its output is searched with escape sequences removed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.child = pexpect.spawn(args[0], args[1:], env=env, cwd=str(cwd), encoding="utf-8",
                                   dimensions=(50, 200))
        self.screen = ""
        self.pos = 0

    def expect(self, needle: str, timeout: float = 30) -> None:
        """Wait for `needle` after the previous match."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(needle, self.pos)) < 0:
            if time.monotonic() > deadline or not self.child.isalive() and not self._read():
                raise AssertionError(f"{needle!r} not shown; the screen ends with:\n"
                                     f"{self.screen[-3000:]}")
            self._read()
        self.pos = found + len(needle)

    def _read(self) -> bool:
        try:
            self.screen += ANSI.sub("", self.child.read_nonblocking(65536, timeout=0.1))
            return True
        except (pexpect.TIMEOUT, pexpect.EOF):
            return False

    def send(self, line: str) -> None:
        self.child.send(line + "\r")

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)


@pytest.fixture
def env(tmp_path: Path, openai_server) -> dict[str, str]:
    make_goal(tmp_path, TRAIN, GOAL)
    return {**os.environ, "OPENAI_BASE_URL": openai_server.base_url,
            "OPENAI_API_KEY": "sk-test-not-a-secret", "MAGNET_OPENAI_RETRY_DELAY": "0.01",
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm",
            "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "200"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "experiments.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_steer_a_live_run(tmp_path, env, openai_server):
    openai_server.push(
        proposal(sr("X = 3.0", "X = 2.0", "move X to 2")),    # exp 2: edited by the person, kept
        proposal(sr("X = 2.0", "X = 3.5", "overshoot X")),    # exp 3: rejected, never runs
        proposal(sr("X = 2.0", "X = 1.5", "move X to 1.5")),  # exp 4: approved, kept
    )
    runs = tmp_path / "runs"
    with (tmp_path / "run.out").open("wb") as out:
        controller = subprocess.Popen([*CLI, "run", str(tmp_path / "GOAL.md"), "--runs-dir",
                                       str(runs)], env=env, stdout=out, stderr=subprocess.STDOUT)
    term = None
    try:
        run_dir = wait_for(lambda: next(runs.glob("*/run.json"), None), what="run.json").parent
        term = Term([*CLI, "repl", run_dir.name, "--runs-dir", str(runs)], env, tmp_path)
        term.expect(f"attached to {run_dir.name}")
        term.send("pause")
        term.expect("pause sent; the run holds before its next experiment")

        # paused: after the baselines nothing is proposed and nothing starts
        wait_for(lambda: (read_json(run_dir / "status.json") or {}).get("state") == "paused",
                 what="state paused")
        term.expect("the run is paused")
        term.send("status")
        term.expect(f"{run_dir.name}  paused")
        term.expect("experiments 0/10")
        time.sleep(1.5)
        assert read_json(run_dir / "status.json")["state"] == "paused"
        assert openai_server.requests == []
        assert [r["exp"] for r in records(run_dir)] == [0, 1]
        assert not (run_dir / "logs" / "exp-002.log").exists()
        listed = subprocess.run([*CLI, "runs", "--runs-dir", str(runs)], env=env,
                                capture_output=True, text=True, check=True).stdout
        assert re.search(rf"{run_dir.name}\s.*steered\s.*paused", listed), listed

        term.send("budget wall 1h")
        term.expect("budget sent: wall 3600s")
        wait_for(lambda: read_json(run_dir / "status.json")["budget"]["wall"] == 3600,
                 what="the wall budget applied while paused")
        term.send("hint use smaller X")
        term.expect("hint sent")
        term.send("approve on")
        term.expect("approval on")
        term.send("resume")
        term.expect("resume sent")

        # exp 2: the hint is in the next request; the person edits the hypothesis
        term.expect("exp 002 waits for your approval")
        term.expect("+X = 2.0")
        term.expect("yes / no / edit")
        assert len(openai_server.requests) == 1
        assert "use smaller X" in "\n".join(openai_server.user_messages(0))
        term.send("edit")
        term.expect("new hypothesis")
        term.send("X to 2, as the person says")
        term.expect("approved with your hypothesis")
        term.expect("exp 002 keep")  # the REPL's tail of the records

        # exp 3: rejected; the hint was used once, it is not in this request
        term.expect("exp 003 waits for your approval")
        term.expect("+X = 3.5")
        term.expect("yes / no / edit")
        assert "use smaller X" not in "\n".join(openai_server.user_messages(1))
        term.send("nope")
        term.expect("'nope' is not an answer")
        term.send("no")
        term.expect("rejected: exp 003")
        term.expect("exp 003 rejected")

        # exp 4: approved; stop once it runs
        term.expect("exp 004 waits for your approval")
        term.expect("yes / no / edit")
        term.send("y")
        term.expect("approved: exp 004 runs")
        wait_for(lambda: (read_json(run_dir / "status.json") or {}).get("exp") == 4 and
                 read_json(run_dir / "status.json")["state"] == "running", what="exp 4 running")
        term.send("stop")
        term.expect("stop sent")
        term.expect("exp 004 keep")
        term.expect("the run stopped: stopped by a person")
        assert controller.wait(timeout=30) == 0
        term.send("quit")
        term.child.expect(pexpect.EOF, timeout=10)
    finally:
        if term is not None:
            term.close()
        if controller.poll() is None:
            controller.kill()

    done = records(run_dir)
    assert [(r["exp"], r["status"]) for r in done] == [
        (0, "baseline"), (1, "baseline"), (2, "keep"), (3, "rejected"), (4, "keep")]
    assert done[2]["hints"] == ["use smaller X"] and done[3]["hints"] == []
    assert done[2]["hypothesis"] == "X to 2, as the person says"
    rejected = done[3]
    assert rejected["metric"] is None and rejected["metrics"] == {}
    assert rejected["run_status"] is None and rejected["seconds"] is None
    assert not (run_dir / "logs" / "exp-003.log").exists()
    assert (run_dir / "logs" / "exp-004.log").exists()
    assert done[4]["metric"] == 0.75
    assert len(openai_server.requests) == 3  # stopped before asking for a fourth proposal
    sent = [c["cmd"] for c in map(json.loads, (run_dir / "control.jsonl").read_text().splitlines())]
    assert sent == ["pause", "budget", "hint", "approve", "resume", "answer", "answer", "answer",
                    "stop"]


def test_repl_starts_a_run_that_outlives_it(tmp_path, env, openai_server):
    openai_server.push(
        proposal(sr("X = 3.0", "X = 2.0", "move X to 2")),           # exp 2: kept
        proposal(sr('MODE = "ok"', 'MODE = "crash"', "crash mode")),  # exp 3: crashed
        text("It raised RuntimeError in crash mode; do not use it."),  # its diagnosis
    )
    runs = tmp_path / "runs"
    term = Term([*CLI, "repl", "GOAL.md", "--runs-dir", str(runs), "--experiments", "2"], env,
                tmp_path)
    try:
        term.expect("in the background")
        term.expect("attached to steered-")
        term.send("hi")
        term.expect("unknown command 'hi'; did you mean `hint`?")
        term.child.kill(signal.SIGKILL)  # the REPL dies; the run must not notice
    finally:
        term.close()

    run_dir = next(runs.glob("steered-*"))
    run = Run.load(run_dir)
    wait_for(lambda: run.state() == "finished" and run.controller_pid() is None, timeout=60,
             what="the run finished and its process ended")
    assert [r["status"] for r in records(run_dir)] == ["baseline", "baseline", "keep", "crashed"]
    assert "finished: experiment budget of 2 reached" in (run_dir / "controller.log").read_text()
    assert not list(runs.glob(".controller-*"))

    # a new REPL (no RUN: the newest) reviews the finished run
    term = Term([*CLI, "repl", "--runs-dir", str(runs)], env, tmp_path)
    try:
        term.expect(f"attached to {run_dir.name}")
        term.expect("finished (experiment budget of 2 reached)")
        term.child.send("hist")
        term.child.send("\t")
        term.expect("history")  # completed by Tab
        time.sleep(0.3)
        term.send(" 2")
        for row in ("002 │ keep", "1.5000", "003 │ crashed"):
            term.expect(row)
        term.send("show 003")
        for part in ("exp 003  crashed", "hypothesis: crash mode", '+MODE = "crash"',
                     "RuntimeError: boom: MODE crash"):
            term.expect(part)
        term.send("show 42")
        term.expect("no experiment 42; this run has 000-003")
        term.send("diff 2 3")
        term.expect('-MODE = "ok"')
        term.send("best")
        term.expect("exp 002  keep  score=1.5000")
        term.send("plot")
        term.expect("score per experiment")
        term.expect("progress.png rewritten")
        term.send("hint more")
        term.expect("this run has finished; nothing reads its commands")
        term.send("budget wall soon")
        term.expect("'soon' is not a duration")
        term.send("help approve")
        term.expect("each proposal waits for your yes / no / edit")
        term.send("exit")
        term.child.expect(pexpect.EOF, timeout=10)
    finally:
        term.close()
    assert not (run_dir / "control.jsonl").exists()  # nothing was sent to a finished run
    history = (tmp_path / "cache" / "magnet" / "repl_history").read_text()
    assert "+show 003" in history and "+history 2" in history


def test_budget_words_are_read_here_and_bounded_by_control(tmp_path):
    """The REPL reads `budget` words into a command; its bounds are those every sender gets
    (agent.rundir.control.validate), each refusal in one line, and nothing bad is sent."""
    run_dir = tmp_path / "runs" / "steered-20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "goal.md").write_text(GOAL)
    out = io.StringIO()
    repl = Repl(Run.load(run_dir), console=Console(file=out, width=200))
    refusals = {
        "budget experiments 0": "budget experiments needs a number above 0 and at most 1e+06",
        "budget experiments 2.5": "the experiment budget is a whole number, not '2.5'",
        "budget experiments " + "9" * 5000: "budget experiments needs a number above 0",
        "budget wall soon": "budget wall: 'soon' is not a duration",
        "budget wall 9999h": "must be above zero and at most 30 days",
        "budget tokens 5": "budget takes experiments or wall and a number",
    }
    for line, message in refusals.items():
        out.seek(0)
        out.truncate()
        assert repl.handle(line)
        assert message in out.getvalue() and out.getvalue().count("\n") == 1, out.getvalue()
    assert not (run_dir / "control.jsonl").exists()
    for line in ("budget experiments 20", "budget wall 1h"):
        repl.handle(line)
    sent = [json.loads(line) for line in (run_dir / "control.jsonl").read_text().splitlines()]
    assert [(c["what"], c["value"]) for c in sent] == [("experiments", 20), ("wall", 3600)]
