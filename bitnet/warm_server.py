"""A logits server started before its checkpoint exists: it imports torch, then waits.

    python PATH/TO/bitnet/warm_server.py   (a script: MAGNET's root, not bitnet/, goes on the path)

(or forked by sandbox/zygote_main.py, which calls `preload()` once and `run()` in each child)

The same server as bitnet.logits_server (its loading, protocol and error statuses), but the
checkpoint and model code arrive as the first line on stdin, as JSON:
{"checkpoint": DIR, "model_code": DIR, "threads": N}; the binary requests follow on the same
stream. EOF before that line: it exits having loaded nothing. Until the line comes it runs only
MAGNET's code, so it can be started (confined as the cold server is) while the experiment
trains, and its start-up is off the scoring's clock.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def preload() -> None:
    """The import cost, paid before the scoring starts."""
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    import bitnet.checkpoint  # noqa: F401
    import bitnet.logits_server  # noqa: F401


def run() -> None:
    """Say READY, wait for the order, then serve (bitnet.logits_server's protocol)."""
    from bitnet.logits_server import THREADS, load_model, run_server

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from model code, Python- or C-level, go to stderr
    sys.stdout = sys.stderr
    sys.stderr.write("READY\n")  # agent.scoring.warm_servers waits for it
    sys.stderr.flush()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)

    def load():  # the order: what to load, with how many threads
        order = json.loads(line)
        return load_model(Path(order["checkpoint"]), Path(order["model_code"]),
                          int(order.get("threads") or THREADS))

    run_server(load, replies)


if __name__ == "__main__":
    # run as a script, sys.path[0] is bitnet/ (its data.py, model.py would shadow): this tree's
    # root instead, so the server is the code of the controller that started it
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    preload()
    run()
