"""Average gap to the retrained model — the field's headline quality number."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

GAP_KEYS: tuple[str, ...] = ("FA", "RA", "TA", "MIA")


def avg_gap(metrics: Mapping[str, float], reference: Mapping[str, float], keys: Iterable[str] = GAP_KEYS) -> float:
    """Mean over ``keys`` of |metric - retrained metric|, in percentage points.

    A key both sides lack is skipped (a task without that metric); a key only one side has is refused, since
    the mean would silently cover fewer metrics than the two runs measured."""
    keys = list(keys)
    one_sided = [k for k in keys if (k in metrics) != (k in reference)]
    if one_sided:
        side = {k: "the model" if k in metrics else "the reference" for k in one_sided}
        raise ValueError(f"avg gap: {', '.join(f'{k} only measured on {v}' for k, v in side.items())}; evaluate "
                         "both with the same metrics")
    keys = [k for k in keys if k in metrics]
    if not keys:
        raise ValueError(f"no shared metric among {list(GAP_KEYS)} to compare with the reference")
    return sum(abs(float(metrics[k]) - float(reference[k])) for k in keys) / len(keys)


def gaps(metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """|metric - reference| for every numeric metric both have."""
    return {k: abs(float(metrics[k]) - float(reference[k])) for k in metrics if k in reference}
