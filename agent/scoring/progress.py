"""The progress line a template's training prints, read to draw a progress bar.

bitnet-lm's train.py prints `step N | loss X | ...` as it trains; `magnet-agent train` and a
ledger replay (agent.claims.ledger_ops) both show it. A line that does not match is not
progress, and nothing is scored from it (the score is agent.scoring.scorer's).
"""

from __future__ import annotations

import re

STEP_LINE = re.compile(r"^step\s+(\d+) \| loss ([\d.]+)")  # groups: step, loss
