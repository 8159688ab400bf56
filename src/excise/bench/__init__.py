"""``excise bench``: benchmark suites from files, a cached and resumable runner, a results store, a report.

- :mod:`excise.bench.suite`: load and validate ``benchmarks/suites/*.yaml``;
- :mod:`excise.bench.runner`: train the original and retrained models once per (scenario, seed), cache them,
  run every method against them, record everything;
- :mod:`excise.bench.cache`: the content-addressed model cache and the code versions that key it;
- :mod:`excise.bench.store`: the JSON Lines results file (atomic appends, tamper/corruption checks);
- :mod:`excise.bench.report`: Markdown + self-contained HTML with tables and plots, from the store alone.
"""

from excise.bench.cache import ModelCache, code_version
from excise.bench.memory import PeakRSS
from excise.bench.runner import BenchSummary, plan, run_suite
from excise.bench.store import RESULTS_FILE, ResultStore, StoreError, latest, read_records
from excise.bench.suite import MethodSpec, Scenario, Suite, SuiteError, load_suite, parse_suite

__all__ = [
    "RESULTS_FILE",
    "BenchSummary",
    "MethodSpec",
    "ModelCache",
    "PeakRSS",
    "ResultStore",
    "Scenario",
    "StoreError",
    "Suite",
    "SuiteError",
    "code_version",
    "latest",
    "load_suite",
    "parse_suite",
    "plan",
    "read_records",
    "run_suite",
]
