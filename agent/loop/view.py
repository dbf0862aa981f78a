"""What a person watching a run sees: a rich live view on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agent.rundir import ranking
from agent.rundir.records import tokens_of
from agent.rundir.styles import status_style

SHOWN_ROWS = 10


class RunView:
    def __init__(self, run_id: str, metric: str, goal: str, planner: str,
                 console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console()
        self.run_id, self.metric, self.goal, self.planner = run_id, metric, goal, planner
        self.records: list[dict[str, Any]] = []
        self.current: tuple[int, str, float, float] | None = None  # exp, hypothesis, budget, t0
        self.last_line = ""
        self.last_message = ""
        self.live_mode = self.console.is_terminal if live is None else live
        self._live: Live | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> RunView:
        if self.live_mode:
            self._live = Live(self, console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def preload(self, records: list[dict[str, Any]]) -> None:
        """Show what a resumed run already did."""
        self.records = list(records)

    # --- events ---------------------------------------------------------------------------

    def experiment_started(self, exp: int, hypothesis: str, budget: float) -> None:
        self.current = (exp, hypothesis, budget, time.monotonic())
        self.last_line = ""
        self._plain(f"exp {exp:03d} started: {hypothesis}")

    def line(self, text: str) -> None:
        self.last_line = text.strip()[:120]

    def recorded(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.current = None
        metric = record.get("metric")
        shown = "-" if metric is None else f"{metric:.4f}"
        self._plain(f"exp {record['exp']:03d} {record['status']}: {self.metric}={shown} "
                    f"({ranking.verdict(self.records, self.goal)})")

    def message(self, text: str) -> None:
        self.last_message = text
        self._plain(text)

    def _plain(self, text: str) -> None:
        if not self.live_mode:
            self.console.print(text, markup=False, highlight=False)
        elif self._live is not None:
            self._live.console.print(Text(text, style="dim"))

    # --- rendering ------------------------------------------------------------------------

    def __rich__(self) -> Group:
        tokens = sum(tokens_of(r) for r in self.records)
        header = Text.assemble(
            (f"{self.run_id}", "bold"), f"  planner {self.planner}  {self.metric}: ",
            (ranking.verdict(self.records, self.goal), "bold green"), f"  tokens {tokens:,}",
        )
        table = Table(expand=True, show_edge=False)
        for column, justify in (("exp", "right"), ("status", "left"),
                                (self.metric, "right"), ("hypothesis", "left")):
            table.add_column(column, justify=justify, no_wrap=column != "hypothesis")
        for r in self.records[-SHOWN_ROWS:]:
            metric = r.get("metric")
            status = Text(r["status"], status_style(r["status"]))
            table.add_row(f"{r['exp']:03d}", status, "-" if metric is None else f"{metric:.4f}",
                          r.get("hypothesis", ""))
        parts: list[Any] = [header, table]
        if self.current is not None:
            exp, hypothesis, budget, t0 = self.current
            elapsed = time.monotonic() - t0
            parts += [Text(f"exp {exp:03d}: {hypothesis}", style="bold"),
                      ProgressBar(total=budget, completed=min(elapsed, budget), width=60),
                      Text(f"{elapsed:5.0f}s / {budget:g}s  {self.last_line}", style="dim")]
        elif self.last_message:
            parts.append(Text(self.last_message, style="dim"))
        return Group(*parts)
