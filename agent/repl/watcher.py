"""The REPL's run watcher: a background thread that tails the run's directory.

It prints a line per finished experiment, tool call and state change (above the prompt), and
wakes the prompt when a proposal waits for approval (agent.repl.approval). It only reads.
"""

from __future__ import annotations

import subprocess
import threading

from rich.text import Text

from agent.repl.approval import Approvals
from agent.repl.terminal import Terminal
from agent.review.lines import record_line, tool_line
from agent.review.run import Run
from agent.rundir import control, ranking

POLL_SECONDS = 0.3


class Watcher:
    def __init__(self, run: Run, terminal: Terminal, approvals: Approvals,
                 child: subprocess.Popen | None = None) -> None:
        self.run = run
        self.terminal = terminal
        self.approvals = approvals
        self.child = child  # the run this REPL started, if it did: reaped once it ends
        self._seen = len(run.records())
        self._seen_calls = len([c for c in run.tool_calls() if c.finished])
        self._state = self._last_state = self._state_news()[0]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="repl-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            try:
                self._poll()
            except (OSError, ValueError, KeyError):
                continue  # a file caught mid-write: the next poll reads it whole

    def _poll(self) -> None:
        say = self.terminal.say
        records = self.run.records()
        if len(records) > self._seen:
            best = ranking.best_so_far(records, self.run.goal)
            for i in range(self._seen, len(records)):
                say(record_line(records[i], self.run.metric, best[i]))
            self._seen = len(records)
        calls = [c for c in self.run.tool_calls() if c.finished]
        for call in calls[self._seen_calls:]:
            say(tool_line(call))
        self._seen_calls = len(calls)
        if self.child is not None:
            self.child.poll()  # reap the run this REPL started once it ends
        self._announce_state()
        if self.approvals.notice(control.read_approval(self.run.path)):
            self.terminal.wake()

    def _announce_state(self) -> None:
        """Print a state change once two polls agree (the run's files change in steps)."""
        key, news = self._state_news()
        if key != self._state:
            self._state = key
        elif key != self._last_state:
            self._last_state = key
            if news is not None:
                self.terminal.say(news)

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
