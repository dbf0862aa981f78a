"""Planners side by side on the main goal: best val_bpb reduction and the loop's overhead.

Each planner runs the same short research runs (e.g. 12 experiments of 30 s) for several seeds.
Reported per planner: the best val_bpb reduction against the run's baseline, the loop overhead
(wall time per experiment not spent in the training command: planning, git, records) and the
seconds per proposal, and how often a confirmation run (loop.decision) changed the decision the
previous rule would have made, and its share of the wall time. Goals: >= 3% reduction within 12
experiments; search overhead < 10% of the experiment budget; local < 15 s per proposal. Writes
bench/planners.png and the numbers behind it, bench/planners.json.

    python bench/planners.py [--planners search local] [--seeds 1 2] [--experiments 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from agent.loop.launch import start_run
from agent.rundir import ranking
from agent.rundir.records import RunRecords

ROOT = Path(__file__).resolve().parents[1]


def goal_variant(goal: Path, out: Path, *, seed: int, per_experiment: int, experiments: int,
                 planner: str) -> Path:
    text = goal.read_text()
    _, front, body = text.split("---\n", 2)
    spec = yaml.safe_load(front)
    spec.update(seed=seed, planner=planner)
    spec["budget"] = {"per_experiment": f"{per_experiment}s", "experiments": experiments,
                      "wall": f"{(per_experiment + 60) * (experiments + 3)}s"}
    out.write_text("---\n" + yaml.safe_dump(spec, sort_keys=False) + "---\n" + body)
    return out


def measure(run_dir: Path, wall: float) -> dict[str, float]:
    records = RunRecords(run_dir).read()
    baseline = ranking.baseline(records)
    best = ranking.best(records, "minimize")
    proposals = ranking.experiments(records)
    command_seconds = sum(r.get("seconds") or 0 for r in records)
    propose = [r["propose_seconds"] for r in proposals if r.get("propose_seconds") is not None]
    confirmed = [r for r in proposals if len(ranking.runs_of(r)) > 1]
    return {
        "baseline": baseline,
        "best": best if best is not None else baseline,
        "reduction_pct": ranking.change_pct(baseline, best, "minimize") if best else 0.0,
        "overhead_s": (wall - command_seconds) / max(len(records), 1),
        "propose_s": statistics.median(propose) if propose else 0.0,
        "kept": sum(r["status"] == ranking.KEEP for r in proposals),
        "experiments": len(proposals),
        "confirmed": len(confirmed),
        "flipped": sum(flipped(r, records) for r in confirmed),
        "confirm_s": sum(r["run_seconds"][-1] for r in confirmed),
        "wall_s": wall,
        "curve": curve(records),
    }


def curve(records: list[dict]) -> list[float]:
    """What each proposal had to beat after it ran: the best kept, else the baseline mean."""
    proposals = ranking.experiments(records)
    return [ranking.reference(records[: records.index(r) + 1], "minimize")[0] for r in proposals]


def flipped(record: dict, records: list[dict]) -> bool:
    """Whether confirming changed the decision the previous rule (one run; keep when it beats
    the best by more than the two baselines' difference) would have made."""
    base = ranking.baseline_values(records)
    judgement = record["judgement"]
    first_gain = ranking.gain(record["runs"][0], judgement["reference"], "minimize")
    return (first_gain > abs(base[0] - base[1])) != (record["status"] == ranking.KEEP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", type=Path, default=ROOT / "goals" / "pycode-bitnet.md")
    parser.add_argument("--planners", nargs="+", default=["search", "local"]
                        + (["openai"] if os.environ.get("OPENAI_BASE_URL") else []))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--per-experiment", type=int, default=30)
    args = parser.parse_args()

    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table's columns
        console = Console(width=160)
    results: dict[str, list[dict]] = {p: [] for p in args.planners}
    with tempfile.TemporaryDirectory(prefix="magnet-bench-") as tmp:
        for seed in args.seeds:
            for planner in args.planners:
                goal = goal_variant(args.goal, Path(tmp) / f"goal-{planner}-{seed}.md",
                                    seed=seed, per_experiment=args.per_experiment,
                                    experiments=args.experiments, planner=planner)
                console.rule(f"{planner}, seed {seed}")
                start = time.monotonic()
                run_dir = start_run(goal, runs_dir=Path(tmp) / "runs", console=console)
                results[planner].append(measure(run_dir, time.monotonic() - start))

    table = Table(title=f"planners on {args.goal.name}: {args.experiments} experiments of "
                        f"{args.per_experiment}s, seeds {args.seeds}")
    for column in ("planner", "best reduction %", "mean reduction %", "kept",
                   "overhead s/exp", "overhead % budget", "s/proposal", "confirmed",
                   "flipped", "confirm time %"):
        table.add_column(column, justify="right")
    summary = {}
    for planner, runs in results.items():
        overhead = statistics.fmean(r["overhead_s"] for r in runs)
        summary[planner] = {
            "best": max(r["reduction_pct"] for r in runs),
            "overhead_pct": overhead / args.per_experiment * 100,
            "propose_s": statistics.median(r["propose_s"] for r in runs),
            "confirm_pct": sum(r["confirm_s"] for r in runs) / sum(r["wall_s"] for r in runs)
            * 100,
        }
        table.add_row(planner, f"{summary[planner]['best']:.2f}",
                      f"{statistics.fmean(r['reduction_pct'] for r in runs):.2f}",
                      f"{sum(r['kept'] for r in runs)}/{sum(r['experiments'] for r in runs)}",
                      f"{overhead:.2f}", f"{summary[planner]['overhead_pct']:.1f}",
                      f"{summary[planner]['propose_s']:.1f}",
                      f"{sum(r['confirmed'] for r in runs)}/{sum(r['experiments'] for r in runs)}",
                      f"{sum(r['flipped'] for r in runs)}",
                      f"{summary[planner]['confirm_pct']:.1f}")
    console.print(table)
    (ROOT / "bench" / "planners.json").write_text(json.dumps(results, indent=1))
    plot(results, ROOT / "bench" / "planners.png")

    best_planner = max(summary, key=lambda p: summary[p]["best"])
    search = summary.get("search", {"overhead_pct": float("nan")})
    local = summary.get("local", {"propose_s": float("nan")})
    confirmed = sum(r["confirmed"] for runs in results.values() for r in runs)
    flips = sum(r["flipped"] for runs in results.values() for r in runs)
    confirm_pct = statistics.fmean(s["confirm_pct"] for s in summary.values())
    print(f"RESULT best_reduction_pct={summary[best_planner]['best']:.2f} "
          f"best_planner={best_planner} overhead_pct={search['overhead_pct']:.1f} "
          f"local_propose_s={local['propose_s']:.1f} confirmed={confirmed} flipped={flips} "
          f"confirm_time_pct={confirm_pct:.1f}")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    colors = {"search": "tab:blue", "local": "tab:green", "openai": "tab:purple"}
    for planner, runs in results.items():
        for i, run in enumerate(runs):
            line = [run["baseline"], *run["curve"]]  # x = 0: the baseline mean
            ax.step(range(len(line)), line, where="post", color=colors.get(planner),
                    alpha=0.8, label=planner if i == 0 else None)
    ax.set_xlabel("experiment (0 = baseline mean of two runs)")
    ax.set_ylabel("best val_bpb so far")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
