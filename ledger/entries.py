"""Entries: signed, hash-linked records, and the signed tree heads over them.

An entry is the canonical JSON of {seq, prev, kind, author, time, body}, signed (Ed25519) by
its author. Its Merkle leaf is the canonical JSON of the signed entry,
`{"entry": <entry>, "signature": "<hex>"}`; the entry's hash is that leaf's RFC 6962 leaf hash,
and the next entry names it as `prev`, so every entry fixes the whole history before it.
A tree head is the canonical JSON of {tree_size, root, time, signer}, signed by its signer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import keys, merkle
from ledger.canonical import LedgerError, canonical, sha256_hex

CLAIM, VERIFICATION, SLASH = "claim", "verification", "slash"
KINDS = (CLAIM, VERIFICATION, SLASH)
GENESIS = "0" * 64  # the `prev` of the first entry


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Entry:
    """One stored entry: its bytes as signed, the signature, and the fields read from them."""

    data: bytes  # canonical JSON of the unsigned entry
    signature: bytes

    @cached_property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.data)

    @property
    def leaf_data(self) -> bytes:
        # canonical JSON of {"entry": ..., "signature": ...}: keys sort as written, and the
        # entry's own bytes are canonical, so concatenation is the canonical form
        return b'{"entry":' + self.data + b',"signature":"' + self.signature.hex().encode() + b'"}'

    @cached_property
    def leaf(self) -> bytes:
        return merkle.leaf_hash(self.leaf_data)

    @property
    def hash(self) -> str:
        return self.leaf.hex()

    @cached_property
    def body_id(self) -> str:
        """sha256 of the body's canonical bytes (`claim_id` for a claim), cut from the entry's
        own bytes: keys are sorted, so the body sits between `"body":` (after the hex author)
        and the last `,"kind":` (kind, prev, seq and time hold no such text)."""
        start = self.data.index(b'"body":') + len(b'"body":')
        return sha256_hex(self.data[start:self.data.rindex(b',"kind":')])

    def signed_ok(self) -> bool:
        return keys.verify(self.fields["author"], self.signature, self.data)


FIELDS = {"seq": int, "prev": str, "kind": str, "author": str, "time": str, "body": dict}


def shape_problem(fields: object) -> str | None:
    """What is wrong with an entry's fields (exactly FIELDS, of those types), or None. Only
    then may `Entry.body_id` cut the body from the bytes: strings cannot hold the raw text
    `,"kind":` (their quotes are escaped)."""
    if not isinstance(fields, dict) or set(fields) != set(FIELDS):
        names = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        return f"its fields are {names}, not {sorted(FIELDS)}"
    for name, kind in FIELDS.items():
        if not isinstance(fields[name], kind) or isinstance(fields[name], bool):
            return f"its {name} is a {type(fields[name]).__name__}, not a {kind.__name__}"
    if fields["kind"] not in KINDS:
        return f"its kind {fields['kind']!r} is none of {', '.join(KINDS)}"
    return None


def make_entry(key: Ed25519PrivateKey, *, seq: int, prev: str, kind: str,
               body: dict[str, Any], time: str | None = None) -> Entry:
    if kind not in KINDS:
        raise LedgerError(f"unknown entry kind {kind!r}; use one of {', '.join(KINDS)}")
    fields = {"seq": seq, "prev": prev, "kind": kind, "author": keys.public_hex(key),
              "time": time or now(), "body": body}
    data = canonical(fields)
    return Entry(data, keys.sign(key, data))


def from_signed(document: dict[str, Any]) -> Entry:
    """An entry from its signed JSON form ({"entry": {...}, "signature": hex}), e.g. a file a
    contributor signed elsewhere; its signature is not checked here."""
    try:
        return Entry(canonical(document["entry"]), bytes.fromhex(document["signature"]))
    except (KeyError, TypeError, ValueError) as err:
        raise LedgerError(f"not a signed entry ({err}); give the JSON `ledger show --json` "
                          "prints for one entry") from None


def claim_id(body: dict[str, Any]) -> str:
    """A claim's identity: the hash of what it claims, wherever and whenever it is appended, so
    the same claim appended twice is seen as a replay."""
    return sha256_hex(canonical(body))


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    root: bytes
    time: str
    signer: str
    signature: bytes

    @property
    def data(self) -> bytes:
        return tree_head_data(self.tree_size, self.root, self.time, self.signer)

    def signed_ok(self) -> bool:
        return keys.verify(self.signer, self.signature, self.data)

    def as_json(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root": self.root.hex(), "time": self.time,
                "signer": self.signer, "signature": self.signature.hex()}


def tree_head_data(tree_size: int, root: bytes, time: str, signer: str) -> bytes:
    # canonical JSON written out: sorted keys, and hex, an ISO time and an integer need no
    # escaping (audit checks one per entry, so the general encoder would cost a second per 10k)
    return (f'{{"root":"{root.hex()}","signer":"{signer}","time":"{time}",'
            f'"tree_size":{int(tree_size)}}}').encode()


def sign_tree_head(key: Ed25519PrivateKey, tree_size: int, root: bytes) -> TreeHead:
    time, signer = now(), keys.public_hex(key)
    return TreeHead(tree_size, root, time, signer,
                    keys.sign(key, tree_head_data(tree_size, root, time, signer)))
