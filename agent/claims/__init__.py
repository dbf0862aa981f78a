"""Ledger claims of kept improvements: building one (claim), replaying one (replay), and doing
either against a ledger (ledger_ops), for the CLI and the ledger tools alike."""
