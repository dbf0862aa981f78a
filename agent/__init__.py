"""The researcher: an LLM plans experiments on a goal, runs them in a sandbox, keeps or reverts.

Packages, lowest first (a package imports only from those before it; tests/test_architecture.py
checks it): text, goal, rundir, scoring, claims, merging, planners, teacher, tools, review, loop,
repl, cli.
"""
