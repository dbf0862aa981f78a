"""The file names of a run directory `runs/<run-id>/`: the one place the agent spells them.

    run.json            how the run was started (resume needs no options)
    goal.md             the goal as it was when the run started
    experiments.jsonl   one full record per experiment (append-only)
    results.tsv         one line per experiment (append-only)
    tools.jsonl         the tool calls, two lines each (append-only)
    control.jsonl       steering commands, appended by anyone
    approval.json       the proposal waiting for a person's answer
    status.json         the live state
    checkpoints.sqlite  LangGraph's checkpoints
    report.md           the report, with progress.png
    controller.log      the output of a run the REPL started in the background
    exports/            what `export RUN` wrote
    tools/call-007/     what tool call 7 wrote
    init/               the run's own copy of the checkpoint it starts from (`init:`)

The sandbox's names (workspace/, workspace.git/, logs/, outputs/, sandbox.json, git refs) are
sandbox.layout's.
"""

RUN_FILE = "run.json"
GOAL_COPY = "goal.md"
EXPERIMENTS_FILE = "experiments.jsonl"
RESULTS_FILE = "results.tsv"
TOOLS_FILE = "tools.jsonl"
CONTROL_FILE = "control.jsonl"
APPROVAL_FILE = "approval.json"
STATUS_FILE = "status.json"
CHECKPOINTS = "checkpoints.sqlite"
CONTROLLER_LOG = "controller.log"  # a run started by the REPL in the background: its output
REPORT_FILE = "report.md"
PROGRESS_PLOT = "progress.png"
INIT_DIR = "init"
EXPORTS_DIR = "exports"  # `export RUN` writes exports/exp-NNN-hf/ (or -gguf) here
TOOL_CALLS_DIR = "tools"  # tools/call-007/: what tool call 7 wrote (a merge, a corpus)
