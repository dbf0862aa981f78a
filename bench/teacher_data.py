"""What teacher data buys: a specialist trained on a teacher-written corpus, against its base and
against the base trained as long again on its own data, on human-written text of the topic that
the teacher did not write.

  base        the template's model (605k parameters), --base-steps on --base-corpus
              (portable-code: Python source of 15 PyPI packages, not the topic)
  teacher     writes a corpus on --topic for --teacher-seconds (or until --teacher-bytes),
              filtered and deduplicated (agent.teacher.corpus): the bundled SmolLM2-135M by
              default, `--teacher MODEL` for an OpenAI-compatible endpoint
  specialist  the base + --tune-steps on the teacher corpus's train split
  control     the base + --tune-steps on its own corpus: the same extra compute, so a gain of the
              specialist is the data's, not more training's
Every model is scored with the evaluator's val_bpb on: the held-out text (--heldout, pyprose's
validation split: docstrings and comments of this Python's standard library, written by
people), the teacher corpus's own validation split, and the base corpus's validation split
(what the specialist forgets). The held-out val_bpb of the specialist and the control is also
taken CURVE_POINTS times during their training: a small teacher corpus is learnt by heart
after a few passes, and the curve shows whether it helped before that. Training is
merge.inner's loop (the template's AdamW settings, as bench/diloco.py trains its
specialists), scoring merge.table's and bitnet.evaluate's.

usage: python bench/teacher_data.py [--quick] [--teacher local|MODEL] [--topic TEXT]
           [--base-steps N] [--tune-steps N] [--teacher-seconds S] [--teacher-bytes N]
           [--corpus-dir DIR]
Default ~25 min on 2 idle cores, --quick ~10 min (29 min while other jobs shared them).
Writes bench/teacher_data.{json,md,png} and bench/teacher_data_curve.png; ends with
`RESULT heldout_base=… heldout_specialist=… heldout_control=… specialist_vs_base=…
specialist_vs_control=… best_specialist_vs_base=… teacher_bytes=… teacher_documents=…`:
ratios of held-out val_bpb, below 1 when the specialist is better; `best_` is the lowest point
of the specialist's curve after step 0, chosen on the held-out text itself, so an upper bound
on what stopping early could buy.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diloco import CONFIG  # noqa: E402 - bench/diloco.py: the template's model, as it trains it

from agent.teacher.corpus import generate_corpus  # noqa: E402
from agent.teacher.models import make_teacher  # noqa: E402
from bitnet.data import load_corpus  # noqa: E402
from bitnet.evaluate import evaluate_bpb  # noqa: E402
from merge.inner import InnerConfig, fresh_model, inner_optimizer, train_steps  # noqa: E402
from merge.table import bpb_table  # noqa: E402

TOPIC = "Python programming: how the standard library works, explained in English"
SIZES = {  # (base steps, tune steps, teacher seconds); ~0.17 s per step here
    "default": (800, 400, 1200),
    "quick": (400, 200, 360),
}
MODELS = ("base", "control", "specialist")
TUNED = ("control", "specialist")
CURVE_POINTS = 8  # held-out evaluations during each tuning run (~4 s each)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: ~10 min")
    parser.add_argument("--teacher", default="local", help="local | an openai model name")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--heldout", default="pyprose",
                        help="corpus whose validation split is the held-out human text")
    parser.add_argument("--base-corpus", default="portable-code")
    parser.add_argument("--base-steps", type=int)
    parser.add_argument("--tune-steps", type=int, help="specialist and control, each")
    parser.add_argument("--teacher-seconds", type=float)
    parser.add_argument("--teacher-bytes", type=int, default=10**7)
    parser.add_argument("--corpus-dir", type=Path,
                        help="keep (and continue) the teacher corpus here; default: a temporary "
                             "folder, removed after")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base_steps, tune_steps, teacher_seconds = SIZES["quick" if args.quick else "default"]
    args.base_steps = args.base_steps or base_steps
    args.tune_steps = args.tune_steps or tune_steps
    args.teacher_seconds = args.teacher_seconds or teacher_seconds
    console = Console()
    started = time.perf_counter()
    out_dir = args.corpus_dir or Path(tempfile.mkdtemp(prefix="teacher-data-"))
    try:
        run(args, out_dir, console, started)
    finally:
        if args.corpus_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)


def run(args: argparse.Namespace, out_dir: Path, console: Console, started: float) -> None:
    console.rule(f"teacher {args.teacher}: {args.topic}")
    teacher = make_teacher(args.teacher)
    generation = generate_corpus(teacher, args.topic, out_dir, max_bytes=args.teacher_bytes,
                                 seconds=args.teacher_seconds, seed=args.seed, console=console)
    del teacher  # the local model holds ~0.5 GB that training can use
    gc.collect()
    taught = load_corpus(generation["corpus"])
    own = load_corpus(args.base_corpus)
    console.print(f"teacher corpus: {generation['documents']} documents, "
                  f"{generation['bytes']:,} bytes in {generation['seconds']:g} s "
                  f"(train {len(taught.train):,} bytes, validation {len(taught.val):,} bytes in "
                  f"{taught.n_val_files or 'the tail, too few'} files); rejected "
                  f"{generation['rejected'] or 'none'}", soft_wrap=True)

    inner = InnerConfig(seq_len=CONFIG.max_position_embeddings)
    heldout = load_corpus(args.heldout).val
    every = max(1, args.tune_steps // CURVE_POINTS)
    models, seconds, curves = {}, {}, {}
    with Progress(TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        def train(name: str, model: torch.nn.Module, data, steps: int, seed: int,
                  curve: list | None = None) -> None:
            """`steps` of merge.inner's loop; `curve` gets (step, held-out val_bpb) points."""
            task = progress.add_task(name, total=steps)
            began = time.perf_counter()

            def on_step(step: int, _loss: float) -> None:
                progress.advance(task)
                if curve is not None and ((step + 1) % every == 0 or step + 1 == steps):
                    curve.append((step + 1, heldout_bpb(model)))

            generator = torch.Generator().manual_seed(seed)
            train_steps(model, inner_optimizer(model, inner), data, generator, steps, inner,
                        on_step=on_step)
            models[name], seconds[name] = model.eval(), round(time.perf_counter() - began, 1)

        def heldout_bpb(model: torch.nn.Module) -> float:
            return round(evaluate_bpb(model, heldout, CONFIG.max_position_embeddings)[0], 6)

        train("base", fresh_model(CONFIG, args.seed), own.train, args.base_steps, args.seed)
        start = heldout_bpb(models["base"])
        # the control and the specialist draw their batches from the same generator seed
        for name, data in (("control", own.train), ("specialist", taught.train)):
            curves[name] = [(0, start)]
            train(name, copy.deepcopy(models["base"]), data, args.tune_steps, 1000 + args.seed,
                  curves[name])
        columns = [args.heldout, generation["corpus"], args.base_corpus]
        task = progress.add_task("evaluating (val_bpb)", total=len(MODELS) * len(columns))
        table = bpb_table([(name, models[name]) for name in MODELS], columns,
                          on_cell=lambda *_: progress.advance(task))

    results = summarise(table, args, generation, seconds, curves,
                        time.perf_counter() - started)
    bench = ROOT / "bench"
    (bench / "teacher_data.json").write_text(json.dumps(results, indent=1))
    (bench / "teacher_data.md").write_text(table.markdown())
    title = (f"teacher data ({generation['teacher']}, {generation['bytes'] // 1000} kB): "
             "specialist vs base vs control")
    table.plot(bench / "teacher_data.png", title)
    plot_curves(bench / "teacher_data_curve.png", curves, args.heldout, title)
    report(console, table, args, results)


def plot_curves(path: Path, curves: dict[str, list[tuple[int, float]]], heldout: str,
                title: str) -> None:
    """Held-out val_bpb against tuning steps, for the control and the specialist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.axhline(curves["control"][0][1], color="grey", linestyle="--", label="base")
    ax.set_xlabel("tuning steps from the base")
    ax.set_ylabel(f"val_bpb on held-out {heldout} (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_vs_base(curve: list[tuple[int, float]]) -> float:
    """The lowest held-out val_bpb after the first tuning step, over the base's (step 0)."""
    return min(v for step, v in curve if step > 0) / curve[0][1]


def summarise(table, args: argparse.Namespace, generation: dict, seconds: dict,
              curves: dict, total: float) -> dict:
    def ratios(column: str) -> dict[str, float]:
        value = {name: table.value(name, column) for name in MODELS}
        return {"specialist_vs_base": value["specialist"] / value["base"],
                "specialist_vs_control": value["specialist"] / value["control"],
                "control_vs_base": value["control"] / value["base"]}

    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": round(total, 1), "train_seconds": seconds,
        "teacher": {k: v for k, v in generation.items() if k != "corpus"},
        "table": table.to_dict(),
        "heldout": ratios(args.heldout), "teacher_val": ratios(generation["corpus"]),
        "base_corpus": ratios(args.base_corpus), "heldout_curves": curves,
        "best_specialist_vs_base": best_vs_base(curves["specialist"]),
    }


def report(console: Console, table, args: argparse.Namespace, results: dict) -> None:
    names = {args.heldout: f"held-out: {args.heldout} val", table.corpora[1]: "teacher's val",
             args.base_corpus: f"{args.base_corpus} val"}
    view = Table(title="val_bpb (lower is better)")
    view.add_column("model")
    for corpus in table.corpora:
        view.add_column(names[corpus], justify="right")
    for name, row in zip(table.models, table.values, strict=True):
        view.add_row(name, *[f"{v:.4f}" for v in row])
    console.print(view)
    for key, label in (("heldout", "held-out"), ("teacher_val", "teacher's val"),
                       ("base_corpus", args.base_corpus)):
        r = results[key]
        console.print(f"{label}: specialist/base {r['specialist_vs_base']:.4f}, "
                      f"specialist/control {r['specialist_vs_control']:.4f}, "
                      f"control/base {r['control_vs_base']:.4f}")
    for name in TUNED:
        points = ", ".join(f"{step}: {v:.3f}" for step, v in results["heldout_curves"][name])
        console.print(f"held-out val_bpb of the {name} by step: {points}", soft_wrap=True)
    console.print(f"whole bench: {results['seconds']:.0f} s")
    held = {name: table.value(name, args.heldout) for name in MODELS}
    print(f"RESULT heldout_base={held['base']:.4f} heldout_specialist={held['specialist']:.4f} "
          f"heldout_control={held['control']:.4f} "
          f"specialist_vs_base={results['heldout']['specialist_vs_base']:.4f} "
          f"specialist_vs_control={results['heldout']['specialist_vs_control']:.4f} "
          f"best_specialist_vs_base={results['best_specialist_vs_base']:.4f} "
          f"teacher_bytes={results['teacher']['bytes']} "
          f"teacher_documents={results['teacher']['documents']}")


if __name__ == "__main__":
    main()
