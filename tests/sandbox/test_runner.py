import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from sandbox import RunLimits, run_command, run_environ


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(tmp_path: Path, command: str, limits: RunLimits | None = None, **kw):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = run_environ(time_budget=5, seed=7, output_dir=out, steps=kw.pop("steps", None),
                      passed=kw.pop("passed", ()))
    return run_command(
        command,
        tmp_path,
        env=env,
        limits=limits or RunLimits(time_budget=5, grace=10),
        log_path=tmp_path / "exp.log",
        output_dir=out,
        **kw,
    )


HANG = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL can end this
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
grandchild = subprocess.Popen([sys.executable, "-c", code])
escaper = subprocess.Popen(["sleep", "600"], start_new_session=True)  # leaves the group
with open("pids", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid} {escaper.pid}")
print("started", flush=True)
time.sleep(600)
"""


def test_hanging_command_and_its_grandchildren_are_killed(tmp_path: Path):
    (tmp_path / "hang.py").write_text(HANG)
    limits = RunLimits(time_budget=0.5, grace=0.7, term_grace=0.5)
    t0 = time.monotonic()
    result = run(tmp_path, "python hang.py", limits)
    elapsed = time.monotonic() - t0
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert result.status == "timeout"
    assert "wall limit of 1.2 s exceeded" in result.reason
    assert 1.2 <= elapsed < 6
    assert "started" in result.log_tail
    for pid in pids:
        assert not alive(pid), f"process {pid} outlived the run"


def test_sigterm_comes_first_and_lets_the_command_clean_up(tmp_path: Path):
    code = (
        "import signal, sys, time\n"
        "def bye(*a):\n    print('got TERM, saving', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('METRIC steps=1', flush=True)\n"
        "time.sleep(600)\n"
    )
    (tmp_path / "t.py").write_text(code)
    result = run(tmp_path, "python t.py", RunLimits(time_budget=0.3, grace=0.3, term_grace=5))
    assert result.status == "timeout"
    assert "got TERM, saving" in result.log_tail
    assert result.seconds < 4


def test_background_straggler_is_killed_after_a_normal_exit(tmp_path: Path):
    t0 = time.monotonic()
    result = run(tmp_path, "sleep 600 & echo $! > bgpid; echo 'METRIC x=1'")
    assert result.status == "ok" and result.metrics == {"x": 1}
    assert time.monotonic() - t0 < 5  # the straggler holds stdout; we did not wait for it
    assert not alive(int((tmp_path / "bgpid").read_text()))


def test_memory_runaway_ends_as_oom(tmp_path: Path):
    code = (
        "import time\nblocks = []\n"
        "for _ in range(80):\n"
        "    blocks.append(b'x' * (50 * 2**20))  # 50 MiB, written so it is resident\n"
        "    time.sleep(0.01)\n"
        "time.sleep(600)\n"
    )
    (tmp_path / "hog.py").write_text(code)
    limit = 200 * 2**20
    result = run(tmp_path, "python hog.py", RunLimits(time_budget=20, grace=10, mem_limit=limit))
    assert result.status == "oom"
    assert result.peak_rss >= limit  # a memory cgroup holds it at the limit
    assert result.seconds < 10
    assert "exceeded the limit of 200 MiB" in result.reason


def test_memory_under_the_limit_is_fine(tmp_path: Path):
    code = "import time\nblock = b'x' * (100 * 2**20)\ntime.sleep(0.5)\nprint('METRIC x=1')\n"
    (tmp_path / "ok.py").write_text(code)
    result = run(tmp_path, "python ok.py", RunLimits(time_budget=20, mem_limit=1024 * 2**20))
    assert result.status == "ok"
    assert 100 * 2**20 < result.peak_rss < 1024 * 2**20


def test_memory_error_counts_as_oom(tmp_path: Path):
    result = run(tmp_path, "python -c 'raise MemoryError'")
    assert result.status == "oom"
    assert result.exit_code == 1


def test_secrets_are_absent_and_contract_variables_set(tmp_path: Path, monkeypatch):
    secrets = {
        "OPENAI_API_KEY": "sk-1",
        "HF_TOKEN": "hf_2",
        "AWS_SECRET_ACCESS_KEY": "3",
        "DB_PASSWORD": "4",
        "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
        "my_private_thing": "5",
        "DATABASE_URL": "postgres://user:hunter2@db/x",
        # the probe's leftovers from a deny-list: names and values it did not recognise
        "MYSQL_PWD": "6",
        "REPO": "https://ghp_token7@github.com/x/y",
        "CACHE": "redis://:pw8@cache:6379/0",
        "KUBECONFIG": "/root/.kube/config",
        "NETRC": "/root/.netrc",
        "MAGNET_STEPS": "999",  # a stale setting from the parent must not leak either
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HARMLESS_SETTING", "not named")
    monkeypatch.setenv("NAMED_SETTING", "kept")
    monkeypatch.setenv("MAGNET_CACHE_DIR", "/tmp/corpus-cache")
    code = "import json, os, sys; print('ENV ' + json.dumps({**os.environ, 'EXE': sys.executable}))"
    (tmp_path / "env.py").write_text(code)
    result = run(tmp_path, "python env.py", passed=["NAMED_SETTING"])
    line = next(x for x in result.log_tail.splitlines() if x.startswith("ENV "))
    env = json.loads(line[4:])
    for k in secrets:
        assert k not in env, k
    assert "sk-1" not in (tmp_path / "exp.log").read_text()
    # an allow-list: PATH, locale, time zone, the contract, and what the goal's `env:` names
    assert "HARMLESS_SETTING" not in env and env["NAMED_SETTING"] == "kept"
    assert set(env) - {"EXE", "NAMED_SETTING", "PWD", "SHLVL", "_"} <= {
        "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
        "PYTHONUNBUFFERED", "MAGNET_TIME_BUDGET", "MAGNET_SEED", "MAGNET_OUTPUT_DIR",
        "MAGNET_CACHE_DIR", "MAGNET_STEPS"}, sorted(env)
    assert env["MAGNET_TIME_BUDGET"] == "5" and env["MAGNET_SEED"] == "7"
    assert env["MAGNET_OUTPUT_DIR"] == str(tmp_path / "out")
    # pinned to the CPUs free right now (fewer while other processes run)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"]
    assert 1 <= int(env["OMP_NUM_THREADS"]) <= os.cpu_count()
    assert env["MAGNET_CACHE_DIR"] == "/tmp/corpus-cache"  # this machine's cache passes through
    assert os.path.dirname(env["EXE"]) == os.path.dirname(sys.executable)  # same interpreter
    result = run(tmp_path, "python env.py", steps=50)
    line = next(x for x in result.log_tail.splitlines() if x.startswith("ENV "))
    assert json.loads(line[4:])["MAGNET_STEPS"] == "50"


def test_crash_status_exit_code_and_log_tail(tmp_path: Path):
    code = "import sys\nfor i in range(80): print('line', i)\nraise SystemExit('boom: bad shape')"
    (tmp_path / "c.py").write_text(code)
    result = run(tmp_path, "python c.py")
    assert result.status == "crashed" and result.exit_code == 1
    tail = result.log_tail.splitlines()
    assert len(tail) == 50 and tail[-2] == "boom: bad shape"
    assert tail[-1].startswith("[sandbox] crashed with exit code 1")
    assert "line 0\n" in (tmp_path / "exp.log").read_text()  # the full log is on disk


def test_no_metric(tmp_path: Path):
    assert run(tmp_path, "echo hello").status == "no_metric"
    result = run(tmp_path, "echo 'METRIC other=1'", metric="val_bpb")
    assert result.status == "no_metric" and "METRIC val_bpb" in result.reason
    assert run(tmp_path, "echo 'METRIC val_bpb=1.5'", metric="val_bpb").status == "ok"
    diverged = run(tmp_path, "echo 'METRIC val_bpb=nan'", metric="val_bpb")
    assert diverged.status == "no_metric" and "val_bpb is nan" in diverged.reason


def test_metrics_from_lines_and_json_and_streamed_lines(tmp_path: Path):
    code = (
        "import json, os, time\n"
        "print('METRIC val_bpb=1.25', flush=True)\n"
        "time.sleep(0.5)\n"
        "json.dump({'val_bpb': 9.0, 'params': 1000}, "
        "open(os.path.join(os.environ['MAGNET_OUTPUT_DIR'], 'metrics.json'), 'w'))\n"
        "print('METRIC steps=42')\n"
    )
    (tmp_path / "m.py").write_text(code)
    seen: list[tuple[float, str]] = []
    result = run(tmp_path, "python m.py", on_line=lambda s: seen.append((time.monotonic(), s)))
    assert result.status == "ok"
    assert result.metrics == {"val_bpb": 1.25, "params": 1000, "steps": 42}  # lines win
    lines = [s for _, s in seen]
    assert lines == ["METRIC val_bpb=1.25", "METRIC steps=42"]
    assert seen[1][0] - seen[0][0] > 0.4  # the first line arrived while the command ran
    assert (tmp_path / "exp.log").read_text() == "METRIC val_bpb=1.25\nMETRIC steps=42\n"


def test_broken_callback_does_not_break_the_run(tmp_path: Path):
    def boom(line: str) -> None:
        raise RuntimeError("display gone")

    result = run(tmp_path, "echo 'METRIC x=2'; echo more", on_line=boom)
    assert result.status == "ok" and result.metrics == {"x": 2}
    assert "display callback failed" in (tmp_path / "exp.log").read_text()


@pytest.mark.parametrize("command", ["exit 0", "true"])
def test_fast_command_is_fast(tmp_path: Path, command: str):
    t0 = time.monotonic()
    result = run(tmp_path, command)
    assert result.status == "no_metric" and result.exit_code == 0
    assert time.monotonic() - t0 < 1.0  # no waiting for polls or grace periods
