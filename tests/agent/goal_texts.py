"""Goal files the agent tests write, each defined once."""

# a research run of fixed-step experiments on a text corpus, planned by the scripted server
KEPT_GOAL = """---
name: ledger-replay
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 3s, grace: 120s, experiments: 1, wall: 10m}}
planner: openai
model: scripted-model
env: [MAGNET_STEPS]
---
Lower val_bpb in a fixed number of training steps.
"""

# one 20 s experiment on a text corpus: what a run can see
PEEK_GOAL = """---
name: peeker
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 20s, experiments: 1, wall: 5m}}
---
Lower val_bpb.
"""
