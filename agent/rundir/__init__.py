"""A run directory on disk: its file names (names), finding runs (runs), the append-only
records (records, tool_records), what baseline, better and best mean (ranking), steering files
(control), and which checkpoint a name means (checkpoint_ref, init_checkpoint)."""
