"""The EVM ledger end to end on an in-process py-evm chain: entries in SQLite, money and votes in
the contract, and the two kept in step when either refuses."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import chain
from ledger.canonical import LedgerError
from ledger.chain import ChainError, LedgerContract
from ledger.entries import CLAIM, SLASH, VERIFICATION
from ledger.evm_ledger import TESTER_PARAMS, EvmLedger, account, fund, open_evm_ledger
from ledger.open import open_ledger
from ledger.rules import DEFAULT_STAKE, FALSE, HONEST, VERIFY_POINTS, reward_points
from ledger.sqlite_store import SqliteStore

if TYPE_CHECKING:  # annotations only: web3 costs every worker ~1 s to collect
    from web3 import Web3

METRIC = {"name": "val_loss", "before": 2.0, "after": 1.9, "goal": "minimize"}
POINTS = reward_points(METRIC)  # 500
GAS: dict[str, int] = {}  # operation -> gas used, printed at the end


@pytest.fixture(scope="module")
def w3() -> Iterator[Web3]:
    t0 = time.perf_counter()
    chain.compiled()  # compile (or load the disk cache) once, outside the tests' timing
    print(f"\ncompiled() in {time.perf_counter() - t0:.3f}s")
    yield chain.tester()
    print(f"\ngas: {GAS}")


@pytest.fixture
def contract_address(w3: Web3) -> str:
    """A fresh contract per test, with `evm:tester`'s parameters."""
    return chain.deploy(w3, w3.eth.accounts[0], **TESTER_PARAMS)


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("claimant", "verifier", "outsider")}


@pytest.fixture
def ledger(w3: Web3, contract_address: str, keys: dict[str, Ed25519PrivateKey],
           tmp_path: Path) -> Iterator[EvmLedger]:
    lg = open_evm_ledger("evm:tester", w3=w3, contract_address=contract_address,
                         data=tmp_path / "ledger.sqlite")
    lg.register_verifier(w3.eth.accounts[0], keys["verifier"])
    yield lg
    assert lg.audit().ok, lg.audit().problem  # every test leaves a clean local log
    lg.close()


def claim_args(commit: str = "c1", stake: int = DEFAULT_STAKE) -> tuple[dict[str, Any],
                                                                          dict[str, bytes]]:
    bundle, goal = f"bundle of {commit}".encode(), b"goal: lower val_loss"
    body = {"goal": "g", "run": "r", "exp": 1, "commit": commit, "parent": "p0",
            "metric": METRIC, "replay": {"cmd": "train"}, "stake": stake,
            "bundle": hashlib.sha256(bundle).hexdigest(),
            "goal_file": hashlib.sha256(goal).hexdigest()}
    return body, {"bundle": bundle, "goal_file": goal}


def advance_to(w3: Web3, timestamp: int) -> None:
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    tester.time_travel(timestamp)
    tester.mine_blocks()


def gas(lg: EvmLedger, name: str) -> None:
    GAS[name] = sum(r["gasUsed"] for r in lg.receipts)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stake", [0, DEFAULT_STAKE - 1])
def test_claim_without_stake_is_refused_locally_and_on_chain(
        ledger: EvmLedger, keys: dict[str, Ed25519PrivateKey], stake: int) -> None:
    body, artifacts = claim_args(stake=stake)
    # 0: the local rules refuse it; 99 wei: only the contract's minimum does, and rolls back.
    want = "a claim without stake" if stake == 0 else f"has no stake: send at least {DEFAULT_STAKE}"
    with pytest.raises(LedgerError, match=want) as e:
        ledger.claim(keys["claimant"], body, artifacts)
    assert "\n" not in str(e.value)
    assert ledger.standing.size == 0 and ledger.store.latest_tree_head() is None
    assert ledger.store.artifact(body["bundle"]) is None  # rolled back with the entry
    assert ledger.contract.latest_size() == 0
    # The store is still usable: a staked claim goes in at position 0.
    assert ledger.claim(keys["claimant"], *claim_args()).fields["seq"] == 0


def test_honest_claim_is_rewarded_after_the_window(
        w3: Web3, ledger: EvmLedger, keys: dict[str, Ed25519PrivateKey]) -> None:
    claimant = keys["claimant"]
    entry = ledger.claim(claimant, *claim_args(stake=3 * DEFAULT_STAKE))
    gas(ledger, "claim")
    state = ledger.chain_state(entry)
    head = ledger.store.latest_tree_head()
    assert head is not None and head.signed_ok()
    assert (state["state"], state["points"], state["stake"]) == ("PENDING", POINTS,
                                                                 3 * DEFAULT_STAKE)
    assert state["claimant"] == account(claimant).address
    assert (state["tree_size"], state["root"]) == (head.tree_size, head.root.hex()) == (
        1, ledger.store.frontier.root().hex())

    # An honest verdict on an unchallenged claim is local only: the window still runs.
    ledger.verify(keys["verifier"], entry, HONEST, {"replayed": 1.9})
    assert ledger.claim_state(entry).status == "verified"
    assert ledger.chain_state(entry)["state"] == "PENDING"
    with pytest.raises(ChainError, match=f"challenge window until unix time {state['deadline']}"):
        ledger.finalize(entry)
    assert ledger.chain_points(claimant) == 0

    advance_to(w3, state["deadline"])
    assert ledger.finalize(entry, keys["outsider"])["state"] == "REWARDED"  # anyone may
    gas(ledger, "finalize")
    assert ledger.chain_points(claimant) == POINTS == ledger.balances()[entry.fields["author"]]
    assert ledger.contract.withdrawable(account(claimant).address) == 3 * DEFAULT_STAKE
    assert ledger.withdraw(claimant) == 3 * DEFAULT_STAKE
    assert ledger.contract.withdrawable(account(claimant).address) == 0

    # A later claim anchors the larger log (claim, verification, claim) it is part of.
    second = ledger.claim(claimant, *claim_args("c2"))
    assert ledger.chain_state(second)["tree_size"] == 3
    assert ledger.contract.root(3) == ledger.store.latest_tree_head().root  # type: ignore[union-attr]


def test_fabricated_claim_is_challenged_and_slashed(
        ledger: EvmLedger, keys: dict[str, Ed25519PrivateKey]) -> None:
    claimant, verifier = keys["claimant"], keys["verifier"]
    entry = ledger.claim(claimant, *claim_args())
    written = ledger.verify(verifier, entry, FALSE, {"reason": "replayed val_loss 2.1"})
    gas(ledger, "verify false (challenge + vote)")
    assert [e.fields["kind"] for e in written] == [VERIFICATION, SLASH]
    assert [e.fields["kind"] for e in ledger.entries()] == [CLAIM, VERIFICATION, SLASH]
    assert ledger.claim_state(entry).status == "slashed"

    state = ledger.chain_state(entry)
    assert state["state"] == "SLASHED" and state["votes"] == {"honest": 0, "false": 1}
    assert state["challenger"] == account(verifier).address
    c = ledger.contract
    assert c.withdrawable(account(verifier).address) == 2 * DEFAULT_STAKE  # stake + own bond
    assert c.withdrawable(account(claimant).address) == 0
    assert ledger.chain_points(verifier) == VERIFY_POINTS
    assert ledger.chain_points(claimant) == 0
    with pytest.raises(LedgerError, match="is SLASHED, not PENDING"):
        ledger.finalize(entry)


def test_a_non_verifier_cannot_resolve_a_challenge(
        w3: Web3, ledger: EvmLedger, keys: dict[str, Ed25519PrivateKey]) -> None:
    entry = ledger.claim(keys["claimant"], *claim_args())
    outsider = account(keys["outsider"]).address

    def refused(verdict: str) -> None:
        with pytest.raises(LedgerError) as e:
            ledger.verify(keys["outsider"], entry, verdict, {})
        assert isinstance(e.value, ChainError)
        assert str(e.value).startswith(f"{outsider} is not a registered verifier: ")
        assert ledger.standing.size == 1

    refused(FALSE)  # not even its challenge is sent
    assert ledger.chain_state(entry)["state"] == "PENDING"
    ledger.contract.challenge(bytes.fromhex(entry.body_id), bond=DEFAULT_STAKE,
                              sender=w3.eth.accounts[1])
    refused(HONEST)
    refused(FALSE)
    assert ledger.chain_state(entry)["votes"] == {"honest": 0, "false": 0}

    # A registered verifier's honest verdict settles the challenge in the claimant's favour.
    ledger.verify(keys["verifier"], entry, HONEST, {})
    gas(ledger, "verify honest (vote)")
    assert ledger.chain_state(entry)["state"] == "VERIFIED"
    assert ledger.chain_points(keys["claimant"]) == POINTS
    assert ledger.contract.withdrawable(account(keys["claimant"]).address) == 2 * DEFAULT_STAKE


def test_the_same_claim_twice_is_refused_locally_and_on_chain(
        w3: Web3, ledger: EvmLedger, contract_address: str, keys: dict[str, Ed25519PrivateKey],
        tmp_path: Path) -> None:
    body, artifacts = claim_args()
    ledger.claim(keys["claimant"], body, artifacts)
    with pytest.raises(LedgerError, match=r"already entry 0 \(a replayed claim\)"):
        ledger.claim(keys["claimant"], body, artifacts)
    assert ledger.standing.size == 1

    # Another local store on the same contract: its rules accept the claim, the chain does not,
    # and the refusal leaves nothing behind.
    other = open_evm_ledger("evm:tester", w3=w3, contract_address=contract_address,
                            data=tmp_path / "other.sqlite")
    with pytest.raises(ChainError, match=r"already submitted \(a replayed claim\)"):
        other.claim(keys["claimant"], body, artifacts)
    assert other.standing.size == 0 and other.store.latest_tree_head() is None
    assert other.audit().ok
    other.close()
    assert ledger.contract.latest_size() == 1


def test_an_unfunded_account_is_named(w3: Web3, contract_address: str,
                                      keys: dict[str, Ed25519PrivateKey], tmp_path: Path) -> None:
    # No faucet, as on a real chain: the claimant's derived account holds nothing.
    lg = EvmLedger(SqliteStore(tmp_path / "l.sqlite"), LedgerContract(w3, contract_address),
                   location="evm:test")
    address = account(keys["claimant"]).address
    with pytest.raises(LedgerError, match=f"^{address} holds 0 wei.*: fund {address} "):
        lg.claim(keys["claimant"], *claim_args())
    assert lg.standing.size == 0
    fund(w3, address, 10**18)
    assert lg.claim(keys["claimant"], *claim_args()).fields["seq"] == 0
    lg.close()


def test_open_evm_tester(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> None:
    data = tmp_path / "tester.sqlite"
    with open_ledger(f"evm:tester?data={data}") as lg:
        assert isinstance(lg, EvmLedger)
        assert lg.location == f"evm:tester?data={data}" and data.exists()
        c = lg.contract
        assert {name: c.param(name) for name in TESTER_PARAMS} == TESTER_PARAMS
        assert c.param("owner") == lg.contract.w3.eth.accounts[0]
        lg.claim(keys["claimant"], *claim_args())  # the derived account is funded for it
        assert c.latest_size() == 1
    with open_ledger("evm:tester") as lg:  # its data in a temporary file
        assert lg.standing.size == 0


@pytest.mark.parametrize("url, fix", [
    ("evm:", "malformed ledger URL"),
    ("evm:testnet", "malformed ledger URL"),
    ("evm:ftp://host/x?contract=0x1", "malformed ledger URL"),
    ("evm:http://", "malformed ledger URL"),
    ("evm:http://localhost:99999?contract=0x1", "malformed ledger URL"),
    ("evm:http://localhost:8545", r"names no contract: add \?contract=0xADDR"),
    ("evm:https://rpc.example/v1?data=x.sqlite", "names no contract"),
])
def test_malformed_evm_url_fails_in_one_line(url: str, fix: str) -> None:
    with pytest.raises(LedgerError, match=fix) as e:
        open_ledger(url)
    assert "\n" not in str(e.value)



def test_open_by_rpc_url(w3: Web3, contract_address: str, tmp_path: Path,
                         keys: dict[str, Ed25519PrivateKey]) -> None:
    data = tmp_path / "rpc.sqlite"
    url = f"evm:http://127.0.0.1:8545/rpc?contract={contract_address.lower()}&data={data}"
    with open_evm_ledger(url, w3=w3) as lg:  # w3 stands in for the node at the URL
        assert lg.contract.address == contract_address and lg.store.path == data
        entry = lg.claim(keys["claimant"], *claim_args())
        with pytest.raises(LedgerError, match="pass the key whose EVM account pays it"):
            lg.finalize(entry)  # no owner account on a real chain
    with pytest.raises(LedgerError, match=f"no contract at 0x{'11' * 20} on"):
        open_evm_ledger(f"evm:http://127.0.0.1:8545?contract=0x{'11' * 20}", w3=w3)
    with pytest.raises(LedgerError, match="^no chain answers at http://127.0.0.1:1: check") as e:
        open_ledger(f"evm:http://127.0.0.1:1?contract={contract_address}&data={data}")
    assert isinstance(e.value, ChainError)


def test_with_a_quorum_of_two_no_single_vote_slashes_here_either(
        w3: Web3, keys: dict[str, Ed25519PrivateKey], tmp_path: Path) -> None:
    """A contract deployed with quorum 2 settles a challenge at two agreeing votes; the local
    log follows the contract's quorum, so one false verdict leaves both disputed, and the
    false verifier outvoted by two honest ones loses its bond on chain and its stake here."""
    from ledger.rules import VERIFIER_STAKE

    address = chain.deploy(w3, w3.eth.accounts[0], **{**TESTER_PARAMS, "quorum": 2})
    lg = open_evm_ledger("evm:tester", w3=w3, contract_address=address,
                         data=tmp_path / "q2.sqlite")
    liar, b, c = keys["verifier"], keys["outsider"], Ed25519PrivateKey.generate()
    for verifier in (liar, b, c):
        lg.register_verifier(w3.eth.accounts[0], verifier)
    entry = lg.claim(keys["claimant"], *claim_args())
    assert [e.fields["kind"] for e in lg.verify(liar, entry, FALSE, {})] == [VERIFICATION]
    assert lg.claim_state(entry).status == "disputed"
    assert lg.chain_state(entry)["state"] == "CHALLENGED"
    lg.verify(b, entry, HONEST, {})
    assert lg.claim_state(entry).status == "disputed"  # one against one
    lg.verify(c, entry, HONEST, {})
    assert lg.claim_state(entry).status == "verified"
    assert lg.chain_state(entry)["state"] == "VERIFIED"
    assert lg.balances()[liar.public_key().public_bytes_raw().hex()] == \
        VERIFY_POINTS - VERIFIER_STAKE
    assert lg.contract.withdrawable(account(keys["claimant"]).address) == 2 * DEFAULT_STAKE
    assert lg.audit().ok, lg.audit().problem
    lg.close()
