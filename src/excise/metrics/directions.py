"""How to read each metric: its direction ("higher is better", "closer to retrain is better", …), looked up
from the tables of the modules that compute them — one place for the bench's records, the report and the
deletion certificates."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from excise.metrics.distance import DISTANCE_DIRECTIONS
from excise.metrics.evaluate import DIRECTIONS
from excise.metrics.lira import ULIRA_DIRECTIONS
from excise.metrics.mia import MiaInputs, run_mia


@lru_cache(maxsize=1)
def _mia_directions() -> dict[str, str]:
    # The directions live on MiaResult; read them from the variants themselves on a tiny synthetic input
    # rather than copying the strings here, so a new variant brings its own.
    rng = np.random.default_rng(0)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.dirichlet(np.ones(2), n), np.tile([0, 1], n // 2)

    inputs = MiaInputs(*part(40), *part(40), *part(40), seed=0)
    return {f"MIA:{name}": result.direction for name, result in run_mia(inputs).items()}


def metric_direction(name: str) -> str:
    """How to read ``name``: from ``excise.metrics.DIRECTIONS`` and each MIA variant's ``MiaResult``."""
    for table in (DIRECTIONS, DISTANCE_DIRECTIONS, ULIRA_DIRECTIONS):
        if name in table:
            return table[name]
    directions = _mia_directions()
    if name in directions:
        return directions[name]
    if name.startswith("probe_AP"):
        return ("AP (%) of a linear probe reading the forgotten target from the model's features; at the "
                "prevalence it reads nothing; at or below retrain's is better")
    if name.startswith("prevalence:"):
        return "the forgotten target's share of the test rows (%): what a probe that reads nothing scores"
    if name.startswith(("acc:", "AP:")):
        return "per-target test score; closer to retrain is better"
    if name.startswith("KL_ref:"):
        return "KL(retrain || model) of the next-token predictions on that test chain, nats; lower is better"
    return "closer to retrain is better"
