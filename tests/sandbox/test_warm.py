"""Warm starts (sandbox.warm): a run told to go in a process that imported torch beforehand
gives what a cold `python train.py` gives (same steps, same checkpoint bytes, same view of the
machine), and a warm process that is never told to go leaves nothing behind. Real processes,
real bubblewrap, real torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sandbox import Workspace
from sandbox.confine import confinement
from sandbox.layout import OUTPUTS_DIR
from sandbox.proctree import WAITING_NICE, niced, unnice
from sandbox.warm import STAGING_PREFIX, WarmStarter, script_of

# trains a few steps under the contract, saves its weights and says how it sees the machine
TRAIN_PY = '''\
import json, os, sys
import torch
from safetensors.torch import save_file

torch.manual_seed(int(os.environ["MAGNET_SEED"]))
steps = int(os.environ["MAGNET_STEPS"])
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
for _ in range(steps):
    x = torch.randn(16, 32)
    loss = ((model(x) - x) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
out = os.environ["MAGNET_OUTPUT_DIR"]
save_file({k: v.contiguous() for k, v in model.state_dict().items()},
          os.path.join(out, "model.safetensors"))
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\\t" in line)
escape = os.path.join(os.path.dirname(os.getcwd()), "escaped")
try:
    open(escape, "w").write("x")
    wrote_outside = True
except OSError:
    wrote_outside = False
view = {"argv": sys.argv, "path0": sys.path[0], "name": __name__, "cwd": os.getcwd(),
        "stdin": sys.stdin.read(), "threads": torch.get_num_threads(), "uid": os.getuid(),
        "caps": status["CapEff"].strip(), "nnp": status.get("NoNewPrivs", "").strip(),
        "root": sorted(os.listdir("/")), "tmp": sorted(os.listdir("/tmp")),
        "env": {k: v for k, v in os.environ.items() if k != "MAGNET_OUTPUT_DIR"},
        "wrote_outside": wrote_outside, "out_is_staging": ".warm-" in out,
        "nice": os.getpriority(os.PRIO_PROCESS, 0)}
print("VIEW " + json.dumps(view))
print(f"METRIC loss={loss.item()}")
print(f"METRIC steps={steps}")
'''


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    template = tmp_path / "template"
    template.mkdir()
    (template / "train.py").write_text(TRAIN_PY)
    ws = Workspace.create(tmp_path / "runs" / "warm", template=template, editable=["train.py"])
    ws.warm = WarmStarter(ws.run_dir / OUTPUTS_DIR)
    yield ws
    ws.close()


def _run(ws: Workspace, repeat: int) -> tuple[dict, dict, bytes]:
    result = ws.run("python train.py", time_budget=30, seed=5, steps=12, threads=1,
                    repeat=repeat, metric="loss", confinement=confinement())
    assert result.status == "ok", result.log_tail
    view = next(json.loads(line[5:]) for line in result.log_path.read_text().splitlines()
                if line.startswith("VIEW "))
    weights = (ws.output_dir(ws.current["exp"], repeat) / "model.safetensors").read_bytes()
    return result.metrics, view, weights


def test_a_warm_run_gives_what_a_cold_one_gives(ws: Workspace) -> None:
    ws.begin(1, "cold then warm")
    starter, ws.warm = ws.warm, None
    cold_metrics, cold, cold_weights = _run(ws, 0)  # no warm starts: cold
    ws.warm = starter
    _run(ws, 1)  # with cgroups (root here) forked from a fork server, else cold
    assert ws.warm is not None and ws.warm.warm is not None  # the next run's, ready
    # forked, it waits at niceness 0 (once its server has imported, else it is forked when the
    # run comes); started, it imports behind the controller's scoring and planning at a lower
    # priority; either way it runs at niceness 0 (view)
    forked = ws.warm.zygote is not None
    assert forked == (os.geteuid() == 0)
    if not forked:
        assert psutil.Process(ws.warm.warm.proc.pid).nice() == WAITING_NICE
    warm_metrics, warm, warm_weights = _run(ws, 2)
    assert not cold["out_is_staging"] and warm["out_is_staging"]  # it did run warm
    assert warm_metrics == cold_metrics and warm_metrics["steps"] == 12
    assert warm_weights == cold_weights
    for view in (cold, warm):
        view.pop("out_is_staging")
    assert warm == cold  # argv, sys.path[0], __main__, stdin, threads, env, confinement
    assert not cold["wrote_outside"] and cold["caps"] == "0000000000000000"
    # the staging directory became the run's output directory; none is left over
    outputs = ws.run_dir / OUTPUTS_DIR
    assert not [p for p in outputs.iterdir() if p.name.startswith(STAGING_PREFIX)
                and (ws.warm.warm is None or p != ws.warm.warm.staging)]


@pytest.mark.parametrize("confined", [True, False], ids=["bubblewrap", "unconfined"])
def test_a_warm_process_never_told_to_go_leaves_nothing(ws: Workspace, confined: bool) -> None:
    marker = ws.path / "train.py"
    marker.write_text("open('ran', 'w').write('x')\n")  # any sign the script ran (unconfined)
    base = confinement(unconfined=not confined)
    ws.warm.prepare("python train.py", ws.path, {"PATH": os.environ["PATH"]},
                    lambda out: base.with_paths(writable=[out]), (2**30, 64, 2**20))
    warm = ws.warm.warm
    assert warm is not None and warm.staging.is_dir()
    # the warm process (not forked yet while its fork server imports) and its fork server
    roots = [p.pid for p in (warm.proc, ws.warm.zygote and ws.warm.zygote.proc) if p is not None]
    assert roots
    procs = [q for pid in roots for q in (psutil.Process(pid), *psutil.Process(pid).children(True))]
    ws.close()  # the controller stops: so does the warm process, having run nothing
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not warm.staging.exists() and not (ws.path / "ran").exists()


def test_a_warm_process_that_does_not_fit_the_run_is_not_used(ws: Workspace) -> None:
    ws.begin(1, "env differs")
    ws.run("python train.py", time_budget=30, seed=5, steps=2, threads=1, metric="loss",
           confinement=confinement())
    first = ws.warm.warm
    assert first is not None
    # another variable than the per-run ones: the interpreter may read it at start-up
    result = ws.run("python train.py", time_budget=30, seed=5, steps=2, threads=1, repeat=1,
                    metric="loss", confinement=confinement(), env={"PYTHONHASHSEED": "3"})
    assert result.status == "ok"
    assert first.proc is None or first.proc.poll() is not None  # stopped (or never forked)
    assert '"out_is_staging": false' in result.log_path.read_text()


def test_only_python_script_commands_start_warm() -> None:
    assert script_of("python train.py") == "train.py"
    assert script_of("python3 train.py") == "train.py"
    for command in ("python train.py --fast", "make train", "python -m train",
                    "python train.py && rm -rf x", "python 'unclosed"):
        assert script_of(command) is None


def test_unnice_reaches_every_thread_and_child_of_a_waiting_process() -> None:
    """Niceness is per thread and a fork inherits it: a waiting process whose threads and
    children already exist (torch's pools, bubblewrap's inner processes) is set back whole."""
    if os.geteuid() != 0:
        pytest.skip("lowering a niceness needs root or CAP_SYS_NICE")
    script = ("import subprocess, sys, threading, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "for _ in range(3):\n"
              "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
              "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen(niced([sys.executable, "-c", script]), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        tids = [t.id for p in tree for t in p.threads()]
        assert len(tree) == 2 and len(tids) >= 5
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in tids} == {WAITING_NICE}
        unnice(proc.pid)
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in tids} == {0}
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()
