"""Reviewing a run from its directory, read-only and safe on a live run: `run` (the Run),
`tables` (history, every run), `detail` (one experiment or tool call, diffs), `status`, `plot`
(terminal and png), `report` (report.md), `lines` and `listing` (shared formatting).

The names the review commands use are gathered here, for `from agent import review as rv`.
"""

from agent.review.detail import experiment_detail, show_experiment, show_tool_call
from agent.review.lines import to_json
from agent.review.report import regenerate_report
from agent.review.run import Run
from agent.review.tables import history_table, runs_summary, runs_table
from agent.rundir.runs import parse_exp, parse_tool_call

__all__ = ["Run", "experiment_detail", "history_table", "parse_exp", "parse_tool_call",
           "regenerate_report", "runs_summary", "runs_table", "show_experiment",
           "show_tool_call", "to_json"]
