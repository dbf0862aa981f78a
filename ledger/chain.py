"""The ledger's on-chain backend: compile, deploy and call contracts/magnet_ledger.vy.

The contract holds stakes, claim hashes and Merkle roots, never entry data. This wrapper works
on any EVM chain reachable by RPC URL (writes are signed locally and sent raw), and in-process
on py-evm for tests (`tester()`). Every revert surfaces as a one-line `ChainError` that names
the problem and its fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

# web3, eth-account and eth-tester take over a second to import, and only a chain needs them:
# each is imported by the function that uses it (a file ledger, and whatever imports this
# module without touching a chain, never pays for them).
if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.contract.contract import ContractConstructor, ContractFunction
    from web3.types import TxReceipt

    # A signer: a LocalAccount (signs locally, works on any chain) or an address the node has
    # unlocked (the tester's prefunded accounts).
    Sender = LocalAccount | str

SOURCE = Path(__file__).parent / "contracts" / "magnet_ledger.vy"
CACHE_DIR = Path.home() / ".cache" / "magnet"

# Index = the contract's uint8 claim state.
STATES = ("UNKNOWN", "PENDING", "CHALLENGED", "VERIFIED", "SLASHED", "REWARDED")


def _reverts() -> tuple[type[Exception], ...]:
    """What a revert raises: web3 turns a JSON-RPC node's revert into ContractLogicError, but its
    EthereumTesterProvider lets eth-tester's own TransactionFailed through."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    return ContractLogicError, TransactionFailed


class ChainError(ValueError):
    """A refused or failed ledger transaction, or an unreachable chain; one line with the fix."""


# ---------------------------------------------------------------------------------------------
# compile


@functools.cache
def compiled() -> tuple[list, str]:
    """(abi, bytecode) of the ledger contract, compiled once per process.

    Importing vyper alone takes over a second, so the output is also cached on disk, keyed by
    the source's sha256 and the compiler version; a cache that cannot be read or written is
    simply skipped.
    """
    source = SOURCE.read_text()
    key = hashlib.sha256(f"{version('vyper')}\n{source}".encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"magnet_ledger-{key}.json"
    try:
        cached = json.loads(cache.read_text())
        return cached["abi"], cached["bytecode"]
    except (OSError, ValueError, KeyError):
        pass

    import vyper  # deferred: only needed on a cache miss

    out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent process never reads half a file.
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False) as f:
            json.dump({"abi": out["abi"], "bytecode": out["bytecode"]}, f)
        os.replace(f.name, cache)
    except OSError:
        pass
    return out["abi"], out["bytecode"]


# ---------------------------------------------------------------------------------------------
# connect, accounts


def tester() -> Web3:
    """A fresh in-process py-evm chain with prefunded, unlocked accounts."""
    from web3 import EthereumTesterProvider, Web3

    return Web3(EthereumTesterProvider())


def connect(url: str) -> Web3:
    """"tester" for an in-process chain, or an http(s):// JSON-RPC URL of any EVM chain."""
    if url == "tester":
        return tester()
    if not url.startswith(("http://", "https://")):
        raise ChainError(f"unsupported chain URL {url!r}: use 'tester' or an http(s):// RPC URL")
    from web3 import HTTPProvider, Web3
    from web3.middleware import ExtraDataToPOAMiddleware

    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))
    # Proof-of-authority chains (and some L2s) put more than 32 bytes in extraData, which
    # web3 refuses unless told; the middleware is harmless elsewhere.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    if not w3.is_connected():
        raise ChainError(f"no chain answers at {url}: check the URL and that the node is running")
    return w3


def derive_account(seed: bytes) -> LocalAccount:
    """The EVM account of a ledger key: secp256k1 key = sha256(b"magnet-evm-account" + seed).

    Lets one ledger key file (an Ed25519 seed) also sign chain transactions; the domain prefix
    keeps the two keys unrelated.
    """
    from eth_account import Account

    key = hashlib.sha256(b"magnet-evm-account" + seed).digest()
    return Account.from_key(key)


def address_of(sender: Sender) -> str:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

    return sender.address if isinstance(sender, LocalAccount) else Web3.to_checksum_address(sender)


# ---------------------------------------------------------------------------------------------
# transactions

# Revert reason -> one-line message with the fix. Keep in step with the contract's asserts.
_FIXES = {
    "no stake": "claim {claim} has no stake: send at least {min_stake} wei with it",
    "claim exists": "claim {claim} was already submitted (a replayed claim): "
    "submit the hash of a new entry",
    "empty root": "tree size and Merkle root must be non-zero: anchor the root of the log "
    "that contains the entry",
    "root conflict": "tree size {tree_size} already has a different root anchored: the log "
    "forked; rebuild it from the anchored entries",
    "root shrinks": "tree size {tree_size} is not above the latest anchored size "
    "{latest_size}: roots only grow; anchor the current, larger tree",
    "not owner": "{sender} is not the ledger owner: send this from the owner {owner}",
    "not anchorer": "{sender} may not anchor roots: send from the owner or a registered "
    "verifier",
    "zero address": "the zero address cannot be a verifier: pass a real account",
    "no such claim": "claim {claim} was never submitted: check the claim hash",
    "not pending": "claim {claim} is {state}, not PENDING: it can no longer be challenged "
    "or finalized",
    "window closed": "claim {claim}'s challenge window closed at unix time {deadline}: "
    "finalize it instead",
    "window open": "claim {claim} is in its challenge window until unix time {deadline}: "
    "finalize it after that",
    "bond too small": "challenging claim {claim} needs a bond: send at least {min_stake} wei "
    "with it",
    "own claim": "{sender} submitted claim {claim} and cannot challenge it: challenge from "
    "another account",
    "not a verifier": "{sender} is not a registered verifier: only verifiers vote; ask the "
    "owner {owner} to register it",
    "not challenged": "claim {claim} is {state}, not CHALLENGED: votes are only taken on a "
    "challenged claim",
    "already voted": "{sender} already voted on claim {claim}: each verifier votes once",
    "nothing to withdraw": "{sender} has nothing to withdraw: wait for a claim to be finalized "
    "or a challenge to resolve",
}


class _Context(dict):
    """format_map context that leaves a field it does not know as '?'."""

    def __missing__(self, key: str) -> str:
        return "?"


def _reason(err: Exception) -> str:
    msg = str(getattr(err, "message", None) or err)
    return msg.split("execution reverted:", 1)[-1].strip().strip("'\"")


def short_hash(h: bytes) -> str:
    return "0x" + h[:4].hex() + "…"


class LedgerContract:
    """A deployed ledger contract. Writes take a `sender` and return the mined receipt."""

    def __init__(self, w3: Web3, address: str):
        from web3 import Web3

        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=compiled()[0])

    # -- writes --------------------------------------------------------------------------

    def register_verifier(self, addr: str, *, sender: Sender) -> TxReceipt:
        return self._send(self.contract.functions.register_verifier(addr), sender)

    def anchor_root(self, tree_size: int, root: bytes, *, sender: Sender) -> TxReceipt:
        fn = self.contract.functions.anchor_root(tree_size, root)
        return self._send(fn, sender, tree_size=tree_size)

    def submit_claim(
        self, claim_hash: bytes, points: int, tree_size: int, root: bytes, *, stake: int,
        sender: Sender,
    ) -> TxReceipt:
        fn = self.contract.functions.submit_claim(claim_hash, points, tree_size, root)
        return self._send(fn, sender, value=stake, claim=claim_hash, tree_size=tree_size)

    def challenge(self, claim_hash: bytes, *, bond: int, sender: Sender) -> TxReceipt:
        fn = self.contract.functions.challenge(claim_hash)
        return self._send(fn, sender, value=bond, claim=claim_hash)

    def vote(self, claim_hash: bytes, honest: bool, *, sender: Sender) -> TxReceipt:
        return self._send(self.contract.functions.vote(claim_hash, honest), sender,
                          claim=claim_hash)

    def finalize(self, claim_hash: bytes, *, sender: Sender) -> TxReceipt:
        return self._send(self.contract.functions.finalize(claim_hash), sender, claim=claim_hash)

    def withdraw(self, *, sender: Sender) -> TxReceipt:
        return self._send(self.contract.functions.withdraw(), sender)

    # -- views ---------------------------------------------------------------------------

    def claim(self, claim_hash: bytes) -> dict[str, Any]:
        (claimant, stake, points, tree_size, deadline, state, challenger, bond, honest,
         false) = self.contract.functions.claims(claim_hash).call()
        return {
            "state": STATES[state], "claimant": claimant, "stake": stake, "points": points,
            "tree_size": tree_size, "deadline": deadline, "challenger": challenger,
            "bond": bond, "votes": {"honest": honest, "false": false},
        }

    def points(self, addr: str) -> int:
        return self.contract.functions.points(addr).call()

    def withdrawable(self, addr: str) -> int:
        return self.contract.functions.withdrawable(addr).call()

    def root(self, size: int) -> bytes:
        """The root anchored for a tree size; 32 zero bytes if none was."""
        return bytes(self.contract.functions.roots(size).call())

    def latest_size(self) -> int:
        return self.contract.functions.latest_size().call()

    def is_verifier(self, addr: str) -> bool:
        return self.contract.functions.is_verifier(addr).call()

    def param(self, name: str) -> Any:
        """A constructor setting or the owner: owner, challenge_window, min_stake, quorum,
        verifier_reward."""
        return getattr(self.contract.functions, name)().call()

    # -- internals -----------------------------------------------------------------------

    def _send(self, fn: ContractFunction, sender: Sender, *, value: int = 0,
              **context: Any) -> TxReceipt:
        try:
            return send(self.w3, fn, sender, value=value)
        except _reverts() as e:
            raise self.explain(_reason(e), sender, context) from None

    def explain(self, reason: str, sender: Sender, context: dict[str, Any]) -> ChainError:
        template = _FIXES.get(reason)
        if template is None:
            return ChainError(f"ledger contract refused the transaction: {reason}")
        # Looked up only now, on failure, to keep the happy path to one simulation.
        ctx = _Context(sender=address_of(sender), owner=self.param("owner"),
                       min_stake=self.param("min_stake"), latest_size=self.latest_size())
        if "tree_size" in context:
            ctx["tree_size"] = context["tree_size"]
        if "claim" in context:
            c = self.claim(context["claim"])
            ctx.update(claim=short_hash(context["claim"]), state=c["state"],
                       deadline=c["deadline"])
        return ChainError(template.format_map(ctx))


def send(w3: Web3, fn: ContractFunction | ContractConstructor, sender: Sender, *,
         value: int = 0) -> TxReceipt:
    """Simulate, then send `fn` from `sender` and wait for its receipt.

    The simulation (gas estimation) is what yields a revert's reason string: a real chain mines
    a reverting transaction with status 0 and no reason. A LocalAccount's transaction is signed
    here and sent raw, which every node accepts; a plain address must be unlocked on the node.
    """
    from eth_account.signers.local import LocalAccount
    from eth_utils.exceptions import ValidationError
    from web3 import Web3
    from web3.exceptions import Web3Exception

    frm = address_of(sender)
    tx: dict[str, Any] = {"from": frm, "value": value}
    try:
        # Headroom over the estimate: state may shift between estimation and inclusion.
        tx["gas"] = fn.estimate_gas(tx) * 6 // 5 + 10_000
        if isinstance(sender, LocalAccount):
            tx["nonce"] = w3.eth.get_transaction_count(frm, "pending")
            signed = sender.sign_transaction(fn.build_transaction(tx))
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        else:
            tx_hash = fn.transact(tx)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    except _reverts():
        raise
    # Node refusals (funds, nonce, fees); eth-tester's ValidationError is no ValueError; OSError:
    # the node went away.
    except (Web3Exception, ValueError, ValidationError, OSError) as e:
        raise ChainError(f"transaction from {frm} failed: {e}".splitlines()[0]) from None
    if receipt["status"] != 1:
        tx_hex = Web3.to_hex(receipt["transactionHash"])
        raise ChainError(f"transaction {tx_hex} reverted on chain: state changed since it was "
                         "simulated; retry it")
    return receipt


def deploy(w3: Web3, deployer: Sender, *, challenge_window: int, min_stake: int, quorum: int,
           verifier_reward: int) -> str:
    """Deploy a ledger contract; returns its address. `deployer` becomes its owner."""
    abi, bytecode = compiled()
    ctor = w3.eth.contract(abi=abi, bytecode=bytecode).constructor(
        challenge_window, min_stake, quorum, verifier_reward)
    try:
        receipt = send(w3, ctor, deployer)
    except _reverts() as e:
        raise ChainError(f"ledger deployment refused: {_reason(e)}: min_stake must be > 0 and "
                         "1 <= quorum <= 32") from None
    return receipt["contractAddress"]
