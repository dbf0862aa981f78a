"""How closely does a replay reproduce an honest claim? The tolerance `ledger verify` uses.

Five research runs (the bitnet-lm template, a time budget per experiment, seeds 1..5) each keep
one improvement (one scripted proposal: N_LAYER 4 -> 2, which the history of real runs shows
kept at short budgets; the planner is the scripted OpenAI-compatible server of the tests, over
HTTP). Each kept experiment is claimed in a fresh ledger and replayed by agent.claims.replay exactly
as `magnet-agent ledger verify` does: unbundled into a fresh sandbox, trained for the recorded
steps with the recorded schedule switch, seed and threads, scored by the evaluator. Reported:
the replayed val_bpb against the claimed one (relative difference), whether the checkpoint came
out bit-identical, and the verdict under agent.claims.replay.TOLERANCE.

usage: python bench/replay_tolerance.py [--budget 10] [--claims 5] [--corpus portable-code]
Ends with `RESULT claims=<n> honest=<n> max_rel_diff=<x> mean_rel_diff=<x> identical=<n>
tolerance=<x>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

# bench/ledger.py would shadow the ledger package: the repository first, then the test server
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "agent")]
from openai_server import ScriptedServer, proposal  # noqa: E402  (the scripted test server)

from agent.claims.claim import build_claim  # noqa: E402
from agent.claims.replay import TOLERANCE, replay_claim  # noqa: E402
from agent.loop.launch import start_run  # noqa: E402
from ledger.keys import generate_key, load_key  # noqa: E402
from ledger.open import open_ledger  # noqa: E402
from ledger.rules import DEFAULT_STAKE  # noqa: E402
from sandbox.confine import confinement  # noqa: E402

GOAL = """---
name: replay-{seed}
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: {corpus}
seed: {seed}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: {budget}s, experiments: 1, wall: 30m}}
planner: openai
model: scripted-model
---
Lower val_bpb within the time budget.
"""
EDIT = {"hypothesis": "two layers: more steps in the budget", "rationale": "bench",
        "edits": [{"path": "train.py", "search": "N_LAYER = 4", "replace": "N_LAYER = 2"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--claims", type=int, default=5)
    parser.add_argument("--corpus", default="portable-code")
    args = parser.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="replay-tolerance-"))
    for name in ("contributor", "verifier"):
        generate_key(root / f"{name}.key")
    contributor, verifier = (load_key(root / f"{n}.key") for n in ("contributor", "verifier"))
    rows = []
    import os

    with ScriptedServer() as server, open_ledger(root / "ledger.sqlite") as ledger:
        os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench-not-secret")
        for seed in range(1, args.claims + 1):
            goal = root / f"goal-{seed}.md"
            goal.write_text(GOAL.format(seed=seed, corpus=args.corpus, budget=args.budget))
            server.push(proposal(EDIT))
            run_dir = start_run(goal, runs_dir=root / "runs", console=Console(quiet=True))
            records = [json.loads(x) for x in
                       (run_dir / "experiments.jsonl").read_text().splitlines()]
            if records[-1]["status"] != "keep":
                console.print(f"seed {seed}: the edit was {records[-1]['status']}; no claim")
                continue
            claim = build_claim(run_dir, records[-1]["exp"], stake=DEFAULT_STAKE)
            entry = ledger.claim(contributor, claim.body, claim.artifacts)
            verdict = replay_claim(claim.body, claim.artifacts, confinement())
            ledger.verify(verifier, entry, verdict.verdict, verdict.facts())
            diff = abs(verdict.replayed - verdict.claimed) / verdict.claimed \
                if verdict.replayed is not None else float("inf")
            rows.append({"seed": seed, "steps": claim.body["replay"]["steps"],
                         "switch": claim.body["replay"]["switch_step"],
                         "claimed": verdict.claimed, "replayed": verdict.replayed,
                         "rel_diff": diff, "identical": verdict.checkpoint_identical,
                         "verdict": verdict.verdict, "seconds": verdict.seconds})
            console.print(f"seed {seed}: {verdict.reason}")
        audit = ledger.audit()
    table = Table(title=f"replays of {len(rows)} honest claims ({args.corpus}, "
                        f"{args.budget:g} s budget)")
    for column in ("seed", "steps", "switch", "claimed", "replayed", "rel diff",
                   "checkpoint identical", "verdict", "replay s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), str(r["steps"]), str(r["switch"]), f"{r['claimed']:.6f}",
                      f"{r['replayed']:.6f}", f"{r['rel_diff']:.4%}", str(r["identical"]),
                      r["verdict"], f"{r['seconds']:.1f}")
    console.print(table)
    console.print(f"ledger audit: {'ok' if audit.ok else audit.problem}")
    diffs = [r["rel_diff"] for r in rows]
    print(f"RESULT claims={len(rows)} honest={sum(r['verdict'] == 'honest' for r in rows)} "
          f"max_rel_diff={max(diffs, default=float('nan')):.6f} "
          f"mean_rel_diff={statistics.fmean(diffs) if diffs else float('nan'):.6f} "
          f"identical={sum(r['identical'] for r in rows)} tolerance={TOLERANCE}")


if __name__ == "__main__":
    main()
