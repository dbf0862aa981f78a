"""The score of an experiment's run, from where the experiment cannot forge it (scorer), with
what a replay needs (replay_facts) and what the run must not read (private_paths)."""
