"""The warm training process: imports what a training script imports, then waits to be told.

    python sandbox/warm_child.py        (started confined by sandbox.warm, cwd = the workspace)

Started as a script (not `-m sandbox.warm_child`) so it needs nothing of MAGNET on the import
path: it imports what the cold `python SCRIPT.py` would import, from the same place. Until the
go line it runs only this file and the imports below; then it becomes the experiment (the fork
server, sandbox/zygote_main.py, calls `preload()` once and `run()` in each child):

  stdin   one JSON line {"script": "train.py", "env": {...}, "unset": [...], "threads": N}
          (EOF first: it exits at once, having run nothing else)
  then    stdin is /dev/null, sys.argv/sys.path[0]/os.environ are what `python train.py` would
          see, and the script runs as __main__ (runpy): its exit status is the process's.
"""

import json
import os
import runpy
import sys

# what the bitnet-lm template's train.py imports, and torch._dynamo: building any torch
# optimizer imports it (torch._disable_dynamo), 1.5 s here, which would be the run's
PRELOAD = ("numpy", "torch", "torch._dynamo", "safetensors.torch", "bitnet.model", "bitnet.data",
           "bitnet.checkpoint")


def preload() -> None:
    import contextlib
    import importlib

    for name in PRELOAD:  # not this goal's stack: the script imports what it needs itself
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def run() -> None:
    line = sys.stdin.buffer.readline()
    if not line:  # never told to go: leave without running anything
        os._exit(0)
    order = json.loads(line)
    null = os.open(os.devnull, os.O_RDONLY)  # as a cold run: stdin is /dev/null
    os.dup2(null, 0)
    os.close(null)
    for name in order.get("unset", []):
        os.environ.pop(name, None)
    os.environ.update(order["env"])
    if order.get("threads") and "torch" in sys.modules:
        # torch read OMP_NUM_THREADS when it was imported; this run's count may differ
        sys.modules["torch"].set_num_threads(int(order["threads"]))
    script = order["script"]
    sys.argv = [script, *order.get("args", [])]
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    sys.path.pop(0)  # this file's directory (sandbox/): its modules must not shadow anything
    preload()
    run()
