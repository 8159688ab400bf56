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
