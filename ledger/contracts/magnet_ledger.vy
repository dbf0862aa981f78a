# pragma version 0.4.3
# pragma evm-version paris
# (paris: no PUSH0, MCOPY or transient storage, so it deploys on any EVM chain,
#  including ones that lag the mainnet forks; it costs submit_claim ~14 gas)
"""
@title MAGNET ledger
@notice Stakes, claim hashes and Merkle roots of MAGNET's contribution ledger.
        The entries themselves (signed JSON, git bundles) stay off-chain; this
        contract only holds what must be tamper-proof and economically backed:
        a claim's stake, its challenge window, verifier votes, the points it
        earns, and the growing log's roots.
@dev Claim life cycle:
        PENDING --finalize (after the deadline)--> REWARDED
        PENDING --challenge (before the deadline)--> CHALLENGED
        CHALLENGED --quorum of honest votes--> VERIFIED
        CHALLENGED --quorum of false votes--> SLASHED
     Ether moves only through `withdraw` (pull payments), so no state change
     ever depends on an external call succeeding.
     Revert reasons are short fixed strings; ledger/chain.py maps each one to
     a one-line message that names the fix, so keep the two in step.
"""

# Claim states (0 = no such claim)
UNKNOWN: constant(uint8) = 0
PENDING: constant(uint8) = 1
CHALLENGED: constant(uint8) = 2
VERIFIED: constant(uint8) = 3
SLASHED: constant(uint8) = 4
REWARDED: constant(uint8) = 5

# A challenge resolves at `quorum` votes on one side, so at most
# 2 * quorum - 1 verifiers vote on it; this bounds the voter list.
MAX_QUORUM: constant(uint256) = 32
MAX_VOTERS: constant(uint256) = 2 * MAX_QUORUM - 1


struct Claim:
    claimant: address
    stake: uint256
    points: uint256
    tree_size: uint256  # the log size whose root commits to this claim's entry
    deadline: uint256
    state: uint8
    challenger: address
    bond: uint256
    honest_votes: uint256
    false_votes: uint256


event VerifierRegistered:
    verifier: indexed(address)

event RootAnchored:
    tree_size: indexed(uint256)
    root: bytes32
    by: indexed(address)

event ClaimSubmitted:
    claim_hash: indexed(bytes32)
    claimant: indexed(address)
    points: uint256
    stake: uint256
    tree_size: uint256
    deadline: uint256

event Challenged:
    claim_hash: indexed(bytes32)
    challenger: indexed(address)
    bond: uint256

event Voted:
    claim_hash: indexed(bytes32)
    verifier: indexed(address)
    honest: bool

event Resolved:
    claim_hash: indexed(bytes32)
    state: uint8

event Withdrawn:
    account: indexed(address)
    amount: uint256


owner: public(address)
challenge_window: public(uint256)
min_stake: public(uint256)
quorum: public(uint256)
verifier_reward: public(uint256)

is_verifier: public(HashMap[address, bool])
claims: public(HashMap[bytes32, Claim])
voted: public(HashMap[bytes32, HashMap[address, bool]])
voters: HashMap[bytes32, DynArray[address, MAX_VOTERS]]

points: public(HashMap[address, uint256])
withdrawable: public(HashMap[address, uint256])

roots: public(HashMap[uint256, bytes32])
latest_size: public(uint256)


@deploy
def __init__(challenge_window: uint256, min_stake: uint256, quorum: uint256,
             verifier_reward: uint256):
    # A zero stake would make spam and replays free; a zero quorum would
    # resolve a challenge with no vote at all.
    assert min_stake > 0, "zero min_stake"
    assert quorum > 0 and quorum <= MAX_QUORUM, "quorum out of range"
    self.owner = msg.sender
    self.challenge_window = challenge_window
    self.min_stake = min_stake
    self.quorum = quorum
    self.verifier_reward = verifier_reward


@external
def register_verifier(addr: address):
    assert msg.sender == self.owner, "not owner"
    assert addr != empty(address), "zero address"
    self.is_verifier[addr] = True
    log VerifierRegistered(verifier=addr)


@internal
def _anchor(tree_size: uint256, root: bytes32):
    # The log is append-only, so its anchored roots only grow. Re-anchoring
    # the same root at an already anchored size is a no-op (a claimant whose
    # tree was anchored meanwhile by someone else), anything else is refused:
    # a different root at a known size would be a fork of the log.
    assert tree_size > 0 and root != empty(bytes32), "empty root"
    known: bytes32 = self.roots[tree_size]
    if known == root:
        return
    assert known == empty(bytes32), "root conflict"
    assert tree_size > self.latest_size, "root shrinks"
    self.roots[tree_size] = root
    self.latest_size = tree_size
    log RootAnchored(tree_size=tree_size, root=root, by=msg.sender)


@external
def anchor_root(tree_size: uint256, root: bytes32):
    assert msg.sender == self.owner or self.is_verifier[msg.sender], "not anchorer"
    self._anchor(tree_size, root)


@external
@payable
def submit_claim(claim_hash: bytes32, points: uint256, tree_size: uint256, root: bytes32):
    assert msg.value >= self.min_stake, "no stake"
    assert self.claims[claim_hash].state == UNKNOWN, "claim exists"
    self._anchor(tree_size, root)
    deadline: uint256 = block.timestamp + self.challenge_window
    self.claims[claim_hash] = Claim(
        claimant=msg.sender,
        stake=msg.value,
        points=points,
        tree_size=tree_size,
        deadline=deadline,
        state=PENDING,
        challenger=empty(address),
        bond=0,
        honest_votes=0,
        false_votes=0,
    )
    log ClaimSubmitted(claim_hash=claim_hash, claimant=msg.sender, points=points,
                       stake=msg.value, tree_size=tree_size, deadline=deadline)


@external
@payable
def challenge(claim_hash: bytes32):
    c: Claim = self.claims[claim_hash]
    assert c.state != UNKNOWN, "no such claim"
    assert c.state == PENDING, "not pending"
    assert block.timestamp < c.deadline, "window closed"
    assert msg.value >= self.min_stake, "bond too small"
    # A claimant challenging itself could occupy the one challenge slot and
    # take its own stake back as the "challenger" if slashed.
    assert msg.sender != c.claimant, "own claim"
    self.claims[claim_hash].state = CHALLENGED
    self.claims[claim_hash].challenger = msg.sender
    self.claims[claim_hash].bond = msg.value
    log Challenged(claim_hash=claim_hash, challenger=msg.sender, bond=msg.value)


@external
def vote(claim_hash: bytes32, honest: bool):
    assert self.is_verifier[msg.sender], "not a verifier"
    c: Claim = self.claims[claim_hash]
    assert c.state == CHALLENGED, "not challenged"
    assert not self.voted[claim_hash][msg.sender], "already voted"
    self.voted[claim_hash][msg.sender] = True
    self.voters[claim_hash].append(msg.sender)
    log Voted(claim_hash=claim_hash, verifier=msg.sender, honest=honest)

    if honest:
        c.honest_votes += 1
        self.claims[claim_hash].honest_votes = c.honest_votes
    else:
        c.false_votes += 1
        self.claims[claim_hash].false_votes = c.false_votes

    if c.honest_votes >= self.quorum:
        # The claim held up: the claimant earns its points and its stake back,
        # and the failed challenger's bond pays it for the delay.
        self.claims[claim_hash].state = VERIFIED
        self.points[c.claimant] += c.points
        self.withdrawable[c.claimant] += c.stake + c.bond
        self._reward_voters(claim_hash)
        log Resolved(claim_hash=claim_hash, state=VERIFIED)
    elif c.false_votes >= self.quorum:
        # Fabricated: the stake is cut and goes, with the bond, to the
        # challenger who caught it; the points are never credited.
        self.claims[claim_hash].state = SLASHED
        self.withdrawable[c.challenger] += c.stake + c.bond
        self._reward_voters(claim_hash)
        log Resolved(claim_hash=claim_hash, state=SLASHED)


@internal
def _reward_voters(claim_hash: bytes32):
    # Every vote cast was verification work, whichever side it took.
    reward: uint256 = self.verifier_reward
    for v: address in self.voters[claim_hash]:
        self.points[v] += reward


@external
def finalize(claim_hash: bytes32):
    c: Claim = self.claims[claim_hash]
    assert c.state != UNKNOWN, "no such claim"
    assert c.state == PENDING, "not pending"
    assert block.timestamp >= c.deadline, "window open"
    self.claims[claim_hash].state = REWARDED
    self.points[c.claimant] += c.points
    self.withdrawable[c.claimant] += c.stake
    log Resolved(claim_hash=claim_hash, state=REWARDED)


@external
@nonreentrant
def withdraw():
    amount: uint256 = self.withdrawable[msg.sender]
    assert amount > 0, "nothing to withdraw"
    self.withdrawable[msg.sender] = 0
    # raw_call forwards gas (send's 2300 stipend would strand funds owed to
    # contract wallets) and reverts the whole withdrawal if the transfer fails.
    raw_call(msg.sender, b"", value=amount)
    log Withdrawn(account=msg.sender, amount=amount)

