"""Ed25519 keys: one PEM file per person (mode 0600), its public half as 64 hex characters."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.canonical import LedgerError

KEY_MODE = 0o600


def generate_key(path: str | Path) -> str:
    """Write a new private key to `path` (created with mode 0600, never overwritten); return
    its public key."""
    path = Path(path).expanduser()
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL with the mode: the key is never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    except FileExistsError:
        raise LedgerError(f"{path} already exists; choose another file (a key is never "
                          "overwritten)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_hex(key)


def load_key(path: str | Path) -> Ed25519PrivateKey:
    """The private key in `path`; refused when others may read it or it is not a key."""
    path = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        pem = path.read_bytes()
    except OSError as err:
        raise LedgerError(f"cannot read key file {path}: {err.strerror}; create one with "
                          f"`magnet-agent ledger keygen {path}`") from None
    if mode & 0o077:
        raise LedgerError(f"key file {path} is readable by others (mode {mode:04o}); "
                          f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise LedgerError(f"{path} is not a MAGNET key file ({err}); create one with "
                          "`magnet-agent ledger keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; create one "
                          "with `magnet-agent ledger keygen`")
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes_raw().hex()


def seed(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte private seed (an EVM account is derived from it: ledger.chain)."""
    return key.private_bytes_raw()


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public: str, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `public`'s over `data`; False for any bad key or signature."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
