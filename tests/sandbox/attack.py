"""Running a hostile script as an experiment, for the confinement tests (test_confine,
test_view): tests/sandbox/conftest.py puts this folder on sys.path."""

from __future__ import annotations

from sandbox import Workspace
from sandbox.runner import RunResult


def run_in(ws: Workspace, script: str, exp: int = 0, **kw) -> RunResult:
    """Run `script` (Python, saved as an untracked file in the workspace) as experiment `exp`."""
    (ws.path / "attack.py").write_text(script)
    ws.begin(exp, "attack")
    ws.commit()
    kw.setdefault("time_budget", 20)
    kw.setdefault("grace", 10)
    return ws.run("python attack.py", **kw)
