"""`magnet-agent repl`: steer a live run and review it, from any terminal.

The REPL talks to the run only through its directory: it appends commands to `control.jsonl`
(rundir.control) and reads the append-only records, `status.json` and `approval.json`. It never
takes the workspace lock, so a REPL that dies (or several at once) never harms the run.

A background thread tails the run: it prints a line per finished experiment and state change
(above the prompt, through prompt_toolkit's patch_stdout) and, when a proposal waits for
approval, interrupts the prompt so the main thread can ask yes / no / edit.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout
from rich.console import Console, RenderableType
from rich.text import Text

from agent.review.run import (
    LIVE_STATES,
    ReviewError,
    Run,
    diff_between,
    diff_text,
    history_table,
    parse_exp,
    parse_tool_call,
    record_line,
    show_experiment,
    show_tool_call,
    status_view,
    text_plot,
    tool_line,
    write_progress_png,
)
from agent.rundir import control, ranking
from agent.rundir.names import GOAL_COPY, RUN_FILE
from agent.rundir.runs import find_run, runs_root
from agent.text import text_problem
from sandbox.errors import GitError

POLL_SECONDS = 0.3
START_TIMEOUT = 120.0  # seconds for a background run to create its run directory
WAKE = "\x00wake"  # what an interrupted prompt returns

COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "what the run is doing: state, experiment in flight, budget, best"),
    "history": ("history [N]", "the experiments so far, or the last N"),
    "show": ("show EXP", "one experiment (7 or 007): hypothesis, rationale, diff, metrics, log; "
                         "or a tool call (tool:3)"),
    "best": ("best", "the best kept experiment"),
    "diff": ("diff A B", "the code of experiment B against that of experiment A"),
    "plot": ("plot", "the metric per experiment in the terminal; also rewrites progress.png"),
    "hint": ("hint TEXT", "a hint for the next proposal; it is kept in that experiment's record"),
    "pause": ("pause", "hold the run before its next experiment"),
    "resume": ("resume", "let a paused run go on"),
    "stop": ("stop", "finish the run after the current experiment"),
    "budget": ("budget experiments|wall N",
               "change the budget: experiments N, or wall N seconds (also 30m, 2h)"),
    "approve": ("approve on|off",
                "on: each proposal waits for your yes / no / edit before it runs"),
    "answer": ("answer", "answer the proposal that waits for approval"),
    "help": ("help [COMMAND]", "the commands, or one command's usage"),
    "quit": ("quit", "leave the REPL; the run goes on (also exit, Ctrl-D)"),
}
ALIASES = {"exit": "quit", "q": "quit", "?": "help"}


class Repl:
    def __init__(self, run: Run, *, console: Console | None = None,
                 child: subprocess.Popen | None = None) -> None:
        self.run = run
        self.console = console or Console(highlight=False)
        self.child = child  # the run this REPL started, if it did
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.sessions: dict[str, PromptSession[str]] = {}
        if self.tty:  # without a terminal: plain input() lines (scripts)
            self.sessions = {
                "command": PromptSession(history=_history(), complete_while_typing=False,
                                         completer=CommandCompleter(self._exp_numbers)),
                "answer": PromptSession(),  # answers stay out of the command history
            }
        self._lock = threading.Lock()
        self._active: Application[Any] | None = None  # the prompt the watcher may interrupt
        self._pending: dict[str, Any] | None = None  # an approval request to ask about
        self._handling: int | None = None  # the experiment being asked about
        self._settled: set[int] = set()  # answered or put off: not asked again by itself
        self._seen = len(run.records())
        self._seen_calls = len([c for c in run.tool_calls() if c.finished])
        self._state = self._last_state = self._state_news()[0]
        self._done = threading.Event()

    # --- the loop ---------------------------------------------------------------------------

    def loop(self) -> int:
        self.say(Text.assemble("attached to ", (self.run.id, "bold"),
                               "; `help` lists the commands, `quit` leaves (the run goes on)"))
        self.say(status_view(self.run))
        with patch_stdout(raw=True) if self.tty else contextlib.nullcontext():
            watcher = threading.Thread(target=self._watch, daemon=True, name="repl-watch")
            watcher.start()
            try:
                self._read_commands()
            finally:
                self._done.set()
                watcher.join(timeout=2)
        if self.run.state() in LIVE_STATES:
            self.say(f"detached; the run goes on (attach again: magnet-agent repl {self.run.id})")
        return 0

    def _read_commands(self) -> None:
        carry = ""  # what was typed when an approval request interrupted the prompt
        while True:
            request = self._take_pending()
            if request is not None:
                self._approve(request)
                continue
            try:
                line = self._prompt("command", "magnet> ", default=carry)
            except KeyboardInterrupt:
                carry = ""
                continue
            except EOFError:
                return
            if line == WAKE:
                carry = self.sessions["command"].default_buffer.text
                continue
            carry = ""
            if not self.handle(line):
                return

    def _prompt(self, kind: str, message: str, default: str = "") -> str:
        if not self.tty:
            return input(message)
        session = self.sessions[kind]
        with self._lock:
            self._active = session.app
        try:
            return session.prompt(message, default=default)
        finally:
            with self._lock:
                self._active = None

    def _wake(self) -> None:
        """Make the running prompt return WAKE (called from the watcher thread)."""
        with self._lock:
            app = self._active
        if app is None or app.loop is None:
            return

        def exit_prompt() -> None:
            if app.is_running and app.future is not None and not app.future.done():
                app.exit(result=WAKE)

        with contextlib.suppress(RuntimeError):  # the prompt's loop just closed: no prompt
            app.loop.call_soon_threadsafe(exit_prompt)

    # --- commands ---------------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Run one command line; False to leave."""
        words = line.strip().split(maxsplit=1)
        if not words:
            return True
        name = ALIASES.get(words[0].lower(), words[0].lower())
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
        except (ReviewError, control.ControlError) as err:
            self.error(str(err))
        except GitError as err:
            self.error(f"git could not answer ({err}); is {self.run.sandbox.git.git_dir} intact?")
        return True

    def cmd_help(self, arg: str) -> None:
        if arg:
            name = ALIASES.get(arg.lower(), arg.lower())
            if name not in COMMANDS:
                raise ReviewError(f"no command {arg!r}; type `help` for the commands")
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
                raise ReviewError(f"history takes a count, not {arg!r}: history 10")
            last = int(arg)
        records = self.run.records()
        if not records:
            raise ReviewError("no experiment has finished yet; `status` shows the one in flight")
        self.say(history_table(self.run, records, last))

    def cmd_show(self, arg: str) -> None:
        if not arg:
            raise ReviewError("show needs an experiment or a tool call: show 7, show tool:2")
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
            return
        self.say(show_experiment(self.run, record["exp"]))

    def cmd_diff(self, arg: str) -> None:
        words = arg.split()
        if len(words) != 2:
            raise ReviewError("diff needs two experiments: diff 3 7")
        a, b = (parse_exp(w) for w in words)
        diff = diff_between(self.run, a, b)
        self.say(diff_text(diff) if diff.strip() else
                 Text(f"exp {a:03d} and exp {b:03d} have the same code"))

    def cmd_plot(self, arg: str) -> None:
        _no_argument("plot", arg)
        records = self.run.records()
        width = max(20, min(100, self.console.width - 14))
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
        from agent.goal.spec import parse_duration

        words = arg.split()
        if len(words) != 2 or words[0] not in ("experiments", "wall"):
            raise ReviewError("budget takes experiments or wall and a number: "
                              "budget experiments 20, budget wall 30m")
        what, raw = words
        if what == "experiments":
            if not raw.isdigit() or int(raw) < 1:
                raise ReviewError(f"the experiment budget is a whole number, not {raw!r}: "
                                  "budget experiments 20")
            value: float = int(raw)
        else:
            try:
                value = parse_duration(raw)
            except ValueError as err:
                raise ReviewError(f"budget wall: {err}") from None
        self._steer({"cmd": "budget", "what": what, "value": value},
                    f"budget sent: {what} {value:g}{'s' if what == 'wall' else ''} "
                    "(applies before the next experiment)")

    def cmd_approve(self, arg: str) -> None:
        if arg.lower() not in ("on", "off"):
            raise ReviewError("approve takes on or off: approve on")
        on = arg.lower() == "on"
        self._steer({"cmd": "approve", "on": on},
                    "approval on: each proposal will wait for your yes / no / edit" if on else
                    "approval off: proposals run without asking")

    def cmd_answer(self, arg: str) -> None:
        _no_argument("answer", arg)
        request = control.read_approval(self.run.path)
        if request is None:
            raise ReviewError("no proposal waits for approval (turn it on with `approve on`)")
        with self._lock:
            self._settled.discard(request["exp"])
            self._pending = request

    def _steer(self, command: dict[str, Any], sent: str) -> None:
        state = self.run.state()
        if state in ("finished", "stopped"):
            raise ReviewError(f"this run has {state}; nothing reads its commands any more "
                              "(start another with `magnet-agent repl GOAL.md`)")
        control.send(self.run.path, command)
        if state == "interrupted":
            sent += f"; nothing runs it now: it applies on `magnet-agent resume {self.run.id}`"
        self.say(sent)

    # --- approval ---------------------------------------------------------------------------

    def _take_pending(self) -> dict[str, Any] | None:
        with self._lock:
            request, self._pending = self._pending, None
            self._handling = request["exp"] if request is not None else None
        return request

    def _approve(self, request: dict[str, Any]) -> None:
        exp = request["exp"]
        self.say(Text(f"exp {exp:03d} waits for your approval", "bold yellow"))
        self.say(Text.assemble(("hypothesis: ", "bold"), str(request.get("hypothesis", ""))))
        if request.get("rationale"):
            self.say(Text.assemble(("rationale: ", "bold"), str(request["rationale"])))
        self.say(diff_text(request.get("diff") or "(the proposal changes nothing)"))
        try:
            decision = self._ask_decision(exp)
        finally:
            with self._lock:
                self._settled.add(exp)
                self._handling = None
        if decision is None:
            return
        control.send(self.run.path, {"cmd": "answer", "exp": exp, **decision})
        self.say({"yes": f"approved: exp {exp:03d} runs",
                  "no": f"rejected: exp {exp:03d} is reverted unrun and recorded as rejected",
                  "edit": f"approved with your hypothesis: exp {exp:03d} runs"}
                 [decision["decision"]])

    def _ask_decision(self, exp: int) -> dict[str, Any] | None:
        """yes / no / edit (with the new hypothesis); None when put off or no longer asked."""
        while True:
            try:
                answer = self._prompt("answer", "run it? yes / no / edit> ").strip().lower()
                if answer in ("e", "edit"):
                    hypothesis = self._prompt("answer", "new hypothesis (empty: back)> ").strip()
                    if hypothesis == WAKE:
                        answer = WAKE
                    elif hypothesis and (problem := text_problem(hypothesis, one_line=True)):
                        self.error(f"the hypothesis {problem}; type one line of plain text")
                        continue
                    elif hypothesis:
                        return {"decision": "edit", "hypothesis": hypothesis}
                    else:
                        continue
            except (KeyboardInterrupt, EOFError):
                self.say(f"exp {exp:03d} still waits; `answer` decides it later")
                return None
            if answer == WAKE:
                request = control.read_approval(self.run.path)
                if request is not None and request.get("exp") == exp:
                    continue  # a stray wake-up
                self.say(f"exp {exp:03d} no longer waits (answered elsewhere, approval turned "
                         "off, or the run stopped)")
                return None
            if answer in ("y", "yes", "n", "no"):
                return {"decision": "yes" if answer.startswith("y") else "no"}
            self.error(f"{answer!r} is not an answer; type yes, no or edit "
                       "(Ctrl-C decides later)")

    # --- watching the run -------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            try:
                self._poll()
            except (OSError, ValueError, KeyError):
                continue  # a file caught mid-write: the next poll reads it whole

    def _poll(self) -> None:
        records = self.run.records()
        if len(records) > self._seen:
            best = ranking.best_so_far(records, self.run.goal)
            for i in range(self._seen, len(records)):
                self.say(record_line(records[i], self.run.metric, best[i]))
            self._seen = len(records)
        calls = [c for c in self.run.tool_calls() if c.finished]
        for call in calls[self._seen_calls:]:
            self.say(tool_line(call))
        self._seen_calls = len(calls)
        if self.child is not None:
            self.child.poll()  # reap the run this REPL started once it ends
        self._announce_state()
        request = control.read_approval(self.run.path)
        with self._lock:
            handling = self._handling
            if (request is not None and self._pending is None and handling is None
                    and request["exp"] not in self._settled):
                self._pending = request
            wake = self._pending is not None or (
                handling is not None and (request is None or request["exp"] != handling))
        if wake:
            self._wake()

    def _announce_state(self) -> None:
        """Print a state change once two polls agree (the run's files change in steps)."""
        key, news = self._state_news()
        if key != self._state:
            self._state = key
        elif key != self._last_state:
            self._last_state = key
            if news is not None:
                self.say(news)

    def _state_news(self) -> tuple[str, Text | None]:
        """The run's state as a key that changes when there is news, and that news."""
        state = self.run.state()
        status = self.run.status() or {}
        if state == "running":
            return f"running:{status.get('exp')}", Text(
                f"exp {status.get('exp') or 0:03d} running: {status.get('hypothesis') or ''}",
                "dim")
        if state == "paused":
            return state, Text("the run is paused; `resume` lets it go on", "yellow")
        if state in ("finished", "stopped"):
            reason = self.run.stop_reason()
            if reason is None and self.run.controller_pid() is not None:
                return "finishing", None  # news once status.json says why
            return state, Text(f"the run {state}: {reason or 'done'}; `history` and `plot` "
                               "review it", "bold")
        if state == "interrupted":
            return state, Text("the run stopped (no process runs it); continue it with "
                               f"`magnet-agent resume {self.run.id}`", "yellow")
        return state, None

    # --- output -----------------------------------------------------------------------------

    def say(self, what: RenderableType) -> None:
        self.console.print(what, markup=False, highlight=False)

    def error(self, message: str) -> None:
        self.console.print(Text(message, "red"), markup=False, highlight=False)

    def _exp_numbers(self) -> list[int]:
        return [r["exp"] for r in self.run.records()]


class CommandCompleter(Completer):
    """Commands, then their arguments: experiments, on/off, experiments/wall."""

    def __init__(self, exps: Callable[[], list[int]]) -> None:
        self.exps = exps

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text.endswith(" ") else words[-1]
        position = len(words) - (1 if current else 0)  # index of the word being completed
        if position == 0:
            options = [*COMMANDS, *ALIASES]
        else:
            options = self._arguments(words[0].lower(), position)
        for option in options:
            if option.startswith(current.lower()):
                yield Completion(option, start_position=-len(current))

    def _arguments(self, command: str, position: int) -> list[str]:
        if position == 1 and command == "budget":
            return ["experiments", "wall"]
        if position == 1 and command == "approve":
            return ["on", "off"]
        if position == 1 and command == "help":
            return list(COMMANDS)
        if (command == "show" and position == 1) or (command == "diff" and position in (1, 2)):
            return [f"{exp:03d}" for exp in self.exps()]
        return []


# --- starting and attaching -----------------------------------------------------------------


def attach(target: str | None, runs_dir: str | None = None,
           run_args: list[str] | None = None) -> int:
    """Attach to run `target` (id or path; the newest when None), or start `target` when it is
    a goal file and attach to the new run."""
    child = None
    if target is not None and Path(target).is_file():
        path, child = start_in_background(Path(target), runs_dir, run_args or [])
    elif run_args:
        raise ReviewError("--planner, --model and --experiments only apply when the REPL starts "
                          "a run: magnet-agent repl GOAL.md --planner search")
    else:
        path = find_run(target, runs_dir)
    return Repl(Run.load(path), child=child).loop()


def start_in_background(goal: Path, runs_dir: str | None,
                        run_args: list[str]) -> tuple[Path, subprocess.Popen]:
    """Start `magnet-agent run GOAL` detached from this terminal (its own session, output to
    the run's controller.log), and wait for its run directory."""
    from agent.goal.spec import GoalError, load_goal

    try:
        name = load_goal(goal).spec.name  # a broken goal fails here, in one line
    except GoalError as err:
        raise ReviewError(str(err)) from None
    root = runs_root(runs_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    log = root / f".controller-{os.getpid()}-{time.time_ns()}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", "run", str(goal.resolve()),
             "--runs-dir", str(root), *run_args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # Ctrl-C or a closed terminal here never reaches the run
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        made = [p for p in root.glob(f"{name}-*")
                if p not in before and (p / RUN_FILE).is_file() and (p / GOAL_COPY).is_file()]
        if made:
            os.replace(log, made[0] / "controller.log")  # the open file moves with it
            _wait_live(Run.load(made[0]), child)
            print(f"started {made[0].name} in the background (pid {child.pid}); its output "
                  f"goes to {made[0] / 'controller.log'}")
            return made[0], child
        if child.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines()
            log.unlink(missing_ok=True)
            raise ReviewError(f"the run did not start: {lines[-1] if lines else 'no output'}")
        time.sleep(0.1)
    raise ReviewError(f"the run (pid {child.pid}) made no run directory under {root} in "
                      f"{START_TIMEOUT:.0f}s; see {log}")


def _wait_live(run: Run, child: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until the new run holds its workspace and so reads as live (not as interrupted)."""
    deadline = time.monotonic() + timeout
    while run.state() == "interrupted" and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _history() -> History:
    """Command history shared by every REPL: ~/.cache/magnet/repl_history."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "magnet"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return FileHistory(str(cache / "repl_history"))
    except OSError:
        return InMemoryHistory()


def _no_argument(command: str, arg: str) -> None:
    if arg:
        raise ReviewError(f"{command} takes no argument (got {arg!r}); type `{command}`")

