"""Canonical JSON (RFC 8785, JCS): the one byte form of everything the ledger signs or hashes."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


class LedgerError(ValueError):
    """A ledger operation cannot go on; the message names the problem and the fix in one line."""


def canonical(value: Any) -> bytes:
    """`value` as RFC 8785 bytes (sorted keys, no whitespace, ECMAScript numbers)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as err:
        raise LedgerError(f"cannot write {type(value).__name__} as canonical JSON: {err}; "
                          "use finite numbers, strings, lists and objects only") from err


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
