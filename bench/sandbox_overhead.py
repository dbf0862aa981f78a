"""Per-experiment overhead of the sandbox around a command that does nothing.

One experiment = begin + edit + commit + spawn/run/parse (under bubblewrap) + note + revert.
Each repetition also runs the bare command (same shell, same environment) right beside it, and
the overhead is the difference; and the same run unconfined (--unconfined), so the cost of the
confinement itself is the difference of the two runs. Ends with
`RESULT overhead_s=<mean seconds per experiment> confinement_s=<mean>`; goal: overhead < 0.3 s.

usage: python bench/sandbox_overhead.py [--reps 20] [--command "python -c ..."]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import KnobSet, Workspace, run_environ  # noqa: E402
from sandbox.confine import Confinement  # noqa: E402

TRAIN = "LEARNING_RATE = 0.001\nprint('METRIC x=1')\n"
NOTHING = "python -c \"print('METRIC x=1')\""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--command", default=NOTHING, help="the do-nothing command")
    args = parser.parse_args()

    phases = ("begin+edit", "commit", "run", "note+revert")
    times: dict[str, list[float]] = {
        p: [] for p in (*phases, "experiment", "command alone", "run unconfined")}
    with tempfile.TemporaryDirectory(prefix="magnet-bench-") as tmp:
        tpl = Path(tmp) / "template"
        tpl.mkdir()
        (tpl / "train.py").write_text(TRAIN)
        knobs = {"LEARNING_RATE": {"low": 1e-4, "high": 1e-2, "log": True}}
        ws = Workspace.create(
            Path(tmp) / "runs" / "bench", template=tpl, editable=["train.py"], knobs=knobs
        )
        env = run_environ(time_budget=5, seed=0, output_dir=Path(tmp))
        for i in range(args.reps + 1):  # the first repetition warms caches and is not counted
            t0 = time.perf_counter()
            ws.begin(i, f"learning rate step {i}")
            ws.apply([KnobSet("LEARNING_RATE", 0.001 + 0.0001 * (i % 50 + 1))])
            t1 = time.perf_counter()
            ws.commit()
            t2 = time.perf_counter()
            result = ws.run(args.command, time_budget=5, grace=30)
            t3 = time.perf_counter()
            # not part of the experiment: the same run unconfined, timed on its own
            ws.run(args.command, time_budget=5, grace=30, repeat=1,
                   confinement=Confinement(enabled=False))
            unconfined = time.perf_counter() - t3
            t3b = time.perf_counter()
            ws.discard(i, {"metric": result.metrics.get("x"), "status": result.status})
            t4 = time.perf_counter()
            subprocess.run(args.command, shell=True, cwd=ws.path, env=env, capture_output=True)
            t5 = time.perf_counter()
            if result.status != "ok":
                raise SystemExit(f"the command failed: {result.reason}\n{result.log_tail}")
            if i == 0:
                continue
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3b), strict=True):
                times[name].append(seconds)
            times["experiment"].append(t4 - t0 - unconfined)
            times["command alone"].append(t5 - t4)
            times["run unconfined"].append(unconfined)
        ws.close()

    overheads = [e - c for e, c in zip(times["experiment"], times["command alone"], strict=True)]
    confinement = [c - u for c, u in zip(times["run"], times["run unconfined"], strict=True)]
    table = Table(title=f"sandbox overhead, {args.reps} experiments of: {args.command}")
    table.add_column("phase")
    table.add_column("mean ms", justify="right")
    table.add_column("median ms", justify="right")
    for name, values in [*times.items(), ("overhead (experiment - command)", overheads),
                         ("confinement (run - run unconfined)", confinement)]:
        table.add_row(
            name, f"{1000 * statistics.mean(values):.1f}", f"{1000 * statistics.median(values):.1f}"
        )
    Console().print(table)
    print(f"RESULT overhead_s={statistics.mean(overheads):.4f} "
          f"confinement_s={statistics.mean(confinement):.4f}")


if __name__ == "__main__":
    main()
