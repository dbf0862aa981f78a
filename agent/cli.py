"""The `magnet-agent` command line."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version


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
    _runs_dir(run)

    resume = commands.add_parser("resume", help="continue a stopped run")
    resume.add_argument("run", help="run id (under runs/) or run directory")
    _runs_dir(resume)

    train = commands.add_parser("train", help="one time-budgeted training run of a template")
    train.add_argument("--template", default="bitnet-lm")
    train.add_argument("--corpus", default="pycode", help="pycode | pyprose | text:PATH")
    train.add_argument("--budget", type=float, default=60.0, help="training seconds")
    train.add_argument("--seed", type=int, default=1337)
    _runs_dir(train)

    repl = commands.add_parser("repl", help="steer and review a run interactively")
    repl.add_argument("run", nargs="?",
                      help="run id or directory (default: the newest run), or a GOAL.md to "
                           "start a run in the background")
    repl.add_argument("--planner", choices=["auto", "openai", "local", "search"],
                      help="for a new run: override the goal's planner")
    repl.add_argument("--model", help="for a new run: model name (openai) or path (local)")
    repl.add_argument("--experiments", type=int, help="for a new run: the experiment budget")
    _runs_dir(repl)

    _runs_dir(commands.add_parser("runs", help="list the runs, their status and best metric"))
    history = commands.add_parser("history", help="a run's experiments as a table")
    history.add_argument("run", help="run id or directory")
    history.add_argument("--last", type=int, metavar="N", help="only the last N experiments")
    _runs_dir(history)
    show = commands.add_parser("show", help="one experiment: hypothesis, diff, metrics, log")
    show.add_argument("run", help="run id or directory")
    show.add_argument("exp", help="experiment number, as 7 or 007")
    _runs_dir(show)
    report = commands.add_parser("report", help="regenerate a run's report.md and progress.png")
    report.add_argument("run", help="run id or directory")
    _runs_dir(report)
    return parser


def _runs_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--runs-dir", help="where runs are (default ./runs or MAGNET_RUNS_DIR)")


def fail(message: str) -> int:
    print(f"magnet-agent: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "resume"):
        from agent.goal import GoalError
        from agent.planners.base import PlannerError
        from agent.runner import RunError, resume_run, start_run
        from sandbox.errors import SandboxError

        if args.command == "run" and args.experiments is not None and args.experiments < 1:
            return fail("--experiments must be at least 1")
        try:
            if args.command == "run":
                start_run(args.goal, runs_dir=args.runs_dir, planner=args.planner,
                          model=args.model, experiments=args.experiments)
            else:
                resume_run(args.run, runs_dir=args.runs_dir)
        except (GoalError, RunError, PlannerError, SandboxError) as err:
            return fail(str(err))
        except KeyboardInterrupt:
            print("stopped; continue with `magnet-agent resume RUN`", file=sys.stderr)
            return 130
        return 0
    if args.command == "train":
        from agent.train_command import train

        if args.budget <= 0:
            return fail("--budget must be a positive number of seconds")
        return train(args.template, args.corpus, args.budget, args.seed, args.runs_dir)
    if args.command in ("repl", "runs", "history", "show", "report"):
        return review(args)
    return 2


def review(args: argparse.Namespace) -> int:
    """The REPL and the review commands: they only read a run (and append to its
    control.jsonl), so they work on live and finished runs alike."""
    from rich.console import Console

    from agent import review as rv
    from agent.rundir import find_run
    from sandbox.errors import GitError

    console = Console(highlight=False)
    try:
        if args.command == "repl":
            from agent.repl import attach

            if args.experiments is not None and args.experiments < 1:
                return fail("--experiments must be at least 1")
            run_args = [f"--{name}={value}" for name in ("planner", "model", "experiments")
                        if (value := getattr(args, name)) is not None]
            return attach(args.run, args.runs_dir, run_args)
        if args.command == "runs":
            console.print(rv.runs_table(args.runs_dir))
            return 0
        run = rv.Run.load(find_run(args.run, args.runs_dir))
        if args.command == "history":
            if args.last is not None and args.last < 1:
                return fail("--last must be at least 1")
            records = run.records()
            if not records:
                console.print(f"{run.id} has no finished experiment yet")
                return 0
            console.print(rv.history_table(run, records, args.last))
            console.print(f"with plain git: git -C {run.path / 'workspace'} log --notes=magnet "
                          "--glob=refs/magnet/exp", markup=False, soft_wrap=True)
        elif args.command == "show":
            console.print(rv.show_experiment(run, rv.parse_exp(args.exp)))
        else:
            path = rv.regenerate_report(run)
            console.print(f"wrote {path} and {run.path / 'progress.png'}", markup=False,
                          soft_wrap=True)
        return 0
    except rv.ReviewError as err:
        return fail(str(err))
    except GitError as err:
        return fail(f"git could not answer ({err}); is the run's workspace/ intact?")


if __name__ == "__main__":
    sys.exit(main())
