"""The ledger on an EVM chain: the signed entries and artifacts stay in a local SQLite store (same
rules, audit and proofs as `ledger.book.Ledger`), and the contract holds what must be
economically backed: stakes, claim hashes, the log's Merkle roots, challenges and votes.

Locations (`ledger.open.open_ledger`):
  evm:tester[?data=PATH]                     an in-process py-evm chain with a fresh contract
  evm:http(s)://HOST:PORT/...?contract=0xADDR[&data=PATH]   any chain, by its RPC URL

A ledger key (Ed25519) signs its chain transactions with the EVM account derived from it
(`ledger.chain.derive_account`); that account pays stakes, bonds and gas.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import chain, keys
from ledger.book import DEFAULT_PATH, Ledger
from ledger.canonical import LedgerError
from ledger.chain import ChainError, LedgerContract
from ledger.entries import CLAIM, VERIFICATION, Entry, make_entry
from ledger.rules import DEFAULT_STAKE, FALSE, VERIFY_POINTS, reward_points
from ledger.sqlite_store import SqliteStore

if TYPE_CHECKING:  # web3 is imported where a chain is used (see ledger.chain)
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.types import TxReceipt

    from ledger.chain import Sender

# `evm:tester`'s contract: the rules' stake in wei, one verifier's vote settles a challenge
# (the local log follows the contract's quorum: ledger.rules)
TESTER_PARAMS = {"challenge_window": 3600, "min_stake": DEFAULT_STAKE, "quorum": 1,
                 "verifier_reward": VERIFY_POINTS}
DATA_DIR = DEFAULT_PATH.parent  # beside the default SQLite ledger
USAGE = "use evm:tester or evm:http(s)://HOST:PORT/...?contract=0xADDR[&data=PATH]"
ETHER = 10**18
GAS_MONEY = ETHER // 10  # what the tester's faucet keeps above a stake for gas


class EvmChainError(LedgerError, ChainError):
    """A chain refusal on an EVM ledger: a LedgerError for the CLI, a ChainError by origin."""


def fund(w3: Web3, address: str, wei: int) -> None:
    """Pay `address` from the tester's first prefunded account (in-process chains only)."""
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": wei})
    w3.eth.wait_for_transaction_receipt(tx)


def account(key: Ed25519PrivateKey) -> LocalAccount:
    """The EVM account a ledger key signs chain transactions with."""
    return chain.derive_account(keys.seed(key))


def _address(who: Ed25519PrivateKey | Sender) -> str:
    return account(who).address if isinstance(who, Ed25519PrivateKey) else chain.address_of(who)


class EvmLedger(Ledger):
    """A SQLite ledger whose claims and verdicts are also settled by a `LedgerContract`.

    `owner` (the tester's account 0, or None on a real chain) pays for `finalize` when no key
    is given; `faucet` tops up derived accounts (in-process chains only).
    """

    def __init__(self, store: SqliteStore, contract: LedgerContract, *, location: str,
                 owner: Sender | None = None, faucet: bool = False) -> None:
        super().__init__(store)
        self.contract, self.owner, self.faucet = contract, owner, faucet
        self.location = location
        self.receipts: list[TxReceipt] = []  # the chain transactions of the last write
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        with self._chain():  # the local log settles disputes as the contract does
            store.set_quorum(int(contract.param("quorum")))

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- writing ------------------------------------------------------------------------------

    def claim(self, key: Ed25519PrivateKey, body: Mapping[str, Any],
              artifacts: Mapping[str, bytes]) -> Entry:
        """Append a claim and stake it on chain (`append`): both take it, or neither does."""
        self.receipts = []
        return super().claim(key, body, artifacts)

    def verify(self, key: Ed25519PrivateKey, claim: Entry, verdict: str,
               facts: Mapping[str, Any]) -> list[Entry]:
        """Record a verdict locally and on chain: false challenges the claim (bond: min_stake)
        and votes false; honest votes true on a challenged claim (an unchallenged one is
        rewarded by `finalize` after its window). With a quorum above 1 the chain settles only
        once enough verifiers voted, while the local verdict is this verifier's."""
        self.claim_state(claim)  # refuses a non-claim before any chain call
        sender, self.receipts = account(key), []
        with self._chain():
            if not self.contract.is_verifier(sender.address):
                # The contract's own one-line refusal, before anything is written anywhere.
                raise self.contract.explain("not a verifier", sender, {})
        return super().verify(key, claim, verdict, facts)

    def append(self, key: Ed25519PrivateKey, kind: str, body: dict[str, Any],
               artifacts: Mapping[str, bytes] = {}) -> Entry:  # noqa: B006 (read only)
        """Append an entry; a claim or verification is sent to the chain first.

        The chain transaction runs inside the store's write transaction, after the local rules
        accepted the entry and before it is committed: a chain refusal rolls the entry (and its
        artifacts) back, so no claim stays local as if staked, and claims reach the chain in
        log order, so each anchors a larger root (the contract refuses roots that shrink).
        Other writers wait on the lock meanwhile (up to the store's busy timeout). A crash
        between the chain's receipt and the commit would leave the claim on chain only.
        """

        def build(seq: int, prev: str) -> Entry:
            entry = make_entry(key, seq=seq, prev=prev, kind=kind, body=body)
            self.store.standing.check(entry)  # local rules first: a refused entry costs no gas
            if kind == CLAIM:
                self._submit(key, entry)
            elif kind == VERIFICATION:
                self._settle(key, body)
            return entry

        with self._chain():
            return self.store.append(build, key, artifacts)

    def submit(self, entry: Entry, key: Ed25519PrivateKey) -> Entry:
        raise LedgerError("an EVM ledger does not take entries signed elsewhere: their stakes "
                          "and votes need the author's key; claim or verify with that key")

    def _submit(self, key: Ed25519PrivateKey, entry: Entry) -> None:
        body, sender = entry.fields["body"], account(key)
        self._ensure_funds(sender.address, body["stake"])
        # The root the store signs once this entry is in: the latest tree head's.
        frontier = copy.deepcopy(self.store.frontier)
        frontier.append(entry.leaf)
        self.receipts.append(self.contract.submit_claim(
            bytes.fromhex(entry.body_id), reward_points(body["metric"]), frontier.size,
            frontier.root(), stake=body["stake"], sender=sender))

    def _settle(self, key: Ed25519PrivateKey, body: Mapping[str, Any]) -> None:
        claim_hash, sender = bytes.fromhex(body["claim"]), account(key)
        state = self.contract.claim(claim_hash)["state"]
        if body["verdict"] == FALSE:
            if state != "CHALLENGED":  # the contract explains any state but PENDING
                bond = self.contract.param("min_stake")
                self._ensure_funds(sender.address, bond)
                self.receipts.append(self.contract.challenge(claim_hash, bond=bond,
                                                             sender=sender))
            self.receipts.append(self.contract.vote(claim_hash, False, sender=sender))
        elif state == "CHALLENGED":
            self._ensure_funds(sender.address, 0)
            self.receipts.append(self.contract.vote(claim_hash, True, sender=sender))
        elif state in ("UNKNOWN", "SLASHED"):
            raise EvmChainError(f"claim {chain.short_hash(claim_hash)} is {state} on chain, so "
                                "an honest verdict cannot be settled there; check --ledger "
                                "names the contract this claim was staked on")

    def finalize(self, claim: Entry, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """Reward an unchallenged claim once its window has passed (anyone may; `key`'s account,
        else the owner, pays the gas); returns its chain state."""
        self.claim_state(claim)
        if key is None and self.owner is None:
            raise LedgerError("finalizing costs gas: pass the key whose EVM account pays it")
        sender = account(key) if key is not None else self.owner
        assert sender is not None
        with self._chain():
            self._ensure_funds(chain.address_of(sender), 0)
            self.receipts = [self.contract.finalize(bytes.fromhex(claim.body_id), sender=sender)]
        return self.chain_state(claim)

    def withdraw(self, key: Ed25519PrivateKey) -> int:
        """Pay out what the contract owes `key`'s account (stakes back, slashed stakes won);
        returns the wei withdrawn."""
        sender = account(key)
        with self._chain():
            amount = self.contract.withdrawable(sender.address)
            self.receipts = [self.contract.withdraw(sender=sender)]
        return amount

    def register_verifier(self, owner: Ed25519PrivateKey | Sender,
                          verifier: Ed25519PrivateKey | str) -> str:
        """Let `verifier` (a ledger key or an address) vote; sent from the contract's owner.
        Returns the registered address."""
        sender = account(owner) if isinstance(owner, Ed25519PrivateKey) else owner
        address = _address(verifier)
        with self._chain():
            self.receipts = [self.contract.register_verifier(address, sender=sender)]
        return address

    # --- reading ------------------------------------------------------------------------------

    def chain_state(self, claim: Entry) -> dict[str, Any]:
        """The contract's record of a claim, with the root anchored for its tree size."""
        claim_hash = bytes.fromhex(self.claim_state(claim).id)
        with self._chain():
            state = self.contract.claim(claim_hash)
            return {**state, "claim": claim_hash.hex(),
                    "root": self.contract.root(state["tree_size"]).hex()}

    def chain_points(self, who: Ed25519PrivateKey | str) -> int:
        with self._chain():
            return self.contract.points(_address(who))

    # --- internals ----------------------------------------------------------------------------

    def _ensure_funds(self, address: str, wei: int) -> None:
        """Top up on the tester; on a real chain refuse early, naming the account to fund."""
        balance = self.contract.w3.eth.get_balance(address)
        if self.faucet and balance < wei + GAS_MONEY:
            fund(self.contract.w3, address, wei + ETHER)
        elif not self.faucet and balance <= wei:
            raise EvmChainError(f"{address} holds {balance} wei, not enough for {wei} wei plus "
                                f"gas: fund {address} (your key's EVM account) and retry")

    @contextmanager
    def _chain(self) -> Iterator[None]:
        from web3.exceptions import Web3Exception

        try:
            yield
        except EvmChainError:
            raise
        except ChainError as err:
            raise EvmChainError(str(err)) from None
        except Web3Exception as err:  # a view the node could not answer
            raise EvmChainError(f"the chain behind {self.location} failed: {err}; check the "
                                "node".splitlines()[0]) from None


# ---------------------------------------------------------------------------------------------
# opening


def open_evm_ledger(location: str, *, w3: Web3 | None = None, contract_address: str | None = None,
                    data: str | Path | None = None) -> EvmLedger:
    """An EVM ledger by `evm:` URL. `w3`, `contract_address` and `data` override what the URL
    gives (tests share one tester chain and contract between several ledgers this way)."""
    from web3 import EthereumTesterProvider, Web3

    parts = _split(location)
    query = dict(parse_qsl(parts.query))
    data = data or query.pop("data", None)
    address = contract_address or query.pop("contract", None)
    query.pop("contract", None)
    if parts.path == "tester" and not parts.scheme:
        w3 = w3 or chain.tester()
        owner: str | None = w3.eth.accounts[0]
        try:
            address = address or chain.deploy(w3, owner, **TESTER_PARAMS)
        except ChainError as err:
            raise EvmChainError(str(err)) from None
    else:
        if address is None:
            raise LedgerError(f"{location!r} names no contract: add ?contract=0xADDR (the "
                              "deployed ledger contract's address) to the URL")
        if w3 is None:
            rpc = urlunsplit(parts._replace(query=urlencode(query)))
            try:
                w3 = chain.connect(rpc)
            except ChainError as err:
                raise EvmChainError(str(err)) from None
        owner = None
    if not Web3.is_address(address):
        raise LedgerError(f"contract {address!r} is not an EVM address: give the 0x address "
                          "of the deployed ledger contract")
    if not w3.eth.get_code(Web3.to_checksum_address(address)):
        raise LedgerError(f"no contract at {address} on this chain: check contract= in "
                          f"{location!r} (ledger.chain.deploy makes one)")
    tmp = None
    if data is None and owner is not None:  # tester: the data lives as long as the chain
        tmp = tempfile.TemporaryDirectory(prefix="magnet-evm-")
        data = Path(tmp.name) / "ledger.sqlite"
    elif data is None:
        data = DATA_DIR.expanduser() / f"evm-{address.lower()}.sqlite"
    ledger = EvmLedger(SqliteStore(data), LedgerContract(w3, address), location=location,
                       owner=owner, faucet=isinstance(w3.provider, EthereumTesterProvider))
    ledger._tmp = tmp
    return ledger


def _split(location: str) -> SplitResult:
    """The URL after `evm:`, split; LedgerError (one line) unless it is one of the two forms."""
    try:
        if not location.startswith("evm:"):
            raise ValueError
        parts = urlsplit(location.removeprefix("evm:"))
        if parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError
            parts.port  # noqa: B018 (raises ValueError on a port that is not a number < 65536)
        elif parts.scheme or parts.netloc or parts.path != "tester":
            raise ValueError
    except ValueError:
        raise LedgerError(f"malformed ledger URL {location!r}: {USAGE}") from None
    return parts
