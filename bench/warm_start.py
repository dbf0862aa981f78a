"""What warm starts save, cold and warm side by side on the same machine at the same time.

A research run's figures (bench/utilisation.py) move with whatever else the CPUs do; this bench
alternates cold and warm runs of the goal's template (its scorer, its confinement), so both see
the same load. Each round: a run of `--budget` seconds, its scoring, then `--plan` seconds of a
stand-in for the planner (a 2-thread matmul: the CPUs are as busy as when the local model plans,
which is when the next run's warm processes import). Warm means sandbox.warm (the training
interpreter) and agent.scoring.warm_servers (the evaluator's two servers).

Ends with `RESULT startup_cold_s=… startup_warm_s=… scoring_cold_s=… scoring_warm_s=…`
(medians; startup = the run's seconds outside its training loop).

usage: python bench/warm_start.py [--goal goals/pycode-bitnet.md] [--rounds 4] [--budget 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.goal.spec import load_goal  # noqa: E402
from agent.scoring.scorer import Scorer  # noqa: E402
from sandbox import Workspace  # noqa: E402
from sandbox.confine import confinement  # noqa: E402
from sandbox.layout import OUTPUTS_DIR  # noqa: E402
from sandbox.warm import WarmStarter  # noqa: E402


def plan_stand_in(seconds: float) -> None:
    import torch

    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", type=Path, default=Path("goals/pycode-bitnet.md"))
    parser.add_argument("--rounds", type=int, default=4, help="cold/warm pairs")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of training a run")
    parser.add_argument("--plan", type=float, default=3.0, help="seconds of planner stand-in")
    args = parser.parse_args()
    goal = load_goal(args.goal)
    run_dir = Path(tempfile.mkdtemp(prefix="magnet-warm-")) / "run"
    ws = Workspace.create(run_dir, template=goal.spec.template, editable=goal.spec.editable,
                          knobs=goal.spec.knobs)
    starter = WarmStarter(run_dir / OUTPUTS_DIR)
    ws.warm = starter
    scorer = Scorer(goal, ws, confinement())
    scorer.prepare()
    ws.begin(1, "cold and warm, alternately")
    rows: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    try:
        for repeat in range(2 * args.rounds + 1):  # the first primes the first warm process
            kind = "warm" if repeat % 2 == 0 else "cold"
            if kind == "cold":
                starter.close()  # what the warm run prepared: not for this one
                scorer.servers.close()
            result = scorer.run(seed=repeat, repeat=repeat, time_budget=args.budget)
            assert result["status"] == "ok", result["reason"]
            startup = result["seconds"] - result["metrics"]["train_seconds"]
            if repeat:  # the first ran cold: it only primes
                rows[kind].append((startup, result["score_seconds"]))
            plan_stand_in(args.plan)
    finally:
        scorer.close()
        ws.close()
    table = Table(title=f"cold vs warm, {args.rounds} rounds, {args.budget:g} s runs "
                        f"(medians, seconds)")
    for column in ("", "startup", "scoring"):
        table.add_column(column, justify="right")
    med = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in rows.items()}
    for kind in ("cold", "warm"):
        table.add_row(kind, f"{med[kind][0]:.2f}", f"{med[kind][1]:.2f}")
    Console().print(table)
    print(f"RESULT startup_cold_s={med['cold'][0]:.2f} startup_warm_s={med['warm'][0]:.2f} "
          f"scoring_cold_s={med['cold'][1]:.2f} scoring_warm_s={med['warm'][1]:.2f}")


if __name__ == "__main__":
    main()
