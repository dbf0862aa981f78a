"""`magnet-agent`'s command line: one module per command (main.py), parsing and printing only."""
