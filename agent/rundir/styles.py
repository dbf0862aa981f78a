"""The colour of each experiment status, for every view of a run (live view, review, REPL)."""

STATUS_STYLE = {"baseline": "blue", "keep": "green", "discard": "yellow", "rejected": "cyan",
                "interrupted": "magenta"}
