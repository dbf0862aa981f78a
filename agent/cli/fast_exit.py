"""Exit a MAGNET program without tearing the interpreter down.

Tearing down what a command imported took longer than many commands (measured here: 0.7 s after
torch alone, 1.6 s after `magnet-agent run`, whose modules include transformers and LangGraph).
By the time a command returns, its files are closed and its records written; what Python's exit
does that matters is done here too: other threads are waited for, the exit handlers (atexit)
run, and the standard streams are flushed.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def run_and_exit(program: Callable[[], int | None]) -> NoReturn:
    """`program()`, whose return value (or SystemExit) is the exit status, then the exit."""
    try:
        code = program()
    except SystemExit as done:  # argparse's errors, --help, --version
        code = done.code
    if isinstance(code, str):  # SystemExit("message"), as Python prints it
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
