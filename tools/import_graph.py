"""Reads hf_mrl's imports (static, module level and inside functions) and reports circles, layer breaches and sizes.

python tools/import_graph.py            # exit 1 on a circle or an upward import
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hf_mrl"
# Lower layers must not import the higher ones named here.
FORBIDDEN = {
    "hf_mrl.data": ("hf_mrl.pool", "hf_mrl.reuse", "hf_mrl.training", "hf_mrl.guard", "hf_mrl.hub", "hf_mrl.cli"),
    "hf_mrl.pool": ("hf_mrl.reuse", "hf_mrl.training", "hf_mrl.guard", "hf_mrl.hub", "hf_mrl.cli"),
    # the reuser renders its own card (PyTorchModelHubMixin asks the model for it): hub.cards, a leaf, is allowed
    "hf_mrl.reuse": ("hf_mrl.training", "hf_mrl.guard", "hf_mrl.hub.push", "hf_mrl.cli"),
    # the run's record: written by training, read by the cards, the CLI and the benchmarks
    "hf_mrl.record": ("hf_mrl.data", "hf_mrl.pool", "hf_mrl.reuse", "hf_mrl.training", "hf_mrl.guard", "hf_mrl.hub"),
    "hf_mrl.hub.cards": ("hf_mrl.data", "hf_mrl.pool", "hf_mrl.reuse", "hf_mrl.training", "hf_mrl.guard"),
}
ANY_NOT = ("hf_mrl.cli",)  # nothing imports the command line but itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree):
    """Every node but those under `if TYPE_CHECKING:` (annotations only; never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING"
            ):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(files)
    # A package's __init__ re-exports its children; an edge to the package stands for what it re-exports, so
    # edges from a child to its own package are not counted as a circle.
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in imports(path, name, known) if not name.startswith(t + ".")}
    problems = []
    for comp in cycles(graph):
        problems.append("circle: " + " <-> ".join(comp))
    for name, deps in graph.items():
        for dep in deps:
            for low, high in FORBIDDEN.items():
                if (name == low or name.startswith(low + ".")) and any(
                    dep == h or dep.startswith(h + ".") for h in high
                ):
                    problems.append(f"upward: {name} imports {dep}")
            if any(dep == c or dep.startswith(c + ".") for c in ANY_NOT) and not (
                name == "hf_mrl.cli" or name.startswith("hf_mrl.cli.")
            ):
                problems.append(f"imports the CLI: {name} -> {dep}")
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), n) for n, p in files.items()), reverse=True)
    print(f"{len(files)} modules; largest: " + ", ".join(f"{n} ({s})" for s, n in sizes[:5]))
    for line in problems:
        print(line)
    print("no circles, no upward imports" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
