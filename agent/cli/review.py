"""`magnet-agent runs | history RUN | show RUN EXP | report RUN`: reading runs.

They only read a run (report rewrites its report.md and progress.png), so they work on live and
finished runs alike. Piped (not a terminal), they print whole values: tables as tab-separated
lines, long lines unbroken. What they read and render is agent.review.
"""

from __future__ import annotations

import argparse

from agent.cli import options
from agent.cli.errors import fail, git_failure

COMMANDS = ("runs", "history", "show", "report")


def add_commands(commands: options.Subparsers) -> None:
    runs = commands.add_parser("runs", help="list the runs, their status and best metric")
    options.json_flag(runs, "a list of runs: id, goal, status, experiments, metric, baseline, "
                            "best, verdict, path")
    options.runs_dir(runs)
    history = commands.add_parser("history", help="a run's experiments as a table")
    history.add_argument("run", help="run id or directory")
    history.add_argument("--last", type=int, metavar="N", help="only the last N experiments")
    options.json_flag(history, "the records, exactly as experiments.jsonl holds them")
    options.runs_dir(history)
    show = commands.add_parser("show", help="one experiment: hypothesis, diff, metrics, log")
    show.add_argument("run", help="run id or directory")
    show.add_argument("exp", help="experiment number, as 7 or 007; or a tool call, as tool:3")
    options.json_flag(show, "the record, its diff, log path and log tail")
    options.runs_dir(show)
    report = commands.add_parser("report", help="regenerate a run's report.md and progress.png")
    report.add_argument("run", help="run id or directory")
    options.runs_dir(report)


def main(args: argparse.Namespace) -> int:
    """0 when printed; 2 with one line when the run or experiment cannot be found or read."""
    from rich.console import Console

    from agent import review as rv
    from agent.review.listing import print_listing
    from agent.rundir.names import PROGRESS_PLOT
    from agent.rundir.runs import RunError, find_run
    from sandbox.errors import GitError
    from sandbox.layout import EXP_REFS

    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal
    try:
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
        return fail(git_failure(err))
