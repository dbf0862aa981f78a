"""The ledger and merge tools on real runs: record_contribution claims a kept improvement (once,
however often it is called), verify_contribution replays someone's claim, merge_specialists
merges this run's best with another specialist of its base and writes the table.

Three research runs (a template run that keeps a one-layer model, a specialist run tuned from
that model by the shipped specialist-merge goal, whose scripted LLM calls the tools itself, a
repository run whose loop claims each improvement through the tool) and one `train --init`
specialist; every call goes through the tools' own run functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from goal_repo import MODES_TRAIN, goal_text, make_goal
from openai_server import ScriptedServer, calls, proposal
from openai_server import text as text_reply  # `text`: the goals' text below
from test_ledger_replay import ledger_cli
from test_specialist import corpus

from agent.goal.spec import Goal, LedgerSettings, MergeSettings
from agent.loop.launch import start_run
from agent.loop.train_once import train
from agent.merging.merge_run import OUTPUTS
from agent.rundir import ranking
from agent.rundir.checkpoint_ref import resolve_checkpoint
from agent.rundir.runs import load_run_goal
from agent.rundir.tool_records import STEP, ToolRecords
from agent.tools.base import ToolContext, ToolError
from agent.tools.ledger_tools import (
    RECORD_CONTRIBUTION,
    VERIFY_CONTRIBUTION,
    RecordArgs,
    VerifyArgs,
)
from agent.tools.merge_tool import MERGE_SPECIALISTS, MergeArgs
from bitnet.checkpoint import checkpoint_hash, checkpoint_lineage, descent
from ledger.keys import generate_key, load_key, public_hex
from ledger.open import open_ledger
from ledger.rules import VERIFY_POINTS, reward_points
from sandbox.templates import template_dir

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (make setup installs it)"),
              pytest.mark.usefixtures("on_one_cpu")]  # replays compared bit for bit: conftest


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """os.environ with `values` set, restored after (module fixtures cannot monkeypatch)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def context(run_dir: Path, goal: Goal, call: int, **settings: Any) -> ToolContext:
    """A tool call of the run in `run_dir`; `settings`: goal keys to set (ledger, merge)."""
    spec = goal.spec.model_copy(update=settings)
    return ToolContext(run_dir=run_dir, goal=goal.model_copy(update={"spec": spec}),
                       workspace=run_dir / "workspace", call=call)


def one_line(err: pytest.ExceptionInfo[ToolError]) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# --- record_contribution and verify_contribution --------------------------------------------


@pytest.fixture(scope="module")
def kept(kept_run):  # conftest's run (experiment 2 kept), shared with test_ledger_replay
    return kept_run


@pytest.fixture(scope="module")
def ledger_ctx(kept) -> ToolContext:
    """A call of the kept run's, with alice's key and a ledger of its own."""
    root, run_dir, _ = kept
    settings = LedgerSettings(key=root / "alice.key", path=str(root / "tools.sqlite"))
    return context(run_dir, load_run_goal(run_dir), 1, ledger=settings)


@pytest.fixture(scope="module")
def claimed(ledger_ctx) -> dict[str, Any]:
    """The tool's claim of the run's best (no `exp` given)."""
    return RECORD_CONTRIBUTION.run(ledger_ctx, RecordArgs())


def test_record_contribution_claims_the_best_and_audit_accepts_it(kept, ledger_ctx,
                                                                  claimed):
    _, run_dir, env = kept
    records = [json.loads(x) for x in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert claimed["exp"] == 2 and claimed["commit"] == records[2]["commit"]  # the best
    # before: the baseline mean the keep rule compared it with, not the parent's run alone
    assert claimed["metric"] == {"name": "val_bpb", "before": ranking.baseline(records[:2]),
                                 "after": records[2]["runs"][0]}
    assert claimed["points_once_verified"] == reward_points(claimed["metric"]) > 0
    assert claimed["stake"] == 100 and claimed["status"] == "pending"
    assert claimed["entry"] == 0 and not claimed["already_recorded"]
    assert claimed["ledger"] == str(ledger_ctx.runs_dir.parent / "tools.sqlite")
    assert claimed["summary"].startswith(f"entry 0 ({claimed['hash'][:12]}): {run_dir.name} "
                                         "experiment 2, val_bpb ")
    with open_ledger(claimed["ledger"]) as book:
        entry = book.find(0)
        assert entry.hash == claimed["hash"] and entry.body_id == claimed["claim_id"]
        assert entry.fields["author"] == public_hex(load_key(ledger_ctx.goal.spec.ledger.key))
    audit = ledger_cli(env, Path(claimed["ledger"]), "audit")
    assert audit.returncode == 0 and "ok: 1 entries" in audit.stdout, audit.stdout


def test_record_contribution_again_returns_the_same_entry_and_writes_nothing(ledger_ctx,
                                                                            claimed):
    with open_ledger(claimed["ledger"]) as book:
        before = book.audit()
    again = RECORD_CONTRIBUTION.run(ledger_ctx, RecordArgs(exp=2))  # a call re-run after a kill
    assert again["already_recorded"] and "nothing written" in again["summary"]
    assert {k: again[k] for k in ("entry", "hash", "claim_id", "commit")} == \
        {k: claimed[k] for k in ("entry", "hash", "claim_id", "commit")}
    with open_ledger(claimed["ledger"]) as book:
        after = book.audit()
    assert (after.entries, after.tree_heads, after.root) == \
        (before.entries, before.tree_heads, before.root)


@pytest.mark.parametrize(("exp", "message"), [
    (0, "experiment 0 of {run} is baseline, not a kept improvement"),
    (1, "experiment 1 of {run} is baseline, not a kept improvement"),
    (99, "{run} has no experiment 99; see `magnet-agent history {run}`"),
])
def test_record_contribution_refuses_what_was_not_kept(ledger_ctx, claimed, exp, message):
    with pytest.raises(ToolError) as err:
        RECORD_CONTRIBUTION.run(ledger_ctx, RecordArgs(exp=exp))
    assert one_line(err).startswith(message.format(run=ledger_ctx.run_dir.name))


def test_record_contribution_refuses_a_key_others_can_read(kept, tmp_path):
    root, run_dir, _ = kept
    key = tmp_path / "open.key"
    generate_key(key)
    key.chmod(0o644)
    ledger = tmp_path / "none.sqlite"
    ctx = context(run_dir, load_run_goal(run_dir), 2,
                  ledger=LedgerSettings(key=key, path=str(ledger)))
    with pytest.raises(ToolError) as err:
        RECORD_CONTRIBUTION.run(ctx, RecordArgs())
    assert one_line(err) == f"key file {key} is readable by others (mode 0644); run " \
                            f"`chmod 600 {key}`"
    assert not ledger.exists()  # refused before the ledger was made
    with pytest.raises(ToolError, match=r"^the goal has no `ledger:` settings; add"):
        RECORD_CONTRIBUTION.run(context(run_dir, load_run_goal(run_dir), 3), RecordArgs())


def test_verify_contribution_replays_the_claim_with_another_key(kept, ledger_ctx, claimed,
                                                                monkeypatch):
    root, _, _ = kept
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(root / "cache"))
    with pytest.raises(ToolError) as err:  # alice's own claim
        VERIFY_CONTRIBUTION.run(ledger_ctx, VerifyArgs(entry=claimed["hash"][:10]))
    assert one_line(err).endswith("is your own; another key must verify it")

    bob = context(ledger_ctx.run_dir, ledger_ctx.goal, 4, ledger=LedgerSettings(
        key=root / "bob.key", path=claimed["ledger"]))
    verdict = VERIFY_CONTRIBUTION.run(bob, VerifyArgs(entry=str(claimed["entry"])))
    assert verdict["verdict"] == "honest", verdict["reason"]
    assert verdict["replayed"] == verdict["claimed"] == claimed["metric"]["after"]
    assert verdict["checkpoint_identical"] and verdict["entries_written"] == [1]
    assert verdict["metric"] == "val_bpb" and verdict["exp"] == 2
    assert "within the 0.5% tolerance" in verdict["reason"]
    with open_ledger(claimed["ledger"]) as book:
        kinds = [e.fields["kind"] for e in book.entries()]
        balances = book.balances()
        assert book.audit().ok
    assert kinds == ["claim", "verification"]
    assert balances == {public_hex(load_key(root / "alice.key")): claimed["points_once_verified"],
                        public_hex(load_key(root / "bob.key")): VERIFY_POINTS}

    with pytest.raises(ToolError) as err:  # settled
        VERIFY_CONTRIBUTION.run(bob, VerifyArgs(entry="0"))
    assert "is already verified (entry 1); there is nothing left to verify" in one_line(err)


# --- a repository goal: the loop's explicit steps claim through the tool --------------------


def test_a_repository_run_claims_each_kept_improvement(tmp_path):
    key, ledger = tmp_path / "carol.key", tmp_path / "repo.sqlite"
    generate_key(key)
    text = goal_text("repo-claims", planner="search", knobs={"X": "{low: 0.0, high: 2.0}"},
                     experiments=3, model=None)
    text = text.replace("knobs:", "tools: [record_contribution]\n"
                                  f"ledger: {{key: {key}, path: {ledger}}}\nknobs:", 1)
    run_dir = start_run(make_goal(tmp_path, MODES_TRAIN, text), runs_dir=tmp_path / "runs")

    records = [json.loads(x) for x in (run_dir / "experiments.jsonl").read_text().splitlines()]
    kept_exps = [r["exp"] for r in records if r["status"] == "keep"]
    assert kept_exps and kept_exps[0] == 2  # any X in [0, 2] beats the baseline's X = 3
    steps = [c for c in ToolRecords(run_dir).read() if c.tool == "record_contribution"]
    assert [c.by for c in steps] == [STEP] * len(kept_exps)
    assert [(c.status, c.error) for c in steps] == [("ok", None)] * len(kept_exps)
    assert [c.result["exp"] for c in steps] == kept_exps  # type: ignore[index]
    with open_ledger(ledger) as book:
        bodies = [e.fields["body"] for e in book.entries()]
        assert book.audit().ok
    assert [(b["run"], b["exp"]) for b in bodies] == [(run_dir.name, e) for e in kept_exps]
    assert {b["contributor"] for b in bodies} == {public_hex(load_key(key))}
    assert all(b["replay"]["corpus"] is None for b in bodies)  # a repository has no corpus

    best = RECORD_CONTRIBUTION.run(context(run_dir, load_run_goal(run_dir), 99), RecordArgs())
    best_record = min((r for r in records if r["status"] == "keep"), key=lambda r: r["metric"])
    assert best["exp"] == best_record["exp"] and best["already_recorded"]
    assert best["entry"] == kept_exps.index(best_record["exp"])


# --- merge_specialists ----------------------------------------------------------------------

SHIPPED_GOAL = Path(__file__).parents[2] / "goals" / "specialist-merge.md"
TRAIN = (template_dir("bitnet-lm") / "train.py").read_text()
CONTRACT_LINE = next(x for x in TRAIN.splitlines() if x.startswith("# --- the contract"))
# no warm-up: starting from a trained base, STEPS steps are too few to spend 30 of them warming
# up; and a comment line fewer, so it is simpler code too. The runs take a fixed number of steps
# (MAGNET_STEPS, passed by the goal's `env:`), not 3 s: on a loaded machine 3 s gave baselines
# of 1.1 and 4.9 bits per byte, and the judge could not see the gain. 5 steps, not 20: the keep
# is as clear (measured: +6.4 standard errors at 40 steps, +248 at 20, +1406 at 10, +9116 at 5),
# and the three runs of the research run and the three replays of its claim train a quarter as
# long
STEPS = "5"
NO_WARMUP = {"hypothesis": "no warm-up from a trained base", "rationale": "scripted", "edits": [
    {"path": "train.py", "search": "WARMUP_STEPS = 30", "replace": "WARMUP_STEPS = 1"},
    {"path": "train.py", "search": CONTRACT_LINE + "\n", "replace": ""}]}
# the run's own tool calls are #1 (record_contribution) and #2 (merge_specialists): the tests'
# calls on it take numbers of their own, so each writes a folder of its own
CALLS = 10


@pytest.fixture(scope="module")
def specialists(kept) -> dict[str, Any]:
    """Two specialists of the kept run's best (the base): a `train --init` run on one topic, and
    on another the shipped goals/specialist-merge.md's research run, whose scripted LLM keeps an
    improvement, claims it and merges it with the first through the tools
    (test_the_shipped_specialist_merge_goal_with_the_llm_choosing_the_tools checks that run; the
    other merge tests and a claim's replay use it as the tuned specialist)."""
    root, base_run, _ = kept
    runs = root / "runs"
    # the specialists start from a copy of the base's checkpoint, not from the shared kept run:
    # a test below hides their base, and test_ledger_replay reads the kept run meanwhile
    base = root / "base-checkpoint"
    if not base.exists():
        shutil.copytree(base_run / "outputs" / "exp-002", base)
    lorem = corpus(root, "lorem", "Lorem ipsum dolor")
    book = root / "specialist-merge.sqlite"
    with environ(MAGNET_CACHE_DIR=str(root / "cache"), MAGNET_STEPS=STEPS):
        before = set(runs.iterdir())
        fox = corpus(root, "fox", "The quick brown fox jumps")
        assert train("bitnet-lm", f"text:{fox}", 2, 7, str(runs), init=str(base)) == 0
        (trained,) = set(runs.iterdir()) - before
    # goals/specialist-merge.md as shipped (its tools, ledger and merge keys), pointed at this
    # base and the other specialist, on a scripted LLM, a few seconds an experiment
    text = (SHIPPED_GOAL.read_text()
            .replace("corpus: portable-prose", f"corpus: text:{lorem}")
            .replace("init: base ", f"init: {base} ")
            .replace("per_experiment: 30s, experiments: 4", "per_experiment: 3s, experiments: 2")
            .replace("planner: auto", "planner: openai").replace("model: null",
                                                                 "model: scripted-model")
            .replace("ledger: {key: ~/.magnet/ledger.key}",
                     f"ledger: {{key: {root / 'alice.key'}, path: {book}}}")
            .replace("merge: {with: code,", f"merge: {{with: {trained.name},")
            .replace("tools: [", "env: [MAGNET_STEPS]\ntools: ["))
    goal = root / "specialist-merge.md"
    goal.write_text(text)
    with ScriptedServer() as server, environ(
            MAGNET_CACHE_DIR=str(root / "cache"), OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="sk-test-not-a-secret", MAGNET_STEPS=STEPS):
        server.push(proposal(NO_WARMUP),
                    calls(("record_contribution", {})),
                    calls(("merge_specialists", {})),
                    # the budget's last experiment, after the tools: an edit that changes
                    # nothing, refused before it runs (a training run no test reads saved),
                    # then the LLM's diagnosis of the refusal
                    proposal({"hypothesis": "keep the warm-up off", "edits": [
                        {"path": "train.py", "search": "WARMUP_STEPS = 1",
                         "replace": "WARMUP_STEPS = 1"}]}),
                    text_reply("The edit changed nothing."))
        tuned = start_run(goal, runs_dir=runs)
        pending, offered = server.pending, server.offered_tools(1)
    return {"root": root, "base_run": base_run, "base": base, "tuned": tuned, "trained": trained,
            "goal_text": text, "book": book, "pending": pending, "offered": offered}


def merge_ctx(specialists: dict[str, Any], call: int, run: str = "tuned") -> ToolContext:
    run_dir = specialists[run]
    return context(run_dir, load_run_goal(run_dir), call,
                   merge=MergeSettings(with_=specialists["trained"].name, method="ties"))


def test_merge_specialists_writes_the_merge_and_returns_its_table(specialists, monkeypatch):
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(specialists["root"] / "cache"))
    ctx = merge_ctx(specialists, CALLS + 1)
    result = MERGE_SPECIALISTS.run(ctx, MergeArgs())  # with and method from the goal
    out = ctx.out_dir
    assert result["out_dir"] == str(out) and result["files"] == sorted(OUTPUTS)
    assert result["checkpoint"] == str(out / "checkpoint") and result["method"] == "ties"
    summary = json.loads((out / "merge.json").read_text())
    # the base is the run's copy of its init: the kept run's best, whose hash both specialists
    # and the merge descend from
    base = ctx.run_dir / "init"
    assert summary["base"] == str(base)
    assert summary["base_hash"] == checkpoint_hash(specialists["base_run"] / "outputs" /
                                                   "exp-002")
    assert checkpoint_lineage(out / "checkpoint") == descent(base)
    assert [s["ref"] for s in result["specialists"]] == [f"{ctx.run_dir.name}:002",
                                                         specialists["trained"].name]
    corpora = [s["corpus"] for s in result["specialists"]]
    assert corpora[0].endswith("/lorem") and corpora[1].endswith("/fox")
    values = summary["table"]["val_bpb"]
    assert result["base"] == dict(zip(corpora, values[0], strict=True))
    assert result["merged"] == dict(zip(corpora, values[-1], strict=True))
    assert [s["val_bpb"] for s in result["specialists"]] == \
        [dict(zip(corpora, row, strict=True)) for row in values[1:3]]
    # each specialist is better than the base on its own topic
    assert result["specialists"][0]["val_bpb"][corpora[0]] < result["base"][corpora[0]]
    assert result["specialists"][1]["val_bpb"][corpora[1]] < result["base"][corpora[1]]
    assert result["table"] in (out / "merge.md").read_text()
    assert result["table"].splitlines()[-1].startswith("| merged | ")
    assert (out / "merge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same call re-run (after a crash that came later) returns the merge it finished
    written = (out / "merge.json").stat().st_mtime_ns
    assert MERGE_SPECIALISTS.run(ctx, MergeArgs()) == result
    assert (out / "merge.json").stat().st_mtime_ns == written

    # a call cut off mid-merge left a half checkpoint: the re-run clears it and merges again
    cut = merge_ctx(specialists, CALLS + 2)
    (cut.out_dir / "checkpoint").mkdir(parents=True)
    (cut.out_dir / "checkpoint" / "model.safetensors.tmp").write_bytes(b"half")
    (cut.out_dir / "merge.md").write_text("half")
    again = MERGE_SPECIALISTS.run(cut, MergeArgs())
    assert not (cut.out_dir / "checkpoint" / "model.safetensors.tmp").exists()
    assert again["merged"] == result["merged"] and again["files"] == sorted(OUTPUTS)


@pytest.mark.parametrize(("with_", "message"), [
    ("no-such-run", "no run 'no-such-run' under "),
    ("{base}:0", "{base_dir}/outputs/exp-000 was not trained from {init} (it records no base"),
])
def test_a_bad_with_is_one_line_and_writes_nothing(specialists, with_, message):
    ctx = merge_ctx(specialists, CALLS + 3)
    base = specialists["base_run"]
    with pytest.raises(ToolError) as err:
        MERGE_SPECIALISTS.run(ctx, MergeArgs.model_validate({"with": with_.format(
            base=base.name)}))
    assert one_line(err).startswith(message.format(base=base.name, base_dir=base,
                                                   init=ctx.run_dir / "init"))
    assert not ctx.out_dir.exists()


def test_merge_specialists_needs_a_base_and_a_measured_baseline(specialists, kept, tmp_path):
    _, base_run, _ = kept
    no_init = context(base_run, load_run_goal(base_run), 5,
                      merge=MergeSettings(with_=specialists["trained"].name))
    with pytest.raises(ToolError) as err:
        MERGE_SPECIALISTS.run(no_init, MergeArgs())
    assert one_line(err).startswith("the goal has no `init:`")
    trained = specialists["trained"]
    unmeasured = tmp_path / "runs" / "unmeasured"  # a run of a base before its baseline
    unmeasured.mkdir(parents=True)
    with pytest.raises(ToolError) as err:
        MERGE_SPECIALISTS.run(context(unmeasured, load_run_goal(trained), 6,
                                      merge=MergeSettings(with_=str(trained))), MergeArgs())
    assert one_line(err).startswith("no baseline was measured yet, so this run has no checkpoint")
    assert not (unmeasured / "tools").exists()


def test_merge_specialists_of_a_run_that_kept_nothing_merges_its_baseline(specialists,
                                                                          monkeypatch):
    """A run stands for one experiment everywhere: with nothing kept, the merge tool merges the
    baseline's checkpoint, the one `export RUN` exports."""
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(specialists["root"] / "cache"))
    trained, tuned = specialists["trained"], specialists["tuned"]
    ctx = context(trained, load_run_goal(trained), 6,
                  merge=MergeSettings(with_=tuned.name, method="linear"))
    result = MERGE_SPECIALISTS.run(ctx, MergeArgs())  # a train run: its baseline only
    assert [s["ref"] for s in result["specialists"]] == [f"{trained.name}:000", tuned.name]
    summary = json.loads((ctx.out_dir / "merge.json").read_text())
    assert summary["specialists"][0]["checkpoint"] == str(
        resolve_checkpoint(trained.name, trained.parent)) == str(trained / "outputs" / "exp-000")
    assert result["files"] == sorted(OUTPUTS)


def test_a_claim_from_a_run_of_a_base_carries_the_base_and_replays_honest(specialists,
                                                                            monkeypatch):
    """A specialist's claim travels with its run's copy of the base checkpoint: a verifier who
    has neither the base run nor its files replays it bit-exact."""
    root, tuned = specialists["root"], specialists["tuned"]
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(root / "cache"))
    book = root / "init-claims.sqlite"
    alice = context(tuned, load_run_goal(tuned), CALLS + 7,
                    ledger=LedgerSettings(key=root / "alice.key", path=str(book)))
    claimed = RECORD_CONTRIBUTION.run(alice, RecordArgs())
    with open_ledger(book) as ledger:
        body = ledger.find(str(claimed["entry"])).fields["body"]
        archive = ledger.artifact(body["init"])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(p.name for p in (tuned / "init").iterdir() if p.is_file())

    hidden = specialists["base"].with_name("base-moved-away")
    specialists["base"].rename(hidden)  # the verifier has no base to read from
    try:
        bob = context(tuned, alice.goal, CALLS + 8,
                      ledger=LedgerSettings(key=root / "bob.key", path=str(book)))
        verdict = VERIFY_CONTRIBUTION.run(bob, VerifyArgs(entry=str(claimed["entry"])))
    finally:
        hidden.rename(specialists["base"])
    assert verdict["verdict"] == "honest", verdict["reason"]
    assert verdict["checkpoint_identical"]


def test_the_shipped_specialist_merge_goal_with_the_llm_choosing_the_tools(specialists):
    """goals/specialist-merge.md as shipped (its tools, ledger and merge keys), pointed at this
    module's base and specialist, with a scripted LLM that chooses the tools (the specialists
    fixture's run): a kept improvement, its claim, the merge with the other specialist, and the
    merged model's val_bpb on both domains in the run's report."""
    root, base, trained = specialists["root"], specialists["base"], specialists["trained"]
    text, book, run_dir = specialists["goal_text"], specialists["book"], specialists["tuned"]
    for replaced in (f"text:{root / 'lorem'}", f"init: {base} ", trained.name, str(book),
                     "planner: openai", "experiments: 2", "env: [MAGNET_STEPS]"):
        assert replaced in text, replaced
    assert specialists["pending"] == 0
    assert specialists["offered"] == ["record_contribution", "merge_specialists", "read_log",
                                      "read_file"]

    statuses = [json.loads(x)["status"]
                for x in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert statuses[:3] == ["baseline", "baseline", "keep"], statuses
    calls_made = ToolRecords(run_dir).read()
    assert [(c.tool, c.status, c.exp) for c in calls_made] == [
        ("record_contribution", "ok", 3), ("merge_specialists", "ok", 3)]
    claim, merge = (c.result for c in calls_made)
    assert claim["exp"] == 2 and claim["run"] == run_dir.name
    with open_ledger(book) as ledger:
        assert ledger.audit().ok and ledger.standing.size == 1
    assert len(merge["merged"]) == 2  # both domains: this run's topic and the other's
    report = (run_dir / "report.md").read_text()
    assert "### Merge (tool call #2)" in report and merge["table"] in report
