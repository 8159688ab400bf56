"""Average gap to the retrained model — the field's headline quality number."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

GAP_KEYS: tuple[str, ...] = ("FA", "RA", "TA", "MIA")


def avg_gap(metrics: Mapping[str, float], reference: Mapping[str, float], keys: Iterable[str] = GAP_KEYS) -> float:
    """Mean over ``keys`` of |metric - retrained metric|, in percentage points."""
    keys = [k for k in keys if k in metrics and k in reference]
    if not keys:
        raise ValueError(f"no shared metric among {list(GAP_KEYS)} to compare with the reference")
    return sum(abs(float(metrics[k]) - float(reference[k])) for k in keys) / len(keys)


def gaps(metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """|metric - reference| for every numeric metric both have."""
    return {k: abs(float(metrics[k]) - float(reference[k])) for k in metrics if k in reference}
