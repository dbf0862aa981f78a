"""The `magnet-agent` command line: one module per command, parsing arguments and printing
only."""
