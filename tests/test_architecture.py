"""The packages' arrows point one way: no import cycle, no lower package importing a higher one.

Every import counts, the ones inside functions too (a lazy import is still an arrow). The layers
are the design's (shared design card): bench → agent → merge → {bitnet, sandbox, ledger}; inside
agent/, the order of AGENT_LAYERS, lowest first. A module over MAX_LINES lines says why at its top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "sandbox", "bitnet", "merge", "ledger")
# what each top-level package may import besides itself
ALLOWED = {"agent": {"sandbox", "bitnet", "merge", "ledger"}, "merge": {"bitnet"},
           "sandbox": set(), "bitnet": set(), "ledger": set()}
AGENT_LAYERS = ("text", "goal", "rundir", "scoring", "claims", "merging", "planners", "teacher",
                "tools", "review", "loop", "repl", "cli")
MAX_LINES = 400
LENGTH_REASON = "Over 400 lines"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "templates" in path.parts:  # experiment code: a copy the researcher edits
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    return {t for t in targets if t in known and t != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def agent_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "agent" or len(parts) < 2:
        return None
    return AGENT_LAYERS.index(parts[1])


def test_every_agent_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in (ROOT / "agent").iterdir()
            if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert tops == set(AGENT_LAYERS)


def test_no_import_cycle(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_packages_import_only_downwards(graph):
    wrong = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                wrong.append(f"{module} -> {target}")
            layer, target_layer = agent_layer(module), agent_layer(target)
            if layer is not None and target_layer is not None and target_layer > layer:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_long_modules_say_why():
    unexplained = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and LENGTH_REASON not in (ast.get_docstring(
                ast.parse(text)) or ""):
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert not unexplained, (f"long modules without '{LENGTH_REASON} ...' in their docstring:\n"
                             + "\n".join(sorted(unexplained)))
