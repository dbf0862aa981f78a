"""The environment a training command sees: no secrets, the MAGNET_* contract, thread counts."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

# Names that look like credentials. Matched anywhere in the upper-cased name, so OPENAI_API_KEY,
# HF_TOKEN, AWS_SECRET_ACCESS_KEY, PGPASSWORD, GOOGLE_APPLICATION_CREDENTIALS all go.
SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|_PASS$|^PASS$|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|"
    r"_PAT$|^PAT$|SSH_|GPG_|WEBHOOK|DSN"
)
# Values that carry a credential whatever the name: URLs with a user:password@ part.
SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def is_secret(name: str, value: str = "") -> bool:
    return bool(SECRET_NAME.search(name.upper()) or SECRET_VALUE.search(value))


def scrubbed_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) without secrets and without inherited MAGNET_* settings."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not is_secret(k, v) and not k.startswith("MAGNET_")}


def run_environ(
    *,
    time_budget: float,
    seed: int,
    output_dir: Path,
    steps: int | None = None,
    threads: int | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for one experiment's command.

    The running interpreter's bin directory goes first on PATH so `python` in the command is the
    interpreter (and venv) MAGNET itself runs on.
    """
    env = scrubbed_environ(base)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        [bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]]
    )
    n = str(threads or os.cpu_count() or 1)
    budget = int(time_budget) if float(time_budget).is_integer() else time_budget
    env.update(
        MAGNET_TIME_BUDGET=str(budget),
        MAGNET_SEED=str(seed),
        MAGNET_OUTPUT_DIR=str(output_dir),
        OMP_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        PYTHONUNBUFFERED="1",  # METRIC lines and logs arrive as they are printed
    )
    if steps is not None:
        env["MAGNET_STEPS"] = str(int(steps))
    env.update(extra or {})
    return env
