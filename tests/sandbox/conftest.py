"""Fixtures for the sandbox tests: a tiny template, workspaces on it, plain git access.

pytest runs with --import-mode=importlib, so this folder is put on sys.path for test modules to
`from attack import run_in`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import Workspace
from sandbox.gitcli import git_env

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

TRAIN_PY = '''\
"""Tiny stand-in for the bitnet-lm template: honours the MAGNET_* contract."""
import json
import os

LEARNING_RATE = 0.001
N_LAYER = 4
ACTIVATION = "relu"
BATCH: int = 8


def main():
    budget = float(os.environ["MAGNET_TIME_BUDGET"])
    out = os.environ["MAGNET_OUTPUT_DIR"]
    loss = 2.0 - LEARNING_RATE * N_LAYER
    steps = int(os.environ.get("MAGNET_STEPS", "10"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"budget": budget}, f)
    print(f"METRIC val_bpb={loss}")
    print(f"METRIC steps={steps}")


if __name__ == "__main__":
    main()
'''

KNOBS = {
    "LEARNING_RATE": {"low": 1e-4, "high": 1e-2, "log": True},
    "N_LAYER": {"low": 1, "high": 8},
    "ACTIVATION": {"choices": ["relu", "gelu", "relu2"]},
    "BATCH": {"choices": [4, 8, 16]},
}


@pytest.fixture
def train_py() -> str:
    return TRAIN_PY


@pytest.fixture
def knobs() -> dict:
    return KNOBS


@pytest.fixture
def template(tmp_path: Path) -> Path:
    root = tmp_path / "template"
    root.mkdir()
    (root / "train.py").write_text(TRAIN_PY)
    (root / "config.py").write_text("SECRET_SETTING = 1\n")
    (root / "README.md").write_text("tiny template\n")
    cache = root / "__pycache__"
    cache.mkdir()
    (cache / "train.cpython-311.pyc").write_bytes(b"junk")
    return root


@pytest.fixture
def make_ws(tmp_path: Path, template: Path) -> Iterator[Callable[..., Workspace]]:
    opened: list[Workspace] = []

    def make(name: str = "run-1", **kw) -> Workspace:
        kw.setdefault("template", template)
        kw.setdefault("editable", ["train.py"])
        kw.setdefault("knobs", KNOBS)
        ws = Workspace.create(tmp_path / "runs" / name, **kw)
        opened.append(ws)
        return ws

    yield make
    for ws in opened:
        ws.close()


@pytest.fixture
def git() -> Callable[..., str]:
    """Plain git, as a person reviewing the run would use it."""

    def run(path: Path, *args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=path, env=git_env(), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    return run
