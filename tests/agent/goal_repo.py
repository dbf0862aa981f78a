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
