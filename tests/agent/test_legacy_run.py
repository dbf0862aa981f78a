"""A run made before agent/ became packages still resumes, reviews and exports.

`data/legacy-run-7017bfd.tar.gz` is a real run directory made by commit 7017bfd (the last flat
agent/): a `workspace:` goal on a one-layer, 32-wide copy of the bitnet-lm template, the search
planner, 30 training steps per run (MAGNET_STEPS, passed by the goal's `env:`), killed by SIGKILL
while experiment 003 was running. Everything a later version reads of it (records, journal, git
notes and refs, LangGraph checkpoints, checkpoints in outputs/) is as that version wrote it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ARCHIVE = Path(__file__).parent / "data" / "legacy-run-7017bfd.tar.gz"
RUN_ID = "legacy-20261206-165139"
CLI = [sys.executable, "-m", "agent.cli"]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def cli(runs: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGNET_STEPS": "30"}
    return subprocess.run([*CLI, *args, "--runs-dir", str(runs)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def git(runs: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(runs / RUN_ID / "workspace.git"), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_an_old_run_resumes_reviews_and_exports(runs):
    before = [json.loads(line) for line in
              (runs / RUN_ID / "experiments.jsonl").read_text().splitlines()]
    # Runs made before kept what a run wrote to tracked files at refs/magnet/leftover/NNN;
    # nothing writes or reads those now, and a run holding one still works.
    leftover = git(runs, "commit-tree", "-p", "refs/magnet/exp/002", "-m", "left by the run",
                   git(runs, "rev-parse", "refs/magnet/exp/002^{tree}"))
    git(runs, "update-ref", "refs/magnet/leftover/002", leftover)
    assert [r["exp"] for r in before] == [0, 1, 2]

    resumed = cli(runs, "resume", RUN_ID, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = json.loads(cli(runs, "history", RUN_ID, "--json").stdout)
    assert records[:3] == before  # the old records are untouched
    assert [r["exp"] for r in records] == list(range(len(records)))
    by_exp = {r["exp"]: r for r in records}
    assert by_exp[3]["status"] == "interrupted"  # cut off by the kill, then re-run
    assert by_exp[4]["hypothesis"] == by_exp[3]["hypothesis"]
    # the old template scored itself on the validation split, which is out of every
    # experiment's view now (it cannot even build the corpus cache): its new runs fail, each
    # recorded with the reason, and the run goes on to its end
    after = [r for r in records[4:] if r["status"] != "baseline"]
    assert after and all(r["status"] == "crashed" for r in after), [r["status"] for r in after]
    assert all("exit code" in r["reason"] for r in after)

    listed = json.loads(cli(runs, "runs", "--json").stdout)
    proposals = [r for r in records if r["status"] != "baseline"]
    assert [(r["id"], r["experiments"]) for r in listed] == [(RUN_ID, len(proposals))]
    shown = json.loads(cli(runs, "show", RUN_ID, "2", "--json").stdout)
    assert shown["record"] == by_exp[2] and "LEARNING_RATE" in shown["diff"]
    assert cli(runs, "report", RUN_ID).returncode == 0
    assert git(runs, "rev-parse", "refs/magnet/leftover/002") == leftover  # left alone
    assert (runs / RUN_ID / "progress.png").stat().st_size > 0

    exported = cli(runs, "export", RUN_ID, "--format", "hf", "--out", str(runs / "hf"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads((runs / "hf" / "config.json").read_text())["num_hidden_layers"] == 1
