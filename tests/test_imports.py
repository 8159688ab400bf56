"""Every module of the package can be the first one a user imports (no circular-import trap)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import excise

SCRIPT = """
import importlib, sys
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "excise" or m.startswith("excise.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - collect them all
        failures.append(f"{name}: {type(err).__name__}: {err}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_first():
    root = Path(excise.__file__).parent
    modules = sorted(
        ".".join(("excise", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for path in root.rglob("*.py")
    )
    assert "excise.requests" in modules and "excise.tasks.segmentation" in modules
    # One fresh interpreter; the package's modules are dropped from sys.modules before each import, so each is
    # imported as if it were the first (torch and the other dependencies stay loaded, which keeps this fast).
    done = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_command_line_starts_without_torch():
    """`excise --help` used ~3-4 s of CPU, most of it importing torch through the package's eager imports: the
    package and the CLI module import nothing heavy now (benchmarks/startup.py measures the CPU time)."""
    probe = "import sys, excise, excise.cli; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    help_text = subprocess.run([sys.executable, "-m", "excise.cli", "--help"], capture_output=True, text=True,
                               timeout=120)
    assert help_text.returncode == 0 and "unlearn" in help_text.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a set of modules importing one
    another in a circle — import statements inside functions count: they close the circle at run time."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_package_has_no_import_cycle():
    import grimp

    graph = grimp.build_graph("excise", include_external_packages=False)
    cycles = _cycles(graph)

    def lines(importer: str, imported: str) -> list[int]:
        return [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]

    details = [
        f"{importer} -> {imported} (line {lines(importer, imported)})"
        for cycle in cycles for importer in cycle for imported in graph.find_modules_directly_imported_by(importer)
        if imported in cycle
    ]
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_the_cycle_check_finds_a_cycle():
    """The check above would pass on a checker that never finds anything; this one cannot."""

    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def test_the_layers_of_pyproject_hold():
    """The contract in pyproject.toml ([tool.importlinter]): each layer imports only the layers below it."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout + done.stderr
