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
    run.add_argument("--runs-dir", help="where runs go (default ./runs or MAGNET_RUNS_DIR)")

    resume = commands.add_parser("resume", help="continue a stopped run")
    resume.add_argument("run", help="run id (under runs/) or run directory")
    resume.add_argument("--runs-dir", help="where runs are (default ./runs or MAGNET_RUNS_DIR)")

    train = commands.add_parser("train", help="one time-budgeted training run of a template")
    train.add_argument("--template", default="bitnet-lm")
    train.add_argument("--corpus", default="pycode", help="pycode | pyprose | text:PATH")
    train.add_argument("--budget", type=float, default=60.0, help="training seconds")
    train.add_argument("--seed", type=int, default=1337)
    train.add_argument("--runs-dir", help="where runs go (default ./runs or MAGNET_RUNS_DIR)")
    return parser


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
    return 2


if __name__ == "__main__":
    sys.exit(main())
