"""`magnet-agent repl`: steering and reviewing a live run through its directory."""
