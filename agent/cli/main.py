"""The `magnet-agent` command line."""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from agent.cli import diloco as diloco_command
from agent.cli import generate_data as generate_data_command
from agent.cli import ledger as ledger_command

# argparse and rich only: torch is imported when a command runs
from agent.rundir.names import PROGRESS_PLOT


def _version() -> str:
    try:
        return version("magnet-agent")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magnet-agent",
        description="MAGNET: an LLM that runs ML research on its own, on ordinary CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"magnet-agent {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start a research run on a goal file")
    run.add_argument("goal", help="path of a GOAL.md (see goals/)")
    run.add_argument("--planner", choices=["auto", "openai", "local", "search"],
                     help="override the goal's planner")
    run.add_argument("--model", help="model name (openai) or GGUF path (local)")
    run.add_argument("--experiments", type=int, help="override the experiment budget")
    _unconfined(run)
    _runs_dir(run)

    resume = commands.add_parser("resume", help="continue a stopped run")
    resume.add_argument("run", help="run id (under runs/) or run directory")
    _runs_dir(resume)

    train = commands.add_parser(
        "train", help="one time-budgeted training run of a template, run as an experiment is "
                      "(same sandbox environment and limits) into a run directory under runs/")
    train.add_argument("--template", default="bitnet-lm")
    train.add_argument("--corpus", default="pycode",
                       help="pycode | pyprose | portable-code | portable-prose | text:PATH")
    train.add_argument("--budget", type=float, default=60.0, help="training seconds")
    train.add_argument("--seed", type=int, default=1337)
    train.add_argument("--name", default="train", type=_run_name,
                       help="run ids are NAME-YYYYmmdd-HHMMSS; `init: NAME`, `--init NAME` and "
                            "`merge: {with: NAME}` then mean the newest such run")
    train.add_argument("--init", metavar="RUN|RUN:EXP|CHECKPOINT",
                       help="start from this checkpoint instead of random weights: a specialist "
                            "of that base")
    _unconfined(train)
    _runs_dir(train)

    export = commands.add_parser(
        "export", help="export a checkpoint for CPU inference: Hugging Face (packed ternary) "
                       "or GGUF (TQ2_0)")
    export.add_argument("checkpoint", metavar="RUN|RUN:EXP|CHECKPOINT",
                        help="a run (its best experiment), one experiment, or a checkpoint "
                             "directory")
    export.add_argument("--format", choices=["hf", "gguf"], required=True)
    export.add_argument("--out", help="where to write (default: runs/<id>/exports/)")
    _runs_dir(export)

    generate = commands.add_parser("generate", help="generate text with a trained model")
    generate.add_argument("checkpoint", metavar="RUN|RUN:EXP|CHECKPOINT")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    generate.add_argument("--top-k", type=int, default=0, help="0: off")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    _json(generate, "{text, prompt_tokens, new_tokens, tokens_per_s, ...}")
    _runs_dir(generate)

    merge = commands.add_parser(
        "merge", help="merge specialists of one base (linear, task arithmetic, TIES, DARE) and "
                      "compare base, specialists and merge on each specialist's corpus")
    merge.add_argument("--base", required=True, metavar="RUN|RUN:EXP|CHECKPOINT")
    merge.add_argument("--specialist", action="append", required=True, metavar="REF",
                       help="a specialist trained from the base (repeat for each)")
    merge.add_argument("--method", choices=["linear", "task_arithmetic", "ties", "dare"],
                       default="ties")
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
    _json(merge, "inputs, method, options, the merged checkpoint and the val_bpb table")
    _runs_dir(merge)
    diloco_command.add_commands(commands)
    ledger_command.add_command(commands)
    generate_data_command.add_command(commands)

    repl = commands.add_parser("repl", help="steer and review a run interactively")
    repl.add_argument("run", nargs="?",
                      help="run id or directory (default: the newest run), or a GOAL.md to "
                           "start a run in the background")
    repl.add_argument("--planner", choices=["auto", "openai", "local", "search"],
                      help="for a new run: override the goal's planner")
    repl.add_argument("--model", help="for a new run: model name (openai) or path (local)")
    repl.add_argument("--experiments", type=int, help="for a new run: the experiment budget")
    _unconfined(repl)
    _runs_dir(repl)

    runs = commands.add_parser("runs", help="list the runs, their status and best metric")
    _json(runs, "a list of runs: id, goal, status, experiments, metric, baseline, best, "
                "verdict, path")
    _runs_dir(runs)
    history = commands.add_parser("history", help="a run's experiments as a table")
    history.add_argument("run", help="run id or directory")
    history.add_argument("--last", type=int, metavar="N", help="only the last N experiments")
    _json(history, "the records, exactly as experiments.jsonl holds them")
    _runs_dir(history)
    show = commands.add_parser("show", help="one experiment: hypothesis, diff, metrics, log")
    show.add_argument("run", help="run id or directory")
    show.add_argument("exp", help="experiment number, as 7 or 007; or a tool call, as tool:3")
    _json(show, "the record, its diff, log path and log tail")
    _runs_dir(show)
    report = commands.add_parser("report", help="regenerate a run's report.md and progress.png")
    report.add_argument("run", help="run id or directory")
    _runs_dir(report)
    return parser


def _run_name(text: str) -> str:
    from agent.goal.spec import RUN_NAME

    if not re.match(RUN_NAME, text) or len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run name; use letters, digits, "
                                         "'.', '_' and '-'")
    return text


def _unconfined(command: argparse.ArgumentParser) -> None:
    command.add_argument("--unconfined", action="store_true",
                         help="run experiment code without bubblewrap, with your full rights "
                              "(records and report say so); only where bwrap cannot run")


def _runs_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--runs-dir", help="where runs are (default ./runs or MAGNET_RUNS_DIR)")


def _json(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--json", action="store_true", help=f"print one JSON document: {what}")


def fail(message: str) -> int:
    print(f"magnet-agent: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in diloco_command.COMMANDS:
        return diloco_command.main(args)
    if args.command == "ledger":
        return _ledger(args)
    if args.command == "generate-data":
        return generate_data_command.main(args)
    if args.command in ("run", "resume"):
        from agent.goal.spec import GoalError
        from agent.loop.launch import RunError, resume_run, run_failure, start_run
        from agent.planners.base import PlannerError
        from sandbox.errors import SandboxError

        if args.command == "run" and args.experiments is not None and args.experiments < 1:
            return fail("--experiments must be at least 1")
        try:
            if args.command == "run":
                run_dir = start_run(args.goal, runs_dir=args.runs_dir, planner=args.planner,
                                    model=args.model, experiments=args.experiments,
                                    unconfined=args.unconfined)
            else:
                run_dir = resume_run(args.run, runs_dir=args.runs_dir)
        except (GoalError, RunError, PlannerError, SandboxError) as err:
            return fail(str(err))
        except KeyboardInterrupt:
            print("stopped; continue with `magnet-agent resume RUN`", file=sys.stderr)
            return 130
        if failure := run_failure(run_dir):
            print(f"magnet-agent: {failure}", file=sys.stderr)
            return 1
        return 0
    if args.command == "train":
        from agent.goal.spec import GoalError
        from agent.loop.train_once import train
        from agent.rundir.runs import RunError as RunDirError
        from sandbox.errors import SandboxError

        if args.budget <= 0:
            return fail("--budget must be a positive number of seconds")
        try:
            return train(args.template, args.corpus, args.budget, args.seed, args.runs_dir,
                         unconfined=args.unconfined, init=args.init, name=args.name)
        except (GoalError, RunDirError, SandboxError) as err:
            return fail(str(err))
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
            return 130
    if args.command in ("export", "generate"):
        return inference(args)
    if args.command == "merge":
        return merge_specialists(args)
    if args.command in ("repl", "runs", "history", "show", "report"):
        return review(args)
    return 2


def inference(args: argparse.Namespace) -> int:
    """export and generate: what a trained model is for."""
    from agent.rundir.runs import RunError
    from bitnet.checkpoint import CheckpointError

    try:
        if args.command == "export":
            from agent.cli.export import export

            return export(args.checkpoint, args.format, args.out, args.runs_dir)
        from agent.cli.generate import generate

        return generate(args)
    except (RunError, CheckpointError, ValueError) as err:
        return fail(str(err).splitlines()[0] if str(err) else type(err).__name__)


def merge_specialists(args: argparse.Namespace) -> int:
    from agent.merging.merge_run import merge_command, merge_errors, options_from_args

    try:
        return merge_command(args.base, args.specialist, args.method, options_from_args(args),
                             corpora=args.corpus, out=args.out, runs_dir=args.runs_dir,
                             as_json=args.json)
    except merge_errors() as err:
        return fail(str(err))


def review(args: argparse.Namespace) -> int:
    """The REPL and the review commands: they only read a run (and append to its
    control.jsonl), so they work on live and finished runs alike. Piped (not a terminal), they
    print whole values: tables as tab-separated lines, long lines unbroken."""
    from rich.console import Console

    from agent import review as rv
    from agent.review.listing import print_listing
    from agent.rundir.runs import RunError, find_run
    from sandbox.errors import GitError
    from sandbox.layout import EXP_REFS

    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal
    try:
        if args.command == "repl":
            from agent.repl.session import attach

            if args.experiments is not None and args.experiments < 1:
                return fail("--experiments must be at least 1")
            run_args = [f"--{name}={value}" for name in ("planner", "model", "experiments")
                        if (value := getattr(args, name)) is not None]
            run_args += ["--unconfined"] if args.unconfined else []
            return attach(args.run, args.runs_dir, run_args)
        if args.command == "runs":
            if args.json:
                console.file.write(rv.to_json(rv.runs_summary(args.runs_dir)))
            else:
                print_listing(console, rv.runs_table(args.runs_dir))
            return 0
        run = rv.Run.load(find_run(args.run, args.runs_dir))
        if args.command == "history":
            if args.last is not None and args.last < 1:
                return fail("--last must be at least 1")
            records = run.records()
            if args.json:
                console.file.write(rv.to_json(records[-args.last:] if args.last else records))
            elif not records:
                console.print(f"{run.id} has no finished experiment yet")
            else:
                print_listing(console, rv.history_table(run, records, args.last))
                if console.is_terminal:  # piped, the output is the rows alone
                    console.print(f"with plain git: git -C {run.sandbox.git.git_dir} log "
                                  f"--notes=magnet --glob={EXP_REFS}", markup=False,
                                  soft_wrap=True)
        elif args.command == "show" and (call := rv.parse_tool_call(args.exp)) is not None:
            if args.json:
                found = [c.as_dict() for c in run.tool_calls() if c.call == call]
                if not found:
                    return fail(f"{run.id} has no tool call {call}; `history` lists them")
                console.file.write(rv.to_json(found[0]))
            else:
                console.print(rv.show_tool_call(run, call))
        elif args.command == "show":
            exp = rv.parse_exp(args.exp)
            if args.json:
                console.file.write(rv.to_json(rv.experiment_detail(run, exp)))
            else:
                console.print(rv.show_experiment(run, exp))
        else:
            path = rv.regenerate_report(run)
            console.print(f"wrote {path} and {run.path / PROGRESS_PLOT}", markup=False,
                          soft_wrap=True)
        return 0
    except RunError as err:
        return fail(str(err))
    except GitError as err:
        return fail(f"git could not answer ({err}); is the run's workspace.git/ intact?")


def _ledger(args: argparse.Namespace) -> int:
    try:
        return ledger_command.main(args)
    except ledger_command.ledger_errors() as err:
        return fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
