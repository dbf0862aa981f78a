"""`magnet-agent run GOAL` and `magnet-agent resume RUN`: a research run, in the foreground.

The loop is agent.loop (agent.loop.launch starts and resumes it); this module parses and reports.
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import options
from agent.cli.errors import fail
from agent.goal.vocab import PLANNER_NAMES

COMMANDS = ("run", "resume")


def add_commands(commands: options.Subparsers) -> None:
    run = commands.add_parser("run", help="start a research run on a goal file")
    run.add_argument("goal", help="path of a GOAL.md (see goals/)")
    run.add_argument("--planner", choices=PLANNER_NAMES, help="override the goal's planner")
    run.add_argument("--model", help="model name (openai) or GGUF path (local)")
    run.add_argument("--experiments", type=int, help="override the experiment budget")
    options.unconfined(run)
    options.runs_dir(run)

    resume = commands.add_parser("resume", help="continue a stopped run")
    resume.add_argument("run", help="run id (under runs/) or run directory")
    options.runs_dir(resume)


def main(args: argparse.Namespace) -> int:
    """0 when the run finished, 1 when it failed, 2 when it could not start, 130 on Ctrl-C."""
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
