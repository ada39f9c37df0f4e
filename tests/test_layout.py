"""The package's layout: imports point one way (no cycle), no module reaches into another's
underscore names, files stay short, and `import charrnn` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"
MAX_LINES = 320  # "about 300"; a longer file says in its docstring why it stays whole ("stays whole")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """charrnn modules `path` imports anywhere in its body (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return found


def private_imports(path: Path, known: dict[str, Path]) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in known and node.module != module_name(path):
            bad += [
                f"{module_name(path)} imports {node.module}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    known = modules()
    # A package's __init__ importing its own submodules is how a package is assembled, not a cycle.
    graph = {
        name: {
            m
            for m in imports_of(path, known)
            if m != name and not (path.name == "__init__.py" and m.startswith(name + "."))
        }
        for name, path in known.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_module_imports_another_modules_underscore_names() -> None:
    known = modules()
    bad = [line for path in known.values() for line in private_imports(path, known)]
    assert not bad, bad


def test_files_stay_short_or_say_why() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and "stays whole" not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {text.count(chr(10))} lines")
    assert not long, long


def test_import_charrnn_loads_neither_torch_nor_numpy() -> None:
    code = "import sys, charrnn; print(sorted(m for m in ('torch', 'numpy', 'typer') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
