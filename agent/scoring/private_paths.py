"""What experiment code must not read on this machine: ledger keys and data, and the usual
homes of credentials. The confinement (an allow-list: sandbox.confine) shows none of them anyway
unless they lie under a path it binds; these it covers even then: directories shown empty,
files unreadable.

A hostile experiment that read a ledger key could sign claims as its owner, or print the key
into its log, which the run's records keep.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ledger.book import DEFAULT_PATH, ENV_NAME

# relative to the home directory; only those that exist are hidden
PRIVATE_IN_HOME = (
    ".magnet",  # where the README keeps ledger keys
    str(DEFAULT_PATH.parent).removeprefix("~/"),  # the default ledger
    ".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc", ".pgpass",
    ".config/gcloud", ".git-credentials",
)


def private_paths(*, ledgers: Iterable[str | None] = (),
                  keys: Iterable[Path | None] = ()) -> list[Path]:
    """The existing private paths: PRIVATE_IN_HOME, the ledger $MAGNET_LEDGER names, and the
    `ledgers` and `keys` named (a goal's `ledger:`), wherever they are."""
    home = Path.home()
    found = [home / p for p in PRIVATE_IN_HOME]
    found += [Path(key).expanduser() for key in keys if key is not None]
    for ledger in (os.environ.get(ENV_NAME, ""), *ledgers):
        if ledger and not ledger.startswith("evm:"):
            base = Path(ledger).expanduser()
            found += [base, base.with_name(base.name + "-wal"),
                      base.with_name(base.name + "-shm")]
    return [p for p in found if p.exists()]
