"""`magnet-agent merge --base B --specialist S1 --specialist S2`: merge, evaluate, print the table.

The merge and its files are agent.merging.merge_run (which the merge_specialists tool calls
too); this module parses the options and prints the table and where everything went.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.cli import options
from agent.cli.errors import fail
from merge.method_names import METHODS

COMMANDS = ("merge",)
# the methods' keyword arguments, as the options below name them (merge.methods checks values)
METHOD_OPTIONS = ("weights", "lam", "density", "drop_rate", "seed", "sign_election")


def add_commands(commands: options.Subparsers) -> None:
    merge = commands.add_parser(
        "merge", help="merge specialists of one base (linear, task arithmetic, TIES, DARE) and "
                      "compare base, specialists and merge on each specialist's corpus")
    merge.add_argument("--base", required=True, metavar="RUN|RUN:EXP|CHECKPOINT")
    merge.add_argument("--specialist", action="append", required=True, metavar="REF",
                       help="a specialist trained from the base (repeat for each)")
    merge.add_argument("--method", choices=METHODS, default="ties")
    merge.add_argument("--corpus", action="append",
                       help="each specialist's corpus, in order (default: what its checkpoint "
                            "records)")
    merge.add_argument("--weights", type=float, nargs="+", help="one weight per specialist")
    merge.add_argument("--lam", type=float, help="task arithmetic, TIES, DARE: scale of the "
                                                 "merged task vector (default 1)")
    merge.add_argument("--density", type=float, help="TIES: fraction kept (default 0.5)")
    merge.add_argument("--drop-rate", type=float, help="DARE: fraction dropped (default 0.5)")
    merge.add_argument("--seed", type=int, help="DARE: seed of the drop masks (default 0)")
    merge.add_argument("--sign-election", action="store_true", help="DARE: with TIES' signs")
    merge.add_argument("--out", help="output directory (default runs/merge-METHOD-TIME/)")
    options.json_flag(merge, "inputs, method, options, the merged checkpoint and the val_bpb "
                             "table")
    options.runs_dir(merge)


def main(args: argparse.Namespace) -> int:
    """0 when merged and evaluated; 2 with one line when the inputs cannot be merged."""
    from agent.merging.merge_run import merge_errors

    try:
        return merge(args)
    except merge_errors() as err:
        return fail(str(err))


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method's keyword arguments from the command line: only those given, so an option
    the method does not take is refused by name (merge.methods checks the values)."""
    return {name: getattr(args, name) for name in METHOD_OPTIONS
            if getattr(args, name) not in (None, False)}


def merge(args: argparse.Namespace) -> int:
    """Merge, evaluate, report. Raises RunError, MergeError, CheckpointError or CorpusError
    (one line each) for inputs that cannot be merged or evaluated."""
    from rich.console import Console
    from rich.table import Table

    from agent.merging.merge_run import (
        CHECKPOINT_DIR,
        PLOT_FILE,
        REPORT_FILE,
        merge_and_report,
        output_dir,
        plan_merge,
    )

    console = Console(stderr=args.json)  # --json: stdout is the document alone
    plan = plan_merge(args.base, args.specialist, corpora=args.corpus, runs_dir=args.runs_dir)
    out_dir = output_dir(args.out, args.method, args.runs_dir)
    report = merge_and_report(plan, args.method, method_options(args), out_dir, console=console)
    if args.json:
        print(json.dumps(report.summary, indent=2))
        return 0
    table = report.table
    view = Table(title=f"val_bpb: base, specialists and the {args.method} merge")
    view.add_column("model")
    for corpus in table.corpora:
        view.add_column(corpus, justify="right")
    for name, row in zip(table.models, table.values, strict=True):
        view.add_row(name, *[f"{v:.4f}" for v in row])
    console.print(view)
    for i, (ref, corpus) in enumerate(zip(args.specialist, plan.corpora, strict=True), start=1):
        console.print(f"specialist {i}: {ref} (trained on {corpus})", soft_wrap=True)
    console.print(f"merged checkpoint: {out_dir / CHECKPOINT_DIR}\n"
                  f"table: {out_dir / REPORT_FILE}  plot: {out_dir / PLOT_FILE}", soft_wrap=True)
    return 0
