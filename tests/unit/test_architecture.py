"""The layers of migrator/, read from every module's imports (ast, so also imports inside functions and
TYPE_CHECKING blocks): no import circle between modules, and no package importing one above it.

The order is the one docs/architecture.md draws; a new package must be placed in LAYERS before it can
import or be imported."""

from __future__ import annotations

import ast
from pathlib import Path

import migrator

ROOT = Path(migrator.__file__).parent

# Top to bottom. A package may import its own modules and any package in a lower layer; packages that
# share a layer are independent of each other. "(root)" is the single modules beside the packages
# (errors, durable, retry, strictjson, jsonschemas, faults, threads, the version).
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),
    ("serve",),
    ("ops", "notify"),
    ("stack",),
    ("catalog", "plan"),
    ("state",),
    ("storage",),
    ("remote", "engine", "archive"),
    ("(root)",),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["migrator", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The migrator modules `name` imports (the most specific module each import names)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "(root)"
    if len(parts) == 2 and (ROOT / f"{parts[1]}.py").exists():
        return "__main__" if parts[1] == "__main__" else "(root)"
    return parts[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_graph_is_read():
    graph = _graph()
    assert "migrator.stack.quiesce" in graph["migrator.ops.backup"]
    assert "migrator.state.journal" in graph["migrator.stack.quiesce"]
    assert "migrator.ops.deploy" in graph["migrator.ops.recover"]  # an import inside a function counts


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_package_has_a_layer():
    missing = sorted({_package(m) for m in _graph()} - set(RANK))
    assert missing == [], f"place these packages in LAYERS (and docs/architecture.md): {missing}"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if dst != src and RANK.get(dst, -1) <= RANK.get(src, len(LAYERS)):
                wrong.append(f"{module} ({src}) imports {target} ({dst})")
    return sorted(wrong)


def test_no_package_imports_one_above_it_or_beside_it():
    assert _upward(_graph()) == []


def test_the_layer_check_finds_an_upward_and_a_sideways_import():
    graph = {"migrator.state.journal": {"migrator.ops.recover"}, "migrator.ops.backup": {"migrator.notify.hooks"},
             "migrator.ops.recover": {"migrator.state.journal"}}
    assert _upward(graph) == ["migrator.ops.backup (ops) imports migrator.notify.hooks (notify)",
                              "migrator.state.journal (state) imports migrator.ops.recover (ops)"]


# Module docstrings: one line saying what the module owns, then a few lines of why at most.
MAX_DOCSTRING_LINES = 8


def _docstring_problems(rel: str, docstring: str | None) -> list[str]:
    if not docstring:
        return [f"{rel}: no module docstring"]
    lines = docstring.splitlines()
    problems = []
    if len(lines) > 1 and lines[1].strip():
        problems.append(f"{rel}: the first line of the docstring runs on (one line, then a blank line)")
    if len(lines) > MAX_DOCSTRING_LINES:
        problems.append(f"{rel}: docstring of {len(lines)} lines (at most {MAX_DOCSTRING_LINES}; detail goes "
                        "to docs/ or to the class or function it describes)")
    return problems


def test_every_module_docstring_is_one_line_then_a_short_why():
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        problems += _docstring_problems(rel, ast.get_docstring(ast.parse(path.read_text(), str(path))))
    assert problems == []


def test_the_docstring_check_finds_a_missing_a_run_on_and_a_long_one():
    assert _docstring_problems("a.py", None) == ["a.py: no module docstring"]
    assert _docstring_problems("b.py", "What b owns.\n\nWhy.") == []
    assert len(_docstring_problems("c.py", "What c\nowns.")) == 1
    assert len(_docstring_problems("d.py", "What d owns.\n" + "\nwhy" * 8)) == 1
