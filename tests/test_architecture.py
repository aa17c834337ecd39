"""The code keeps its layering: the [tool.importlinter] contracts in pyproject.toml hold (docs/architecture.md
says what each layer owns), and no module of streamer, receivers or models takes part in an import cycle.

Imports inside functions count, as they do at run time; imports under ``if TYPE_CHECKING:`` do not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is not installed: pip install -e '.[test]'")
import grimp  # noqa: E402  (a dependency of import-linter)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streamer", "receivers", "models")


def import_cycles(graph) -> list[list[str]]:
    """Every strongly connected component of more than one module in ``graph`` (a grimp import graph), sorted.

    Tarjan's algorithm, iterative so that a long import chain cannot exhaust Python's recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & graph.modules)))]
        while work:
            module, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    imported = graph.find_modules_directly_imported_by(successor) & graph.modules
                    work.append((successor, iter(sorted(imported))))
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return sorted(cycles)


def describe_cycle(graph, component: list[str]) -> str:
    """The cycle's modules and every import among them, with line numbers, to show where to cut it."""
    members = set(component)
    lines = [f"cycle among {', '.join(component)}:"]
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            details = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"l.{d['line_number']}" for d in details)
            lines.append(f"  {importer} -> {imported} ({where})")
    return "\n".join(lines)


def test_import_linter_contracts_hold():
    # The console entry point, run with this interpreter so that it checks what this venv imports.
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, f"lint-imports failed (exit {run.returncode}):\n{run.stdout}{run.stderr}"


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (cut one import in each):\n" + "\n".join(
        describe_cycle(graph, component) for component in cycles)


def test_cycle_finder_finds_a_cycle_in_a_synthetic_package(tmp_path, monkeypatch):
    package = tmp_path / "heimdall_cycle_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from heimdall_cycle_probe import b\n")
    # A function-level import closes the cycle: lazy imports count.
    (package / "b.py").write_text("def f():\n    from heimdall_cycle_probe import c\n")
    (package / "c.py").write_text("import heimdall_cycle_probe.a\n")
    (package / "d.py").write_text("from heimdall_cycle_probe import a\n")
    (package / "e.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from heimdall_cycle_probe import f\n")
    (package / "f.py").write_text("from heimdall_cycle_probe import e\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    graph = grimp.build_graph("heimdall_cycle_probe", exclude_type_checking_imports=True, cache_dir=None)
    cycles = import_cycles(graph)

    # d only imports into the cycle; e <-> f is no cycle because e imports f for type checking only.
    assert cycles == [["heimdall_cycle_probe.a", "heimdall_cycle_probe.b", "heimdall_cycle_probe.c"]]
    report = describe_cycle(graph, cycles[0])
    assert "heimdall_cycle_probe.b -> heimdall_cycle_probe.c (l.2)" in report
