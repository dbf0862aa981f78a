"""A diagnosis of a failed experiment without an LLM: what the log says, and what to try."""

from __future__ import annotations

import re

ERROR_LINE = re.compile(r"^\s*(\w+(?:Error|Exception|Interrupt)|SystemExit)\b.*$|^\S.*Error: .*$")

ADVICE = {
    "timeout": "it ran past the time budget; make it cheaper or keep the time-budget check",
    "oom": "it ran out of memory; use a smaller model, batch or context",
    "no_metric": "it printed no METRIC line; keep the evaluation and reporting code intact",
    "invalid_metric": ("its printed metric is not what its checkpoint scores; report the "
                       "evaluation's value, and keep the model causal and loadable"),
    "log_limit": "it printed too much; log less often",
    "invalid_edit": "the edit did not apply; copy the search text exactly from the current code",
    "duplicate": "that change was already tried; propose a different change",
    "planner gave no valid proposal": "reply with one JSON object that matches the schema",
}


def rule_based_diagnosis(failure: str, log_tail: str = "") -> str:
    """One or two sentences: the last error line of the log, and advice for the kind of failure."""
    error = next((line.strip() for line in reversed(log_tail.splitlines())
                  if ERROR_LINE.match(line)), None)
    advice = next((text for key, text in ADVICE.items() if key in failure),
                  "it crashed; fix the cause shown above or try a different change")
    if "crashed" in failure and error is None:
        error = next((line.strip() for line in reversed(log_tail.splitlines()) if line.strip()),
                     None)
    return f"{error}: {advice}" if error else advice[0].upper() + advice[1:]
