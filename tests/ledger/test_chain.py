"""The ledger contract on a real in-process EVM (py-evm through web3's EthereumTesterProvider)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from ledger import chain
from ledger.chain import ChainError, LedgerContract

if TYPE_CHECKING:  # annotations only: web3 and eth-account cost every worker ~1 s to collect
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.types import TxReceipt

WINDOW = 3600  # seconds
MIN_STAKE = 1000  # wei
QUORUM = 2
VERIFIER_REWARD = 5  # points
ETHER = 10**18


def h(label: str) -> bytes:
    """A 32-byte claim hash or root, as the off-chain ledger would produce."""
    return hashlib.sha256(label.encode()).digest()


@pytest.fixture(scope="module", autouse=True)
def compiled_once() -> None:
    # Compile (or load the disk cache) once for the module, outside any test's timing.
    t0 = time.perf_counter()
    chain.compiled()
    print(f"\ncompiled() in {time.perf_counter() - t0:.3f}s")


@dataclass
class Ledger:
    w3: Web3
    c: LedgerContract
    owner: str
    verifiers: list[str]
    claimant: LocalAccount  # signs raw transactions, as on a real chain
    challenger: str
    outsider: str


def fund(w3: Web3, to: str, wei: int = ETHER) -> None:
    """Pay a derived account from the tester's first prefunded account."""
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": to, "value": wei})
    w3.eth.wait_for_transaction_receipt(tx)


def advance_to(w3: Web3, timestamp: int) -> None:
    """Move chain time: the next block is mined at `timestamp`."""
    tester = w3.provider.ethereum_tester
    tester.time_travel(timestamp)
    tester.mine_blocks()


@pytest.fixture
def ledger() -> Ledger:
    w3 = chain.tester()
    owner, v1, v2, v3, challenger, outsider = w3.eth.accounts[:6]
    address = chain.deploy(w3, owner, challenge_window=WINDOW, min_stake=MIN_STAKE,
                           quorum=QUORUM, verifier_reward=VERIFIER_REWARD)
    c = LedgerContract(w3, address)
    for v in (v1, v2, v3):
        c.register_verifier(v, sender=owner)
    claimant = chain.derive_account(b"claimant ed25519 seed")
    fund(w3, claimant.address)
    return Ledger(w3, c, owner, [v1, v2, v3], claimant, challenger, outsider)


def submit(lg: Ledger, label: str, *, points: int = 10, tree_size: int = 1,
           stake: int = MIN_STAKE) -> bytes:
    claim_hash = h(label)
    lg.c.submit_claim(claim_hash, points, tree_size, h(f"root {tree_size}"), stake=stake,
                      sender=lg.claimant)
    return claim_hash


def paid(receipt: TxReceipt) -> int:
    """Wei a transaction cost its sender."""
    return receipt["gasUsed"] * receipt["effectiveGasPrice"]


# ---------------------------------------------------------------------------------------------
# stakes and replays


@pytest.mark.parametrize("stake", [0, MIN_STAKE - 1])
def test_claim_without_enough_stake_is_refused(ledger: Ledger, stake: int) -> None:
    with pytest.raises(ChainError) as e:
        submit(ledger, "unstaked", stake=stake)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"claim 0x{h('unstaked')[:4].hex()}… has no stake: "
                   f"send at least {MIN_STAKE} wei with it")
    assert ledger.c.claim(h("unstaked"))["state"] == "UNKNOWN"
    assert ledger.c.latest_size() == 0  # nothing was anchored either


def test_replayed_claim_is_refused(ledger: Ledger) -> None:
    claim_hash = submit(ledger, "entry 1")
    # Replayed by anyone (here an unlocked tester account), with a fresh root: still refused.
    with pytest.raises(ChainError, match="already submitted .a replayed claim."):
        ledger.c.submit_claim(claim_hash, 99, 2, h("root 2"), stake=MIN_STAKE,
                              sender=ledger.outsider)
    c = ledger.c.claim(claim_hash)
    assert (c["claimant"], c["points"], c["stake"]) == (ledger.claimant.address, 10, MIN_STAKE)
    assert ledger.c.latest_size() == 1


# ---------------------------------------------------------------------------------------------
# the challenge window


def test_honest_claim_is_rewarded_only_after_the_window(ledger: Ledger) -> None:
    w3, c, claimant = ledger.w3, ledger.c, ledger.claimant
    stake = 5 * MIN_STAKE
    before = w3.eth.get_balance(claimant.address)
    receipt = c.submit_claim(h("good"), 42, 1, h("root 1"), stake=stake, sender=claimant)
    assert w3.eth.get_balance(claimant.address) == before - stake - paid(receipt)
    assert w3.eth.get_balance(c.address) == stake
    deadline = c.claim(h("good"))["deadline"]
    assert deadline == w3.eth.get_block(receipt["blockNumber"])["timestamp"] + WINDOW

    with pytest.raises(ChainError, match=f"challenge window until unix time {deadline}"):
        c.finalize(h("good"), sender=ledger.outsider)
    assert c.points(claimant.address) == 0 and c.withdrawable(claimant.address) == 0

    advance_to(w3, deadline)
    with pytest.raises(ChainError, match="challenge window closed at unix time"):
        c.challenge(h("good"), bond=MIN_STAKE, sender=ledger.challenger)
    c.finalize(h("good"), sender=ledger.outsider)  # anyone may finalize
    assert c.claim(h("good"))["state"] == "REWARDED"
    assert c.points(claimant.address) == 42
    assert c.withdrawable(claimant.address) == stake

    with pytest.raises(ChainError, match="is REWARDED, not PENDING"):
        c.finalize(h("good"), sender=ledger.outsider)  # no double reward

    before = w3.eth.get_balance(claimant.address)
    receipt = c.withdraw(sender=claimant)
    assert w3.eth.get_balance(claimant.address) == before + stake - paid(receipt)
    assert c.withdrawable(claimant.address) == 0
    assert w3.eth.get_balance(c.address) == 0
    with pytest.raises(ChainError, match="has nothing to withdraw"):
        c.withdraw(sender=claimant)
    assert c.points(claimant.address) == 42  # withdrawing wei leaves the points


# ---------------------------------------------------------------------------------------------
# challenges and votes


def test_fabricated_claim_is_slashed(ledger: Ledger) -> None:
    w3, c, claimant, challenger = ledger.w3, ledger.c, ledger.claimant, ledger.challenger
    v1, v2, v3 = ledger.verifiers
    bond = 2 * MIN_STAKE
    claim_hash = submit(ledger, "fabricated", points=1000, stake=3 * MIN_STAKE)

    with pytest.raises(ChainError, match="cannot challenge it"):
        c.challenge(claim_hash, bond=bond, sender=claimant)
    with pytest.raises(ChainError, match=f"needs a bond: send at least {MIN_STAKE} wei"):
        c.challenge(claim_hash, bond=MIN_STAKE - 1, sender=challenger)
    c.challenge(claim_hash, bond=bond, sender=challenger)
    assert c.claim(claim_hash)["state"] == "CHALLENGED"

    c.vote(claim_hash, False, sender=v1)
    assert c.claim(claim_hash)["state"] == "CHALLENGED"  # one vote is below quorum
    c.vote(claim_hash, False, sender=v2)

    got = c.claim(claim_hash)
    assert got["state"] == "SLASHED"
    assert got["votes"] == {"honest": 0, "false": 2}
    assert c.withdrawable(challenger) == 3 * MIN_STAKE + bond  # the stake, plus its bond back
    assert c.withdrawable(claimant.address) == 0
    assert c.points(claimant.address) == 0
    assert (c.points(v1), c.points(v2), c.points(v3)) == (VERIFIER_REWARD, VERIFIER_REWARD, 0)

    # Resolved for good: no late vote, and no reward once the window has passed.
    with pytest.raises(ChainError, match="is SLASHED, not CHALLENGED"):
        c.vote(claim_hash, True, sender=v3)
    advance_to(w3, got["deadline"] + 1)
    with pytest.raises(ChainError, match="is SLASHED, not PENDING"):
        c.finalize(claim_hash, sender=claimant)
    assert c.points(claimant.address) == 0

    before = w3.eth.get_balance(challenger)
    receipt = c.withdraw(sender=challenger)
    assert w3.eth.get_balance(challenger) == before + 3 * MIN_STAKE + bond - paid(receipt)


def test_upheld_claim_takes_the_challengers_bond(ledger: Ledger) -> None:
    c, claimant, challenger = ledger.c, ledger.claimant, ledger.challenger
    v1, v2, v3 = ledger.verifiers
    claim_hash = submit(ledger, "honest but challenged", points=7, stake=MIN_STAKE)
    c.challenge(claim_hash, bond=4 * MIN_STAKE, sender=challenger)

    c.vote(claim_hash, True, sender=v1)
    c.vote(claim_hash, False, sender=v2)  # a dissenting vote is still verification work
    c.vote(claim_hash, True, sender=v3)

    got = c.claim(claim_hash)
    assert got["state"] == "VERIFIED"
    assert got["votes"] == {"honest": 2, "false": 1}
    assert c.points(claimant.address) == 7
    assert c.withdrawable(claimant.address) == 5 * MIN_STAKE
    assert c.withdrawable(challenger) == 0
    assert [c.points(v) for v in (v1, v2, v3)] == [VERIFIER_REWARD] * 3


def test_only_registered_verifiers_vote_once_each(ledger: Ledger) -> None:
    c, outsider = ledger.c, ledger.outsider
    v1 = ledger.verifiers[0]
    claim_hash = submit(ledger, "disputed")
    c.challenge(claim_hash, bond=MIN_STAKE, sender=ledger.challenger)

    with pytest.raises(ChainError) as e:
        c.vote(claim_hash, False, sender=outsider)
    assert str(e.value) == (f"{outsider} is not a registered verifier: only verifiers vote; "
                            f"ask the owner {ledger.owner} to register it")
    # The claimant cannot vote its own claim through either.
    with pytest.raises(ChainError, match="not a registered verifier"):
        c.vote(claim_hash, True, sender=ledger.claimant)

    c.vote(claim_hash, False, sender=v1)
    with pytest.raises(ChainError, match=f"{v1} already voted"):
        c.vote(claim_hash, False, sender=v1)  # one verifier cannot make a quorum alone
    got = c.claim(claim_hash)
    assert got["state"] == "CHALLENGED" and got["votes"] == {"honest": 0, "false": 1}
    assert c.points(outsider) == 0


def test_vote_needs_a_challenge(ledger: Ledger) -> None:
    claim_hash = submit(ledger, "unchallenged")
    with pytest.raises(ChainError, match="is PENDING, not CHALLENGED"):
        ledger.c.vote(claim_hash, False, sender=ledger.verifiers[0])
    with pytest.raises(ChainError, match="was never submitted"):
        ledger.c.challenge(h("nothing"), bond=MIN_STAKE, sender=ledger.challenger)


def test_registration_and_anchoring_are_restricted(ledger: Ledger) -> None:
    c, outsider = ledger.c, ledger.outsider
    with pytest.raises(ChainError) as e:
        c.register_verifier(outsider, sender=outsider)
    assert str(e.value) == (f"{outsider} is not the ledger owner: "
                            f"send this from the owner {ledger.owner}")
    assert not c.is_verifier(outsider)

    with pytest.raises(ChainError, match="may not anchor roots"):
        c.anchor_root(5, h("root 5"), sender=outsider)
    assert c.root(5) == bytes(32)

    c.register_verifier(outsider, sender=ledger.owner)
    assert c.is_verifier(outsider)
    c.anchor_root(5, h("root 5"), sender=outsider)  # a verifier may anchor
    assert c.root(5) == h("root 5")


# ---------------------------------------------------------------------------------------------
# roots


def test_roots_anchored_with_claims_only_grow(ledger: Ledger) -> None:
    c, owner = ledger.c, ledger.owner
    submit(ledger, "first", tree_size=1)
    submit(ledger, "third", tree_size=3)
    assert (c.root(1), c.root(2), c.root(3)) == (h("root 1"), bytes(32), h("root 3"))
    assert c.latest_size() == 3

    with pytest.raises(ChainError, match="tree size 2 is not above the latest anchored size 3"):
        c.anchor_root(2, h("root 2"), sender=owner)
    with pytest.raises(ChainError, match="tree size 3 already has a different root"):
        c.anchor_root(3, h("forked root 3"), sender=owner)
    with pytest.raises(ChainError, match="tree size 1 already has a different root"):
        c.submit_claim(h("late"), 1, 1, h("other root 1"), stake=MIN_STAKE,
                       sender=ledger.claimant)
    with pytest.raises(ChainError, match="must be non-zero"):
        c.anchor_root(4, bytes(32), sender=owner)
    assert c.claim(h("late"))["state"] == "UNKNOWN"  # a refused anchor refuses the claim

    # A claim whose (size, root) was anchored meanwhile, e.g. by a verifier, still goes in.
    c.anchor_root(4, h("root 4"), sender=owner)
    submit(ledger, "racing", tree_size=4)
    assert c.claim(h("racing"))["tree_size"] == 4
    assert (c.root(3), c.root(4), c.latest_size()) == (h("root 3"), h("root 4"), 4)


# ---------------------------------------------------------------------------------------------
# gas, signers, setup


def test_submit_claim_gas(ledger: Ledger) -> None:
    first = ledger.c.submit_claim(h("a"), 10, 1, h("root 1"), stake=MIN_STAKE,
                                  sender=ledger.claimant)
    later = ledger.c.submit_claim(h("b"), 10, 2, h("root 2"), stake=MIN_STAKE,
                                  sender=ledger.claimant)
    print(f"\nsubmit_claim gas: first {first['gasUsed']}, later {later['gasUsed']}")
    assert first["status"] == later["status"] == 1
    assert first["gasUsed"] < 300_000 and later["gasUsed"] < 300_000


def test_local_account_signers_end_to_end() -> None:
    """Every role signs raw transactions, as it must on a real chain (no unlocked accounts)."""
    w3 = chain.tester()
    owner, verifier, claimant = (chain.derive_account(s) for s in (b"o", b"v", b"c"))
    for acct in (owner, verifier, claimant):
        fund(w3, acct.address)
    address = chain.deploy(w3, owner, challenge_window=10, min_stake=MIN_STAKE, quorum=1,
                           verifier_reward=VERIFIER_REWARD)
    c = LedgerContract(w3, address)
    assert c.param("owner") == owner.address
    c.register_verifier(verifier.address, sender=owner)
    receipt = c.submit_claim(h("x"), 3, 1, h("root 1"), stake=MIN_STAKE, sender=claimant)
    assert w3.eth.get_transaction(receipt["transactionHash"])["from"] == claimant.address
    c.anchor_root(2, h("root 2"), sender=verifier)
    c.challenge(h("x"), bond=MIN_STAKE, sender=owner)
    c.vote(h("x"), True, sender=verifier)  # quorum 1: resolves at once
    assert c.claim(h("x"))["state"] == "VERIFIED"
    assert (c.points(claimant.address), c.points(verifier.address)) == (3, VERIFIER_REWARD)
    c.withdraw(sender=claimant)
    assert w3.eth.get_balance(address) == 0


def test_unfunded_signer_gets_a_one_line_error(ledger: Ledger) -> None:
    broke = chain.derive_account(b"never funded")
    with pytest.raises(ChainError, match=f"^transaction from {broke.address} failed: ") as e:
        ledger.c.submit_claim(h("x"), 1, 1, h("root 1"), stake=MIN_STAKE, sender=broke)
    assert "\n" not in str(e.value)
    assert ledger.c.claim(h("x"))["state"] == "UNKNOWN"


def test_derive_account_is_deterministic_per_seed() -> None:
    a, b = chain.derive_account(b"\x01" * 32), chain.derive_account(b"\x01" * 32)
    assert a.address == b.address and a.key == b.key
    assert a.key == hashlib.sha256(b"magnet-evm-account" + b"\x01" * 32).digest()
    assert chain.derive_account(b"\x02" * 32).address != a.address


def test_deploy_refuses_bad_parameters() -> None:
    w3 = chain.tester()
    with pytest.raises(ChainError, match="quorum out of range"):
        chain.deploy(w3, w3.eth.accounts[0], challenge_window=1, min_stake=1, quorum=0,
                     verifier_reward=0)
    with pytest.raises(ChainError, match="zero min_stake"):
        chain.deploy(w3, w3.eth.accounts[0], challenge_window=1, min_stake=0, quorum=1,
                     verifier_reward=0)


def test_connect() -> None:
    assert chain.connect("tester").is_connected()
    with pytest.raises(ChainError, match="no chain answers at http://127.0.0.1:1: check"):
        chain.connect("http://127.0.0.1:1")
    with pytest.raises(ChainError, match="unsupported chain URL"):
        chain.connect("ftp://example.org")


def test_compiled_output_is_cached_on_disk(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(chain, "CACHE_DIR", tmp_path)
    chain.compiled.cache_clear()
    try:
        abi, bytecode = chain.compiled()
        (cache,) = tmp_path.glob("magnet_ledger-*.json")
        chain.compiled.cache_clear()
        # Poison the cached bytecode: a second compile() must read it rather than recompile.
        cache.write_text(cache.read_text().replace(bytecode, "0xfeed"))
        assert chain.compiled() == (abi, "0xfeed")
        assert any(e.get("name") == "submit_claim" for e in abi)
    finally:
        chain.compiled.cache_clear()
