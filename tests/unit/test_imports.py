"""No import cycles in fx2fpga/ and runtime/, and the runtime never imports the compiler.

The checker reads every module with ``ast`` (no import runs): module-level and function-level
``import`` and ``from ... import``, absolute and relative. ``from pkg import x`` depends on the
submodule ``pkg.x`` when there is one, else on ``pkg``; ``import a.b.c`` on the longest of
``a.b.c``, ``a.b``, ``a`` that is a module of the checked packages. Importing a submodule is not
counted as depending on its parent packages' ``__init__`` (every package's ``__init__`` would be
in a cycle with the submodules it re-exports). Imports under ``if TYPE_CHECKING:`` are for
annotations only and never run, so they do not count. A cycle is a strongly connected component of that
graph with more than one module, or a module that imports itself.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"fx2fpga": ROOT, "fx2fpga_runtime": ROOT / "runtime"}  # package -> the folder that holds it


@dataclass(frozen=True)
class Import:
    """One import statement's dependency: the imported module, where the statement is, whether it runs at import."""

    target: str
    path: Path
    line: int
    top_level: bool


def find_modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under each package."""
    modules = {}
    for package, parent in packages.items():
        for path in sorted((parent / package).rglob("*.py")):
            parts = path.relative_to(parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (None: a module from elsewhere)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (its relative dots resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes that run when the module is imported (not inside a function)."""
    top, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.add(id(node))
        todo.extend(ast.iter_child_nodes(node))
    return top


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: they never run)."""
    found = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
        if name == "TYPE_CHECKING":
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom)}
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path], external: bool = False) -> list[Import]:
    """Every import in ``path`` (module ``module``) as dependencies on ``modules`` (or, with ``external``,
    also the top-level names of modules from elsewhere)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top, annotations_only = _top_level_nodes(tree), _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            target = _resolve(name, modules) or (name.split(".")[0] if external else None)
            if target is not None:
                found.append(Import(target, path, node.lineno, id(node) in top))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, list[Import]]]:
    """module -> {imported module of ``modules``: the statements that import it}."""
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in modules}
    for module, path in modules.items():
        for imp in imports_of(module, path, modules):
            graph[module].setdefault(imp.target, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                components.append(sorted(component))
    return sorted(components)


def _cycle_through(graph: dict[str, dict], inside: set[str], start: str) -> list[str]:
    """A shortest cycle from ``start`` back to it through modules ``inside`` (its component)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child in inside and child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # only for a component of one module without a self-import


def _relative(path: Path, module: str) -> str:
    """``path`` of ``module`` from the folder that holds its top package (``fx2fpga/ecp5.py``)."""
    depth = len(module.split(".")) - (path.name != "__init__.py")
    return path.relative_to(path.parents[depth]).as_posix()


def find_cycles(graph: dict[str, dict[str, list[Import]]]) -> list[str]:
    """One text per component of more than one module (or a self-import): its modules, then a shortest
    cycle through each of them (each cycle once) with the lines of its imports, one line each."""
    report = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        lines = [f"component {{{', '.join(component)}}}:"]
        seen = set()
        for start in component:
            cycle = _cycle_through(graph, set(component), start)
            key = frozenset(zip(cycle, cycle[1:], strict=False))
            if key in seen:
                continue
            seen.add(key)
            steps = []
            for a, b in zip(cycle, cycle[1:], strict=False):
                where = ", ".join(f"{_relative(imp.path, a)}:{imp.line}{'' if imp.top_level else ' (in a function)'}"
                                  for imp in sorted(graph[a][b], key=lambda i: (str(i.path), i.line)))
                steps.append(f"{a} -> {b} [{where}]")
            lines.append("  cycle: " + "; ".join(steps))
        report.append("\n".join(lines))
    return report


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_no_import_cycles_in_fx2fpga_and_the_runtime():
    modules = find_modules(PACKAGES)
    assert "fx2fpga.passes.schedule" in modules and "fx2fpga_runtime.ir" in modules
    cycles = find_cycles(import_graph(modules))
    assert not cycles, f"{len(cycles)} group(s) of modules that import each other:\n" + "\n".join(cycles)


def test_the_checker_reports_a_known_cycle_and_only_it(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",  # re-exporting a submodule is no cycle
        "pkg/a.py": "from . import b\n\ndef f():\n    return b\n",
        "pkg/b.py": "import os\n\n\ndef g():\n    from .sub.c import h\n    return h\n",  # a function-level import
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import a\nimport pkg.d\n",  # relative from a subpackage; `import a.b`
        "pkg/d.py": "from pkg import e\n",
        "pkg/e.py": "import pkg.sub\nfrom pkg.sub import c as alias  # noqa\n",
        "pkg/solo.py": "from .solo import x\n",  # imports itself
        "pkg/fine.py": "from .d import x\nfrom .e import y\n",
    })
    modules = find_modules({"pkg": tmp_path})
    assert sorted(modules) == ["pkg", "pkg.a", "pkg.b", "pkg.d", "pkg.e", "pkg.fine", "pkg.solo", "pkg.sub",
                               "pkg.sub.c"]
    graph = import_graph(modules)
    assert sorted(graph["pkg.b"]) == ["pkg.sub.c"] and sorted(graph["pkg.sub.c"]) == ["pkg.a", "pkg.d"]
    assert sorted(graph["pkg.e"]) == ["pkg.sub", "pkg.sub.c"]
    assert strongly_connected(graph) == [["pkg"], ["pkg.a", "pkg.b", "pkg.d", "pkg.e", "pkg.sub.c"], ["pkg.fine"],
                                         ["pkg.solo"], ["pkg.sub"]]
    cycles = find_cycles(graph)
    assert cycles == [
        "component {pkg.a, pkg.b, pkg.d, pkg.e, pkg.sub.c}:\n"
        "  cycle: pkg.a -> pkg.b [pkg/a.py:1]; pkg.b -> pkg.sub.c [pkg/b.py:5 (in a function)]; "
        "pkg.sub.c -> pkg.a [pkg/sub/c.py:1]\n"
        "  cycle: pkg.d -> pkg.e [pkg/d.py:1]; pkg.e -> pkg.sub.c [pkg/e.py:2]; pkg.sub.c -> pkg.d [pkg/sub/c.py:2]",
        "component {pkg.solo}:\n  cycle: pkg.solo -> pkg.solo [pkg/solo.py:1]",
    ]


def test_the_checker_finds_nothing_in_a_package_without_cycles(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\nfrom . import b\n",
        "pkg/a.py": "import numpy\nfrom .b import g\n\ndef f():\n    from .sub import c\n    return c, g\n",
        "pkg/b.py": "from pkg.sub.c import h\n\ng = h\n",
        "pkg/sub/__init__.py": "from .c import h\n",
        "pkg/sub/c.py": ("import json\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:  # annotations only\n"
                         "    from ..a import f\n\nh = json\n"),
    })
    graph = import_graph(find_modules({"pkg": tmp_path}))
    assert sorted(graph["pkg.a"]) == ["pkg.b", "pkg.sub.c"] and sorted(graph["pkg"]) == ["pkg.a", "pkg.b"]
    assert graph["pkg.sub.c"] == {}  # the TYPE_CHECKING import of pkg.a never runs
    assert find_cycles(graph) == []


def test_the_runtime_imports_only_numpy_and_the_standard_library():
    """The runtime runs on the board (PYNQ's Python, numpy): it never imports fx2fpga, and at module level
    nothing but the standard library, numpy and itself (pynq, g++ or Verilator wrappers load on use)."""
    runtime = find_modules({"fx2fpga_runtime": PACKAGES["fx2fpga_runtime"]})
    allowed = set(sys.stdlib_module_names) | {"numpy", "fx2fpga_runtime", "__future__"}
    assert len(runtime) > 10
    compiler, third_party = [], []
    for module, path in runtime.items():
        for imp in imports_of(module, path, runtime, external=True):
            where = f"{module} ({path.name}:{imp.line})"
            if imp.target == "fx2fpga" or imp.target.startswith("fx2fpga."):
                compiler.append(where)
            elif imp.top_level and imp.target.split(".")[0] not in allowed:
                third_party.append(f"{where}: {imp.target}")
    assert not compiler, f"the runtime imports fx2fpga: {compiler}"
    assert not third_party, f"the runtime imports more than numpy at module level: {third_party}"
