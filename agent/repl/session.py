"""`magnet-agent repl`: steer a live run and review it, from any terminal.

The REPL talks to the run only through its directory: it appends commands to `control.jsonl`
(agent.rundir.control, the one validation of them) and reads the append-only records,
`status.json` and `approval.json`. It never takes the workspace lock, so a REPL that dies (or
several at once) never harms the run.

Here: attaching, the command loop and the commands. The command table is agent.repl.commands,
the prompts agent.repl.terminal, the approval dialog agent.repl.approval, the thread that tails
the run agent.repl.watcher, and starting a run in the background agent.repl.launch.
"""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from agent.goal.spec import parse_duration
from agent.repl.approval import Approvals
from agent.repl.commands import BUDGETS, COMMANDS, command_name
from agent.repl.launch import start_in_background
from agent.repl.terminal import WAKE, Terminal
from agent.repl.watcher import Watcher
from agent.review.detail import diff_between, diff_text, show_experiment, show_tool_call
from agent.review.plot import text_plot, write_progress_png
from agent.review.run import LIVE_STATES, Run
from agent.review.status import status_view
from agent.review.tables import history_table
from agent.rundir import control, ranking
from agent.rundir.runs import RunError, find_run, parse_exp, parse_tool_call
from sandbox.errors import GitError


class Repl:
    def __init__(self, run: Run, *, console: Console | None = None,
                 child: subprocess.Popen | None = None) -> None:
        self.run = run
        self.terminal = Terminal(console, lambda: [r["exp"] for r in run.records()])
        self.say, self.error = self.terminal.say, self.terminal.error
        self.approvals = Approvals(run.path, self.terminal)
        self.watcher = Watcher(run, self.terminal, self.approvals, child)

    # --- the loop ---------------------------------------------------------------------------

    def loop(self) -> int:
        self.say(Text.assemble("attached to ", (self.run.id, "bold"),
                               "; `help` lists the commands, `quit` leaves (the run goes on)"))
        self.say(status_view(self.run))
        with self.terminal.output_above_prompt():
            self.watcher.start()
            try:
                self._read_commands()
            finally:
                self.watcher.stop()
        if self.run.state() in LIVE_STATES:
            self.say(f"detached; the run goes on (attach again: magnet-agent repl {self.run.id})")
        return 0

    def _read_commands(self) -> None:
        carry = ""  # what was typed when an approval request interrupted the prompt
        while True:
            request = self.approvals.take()
            if request is not None:
                self.approvals.ask(request)
                continue
            try:
                line = self.terminal.prompt("command", "magnet> ", default=carry)
            except KeyboardInterrupt:
                carry = ""
                continue
            except EOFError:
                return
            if line == WAKE:
                carry = self.terminal.typed()
                continue
            carry = ""
            if not self.handle(line):
                return

    # --- commands ---------------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Run one command line; False to leave."""
        words = line.strip().split(maxsplit=1)
        if not words:
            return True
        name = command_name(words[0])
        arg = words[1].strip() if len(words) > 1 else ""
        if name == "quit":
            return False
        if name not in COMMANDS:
            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            fix = f"did you mean `{close[0]}`?" if close else "type `help` for the commands"
            self.error(f"unknown command {words[0]!r}; {fix}")
            return True
        try:
            getattr(self, f"cmd_{name}")(arg)
        except (RunError, control.ControlError) as err:
            self.error(str(err))
        except GitError as err:
            self.error(f"git could not answer ({err}); is {self.run.sandbox.git.git_dir} intact?")
        return True

    def cmd_help(self, arg: str) -> None:
        if arg:
            name = command_name(arg)
            if name not in COMMANDS:
                raise RunError(f"no command {arg!r}; type `help` for the commands")
            usage, summary = COMMANDS[name]
            self.say(Text.assemble((usage, "bold"), f"\n  {summary}"))
            return
        width = max(len(usage) for usage, _ in COMMANDS.values())
        for usage, summary in COMMANDS.values():
            self.say(Text.assemble((usage.ljust(width), "bold"), f"  {summary}"))

    def cmd_status(self, arg: str) -> None:
        _no_argument("status", arg)
        self.say(status_view(self.run))
        request = control.read_approval(self.run.path)
        if request is not None:
            self.say(f"exp {request['exp']:03d} waits for approval; `answer` to decide")

    def cmd_history(self, arg: str) -> None:
        last = None
        if arg:
            if not arg.isdigit() or int(arg) < 1:
                raise RunError(f"history takes a count, not {arg!r}: history 10")
            last = int(arg)
        records = self.run.records()
        if not records:
            raise RunError("no experiment has finished yet; `status` shows the one in flight")
        self.say(history_table(self.run, records, last))

    def cmd_show(self, arg: str) -> None:
        if not arg:
            raise RunError("show needs an experiment or a tool call: show 7, show tool:2")
        if (call := parse_tool_call(arg)) is not None:
            self.say(show_tool_call(self.run, call))
            return
        self.say(show_experiment(self.run, parse_exp(arg)))

    def cmd_best(self, arg: str) -> None:
        _no_argument("best", arg)
        records = self.run.records()
        record = ranking.best_record(records, self.run.goal)
        if record is None:  # the verdict says whether there is a baseline to beat yet
            self.say(ranking.verdict(records, self.run.goal))
            standing = ranking.standing_record(records, self.run.goal)
            if standing is not None:  # what `RUN` names elsewhere: the same one best
                self.say(f"{self.run.id} stands for its baseline, exp {standing['exp']:03d}, "
                         "in export, generate and merge")
            return
        self.say(show_experiment(self.run, record["exp"]))

    def cmd_diff(self, arg: str) -> None:
        words = arg.split()
        if len(words) != 2:
            raise RunError("diff needs two experiments: diff 3 7")
        a, b = (parse_exp(w) for w in words)
        diff = diff_between(self.run, a, b)
        self.say(diff_text(diff) if diff.strip() else
                 Text(f"exp {a:03d} and exp {b:03d} have the same code"))

    def cmd_plot(self, arg: str) -> None:
        _no_argument("plot", arg)
        records = self.run.records()
        width = max(20, min(100, self.terminal.console.width - 14))
        self.say(text_plot(records, self.run.metric, self.run.goal, width=width))
        if records:
            self.say(f"progress.png rewritten: {write_progress_png(self.run, records)}")

    def cmd_hint(self, arg: str) -> None:
        self._steer({"cmd": "hint", "text": arg},
                    "hint sent; it enters the next proposal's context")

    def cmd_pause(self, arg: str) -> None:
        _no_argument("pause", arg)
        self._steer({"cmd": "pause"}, "pause sent; the run holds before its next experiment")

    def cmd_resume(self, arg: str) -> None:
        _no_argument("resume", arg)
        self._steer({"cmd": "resume"}, "resume sent; the run goes on")

    def cmd_stop(self, arg: str) -> None:
        _no_argument("stop", arg)
        self._steer({"cmd": "stop"}, "stop sent; the run finishes after the current experiment")

    def cmd_budget(self, arg: str) -> None:
        """Reads the words into a command; its bounds are control.validate's, as for any
        sender."""
        words = arg.split()
        if len(words) != 2 or words[0] not in BUDGETS:
            raise RunError("budget takes experiments or wall and a number: "
                           "budget experiments 20, budget wall 30m")
        what, raw = words
        if what == "experiments":
            value: float | None = _whole_number(raw)
            if value is None:
                raise RunError(f"the experiment budget is a whole number, not {raw!r}: "
                               "budget experiments 20")
        else:
            try:
                value = parse_duration(raw)
            except ValueError as err:
                raise RunError(f"budget wall: {err}") from None
        self._steer({"cmd": "budget", "what": what, "value": value},
                    f"budget sent: {what} {value:g}{'s' if what == 'wall' else ''} "
                    "(applies before the next experiment)")

    def cmd_approve(self, arg: str) -> None:
        if arg.lower() not in ("on", "off"):
            raise RunError("approve takes on or off: approve on")
        on = arg.lower() == "on"
        self._steer({"cmd": "approve", "on": on},
                    "approval on: each proposal will wait for your yes / no / edit" if on else
                    "approval off: proposals run without asking")

    def cmd_answer(self, arg: str) -> None:
        _no_argument("answer", arg)
        request = control.read_approval(self.run.path)
        if request is None:
            raise RunError("no proposal waits for approval (turn it on with `approve on`)")
        self.approvals.ask_again(request)

    def _steer(self, command: dict[str, Any], sent: str) -> None:
        """Send `command` to the run (control.validate checks it first, whatever the run's
        state), and say `sent`."""
        control.validate(command)
        state = self.run.state()
        if state in ("finished", "stopped"):
            raise RunError(f"this run has {state}; nothing reads its commands any more "
                           "(start another with `magnet-agent repl GOAL.md`)")
        control.send(self.run.path, command)
        if state == "interrupted":
            sent += f"; nothing runs it now: it applies on `magnet-agent resume {self.run.id}`"
        self.say(sent)


def _whole_number(text: str) -> float | None:
    """`20` -> 20; None when `text` is not a whole number. One too long for int() is above
    every bound, so it reads as infinity (control.validate refuses it by its bound)."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:  # beyond int()'s 4,300 digits
        return float("inf")


def _no_argument(command: str, arg: str) -> None:
    if arg:
        raise RunError(f"{command} takes no argument (got {arg!r}); type `{command}`")


def attach(target: str | None, runs_dir: str | None = None,
           run_args: list[str] | None = None) -> int:
    """Attach to run `target` (id or path; the newest when None), or start `target` when it is
    a goal file and attach to the new run."""
    child = None
    if target is not None and Path(target).is_file():
        path, child = start_in_background(Path(target), runs_dir, run_args or [])
    elif run_args:
        raise RunError("--planner, --model and --experiments only apply when the REPL starts "
                       "a run: magnet-agent repl GOAL.md --planner search")
    else:
        path = find_run(target, runs_dir)
    return Repl(Run.load(path), child=child).loop()
