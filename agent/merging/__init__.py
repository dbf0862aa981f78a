"""Merging specialists of one base into one model and reporting what it cost (merge_run), for
`magnet-agent merge` and the merge_specialists tool alike; the tensor maths is merge/."""
