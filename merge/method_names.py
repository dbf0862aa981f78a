"""The names merge/ chooses among, torch-free: what a goal, the CLI and a tool offer.

`METHODS` are merge.methods' ways of merging specialists; `COMPRESSIONS` are merge.compress's
wire formats of DiLoCo pseudo-gradients. Both modules load torch, so the choices live here where
parsing a goal or building `magnet-agent --help` can read them without it.
"""

METHODS = ("linear", "task_arithmetic", "ties", "dare")
COMPRESSIONS = ("none", "fp16", "int8")
