"""The ledger as its users see it: claim, verify, slash, read balances, audit, prove.
Storage is `ledger.sqlite_store`; what entries mean is `ledger.rules`; opening one by path or
URL is `ledger.open.open_ledger`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import keys, merkle
from ledger.audit import AuditReport, audit
from ledger.canonical import LedgerError, sha256_hex
from ledger.entries import CLAIM, SLASH, VERIFICATION, Entry, TreeHead, make_entry
from ledger.rules import FALSE, REFUTED, ClaimState, Standing
from ledger.sqlite_store import SqliteStore

ENV_NAME = "MAGNET_LEDGER"
DEFAULT_PATH = Path("~/.local/share/magnet/ledger.sqlite")


def default_location() -> str:
    """`--ledger`'s default: $MAGNET_LEDGER, else ~/.local/share/magnet/ledger.sqlite."""
    return os.environ.get(ENV_NAME) or str(DEFAULT_PATH.expanduser())


@dataclass(frozen=True)
class InclusionProof:
    seq: int
    leaf: bytes
    proof: list[bytes]
    head: TreeHead

    def check(self) -> bool:
        return self.head.signed_ok() and merkle.verify_inclusion(
            self.leaf, self.seq, self.head.tree_size, self.proof, self.head.root)

    def as_json(self) -> dict[str, Any]:
        return {"entry": self.seq, "leaf_hash": self.leaf.hex(),
                "proof": [h.hex() for h in self.proof], "tree_head": self.head.as_json()}


class Ledger:
    def __init__(self, store: SqliteStore) -> None:
        # the entries are read when first needed, not here: `audit` must open a ledger whose
        # entries no longer parse, to name the first bad one
        self.store = store
        self.location = str(store.path)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------------

    @property
    def standing(self) -> Standing:
        self.store.refresh()
        return self.store.standing

    def entries(self) -> list[Entry]:
        return [entry for _, entry, _ in self.store.rows()]

    def find(self, ref: str | int) -> Entry:
        """An entry by number, by (a prefix of) its hash, or by (a prefix of) a claim's id."""
        self.store.refresh()
        text = str(ref).strip()
        if text.isdigit() and int(text) < self.store.standing.size:
            return self._entry(int(text))
        text = text.lower().removeprefix("0x")
        if len(text) >= 6:
            for seq, leaf in enumerate(self.store.leaves):
                if leaf.hex().startswith(text):
                    return self._entry(seq)
            for state in self.store.standing.claims.values():
                if state.id.startswith(text):
                    return self._entry(state.seq)
        raise LedgerError(f"no entry {ref!r} in {self.store.path}; name one by number, or by "
                          "6+ characters of its hash or claim id (`magnet-agent ledger show`)")

    def _entry(self, seq: int) -> Entry:
        entry = self.store.entry(seq)
        assert entry is not None  # seq < size, read under the same connection
        return entry

    def claim_state(self, entry: Entry) -> ClaimState:
        fields = entry.fields
        if fields["kind"] != CLAIM:
            raise LedgerError(f"entry {fields['seq']} is a {fields['kind']}, not a claim; name "
                              "a claim entry")
        return self.standing.claims[entry.body_id]

    def artifact(self, sha256: str) -> bytes:
        data = self.store.artifact(sha256)
        if data is None or sha256_hex(data) != sha256:
            raise LedgerError(f"artifact {sha256[:12]} is missing or altered in "
                              f"{self.store.path}; the claim cannot be replayed from it")
        return data

    def balances(self) -> dict[str, int]:
        return dict(self.standing.balances)

    # --- writing ------------------------------------------------------------------------------

    def claim(self, key: Ed25519PrivateKey, body: Mapping[str, Any],
              artifacts: Mapping[str, bytes]) -> Entry:
        """Append a claim by `key`'s owner (named in it as `contributor`); `artifacts` (the
        bundle, the goal file, the schedule) are stored by sha256 and the body must name each
        by it."""
        body = {**body, "contributor": body.get("contributor") or keys.public_hex(key)}
        for name, data in artifacts.items():
            if body.get(name) != sha256_hex(data):
                raise LedgerError(f"the claim's {name} is not the sha256 of the {name} given; "
                                  "build the claim and its artifacts together")
        return self.append(key, CLAIM, dict(body), artifacts)

    def verify(self, key: Ed25519PrivateKey, claim: Entry, verdict: str,
               facts: Mapping[str, Any]) -> list[Entry]:
        """Record a replay's verdict on `claim`; a false one that brings the false verdicts to
        the quorum (ledger.rules: no single verifier slashes) is followed by its slash entry."""
        state = self.claim_state(claim)
        body = {"claim": state.id, "verdict": verdict, **facts}
        written = [self.append(key, VERIFICATION, body)]
        state = self.claim_state(claim)
        if verdict == FALSE and state.status == REFUTED:
            written.append(self.append(key, SLASH, {
                "claim": state.id, "claimant": state.claimant, "stake": state.stake,
                "revoked": state.points, "reason": str(facts.get("reason", "false claim"))}))
        return written

    def append(self, key: Ed25519PrivateKey, kind: str, body: dict[str, Any],
               artifacts: Mapping[str, bytes] = {}) -> Entry:  # noqa: B006 (read only)
        return self.store.append(
            lambda seq, prev: make_entry(key, seq=seq, prev=prev, kind=kind, body=body),
            key, artifacts)

    def submit(self, entry: Entry, key: Ed25519PrivateKey) -> Entry:
        """Append an entry signed elsewhere (its signature and the rules are checked); `key`
        signs the new tree head."""
        return self.store.append(lambda seq, prev: entry, key)

    # --- integrity ----------------------------------------------------------------------------

    def audit(self) -> AuditReport:
        return audit(self.store)

    def prove(self, ref: str | int) -> InclusionProof:
        """An inclusion proof of an entry in the latest signed tree head."""
        entry = self.find(ref)  # brings the leaves up to date
        seq = entry.fields["seq"]
        head = self.store.latest_tree_head()
        if head is None or head.tree_size <= seq:
            raise LedgerError(f"no signed tree head covers entry {seq} yet; append an entry "
                              "and prove it again")
        if head.tree_size > len(self.store.leaves):
            self.store.refresh()  # another process appended since
        leaves = self.store.leaves[:head.tree_size]
        return InclusionProof(seq, entry.leaf, merkle.inclusion_proof(seq, leaves), head)

    def consistency(self, old_size: int) -> dict[str, Any]:
        """A consistency proof from the tree of `old_size` entries to the latest tree head."""
        self.store.refresh()
        head = self.store.latest_tree_head()
        if head is None or not 0 < old_size <= head.tree_size:
            raise LedgerError(f"old size {old_size} is not between 1 and the ledger's "
                              f"{head.tree_size if head else 0} entries; pick a smaller size")
        leaves = self.store.leaves[:head.tree_size]
        old_root, proof = merkle.root(leaves[:old_size]), merkle.consistency_proof(old_size, leaves)
        verified = head.signed_ok() and merkle.verify_consistency(
            old_size, head.tree_size, old_root, head.root, proof)
        return {"old_size": old_size, "old_root": old_root.hex(),
                "proof": [h.hex() for h in proof], "tree_head": head.as_json(),
                "verified": verified}
