"""Shared fixtures for the agent tests: a scripted OpenAI-compatible server, and the one kept
research run that test_ledger_replay and test_tools_ledger_merge both read.

pytest runs with --import-mode=importlib, so this folder is put on sys.path for test modules to
`from openai_server import proposal, error, ...`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from goal_texts import KEPT_GOAL  # noqa: E402 - needs the path above
from openai_server import ScriptedServer, proposal  # noqa: E402

from agent.loop.launch import start_run  # noqa: E402
from ledger.keys import generate_key  # noqa: E402

# The kept run trains a fixed number of steps (MAGNET_STEPS, passed by the goal's `env:`), not
# for a time budget: on a loaded machine (parallel tests) 3 s gave a baseline a handful of steps
# and the judge could not tell a change from the noise. The kept change is one a fixed step count
# rewards (no warm-up: 30 warm-up steps are more than the whole run), and one layer keeps the
# base, its specialists and every replay of its claim cheap. 10 steps: the kept run and every
# replay of its baselines train half as long as at 20, and the gain is clearer (measured: +15.6
# standard errors at 10 steps, +9.9 at 20; the keep needs 2).
KEPT_STEPS = "10"
ONE_LAYER_NO_WARMUP = {
    "hypothesis": "one layer, no warm-up", "rationale": "scripted", "edits": [
        {"path": "train.py", "search": "N_LAYER = 4", "replace": "N_LAYER = 1"},
        {"path": "train.py", "search": "WARMUP_STEPS = 30", "replace": "WARMUP_STEPS = 1"}]}


@pytest.fixture
def openai_server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer on 127.0.0.1 (empty script; `push` replies), stopped after."""
    with ScriptedServer() as server:
        yield server


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """This process, and the processes it starts, on one CPU: sandbox.env.free_cpus() is then 1,
    so every run, evaluation and replay is single-threaded whatever else the machine runs. With
    two threads PyTorch gave other bits on a busy machine than on a quiet one (measured: another
    checkpoint, and val_bpb off in the 7th digit), and these tests compare replays bit for bit."""
    before = os.sched_getaffinity(0)
    torch = sys.modules.get("torch")  # in-process work too: two OpenMP threads on one CPU spin
    threads = torch.get_num_threads() if torch else 0
    # xdist workers take different CPUs, so two such modules running at once do not share one
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    os.sched_setaffinity(0, {sorted(before)[worker % len(before)]})
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        if torch:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def on_one_cpu() -> Iterator[None]:
    """one_cpu() for a module's tests (`pytest.mark.usefixtures("on_one_cpu")`)."""
    with one_cpu():
        yield


def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This session's temporary folder that every xdist worker shares."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's basetemp is a folder of this session's
    return shared


@pytest.fixture(scope="session")
def one_model_load(tmp_path_factory: pytest.TempPathFactory):
    """A context manager, held while a test loads the bundled SmolLM2 (test_planner_local,
    test_teacher): one load at a time across the workers. The first load on a machine without
    the converted-weights cache (~/.cache/magnet/models) converts the GGUF, half a minute on a
    quiet machine and minutes on the suite's busy cores; two workers loading at once would both
    convert it, where the second now reads the cache the first wrote (seconds)."""
    path = shared_tmp(tmp_path_factory) / "bundled-model.lock"

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        with open(path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    return held


@pytest.fixture(scope="session")
def kept_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(root, run dir, environment): a bitnet-lm research run (scripted planner, real training
    and evaluator) whose experiment 2 (one layer, no warm-up) was kept. Made once per session:
    under xdist the first worker to ask makes it in the session's shared temporary folder,
    holding a lock the others wait on (pytest-xdist's documented pattern); its readers only add
    files of their own beside it (ledgers, keys)."""
    shared = shared_tmp(tmp_path_factory)
    root = shared / "kept-run"
    with open(shared / "kept-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = root / "made"  # the kept run's id: runs/ also gets the specialists' runs
        if not made.is_file():
            made.write_text(_make_kept_run(root).name)
    run_dir = root / "runs" / made.read_text()
    return root, run_dir, {**os.environ, **_kept_env(root)}


def _kept_env(root: Path) -> dict[str, str]:
    return {"MAGNET_CACHE_DIR": str(root / "cache"), "OPENAI_API_KEY": "sk-test-not-a-secret"}


def _make_kept_run(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)  # a worker that died while making it
    root.mkdir()
    corpus = root / "corpus"
    shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / "email", corpus,
                    ignore=shutil.ignore_patterns("__pycache__"))
    goal = root / "GOAL.md"
    goal.write_text(KEPT_GOAL.format(corpus=corpus))
    env = _kept_env(root)
    with one_cpu(), ScriptedServer() as server, pytest.MonkeyPatch.context() as mp:
        for name, value in {**env, "OPENAI_BASE_URL": server.base_url,
                            "MAGNET_STEPS": KEPT_STEPS, "MAGNET_WARM_START": "1"}.items():
            mp.setenv(name, value)
        server.push(proposal(ONE_LAYER_NO_WARMUP))
        run_dir = start_run(goal, runs_dir=root / "runs")
    records = [json.loads(x) for x in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert records[2]["status"] == "keep", records[2]
    for name in ("alice", "bob"):
        generate_key(root / f"{name}.key")
    return run_dir
