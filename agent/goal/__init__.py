"""Goal files: the YAML front matter's schema and loader (spec), and the knob constants of the
editable files (knob_values)."""
