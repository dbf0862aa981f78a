"""A diagnosis of a failed experiment without an LLM: what the log says, and what to try.

The advice is keyed on the failure's status, passed explicitly: a run's (sandbox.runner.STATUSES,
the scorer's INVALID_METRIC) or one of the loop's own codes defined here.
"""

from __future__ import annotations

import re

from agent.scoring.scorer import INVALID_METRIC

# the loop's own failure codes (the first two are also experiments' statuses in the records)
INVALID_EDIT = "invalid_edit"  # the edit did not apply, changes nothing, or broke the workspace
DUPLICATE = "duplicate"  # this exact change was already tried
INVALID_REPLY = "invalid_reply"  # the planner's reply held no valid proposal (no experiment)
CRASHED = "crashed"  # sandbox.runner's status of a run that exited with an error

ERROR_LINE = re.compile(r"^\s*(\w+(?:Error|Exception|Interrupt)|SystemExit)\b.*$|^\S.*Error: .*$")

ADVICE = {
    "timeout": "it ran past the time budget; make it cheaper or keep the time-budget check",
    "oom": "it ran out of memory; use a smaller model, batch or context",
    "no_metric": "it printed no METRIC line; keep the evaluation and reporting code intact",
    INVALID_METRIC: ("its printed metric is not what its checkpoint scores; report the "
                     "evaluation's value, and keep the model causal and loadable"),
    "log_limit": "it printed too much; log less often",
    "output_limit": "it wrote too much into its output directory; save only the checkpoint",
    INVALID_EDIT: ("the edit could not be used; copy the search text exactly from the current "
                   "code, and change something"),
    DUPLICATE: "that change was already tried; propose a different change",
    INVALID_REPLY: "reply with one JSON object that matches the schema",
}
OTHERWISE = "it crashed; fix the cause shown above or try a different change"


def rule_based_diagnosis(status: str | None, log_tail: str = "") -> str:
    """One or two sentences: the last error line of the log, and advice for the failure's
    `status`."""
    error = next((line.strip() for line in reversed(log_tail.splitlines())
                  if ERROR_LINE.match(line)), None)
    advice = ADVICE.get(status or "", OTHERWISE)
    if status == CRASHED and error is None:
        error = next((line.strip() for line in reversed(log_tail.splitlines()) if line.strip()),
                     None)
    return f"{error}: {advice}" if error else advice[0].upper() + advice[1:]
