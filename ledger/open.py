"""Opening a ledger by location: a SQLite file (`ledger.book.Ledger`) or an `evm:` URL
(`ledger.evm_ledger.EvmLedger`, its subclass backed by a contract). The factory sits above both
kinds so that the base class never imports its own subclass."""

from __future__ import annotations

from pathlib import Path

from ledger.book import ENV_NAME, Ledger, default_location
from ledger.canonical import LedgerError
from ledger.sqlite_store import SqliteStore


def open_ledger(location: str | Path | None = None, *, create: bool = True) -> Ledger:
    """A ledger by path (made on first use when `create`) or `evm:` URL; default
    `default_location()` ($MAGNET_LEDGER, else ~/.local/share/magnet/ledger.sqlite)."""
    location = str(location or default_location())
    if location.startswith("evm:"):
        # imported when asked for: web3 is slow to import and a file ledger needs none of it
        from ledger.evm_ledger import open_evm_ledger

        return open_evm_ledger(location)
    if not create and not Path(location).expanduser().exists():
        raise LedgerError(f"no ledger at {location}; claim an improvement to start one, or "
                          f"pass --ledger (or set {ENV_NAME})")
    return Ledger(SqliteStore(location))
