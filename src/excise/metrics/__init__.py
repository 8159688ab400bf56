"""Evaluation: FA/RA/TA, every MIA variant with its direction, average gap to retrain."""

from excise.metrics.evaluate import DIRECTIONS, EvalViews, evaluate
from excise.metrics.gap import GAP_KEYS, avg_gap, gaps
from excise.metrics.mia import MIA_VARIANTS, MiaInputs, MiaResult, run_mia

__all__ = [
    "DIRECTIONS",
    "GAP_KEYS",
    "MIA_VARIANTS",
    "EvalViews",
    "MiaInputs",
    "MiaResult",
    "avg_gap",
    "evaluate",
    "gaps",
    "run_mia",
]
