"""Ledger claims from a real research run, verified by replaying them in a fresh sandbox.

One research run (conftest's kept_run: scripted planner over HTTP, real training, real
evaluator) keeps an improvement; the installed CLI claims it, another key replays it (the
claimed run and the baseline runs behind its "before") and finds it honest, paying the points of
the replayed gain over the baseline mean the keep rule used. A claim whose metric was
fabricated is replayed and found false by two keys, and only the second verdict slashes it (no
single verifier slashes); one whose "before" was raised in the run's records is replayed and
found false; a claim on other corpus bytes, or on an unsealed corpus, is refused before
anything runs, and nothing is recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from agent.claims.claim import GOAL_FILE, INIT, SCHEDULE, build_claim
from agent.claims.replay_cache import ReplayCache
from agent.claims.verdict import TOLERANCE
from agent.rundir import ranking
from agent.rundir.experiment_record import TEST_KEY
from ledger.canonical import canonical, sha256_hex
from ledger.keys import generate_key, load_key
from ledger.open import open_ledger
from ledger.rules import DEFAULT_STAKE, HONEST, VERIFY_POINTS, reward_points
from sandbox.limits import cgroups_made_by

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (make setup installs it)"),
              pytest.mark.usefixtures("on_one_cpu")]  # replays compared bit for bit: conftest

CLI = str(Path(sys.executable).with_name("magnet-agent"))


def ledger_cli(env: dict[str, str], ledger: Path, *args: str) -> subprocess.CompletedProcess:
    command, rest = args[0], args[1:]
    return subprocess.run([CLI, "ledger", command, "--ledger", str(ledger), *rest],
                          capture_output=True, text=True, env=env, timeout=900)


def test_the_record_carries_the_replay_facts(kept_run):
    _, run_dir, _ = kept_run
    record = json.loads((run_dir / "experiments.jsonl").read_text().splitlines()[2])
    facts = record["replay"]
    metrics = record["metrics"]
    assert facts["steps"] == metrics["steps"] > 0
    schedule = json.loads((run_dir / "outputs" / "exp-002" / "schedule.json").read_text())
    assert len(schedule) == facts["steps"] and schedule == sorted(schedule)  # progress per step
    assert 0 < facts["switch_step"] < facts["steps"]  # stage 2 began mid-run
    assert schedule[facts["switch_step"] - 1] < 0.5 <= schedule[facts["switch_step"]]
    assert facts["threads"] >= 1
    assert facts["seed"] == record["seeds"][0]
    assert facts["corpus"]["name"].startswith("text:") and len(facts["corpus"]["sha256"]) == 64
    assert facts["python"] == sysconfig.get_python_version() or \
        facts["python"].startswith(sysconfig.get_python_version())
    from bitnet.checkpoint import checkpoint_hash

    assert facts["checkpoint_sha256"] == checkpoint_hash(run_dir / "outputs" / "exp-002")
    assert record["replays"] == [facts]  # every run's facts: a claim replays its before runs


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]


def copy_run(kept_run, name: str) -> Path:
    """A copy of the kept run (readers of the shared one run beside this module) in its own
    runs folder, for a claimant who edits the run's files."""
    root, run_dir, _ = kept_run
    copy = root / name / run_dir.name
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(run_dir, copy)
    return copy


def test_a_claims_before_is_the_baseline_mean_the_keep_rule_used(kept_run):
    _, run_dir, _ = kept_run
    records = records_of(run_dir)
    body = build_claim(run_dir, 2, stake=DEFAULT_STAKE).body
    mean = ranking.baseline(records[:2])
    assert body["metric"]["before"] == mean == records[2]["judgement"]["reference"]
    assert body["metric"]["before"] != records[1]["metric"]  # not the parent's run alone
    baselines = [records[1], records[0]]  # the parent's run first
    assert [(r["exp"], r["commit"], r["seed"], r["value"]) for r in body["before_runs"]] == [
        (r["exp"], r["commit"], r["seeds"][0], r["metric"]) for r in baselines]
    assert [r["replay"] for r in body["before_runs"]] == [r["replay"] for r in baselines]
    # the held-out test split's before and after, from the same runs
    assert body["test"] == {"before": statistics.fmean(r[TEST_KEY] for r in records[:2]),
                            "after": records[2][TEST_KEY]}
    assert [r["test"] for r in body["before_runs"]] == [r[TEST_KEY] for r in baselines]


class FreshReplays(ReplayCache):
    """The verifier's replay cache, less its kept runs: every run is replayed, then kept."""

    def get(self, key: str) -> dict | None:
        return None


def test_a_fabricated_test_score_is_judged_false(kept_run):
    """Replays check the held-out test score as well as the validation score: a claim whose
    test score after was lowered is false on the replay of its claimed run alone. That run is
    replayed afresh (its cgroups are checked), then kept in the session's replay cache: ahead of
    test_an_honest_claim_verifies_on_replay here, it is the one replay of it the tests make."""
    from agent.claims.replay import replay_claim
    from ledger.rules import FALSE
    from sandbox.confine import confinement

    _, run_dir, _ = kept_run
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    test = claim.body["test"]
    forged = {**claim.body, "test": {**test, "after": test["after"] * 0.9}}
    before = cgroups_made_by(os.getpid())
    verdict = replay_claim(forged, claim.artifacts, confinement(),
                           cache=FreshReplays(ReplayCache.default().root))
    assert cgroups_made_by(os.getpid()) <= before  # its runs and (fork) servers left no cgroup
    assert verdict.verdict == FALSE and verdict.replayed == claim.body["metric"]["after"]
    # no test number in it: a reason reaches planners through the ledger tools
    assert verdict.reason == (f"replayed the claimed run: its {TEST_KEY} is not the claimed "
                              f"one, outside the {TOLERANCE:.1%} tolerance")
    assert verdict.before_replayed is None  # its before runs were never replayed


def test_an_honest_claim_verifies_on_replay(kept_run):
    root, run_dir, env = kept_run
    ledger = root / "honest.sqlite"
    claimed = ledger_cli(env, ledger, "claim", run_dir.name, "2", "--key",
                         str(root / "alice.key"), "--runs-dir", str(root / "runs"))
    assert claimed.returncode == 0, claimed.stderr
    assert claimed.stdout.startswith("entry 0 ")
    own = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "alice.key"))
    assert own.returncode == 2 and "is your own; another key must verify it" in own.stderr
    assert "replaying" not in own.stdout  # refused before any training

    verified = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    facts = json.loads(verified.stdout)  # with --json, stdout is the document alone
    assert facts["verdict"] == "honest"
    assert abs(facts["replayed"] - facts["claimed"]) <= TOLERANCE * facts["claimed"]
    # the recorded steps, threads, seed and schedule make it the same run, bit for bit
    assert facts["checkpoint_identical"] and facts["replayed"] == facts["claimed"]
    # and the baseline runs behind its before, replayed too, give the baseline mean
    assert facts["before_replayed"] == facts["before_claimed"] == \
        ranking.baseline(records_of(run_dir)[:2])
    replayed_gain = {"goal": "minimize", "before": facts["before_replayed"],
                     "after": facts["replayed"]}
    assert facts["points"] == reward_points(replayed_gain) > 0
    test = facts["test"]  # the test split replays too, to the same numbers
    assert test["replayed_after"] == test["claimed_after"]
    assert test["replayed_before"] == test["claimed_before"]

    with open_ledger(ledger) as book:
        body = book.find(0).fields["body"]
        alice = load_key(root / "alice.key").public_key().public_bytes_raw().hex()
        bob = load_key(root / "bob.key").public_key().public_bytes_raw().hex()
        # the points of the replayed gain over the baseline mean
        assert book.balances() == {alice: facts["points"], bob: VERIFY_POINTS}
        assert facts["points"] == reward_points(body["metric"])
        assert body["metric"]["before"] > body["metric"]["after"]
        assert book.audit().ok
    # the same claim again is a replayed claim
    again = ledger_cli(env, ledger, "claim", run_dir.name, "2", "--key", str(root / "alice.key"),
                       "--runs-dir", str(root / "runs"))
    assert again.returncode == 2 and "already entry 0" in again.stderr
    audit = ledger_cli(env, ledger, "audit")
    assert audit.returncode == 0 and "2 entries" in audit.stdout


def test_a_fabricated_metric_is_replayed_and_slashed(kept_run):
    root, run_dir, env = kept_run
    ledger = root / "forged.sqlite"
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    forged = {**claim.body, "metric": {**claim.body["metric"],
                                      "after": claim.body["metric"]["after"] * 0.8}}
    with open_ledger(ledger) as book:
        book.claim(load_key(root / "alice.key"), forged, claim.artifacts)

    verified = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "false" in verified.stdout and "outside the" in verified.stdout
    assert "the claim is disputed: no single verifier slashes" in verified.stdout
    alice = load_key(root / "alice.key").public_key().public_bytes_raw().hex()
    with open_ledger(ledger) as book:
        assert [e.fields["kind"] for e in book.entries()] == ["claim", "verification"]
        assert book.claim_state(book.find(0)).status == "disputed"
        assert alice not in book.balances()  # one verdict took nothing from the claimant

    generate_key(root / "dave.key")
    second = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "dave.key"), "--json")
    assert second.returncode == 1, second.stdout + second.stderr
    assert json.loads(second.stdout)["claim_status"] == "slashed"
    with open_ledger(ledger) as book:
        kinds = [e.fields["kind"] for e in book.entries()]
        assert kinds == ["claim", "verification", "verification", "slash"]
        assert book.claim_state(book.find(0)).status == "slashed"
        assert book.balances()[alice] == -DEFAULT_STAKE
        assert book.audit().ok


def test_a_claim_on_other_corpus_bytes_is_refused_before_it_runs(kept_run):
    root, run_dir, env = kept_run
    ledger = root / "other-bytes.sqlite"
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    replay = claim.body["replay"]
    other = {**claim.body, "replay": {**replay, "corpus": {**replay["corpus"],
                                                           "sha256": "ab" * 32}}}
    with open_ledger(ledger) as book:
        book.claim(load_key(root / "alice.key"), other, claim.artifacts)

    verified = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"))
    assert verified.returncode == 2
    line = verified.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(f"magnet-agent: error: corpus {replay['corpus']['name']} on this "
                           "machine has sha256 ")
    assert "the claim was trained on abababababab" in line
    with open_ledger(ledger) as book:
        assert len(book.entries()) == 1  # no verdict: nobody is slashed for the machine


def test_on_the_evm_a_fabricated_metric_is_challenged_replayed_and_slashed(kept_run):
    """The contract backend: a fabricated claim is replayed, challenged and slashed on chain; a
    key that is not a registered verifier cannot resolve it; the honest claim for the same
    commit is rewarded once the challenge window has passed. The claimed run's replay is the
    verifier's cached one (conftest's session cache, as `ledger verify` keeps it): the subject here
    is the contract, and test_a_fabricated_test_score_is_judged_false replays it afresh."""
    from agent.claims.replay import replay_claim
    from ledger.evm_ledger import open_evm_ledger
    from ledger.rules import FALSE
    from sandbox.confine import confinement

    root, run_dir, _ = kept_run
    alice, bob = load_key(root / "alice.key"), load_key(root / "bob.key")
    generate_key(root / "carol.key")
    carol = load_key(root / "carol.key")
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    forged = {**claim.body, "metric": {**claim.body["metric"],
                                      "after": claim.body["metric"]["after"] * 0.9}}
    with open_evm_ledger("evm:tester") as book:
        book.register_verifier(book.owner, bob)
        entry = book.claim(alice, forged, claim.artifacts)
        assert book.chain_state(entry)["state"] == "PENDING"

        verdict = replay_claim(forged, claim.artifacts, confinement(),
                               cache=ReplayCache.default())
        assert verdict.verdict == FALSE and verdict.replayed == claim.body["metric"]["after"]
        with pytest.raises(ValueError, match="not a registered verifier"):
            book.verify(carol, entry, verdict.verdict, verdict.facts())
        assert book.chain_state(entry)["state"] == "PENDING" and len(book.entries()) == 1

        book.verify(bob, entry, verdict.verdict, verdict.facts())
        assert book.chain_state(entry)["state"] == "SLASHED"
        assert book.chain_points(alice) == 0 and book.chain_points(bob) == VERIFY_POINTS
        assert [e.fields["kind"] for e in book.entries()] == ["claim", "verification", "slash"]

        honest = book.claim(alice, claim.body, claim.artifacts)  # the commit is free again
        with pytest.raises(ValueError, match="window"):
            book.finalize(honest)
        deadline = book.chain_state(honest)["deadline"]
        tester = book.contract.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        tester.time_travel(deadline + 1)
        tester.mine_blocks()
        book.finalize(honest)
        assert book.chain_state(honest)["state"] == "REWARDED"
        assert book.chain_points(alice) == reward_points(claim.body["metric"]) > 0
        assert book.audit().ok


def test_a_claim_that_cannot_be_replayed_at_all_is_false(kept_run):
    """What the claimant carries is the claimant's to get right: a parent that is not the
    commit's parent, or a commit id that is a path, is judged false without training."""
    from agent.claims.ledger_ops import replay_entry
    from ledger.rules import FALSE

    root, run_dir, env = kept_run
    ledger = root / "malformed.sqlite"
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    wrong_parent = {**claim.body, "parent": "0" * 40}
    path_commit = {**claim.body, "commit": "../../../etc"}
    with open_ledger(ledger) as book:
        book.claim(load_key(root / "alice.key"), wrong_parent, claim.artifacts)
        book.claim(load_key(root / "alice.key"), path_commit, claim.artifacts)
    first = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"))
    assert first.returncode == 1, first.stdout + first.stderr
    assert "false" in first.stdout and "is not a child of the claimed parent 000000000000" \
        in first.stdout.replace("\n", " ")
    second = ledger_cli(env, ledger, "verify", "1", "--key", str(root / "bob.key"))
    assert second.returncode == 1 and "is no git commit id" in second.stdout
    generate_key(root / "erin.key")  # no single verifier slashes: a second key agrees
    with open_ledger(ledger) as book:  # what `ledger verify` runs, without another interpreter
        for entry in ("0", "1"):
            assert replay_entry(book, load_key(root / "erin.key"), entry,
                                unconfined=False).verdict.verdict == FALSE
    with open_ledger(ledger) as book:
        assert [e.fields["kind"] for e in book.entries()] == [
            "claim", "claim", "verification", "verification", "verification", "slash",
            "verification", "slash"]


def test_a_before_raised_in_the_records_is_replayed_and_judged_false(kept_run):
    """The claimant raises the second baseline run in its own experiments.jsonl (metric and
    runs alike, as a careful forger would): the claim states a larger gain, and the replay of the
    baseline runs behind its before finds it false."""
    root, _, env = kept_run
    run_dir = copy_run(kept_run, "raised-runs")
    records = records_of(run_dir)
    honest_before = ranking.baseline(records[:2])
    records[1]["metric"] = records[1]["runs"][0] = records[1]["metric"] * 1.25
    (run_dir / "experiments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ledger = root / "raised.sqlite"
    claimed = ledger_cli(env, ledger, "claim", run_dir.name, "2", "--key",
                         str(root / "alice.key"), "--runs-dir", str(run_dir.parent))
    assert claimed.returncode == 0, claimed.stderr
    with open_ledger(ledger) as book:
        metric = book.find(0).fields["body"]["metric"]
        assert metric["before"] > honest_before * 1.1  # what it claims to be worth

    verified = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"), "--json")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    facts = json.loads(verified.stdout)
    assert facts["verdict"] == "false" and facts["points"] is None
    assert "the before run of experiment 1 (seed" in facts["reason"]
    assert "outside the" in facts["reason"]
    assert facts["before_replayed"] is None  # stopped at the parent's run: the rest is moot
    with open_ledger(ledger) as book:  # disputed: a second key's agreeing verdict slashes it
        assert [e.fields["kind"] for e in book.entries()] == ["claim", "verification"]
        assert book.claim_state(book.find(0)).status == "disputed"
        alice = load_key(root / "alice.key").public_key().public_bytes_raw().hex()
        assert alice not in book.balances()  # the raised gain paid nothing


def test_a_claim_on_an_unsealed_corpus_is_refused_in_one_line(kept_run):
    """A run on pycode (the interpreter reads its held-out files) cannot be claimed, and a claim
    made for one anyway (its goal file names pycode) is not replayed: nothing is recorded."""
    root, kept_dir, env = kept_run
    run_dir = copy_run(kept_run, "unsealed-runs")
    goal = run_dir / "goal.md"
    text = goal.read_text()
    corpus = next(line for line in text.splitlines() if line.startswith("corpus: "))
    goal.write_text(text.replace(corpus, "corpus: pycode"))
    ledger = root / "unsealed.sqlite"
    claimed = ledger_cli(env, ledger, "claim", run_dir.name, "2", "--key",
                         str(root / "alice.key"), "--runs-dir", str(run_dir.parent))
    assert claimed.returncode == 2, claimed.stdout + claimed.stderr
    line = claimed.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(f"magnet-agent: error: {run_dir.name} cannot be claimed: its runs "
                           "could read the bytes they were scored on: pycode ")
    assert "portable-code" in line  # names a sealed corpus
    assert not ledger.exists() or "0 entries" in ledger_cli(env, ledger, "audit").stdout

    # the same claim built by hand and put in the ledger: the verifier refuses to replay it
    claim = build_claim(kept_dir, 2, stake=DEFAULT_STAKE)
    artifacts = {**claim.artifacts, GOAL_FILE: goal.read_bytes()}
    body = {**claim.body, GOAL_FILE: sha256_hex(artifacts[GOAL_FILE])}
    with open_ledger(ledger) as book:
        book.claim(load_key(root / "alice.key"), body, artifacts)
    verified = ledger_cli(env, ledger, "verify", "0", "--key", str(root / "bob.key"))
    assert verified.returncode == 2, verified.stdout + verified.stderr
    line = verified.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("magnet-agent: error: the claim is not replayed: its runs could "
                           "read the bytes they were scored on: pycode ")
    assert "training" not in verified.stdout
    with open_ledger(ledger) as book:
        assert len(book.entries()) == 1  # no verdict: nothing to settle


def test_an_honest_verdict_pays_the_replayed_gain_not_the_claimed_one(kept_run):
    """A claim that overstates its gain by less than the tolerance gets an honest verdict, but is
    paid the points of the gain its replay measured (the verdict's `points`, which
    test_an_honest_claim_verifies_on_replay checks a real replay gives), not its claimed ones."""
    root, run_dir, _ = kept_run
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    metric = claim.body["metric"]
    after = metric["after"] * (1 - TOLERANCE / 2)  # within the tolerance: an honest verdict
    overstated = {**claim.body, "metric": {**metric, "after": after}}
    replayed = reward_points(metric)  # what a bit-exact replay of the real runs measures
    assert reward_points(overstated["metric"]) > replayed
    with open_ledger(root / "overstated.sqlite") as book:
        entry = book.claim(load_key(root / "alice.key"), overstated, claim.artifacts)
        book.verify(load_key(root / "bob.key"), entry, HONEST, {"points": replayed})
        alice = load_key(root / "alice.key").public_key().public_bytes_raw().hex()
        assert book.balances()[alice] == replayed
        assert book.claim_state(entry).points == replayed


def test_a_verifier_replays_each_run_once(kept_run):
    """The claimed run and the baseline runs behind its before are kept in the verifier's
    replay cache (this session's, conftest): the same claim replayed again trains nothing and
    gets the same verdict, and the claimed run is kept under its key."""
    from agent.claims.replay import replay_claim
    from sandbox.confine import confinement

    _, run_dir, _ = kept_run
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    cache = ReplayCache.default()
    first = replay_claim(claim.body, claim.artifacts, confinement(), cache=cache)
    assert first.verdict == HONEST
    lines: list[str] = []
    again = replay_claim(claim.body, claim.artifacts, confinement(), cache=cache,
                         on_line=lines.append)
    assert lines == []  # no run printed a line: none ran
    assert {**again.facts(), "seconds": 0} == {**first.facts(), "seconds": 0}
    claimed_run = ReplayCache.key(
        commit=claim.body["commit"], goal_file=claim.artifacts[GOAL_FILE],
        facts=claim.body["replay"], schedule=claim.artifacts.get(SCHEDULE),
        init=claim.artifacts.get(INIT), confined=True)
    assert cache.get(claimed_run)["metrics"]["val_bpb"] == first.replayed


def test_a_replay_is_kept_under_everything_it_depends_on(tmp_path):
    """Another commit, goal file, fact, schedule, init checkpoint or confinement is another run;
    a run that did not finish is not kept (on a busy machine it may next time)."""

    base = dict(commit="a" * 40, goal_file=b"goal", facts={"seed": 1, "steps": 20},
                schedule=b"[0.0]", init=None, confined=True)
    changed = [{"commit": "b" * 40}, {"goal_file": b"goal "}, {"facts": {"seed": 2, "steps": 20}},
               {"schedule": None}, {"init": b"weights"}, {"confined": False}]
    keys = {ReplayCache.key(**{**base, **change}) for change in [{}, *changed]}
    assert len(keys) == 1 + len(changed)
    # the same facts as they come back from the ledger (canonical JSON: 3.0 reads as 3)
    facts = {"seed": 1, "steps": 20, "time_budget": 3.0}
    assert ReplayCache.key(**{**base, "facts": facts}) == \
        ReplayCache.key(**{**base, "facts": json.loads(canonical(facts))})
    cache = ReplayCache(tmp_path)
    key = ReplayCache.key(**base)
    with cache.held(key) as kept:
        assert kept is None
        cache.put(key, {"status": "timeout", "metrics": {}})
    assert cache.get(key) is None
    cache.put(key, {"status": "ok", "metrics": {"val_bpb": 3.5}})
    with cache.held(key) as kept:
        assert kept == {"status": "ok", "metrics": {"val_bpb": 3.5}}
