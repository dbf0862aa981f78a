"""Reading a run for people: tables, experiment details, the terminal plot (run), report.md and
progress.png (report), and tab-separated listings (listing)."""
