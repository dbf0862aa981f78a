"""`magnet-agent train` for real: the bitnet-lm template on a tiny text corpus, run through the
sandbox into a run directory that the review commands read like any research run.

The environment the training process really runs with is read from /proc while it trains, so
the allow-list is checked on the real process, not on a function's return value.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.rundir.experiment_record import TEST_KEY
from bitnet.checkpoint import load_checkpoint

CLI = str(Path(sys.executable).with_name("magnet-agent"))
SECRETS = {"OPENAI_API_KEY": "sk-test-do-not-leak", "HF_TOKEN": "hf_do_not_leak",
           "DATABASE_URL": "postgres://user:hunter2@db/x", "MYSQL_PWD": "pw-do-not-leak",
           "KUBECONFIG": "/root/.kube/do-not-leak", "PYTHONPATH": "/do-not-leak"}
BUDGET = "1"  # --budget, seconds


def training_environ(runs: Path) -> dict[str, str] | None:
    """The environment of the process training under `runs`, read from /proc, if it runs."""
    for p in psutil.process_iter():
        try:
            env = p.environ()
            if env.get("MAGNET_OUTPUT_DIR", "").startswith(str(runs)) and \
                    "train.py" in " ".join(p.cmdline()):
                return env
        except psutil.Error:
            continue
    return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("train")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 50)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}, **SECRETS,
           "MAGNET_CACHE_DIR": str(root / "cache"),
           "MAGNET_SEED": "99"}  # an inherited MAGNET_* setting must not reach the run either
    runs = root / "runs"
    # one second of training: the run, its scoring and its records are what is checked here
    proc = subprocess.Popen([CLI, "train", "--budget", BUDGET, "--corpus", f"text:{corpus}",
                             "--seed", "7", "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = None
    while seen is None and proc.poll() is None:
        seen = training_environ(runs)
        # a look at every process costs ~6 ms of CPU; the training process lives for its
        # second of training and more, so a few looks a second see it
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert seen is not None, "the training process was never seen"
    (run_dir,) = runs.iterdir()
    return run_dir, subprocess.CompletedProcess(proc.args, 0, stdout, stderr), seen


def cli(*args: str) -> str:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_writes_a_run_the_review_commands_read(trained):
    run_dir, done, _ = trained
    assert run_dir.name.startswith("train-")
    records = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text()
               .splitlines()]
    (record,) = records
    assert record["status"] == "baseline" and record["exp"] == 0
    assert record["metric"] == record["metrics"]["val_bpb"] and 0 < record["metric"] < 8.5
    # scored by the template's evaluator from the checkpoint, once: the run printed no score
    assert record["scored_by"] == "evaluator" and record["confinement"] == "bubblewrap"
    assert record["reported"] == [None]
    # and on the held-out test split, beside the metrics (which planners see), never in them
    test = record[TEST_KEY]
    assert 0 < test < 8.5 and test != record["metric"] and TEST_KEY not in record["metrics"]
    assert json.loads(cli("history", str(run_dir), "--json")) == records

    (summary,) = json.loads(cli("runs", "--runs-dir", str(run_dir.parent), "--json"))
    assert summary["id"] == run_dir.name and summary["status"] == "finished"
    assert (summary["experiments"], summary["baseline"], summary["best"]) == (
        0, record["metric"], None)
    assert summary["metric"] == {"name": "val_bpb", "goal": "minimize"}
    assert summary["verdict"] == f"Nothing beat the baseline {record['metric']:.4f}."
    assert run_dir.name in cli("runs", "--runs-dir", str(run_dir.parent))

    shown = json.loads(cli("show", str(run_dir), "0", "--json"))
    assert shown["record"] == record
    assert shown["diff"] == ""  # the template as it is
    assert shown["log_path"] == str(run_dir / "logs" / "exp-000.log")
    assert "METRIC train_loss=" in shown["log_tail"] and "val_bpb" not in shown["log_tail"]
    assert f"checkpoint: {run_dir / 'outputs' / 'exp-000'}" in done.stdout

    # the checkpoint is where every experiment's is, and is the model that was scored
    model = load_checkpoint(run_dir / "outputs" / "exp-000")
    assert model.num_parameters() == record["metrics"]["params"]
    # the goal it wrote is a real goal: the report command loads it
    cli("report", str(run_dir))
    assert (run_dir / "report.md").is_file()
    git = subprocess.run(["git", "-C", str(run_dir / "workspace.git"), "log", "--notes=magnet",
                          "--format=%s %N", "-1"], capture_output=True, text=True, check=True)
    assert git.stdout.startswith("exp 000: baseline: bitnet-lm on text:")
    assert '"status": "baseline"' in git.stdout


def test_the_training_process_sees_the_sandbox_environment(trained):
    run_dir, _, seen = trained
    assert not set(SECRETS) & set(seen), sorted(seen)
    assert not any(v in value for v in SECRETS.values() for value in seen.values())
    assert seen["MAGNET_SEED"] == "7" and seen["MAGNET_TIME_BUDGET"] == BUDGET
    assert seen["MAGNET_CORPUS"].startswith("text:")  # from the goal's `corpus:`
    # its training split alone (bitnet.data.train_dir), from a corpus that is sealed
    train_data = Path(seen["MAGNET_TRAIN_DATA"])
    assert sorted(p.name for p in train_data.iterdir()) == ["meta.json", "train.bin"]
    assert {(r["sealed"], r.get("unsealed_reason")) for r in map(json.loads, (
        run_dir / "experiments.jsonl").read_text().splitlines())} == {(True, None)}
    assert seen["MAGNET_OUTPUT_DIR"] == str(run_dir / "outputs" / "exp-000")
    assert seen["MAGNET_CACHE_DIR"].endswith("cache")  # this machine's cache is passed on
    assert int(seen["OMP_NUM_THREADS"]) >= 1 and seen["MKL_NUM_THREADS"] == seen["OMP_NUM_THREADS"]


def test_an_unknown_template_fails_in_one_line_before_anything_is_made(tmp_path):
    done = subprocess.run([CLI, "train", "--template", "nope", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("magnet-agent: error: unknown template 'nope'; use one of:")
    assert list(tmp_path.iterdir()) == []


def test_a_training_run_is_not_resumed_as_a_research_run(trained):
    run_dir, _, _ = trained
    done = subprocess.run([CLI, "resume", str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "is a single training run (magnet-agent train); there is nothing to resume" in \
        done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (run_dir / "checkpoints.sqlite").exists()
