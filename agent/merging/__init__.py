"""Merging specialists of one base into one model and reporting what it cost (merge_run), for
`magnet-agent merge` and the merge tool."""
