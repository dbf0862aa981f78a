"""Drives one experiment the way the agent does, so tests can SIGKILL it at chosen moments.

usage: controller.py RUN_DIR DECISION CRASH_AT COMMAND [unconfined]
CRASH_AT = k > 0 kills this process with SIGKILL right before its k-th durable step (a git
command or a journal write); 0 runs to the end and prints `STEPS n`. `unconfined` runs the
command without bubblewrap (as `--unconfined` does).
"""

import os
import signal
import sys

from sandbox import SearchReplace, Workspace
from sandbox.confine import Confinement
from sandbox.gitcli import Git
from sandbox.journal import Journal

run_dir, decision, crash_at, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
confinement = Confinement(enabled=False) if sys.argv[5:] == ["unconfined"] else None
steps = 0


def step() -> None:
    global steps
    steps += 1
    if steps == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)


def patch(cls, name):
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        step()
        return original(*args, **kwargs)

    setattr(cls, name, wrapper)


patch(Git, "run")
patch(Journal, "save")

ws = Workspace.open(run_dir)
exp = ws.next_exp
ws.begin(exp, "halve the learning rate")
ws.apply([SearchReplace("train.py", "LEARNING_RATE = 0.001", "LEARNING_RATE = 0.0005")])
ws.commit()
result = ws.run(command, time_budget=5, grace=5, metric="val_bpb", confinement=confinement)
record = {"metric": result.metrics.get("val_bpb"), "seconds": result.seconds}
if decision == "keep":
    ws.keep(exp, record, best=True)  # the run's only experiment
else:
    ws.discard(exp, record, "discard")
print("STEPS", steps, flush=True)
