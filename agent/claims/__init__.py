"""Ledger claims of kept improvements: what a claim carries (claim) and the verifier's replay
of it (replay)."""
