"""Helpers the agent tests share: a tiny goal over a real git repository, scripted edits."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_goal(root: Path, train: str, goal: str) -> Path:
    """`root/repo` (a git repository holding train.py) and `root/GOAL.md` pointing at it."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(train)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    path = root / "GOAL.md"
    path.write_text(goal)
    return path


def sr(search: str, replace: str, hypothesis: str, rationale: str = "scripted") -> dict:
    """A proposal with one search/replace edit of train.py."""
    return {"hypothesis": hypothesis, "rationale": rationale,
            "edits": [{"path": "train.py", "search": search, "replace": replace}]}


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout}s: {what}")
        time.sleep(0.05)
    return value


# A script with a knob X (score (X - 1)^2 + 0.5) and a MODE that can crash or hang it.
MODES_TRAIN = """import time
X = 3.0
MODE = "ok"
if MODE == "crash":
    raise RuntimeError("boom: MODE crash")
if MODE == "hang":
    time.sleep(600)
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""


def goal_text(name: str, *, planner: str, knobs: dict[str, str], experiments: int = 5,
              budget: str = "per_experiment: 2s, grace: 3s", brief: str = "Make the score small.",
              model: str | None = "scripted-model") -> str:
    """A goal file over `repo/train.py` minimizing METRIC score; knobs as {NAME: "{spec}"}."""
    lines = ["---", f"name: {name}", "workspace: repo", "editable: [train.py]",
             "command: python train.py", "metric: {name: score, goal: minimize}",
             f"budget: {{{budget}, experiments: {experiments}, wall: 10m}}",
             f"planner: {planner}"]
    lines += [f"model: {model}"] if model else []
    lines += ["knobs:", *(f"  {k}: {spec}" for k, spec in knobs.items()), "---", brief, ""]
    return "\n".join(lines)
