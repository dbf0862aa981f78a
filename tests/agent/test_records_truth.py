"""Each record describes the code that ran, and decisions follow one rule (agent.loop.decision).

Real runs: a scripted OpenAI-compatible server (real client over HTTP) or the search planner
(Optuna), real git workspaces and real training subprocesses.
"""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, goal_text, make_goal, sr, wait_for
from openai_server import proposal, text
from optuna.trial import TrialState

import agent.loop.launch
from agent.loop.launch import resume_run, start_run
from agent.planners.base import ExperimentSummary, PlanContext
from agent.rundir import control, ranking
from sandbox.reader import RunReader

CLI = [sys.executable, "-m", "agent.cli"]

MODES_GOAL = goal_text("truthful", planner="openai",
                       knobs={"X": "{low: 0.0, high: 4.0}", "MODE": "{choices: [ok, crash, hang]}"})


def knob_proposal(hypothesis: str, **values: object) -> dict:
    return {"hypothesis": hypothesis,
            "edits": [{"knob": k, "value": v} for k, v in values.items()]}


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]


def git(run_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(run_dir / "workspace.git"), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def serve(monkeypatch, server) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.setenv("MAGNET_OPENAI_RETRY_DELAY", "0.01")


def test_every_outcome_records_its_own_proposals_knobs(tmp_path, openai_server, monkeypatch):
    serve(monkeypatch, openai_server)
    goal = make_goal(tmp_path, MODES_TRAIN, MODES_GOAL)
    proposals = [
        knob_proposal("try X 1.8", X=1.8),                              # exp 2: rejected
        knob_proposal("move X towards 1", X=2.0),                       # exp 3: keep
        knob_proposal("overshoot X", X=3.5),                            # exp 4: discard
        knob_proposal("crash mode, X 0.5", X=0.5, MODE="crash"),        # exp 5: crashed
        knob_proposal("hang mode, X 1.5", X=1.5, MODE="hang"),          # exp 6: timeout
    ]
    openai_server.push(
        proposal(proposals[0]), proposal(proposals[1]), proposal(proposals[2]),
        proposal(proposals[3]), text("It raised in crash mode."),
        proposal(proposals[4]), text("It hung."),
    )
    runs = tmp_path / "runs"
    rejecter = threading.Thread(target=reject_first_proposal, args=(runs,), daemon=True)
    rejecter.start()

    run_dir = start_run(goal, runs_dir=runs)
    rejecter.join(timeout=5)

    records = records_of(run_dir)
    assert [r["status"] for r in records] == [
        "baseline", "baseline", "rejected", "keep", "discard", "crashed", "timeout"]
    expected = [{"X": 3.0, "MODE": "ok"}] * 2 + [
        {"X": 1.8, "MODE": "ok"}, {"X": 2.0, "MODE": "ok"}, {"X": 3.5, "MODE": "ok"},
        {"X": 0.5, "MODE": "crash"}, {"X": 1.5, "MODE": "hang"}]
    assert [r["knobs"] for r in records] == expected  # not the kept code's values
    for r in records[2:]:
        assert r["parent"] is not None and r["diff"]["added"] >= 1
    assert records[3]["parent"] == records[2]["parent"]  # both started from the baseline
    assert records[4]["parent"] == records[3]["commit"]  # after the keep

    # the git note is the same record (less the commit it is attached to)
    for r in records:
        note = json.loads(git(run_dir, "notes", "--ref", "magnet", "show",
                              f"refs/magnet/exp/{r['exp']:03d}"))
        assert note == {k: v for k, v in r.items() if k != "commit"}
    tsv = (run_dir / "results.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[3] for line in tsv] == [r["status"] for r in records]
    assert openai_server.pending == 0


def reject_first_proposal(runs: Path) -> None:
    """Turn approval on while the baselines run, answer no to the first proposal, then off."""
    run_dir = wait_for(lambda: next(iter(runs.glob("*/run.json")), None), timeout=30).parent
    control.send(run_dir, {"cmd": "approve", "on": True})
    request = wait_for(lambda: control.read_approval(run_dir), timeout=60, what="approval")
    control.send(run_dir, {"cmd": "answer", "exp": request["exp"], "decision": "no"})
    control.send(run_dir, {"cmd": "approve", "on": False})


QUADRATIC = """import time
A = 0.0
time.sleep(0.4)
print(f"METRIC score={(A - 2.5) ** 2}")
"""
QUADRATIC_GOAL = goal_text("quadratic", planner="search", knobs={"A": "{low: 0.0, high: 5.0}"},
                           experiments=6, budget="per_experiment: 20s", model=None)


def study_trials(planner, goal, records: list[dict]) -> list[tuple[float, float]]:
    history = [ExperimentSummary(r["exp"], r["hypothesis"], r["status"], r.get("metric"),
                                 r.get("knobs") or {}) for r in records]
    context = PlanContext(brief="", metric_name="score", goal="minimize", editable_files={},
                          knobs=goal.knobs, current_knobs={"A": 0.0}, history=history,
                          best_metric=None, baseline_metric=None)
    study = planner.build_study(context)
    return sorted((t.params["A"], t.value) for t in study.trials
                  if t.state == TrialState.COMPLETE)


def tried(records: list[dict]) -> list[tuple[float, float]]:
    return sorted((r["knobs"]["A"], r["metric"]) for r in records
                  if r["status"] != "interrupted")


def test_search_study_holds_the_tried_values_also_after_resume(tmp_path, monkeypatch):
    goal_path = make_goal(tmp_path, QUADRATIC, QUADRATIC_GOAL)
    built = []
    real_make_planner = agent.loop.launch.make_planner

    def keep_planner(*args, **kwargs):  # the real planner, kept to look at its study after
        built.append(real_make_planner(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(agent.loop.launch, "make_planner", keep_planner)
    runs = tmp_path / "runs"
    controller = subprocess.Popen([*CLI, "run", str(goal_path), "--runs-dir", str(runs)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = wait_for(lambda: next(iter(runs.glob("*/logs/exp-004.log")), None), timeout=120)
    controller.send_signal(signal.SIGKILL)
    controller.wait(timeout=10)
    run_dir = log.parents[1]

    resume_run(run_dir.name, runs_dir=runs)

    records = records_of(run_dir)
    assert len(ranking.experiments([r for r in records if r["status"] != "interrupted"])) == 6
    values = {r["knobs"]["A"] for r in ranking.experiments(records)}
    assert len(values) >= 5  # the proposals moved A: a record that copied the kept A would not
    for r in records:
        assert r["metric"] is None or abs(r["metric"] - (r["knobs"]["A"] - 2.5) ** 2) < 1e-9
    from agent.goal.spec import load_goal

    goal = load_goal(goal_path)
    (planner,) = built  # the resumed run's planner: told the past, then what it observed
    assert study_trials(planner, goal, records) == tried(records)


SEEDED = """import os
X = 3.0
# the seed shifts the score: 0.2 apart, like two runs of one experiment
SHIFT = {1337: 0.0, 1338: 0.2}[int(os.environ["MAGNET_SEED"])]
print(f"METRIC score={(X - 1.0) ** 2 + 0.5 + SHIFT:.4f}")
"""
SEEDED_GOAL = goal_text("seeded", planner="openai", knobs={"X": "{low: 0.0, high: 4.0}"},
                        experiments=2)


def test_a_gain_within_the_noise_band_is_confirmed_with_another_seed(
        tmp_path, openai_server, monkeypatch):
    serve(monkeypatch, openai_server)
    goal = make_goal(tmp_path, SEEDED, SEEDED_GOAL)
    openai_server.push(proposal(knob_proposal("X a little lower", X=2.95)),
                       proposal(knob_proposal("X a little lower again", X=2.93)))

    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = records_of(run_dir)
    # baselines 4.5 and 4.7 (seeds 1337, 1338): sd 0.1414, mean 4.6
    assert [r["runs"] for r in records[:2]] == [[4.5], [4.7]]
    assert [r["seeds"] for r in records[:2]] == [[1337], [1338]]
    confirmed, refuted = records[2], records[3]
    # 4.3025 alone is 1.72 standard errors better than 4.6: run again, mean 4.4025 keeps
    assert confirmed["runs"] == [4.3025, 4.5025] and confirmed["seeds"] == [1337, 1338]
    assert confirmed["metric"] == pytest.approx(4.4025) and confirmed["status"] == "keep"
    assert confirmed["judgement"]["rule"] == "confirmed gain"
    # 4.2249 alone looks better than 4.4025 by 1.03 standard errors; its mean 4.3249 does not
    assert refuted["runs"] == [4.2249, 4.4249] and refuted["status"] == "discard"
    assert refuted["judgement"]["rule"] == "not confirmed"
    assert "standard errors" in refuted["reason"]
    for exp in (2, 3):
        assert (run_dir / "logs" / f"exp-{exp:03d}.log").exists()
        assert (run_dir / "logs" / f"exp-{exp:03d}-run2.log").exists()
    assert abs(ranking.noise_sd(records) - 0.2 / 2**0.5) < 1e-9
    assert ranking.best(records, "minimize") == pytest.approx(4.4025)
    report = (run_dir / "report.md").read_text()
    assert "Baseline 4.6000 → best 4.4025" in report and "2 re-run with another seed" in report


SIMPLE = """X = 3.0
X = X  # does nothing
X = X - 0.5
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
SIMPLE_GOAL = SEEDED_GOAL.replace("name: seeded", "name: simple")


def test_simpler_code_at_equal_quality_is_kept(tmp_path, openai_server, monkeypatch):
    serve(monkeypatch, openai_server)
    goal = make_goal(tmp_path, SIMPLE, SIMPLE_GOAL)
    openai_server.push(proposal(sr("X = X  # does nothing\n", "", "drop a line that does nothing")),
                       proposal(sr("X = X - 0.5\n", "", "drop the shift of X")))

    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = records_of(run_dir)
    simpler, worse = records[2], records[3]
    assert simpler["diff"] == {"added": 0, "removed": 1}
    assert simpler["status"] == "keep" and simpler["judgement"]["rule"] == "simpler"
    assert simpler["metric"] == records[0]["metric"]  # no better, but simpler
    assert worse["diff"] == {"added": 0, "removed": 1} and worse["status"] == "discard"
    assert "does nothing" not in git(run_dir, "show", "HEAD:train.py")
    assert ranking.best(records, "minimize") == simpler["metric"]
    # the tag marks the experiment the run stands for: the kept simpler one
    assert RunReader(run_dir).best()["exp"] == simpler["exp"]
    assert ranking.standing_record(records, "minimize")["exp"] == simpler["exp"]


def test_nothing_beat_the_baseline_and_a_run_without_experiments_fails(tmp_path):
    crashing = QUADRATIC.replace("time.sleep(0.4)\n", 'assert A == 0.0, "only A = 0 runs"\n')
    goal = make_goal(tmp_path, crashing, QUADRATIC_GOAL.replace("experiments: 6", "experiments: 2"))
    done = subprocess.run([*CLI, "run", str(goal), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "the run failed" in last and "no experiment completed" in last
    run_dir = next((tmp_path / "runs").iterdir())
    records = records_of(run_dir)
    assert [r["status"] for r in records] == ["baseline", "baseline", "crashed", "crashed"]
    assert ranking.best(records, "minimize") is None
    # nothing kept: the run stands for its first baseline run, and the tag is on it
    assert ranking.standing_record(records, "minimize")["exp"] == 0
    assert RunReader(run_dir).best()["exp"] == 0
    assert "Nothing beat the baseline 6.2500." in (run_dir / "report.md").read_text()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["failed"] and status["verdict"] == "Nothing beat the baseline 6.2500."
    assert "no experiment completed" in status["stop_reason"]
