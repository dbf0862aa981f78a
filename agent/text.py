"""Text from outside (planner replies, a person's hints and answers): what may enter the run.

It reaches git commit messages, the journal, prompts and the terminal, so it must be plain text:
not blank, no NUL or other control characters, no unpaired surrogates (which no file encodes).
"""

from __future__ import annotations

import re

_CONTROL = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff"
_IN_TEXT = re.compile(f"[{_CONTROL}]")  # line breaks and tabs allowed: a rationale, a hint
_IN_LINE = re.compile(f"[\t\n{_CONTROL}]")  # one line: a hypothesis


def text_problem(text: str, *, one_line: bool) -> str | None:
    """What is wrong with `text` as plain text ("is blank", "contains '\\x00'"), or None."""
    if not text.strip():
        return "is blank"
    bad = (_IN_LINE if one_line else _IN_TEXT).search(text)
    return None if bad is None else f"contains the control character {bad[0]!r}"
