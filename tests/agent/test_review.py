"""Review commands (`runs`, `history`, `show`, `report`) and git alone, on one finished run.

The run is real (scripted OpenAI-compatible server): two baselines, a kept change, a worse one
(discarded) and a crash, then the experiment budget of 3 ends it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import make_goal, sr
from openai_server import ScriptedServer, proposal, text

from agent.loop.launch import start_run
from agent.review.detail import diff_between, experiment_diff
from agent.review.plot import text_plot
from agent.review.report import write_report
from agent.review.run import Run
from agent.rundir.experiment_record import SEALED_KEY, UNSEALED_REASON_KEY, seal
from agent.rundir.runs import RunError, load_run_goal, parse_exp

TRAIN = """X = 3.0
MODE = "ok"
if MODE == "crash":
    raise RuntimeError("boom: MODE crash")
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
GOAL = """---
name: reviewed
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 10s, experiments: 3, wall: 10m}
planner: openai
model: scripted-model
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""
# the installed console script, as a person or a script runs it; stdout is a pipe, not a terminal
CLI = [str(Path(sys.executable).with_name("magnet-agent"))]
STATUSES = ["baseline", "baseline", "keep", "discard", "crashed"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("review")
    make_goal(tmp, TRAIN, GOAL)
    with ScriptedServer() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", server.base_url)
        mp.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
        server.push(
            proposal(sr("X = 3.0", "X = 2.0", "move X towards 1",
                        "because move X towards 1")),                        # exp 2: kept
            proposal(sr("X = 2.0", "X = 3.5", "overshoot X")),               # exp 3: discarded
            proposal(sr('MODE = "ok"', 'MODE = "crash"', "try crash mode")),  # exp 4: crashed
            text("It raised RuntimeError in crash mode; do not use it."),     # its diagnosis
        )
        path = start_run(tmp / "GOAL.md", runs_dir=tmp / "runs")
    assert [r["status"] for r in Run.load(path).records()] == STATUSES
    return path


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert (done.returncode == 0) == ok, done.stderr
    return done


def tsv(out: str) -> list[dict[str, str]]:
    """Tab-separated lines under a header, as the review tables print when piped."""
    header, *rows = (line.split("\t") for line in out.splitlines())
    assert all(len(row) == len(header) for row in rows), out
    return [dict(zip(header, row, strict=True)) for row in rows]


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]


def test_history_lists_every_experiment(run_dir):
    out = cli("history", run_dir.name, "--runs-dir", str(run_dir.parent)).stdout
    rows = {int(row["exp"]): row for row in tsv(out)}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for record in Run.load(run_dir).records():
        row = rows[record["exp"]]
        metric = record["metric"]
        assert row["status"] == record["status"]
        assert row["score"] == (f"{metric:.4f}" if metric is not None else "-")
        assert row["hypothesis"] == " ".join(record["hypothesis"].split())  # whole, never cut
    assert [rows[e]["best so far"] for e in range(5)] == ["-", "-", "1.5000", "1.5000", "1.5000"]
    last = cli("history", str(run_dir), "--last", "2").stdout  # a run directory works too
    assert [row["exp"] for row in tsv(last)] == ["003", "004"]


def test_history_json_is_the_records(run_dir):
    assert json.loads(cli("history", str(run_dir), "--json").stdout) == jsonl(run_dir)
    assert json.loads(cli("history", str(run_dir), "--json", "--last", "2").stdout) \
        == jsonl(run_dir)[-2:]


def test_show_prints_what_the_record_holds(run_dir):
    out = cli("show", run_dir.name, "2", "--runs-dir", str(run_dir.parent)).stdout
    for part in ("exp 002  keep  score=1.5000", "hypothesis: move X towards 1",
                 "rationale: because move X towards 1", "-X = 3.0", "+X = 2.0",
                 "METRIC score=1.5", "planner openai", f"log tail ({run_dir}/logs/exp-002.log):"):
        assert part in out, out
    crashed = cli("show", str(run_dir), "004").stdout
    assert "crashed" in crashed and '+MODE = "crash"' in crashed
    assert "RuntimeError: boom: MODE crash" in crashed  # the log tail


def test_show_json_holds_record_diff_and_log(run_dir):
    kept = json.loads(cli("show", str(run_dir), "002", "--json").stdout)
    assert kept["record"] == jsonl(run_dir)[2]
    assert "-X = 3.0\n+X = 2.0" in kept["diff"]
    assert kept["log_path"] == str(run_dir / "logs" / "exp-002.log")
    assert kept["log_tail"].splitlines()[-1] == "METRIC score=1.5"
    assert kept["repeat_log_paths"] == []
    crashed = json.loads(cli("show", str(run_dir), "4", "--json").stdout)
    assert crashed["record"]["status"] == "crashed"
    assert "RuntimeError: boom: MODE crash" in crashed["log_tail"]


def test_show_a_confirmed_experiment(run_dir, tmp_path):
    """A record with two runs (confirmed with another seed), its diff size and judgement."""
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, symlinks=True)
    records = jsonl(copy)
    records[2] |= {"runs": [1.5, 1.52], "metric": 1.51, "diff": {"added": 1, "removed": 1},
                   "judgement": {"action": "keep", "rule": "confirmed gain", "gain": 2.99,
                                 "stderr": 0.0212, "reason": "confirmed gain: ..."}}
    (copy / "experiments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (copy / "logs" / "exp-002-run2.log").write_text("METRIC score=1.52\n")
    out = cli("show", str(copy), "2").stdout
    for part in ("runs: 1.5000, 1.5200 (judged on 1.5100)", "diff size: +1 -1 lines",
                 "judgement: action=keep, rule=confirmed gain, gain=2.99, stderr=0.0212",
                 f"confirmation run's log: {copy}/logs/exp-002-run2.log"):
        assert part in out, out
    shown = json.loads(cli("show", str(copy), "2", "--json").stdout)
    assert shown["record"] == records[2]
    assert shown["repeat_log_paths"] == [str(copy / "logs" / "exp-002-run2.log")]


def test_bad_names_get_one_line_with_the_fix(run_dir):
    missing = cli("show", str(run_dir), "42", ok=False).stderr.strip()
    assert missing == "magnet-agent: error: no experiment 42; this run has 000-004"
    assert "name one as 7 or 007" in cli("show", str(run_dir), "seven", ok=False).stderr
    no_run = cli("history", "nope", "--runs-dir", str(run_dir.parent), ok=False).stderr
    assert f"no run 'nope' under {run_dir.parent}; runs here: {run_dir.name}" in no_run
    assert parse_exp("7") == parse_exp("007") == parse_exp("exp007") == 7


@pytest.fixture
def runs(run_dir, tmp_path) -> Path:
    """The finished run, and an older one with a long goal name that was killed after its
    start (nothing runs it, no record)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / run_dir.name).symlink_to(run_dir)
    stale = runs / f"{LONG_NAME}-19990101-000000"
    stale.mkdir()
    (stale / "run.json").write_text("{}")
    (stale / "goal.md").write_text(GOAL.replace("name: reviewed", f"name: {LONG_NAME}"))
    os.utime(stale / "run.json", (0, 0))
    return runs


LONG_NAME = "a-goal-name-long-enough-that-an-80-column-table-would-cut-it-short"


def test_runs_piped_prints_whole_values_a_grep_finds(run_dir, runs):
    out = cli("runs", "--runs-dir", str(runs)).stdout
    listed = {row["run"]: row for row in tsv(out)}
    assert list(listed) == [f"{LONG_NAME}-19990101-000000", run_dir.name]  # oldest first
    assert listed[run_dir.name] == {
        "run": run_dir.name, "goal": "reviewed", "status": "finished", "exps": "3",
        "metric": "score (min)", "baseline": "4.5000", "best": "1.5000",
        "vs baseline": "+66.67% better"}
    stale = listed[f"{LONG_NAME}-19990101-000000"]
    assert (stale["goal"], stale["status"], stale["exps"], stale["best"]) == (
        LONG_NAME, "interrupted", "0", "-")
    grep = subprocess.run(f"{CLI[0]} runs --runs-dir {runs} | grep -F {LONG_NAME}-1999",
                          shell=True, capture_output=True, text=True)
    assert grep.returncode == 0 and LONG_NAME + "\t" in grep.stdout, grep.stdout
    assert "…" not in out


def test_runs_json_and_a_run_nothing_beat(run_dir, runs, tmp_path):
    """A run whose experiments all lost to the baseline says so, in the table and in JSON."""
    lost = runs / "lost-20000101-000000"
    lost.mkdir()
    for name in ("run.json", "goal.md", "status.json"):
        (lost / name).write_bytes((run_dir / name).read_bytes())
    (lost / "experiments.jsonl").write_text("".join(
        json.dumps({**r, "status": "discard" if r["status"] == "keep" else r["status"]}) + "\n"
        for r in jsonl(run_dir)))
    summary = {run["id"]: run for run in json.loads(cli("runs", "--runs-dir", str(runs),
                                                        "--json").stdout)}
    assert summary[run_dir.name] == {
        "id": run_dir.name, "goal": "reviewed", "status": "finished",
        "stop_reason": "experiment budget of 3 reached", "experiments": 3,
        "metric": {"name": "score", "goal": "minimize"}, "baseline": 4.5, "best": 1.5,
        "verdict": "Baseline 4.5000 → best 1.5000 (+66.67% better).",
        "path": str(run_dir.resolve())}
    assert summary["lost-20000101-000000"]["best"] is None
    assert summary["lost-20000101-000000"]["verdict"] == "Nothing beat the baseline 4.5000."
    row = next(r for r in tsv(cli("runs", "--runs-dir", str(runs)).stdout)
               if r["run"] == "lost-20000101-000000")
    assert (row["best"], row["vs baseline"]) == ("-", "nothing beat the baseline")
    assert json.loads(cli("runs", "--runs-dir", str(tmp_path / "none"), "--json").stdout) == []


def test_a_run_whose_goal_is_broken_is_still_listed(run_dir, runs):
    """goal.md is read by the goal's own parser; a broken one leaves the run listed under the
    name its id carries, with a metric it cannot know."""
    broken = runs / "broken-20000101-000000"
    broken.mkdir()
    (broken / "run.json").write_bytes((run_dir / "run.json").read_bytes())
    (broken / "goal.md").write_text("---\nname: [never closed\n---\nA brief.\n")
    listed = {row["run"]: row for row in tsv(cli("runs", "--runs-dir", str(runs)).stdout)}
    assert listed[broken.name]["goal"] == "broken"
    assert listed[broken.name]["metric"] == "metric (min)"
    assert listed[run_dir.name]["goal"] == "reviewed"
    assert Run.load(run_dir).metric == "score"


def test_on_a_terminal_the_tables_are_drawn(run_dir):
    """Through a pseudo-terminal: rich tables, and the plain-git hint under the history."""
    import pexpect

    out = pexpect.run(" ".join([*CLI, "history", str(run_dir)]), encoding="utf-8",
                      dimensions=(50, 200), env={**os.environ, "TERM": "xterm"})
    assert "│ 002 │" in out and "git -C" in out and "log --notes=magnet" in out, out


def test_report_regenerates_report_and_plot(run_dir):
    original = (run_dir / "report.md").read_text()
    (run_dir / "report.md").write_text("\n".join(original.splitlines()[:6]))  # a cut-off one
    (run_dir / "progress.png").unlink()
    out = cli("report", run_dir.name, "--runs-dir", str(run_dir.parent)).stdout
    assert "report.md" in out
    report = (run_dir / "report.md").read_text()
    assert report == original  # the same records make the same report
    assert "Baseline 4.5000 → best 1.5000" in report
    assert "Stopped: experiment budget of 3 reached." in report  # the reason survives
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Run.load(run_dir).state() == "finished"


def test_runs_on_an_unsealed_corpus_say_so_in_records_and_report(run_dir, tmp_path):
    records = jsonl(run_dir)
    # a repository's goal has no corpus: nothing held out, so neither sealed nor unsealed
    assert {r[SEALED_KEY] for r in records if r.get("scored_by")} == {None}
    assert "unsealed" not in (run_dir / "report.md").read_text()
    assert seal(f"text:{tmp_path}") == {SEALED_KEY: True}
    unsealed = seal("pycode")
    assert unsealed[SEALED_KEY] is False and "portable-code" in unsealed[UNSEALED_REASON_KEY]

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    marked = [r | unsealed if r.get("scored_by") else r for r in records]
    report = write_report(copy, load_run_goal(copy), marked).read_text()
    ran = sum(1 for r in records if r.get("scored_by"))
    assert f"**{ran} ran on an unsealed corpus**, so their scores cannot be claimed" in report
    assert unsealed[UNSEALED_REASON_KEY] in report


def test_git_alone_tells_the_whole_story(run_dir):
    """Each experiment's commit carries its record as a note: status and metric, with git."""
    ws = run_dir / "workspace.git"

    def notes(*revs: str) -> dict[int, dict]:
        out = subprocess.run(["git", "-C", str(ws), "log", "--notes=magnet", "--format=%N",
                              *revs], capture_output=True, text=True, check=True).stdout
        found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {note["exp"]: note for note in found}

    every = notes("--glob=refs/magnet/exp")
    for record in Run.load(run_dir).records():
        note = every[record["exp"]]
        assert (note["status"], note["metric"]) == (record["status"], record["metric"])
        assert note["hypothesis"] == record["hypothesis"]
    assert sorted(notes()) == [0, 1, 2]  # the branch itself holds the kept experiments
    plain = subprocess.run(["git", "-C", str(ws), "log", "--notes=magnet"],
                           capture_output=True, text=True, check=True).stdout
    assert "Notes (magnet):" in plain and '"status": "keep"' in plain
    assert "exp 002: move X towards 1" in plain


def test_diffs_come_from_the_experiment_commits(run_dir):
    run = Run.load(run_dir)
    assert "-X = 2.0\n+X = 3.5" in experiment_diff(run, 3)  # against its own base, exp 2
    between = diff_between(run, 2, 4)
    assert "-X = 2.0" not in between and '+MODE = "crash"' in between
    with pytest.raises(RunError, match="no experiment 9; this run has 000-004"):
        diff_between(run, 2, 9)


def test_text_plot_places_kept_discarded_and_failed(run_dir):
    run = Run.load(run_dir)
    lines = text_plot(run.records(), run.metric, run.goal, width=40).plain.splitlines()
    grid = [line.split("│", 1)[1] for line in lines[1:-3]]  # rows, top (worst) first
    axis = lines[-3]
    assert "×" in grid[0]                # exp 3, 6.75: the highest value, on the top row
    assert grid[-1].count("●") == 1      # exp 2, 1.5: the best, on the bottom row
    assert grid[-1].rstrip().endswith("─")  # and the best-so-far line stays there
    assert sum(row.count("●") for row in grid) == 3  # two baselines and exp 2
    assert axis.rstrip().endswith("!")   # exp 4 crashed: no metric, marked on the axis
    assert lines[-2].split() == ["000", "004"]
