"""What experiment code must not read on this machine: ledger keys and data, and the usual
homes of credentials. The confinement shows these directories empty and these files unreadable
(everything else stays readable, read-only, so interpreters and libraries work).

A hostile experiment that read a ledger key could sign claims as its owner, or print the key
into its log, which the run's records keep.
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger.book import DEFAULT_PATH, ENV_NAME

# relative to the home directory; only those that exist are hidden
PRIVATE_IN_HOME = (
    ".magnet",  # where the README keeps ledger keys
    str(DEFAULT_PATH.parent).removeprefix("~/"),  # the default ledger
    ".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc", ".pgpass",
    ".config/gcloud", ".git-credentials",
)


def private_paths() -> list[Path]:
    """The existing private paths: PRIVATE_IN_HOME and the ledger $MAGNET_LEDGER names."""
    home = Path.home()
    found = [home / p for p in PRIVATE_IN_HOME]
    ledger = os.environ.get(ENV_NAME, "")
    if ledger and not ledger.startswith("evm:"):
        base = Path(ledger).expanduser()
        found += [base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm")]
    return [p for p in found if p.exists()]
