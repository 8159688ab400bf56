"""Bootstrap confidence intervals for the numbers :func:`excise.metrics.evaluate` reports and for the average gap
to a retrained reference.

A forget accuracy measured on one class of 36 test images, an MIA on a few hundred samples, a gap of 0.3 points:
each is a statistic of finite populations, and without its sampling noise a reader cannot tell 0.3 from 0. The
percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13) answers that without
a model of the metric: every evaluated population — forget, retain, remaining-class test and forgotten-class test
set, (instances for multi-label models) — is redrawn with replacement at its own size, every metric is computed
again from the model's outputs on the redrawn populations, and the central ``level`` share of the replicate
values is the interval. Seeded: the same seed gives the same replicates.

What is redrawn and recomputed, and the choices made:

- **The model is not re-run**: its outputs on each population are computed once and redrawn (the uncertainty is
  that of the evaluation data, not of training; seeds of a benchmark show the latter).
- **MIA attacks are re-fitted**, not only re-applied: an attack fitted on a few hundred samples is itself a
  statistic of them, and with a fixed attack an arbitrary verdict would look certain. Fitting an SVC on every
  replicate would cost ``replicates`` fits per variant, so ``attack_refits`` of the replicates (default 40) fit
  each attack on their redrawn members / non-members, and the other replicates judge their own redrawn forget
  set with one of those fits, in turn. Each fit thus stands for ``replicates / attack_refits`` replicates, and an
  attack that inverts on a few percent of redraws (its verdict flips from ~2 to ~98: an attack with almost no
  signal, such as ``svc_correctness`` on a model right on nearly every member and non-member) shows in the interval
  only if enough of its fits land there. Measured 2026-12-07 on a digits IMU model (random 10%, evaluation seeds
  0-7): with 10 fits the headline's upper bound moved between 25.9 and 61.5 with the seed and
  ``svc_correctness``'s interval between [0, 5.2] and [0.7, 97.8]; with 40 the headline's moved between 28.9 and
  39.0, at 4x the attack cost (0.4 -> 1.5 s for the headline's 200 replicates); with 200 fits, every seed gave
  ``svc_correctness`` [0, 98-100] — the honest answer: that attack cannot tell — at 10x. A bound set by a
  rare inversion still moves with the seed at 40. The attack's training populations and the forget set are disjoint and
  redrawn independently, so pairing a fit with another replicate's forget draw is a draw from the same joint
  distribution; the attack's variability is represented by ``attack_refits`` fits rather than ``replicates``.
  ``loss_logreg``'s judging *is* a fit (a cross-validation on forget vs non-members), so it runs on the
  ``attack_refits`` replicates only, with one split repeat (its point value uses ``CV_REPEATS``): its interval
  comes from those replicates and also carries its own split noise.
- **The gap to the reference is paired**: replicate ``j`` redraws the same rows for the model and the
  reference (same views, same seed), so the gap interval is that of the difference, not of two independent
  noises.
- **Which MIA variants get an interval** is the caller's choice (``variants``): every variant the evaluation
  reports by default; the benchmark asks for the headline only, which is all the average gap needs.

Tasks with their own registered evaluator (segmentation, detection, sequences) get no interval: their
evaluators do not expose per-population outputs to redraw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from excise.metrics.evaluate import Outputs, score
from excise.metrics.gap import avg_gap
from excise.metrics.mia import HEADLINE_MIA, MIA_VARIANTS, Judge, check_variants
from excise.training import check_positive_int


@dataclass(frozen=True)
class Uncertainty:
    """How intervals are computed. ``replicates``: bootstrap replicates (0 = no intervals); ``attack_refits``: of
    those, how many re-fit the MIA attacks; ``level``: coverage of the percentile interval; ``variants``: the MIA
    variants that get an interval (``None``: every evaluated one; the headline is always included)."""

    replicates: int = 200
    attack_refits: int = 40
    level: float = 0.95
    variants: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 0:
            raise ValueError(f"replicates={self.replicates!r} must be an integer >= 0 (0 = no intervals)")
        check_positive_int(self, "attack_refits")
        if not isinstance(self.level, float) or not 0.5 <= self.level < 1.0:
            raise ValueError(f"level={self.level!r} must be a float in [0.5, 1)")
        if self.variants is not None:
            object.__setattr__(self, "variants", check_variants(tuple(self.variants)))

    @property
    def enabled(self) -> bool:
        return self.replicates > 0

    def mia_variants(self, evaluated: Iterable[str]) -> tuple[str, ...]:
        """The evaluated MIA variants replicated: the chosen ones that were evaluated, and the headline."""
        evaluated = list(evaluated)
        chosen = evaluated if self.variants is None else [v for v in self.variants if v in evaluated]
        if HEADLINE_MIA in evaluated and HEADLINE_MIA not in chosen:
            chosen.append(HEADLINE_MIA)
        return tuple(chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"replicates": self.replicates, "attack_refits": self.attack_refits, "level": self.level,
                "variants": None if self.variants is None else list(self.variants)}


def replicate_metrics(outputs: Outputs, uncertainty: Uncertainty, *, seed: int = 0,
                      mia_variants: Sequence[str] = (HEADLINE_MIA,)) -> list[dict[str, float]]:
    """The metrics of ``uncertainty.replicates`` bootstrap replicates of ``outputs``. Replicate ``j`` redraws its
    rows with generator ``(seed, j)``, so two models' outputs on the same views are redrawn alike (paired)."""
    variants = tuple(mia_variants)
    reusable = tuple(v for v in variants if MIA_VARIANTS[v].reusable)
    fits: list[dict[str, Judge]] = [{} for _ in range(min(uncertainty.attack_refits, uncertainty.replicates))]
    replicates = []
    for j in range(uncertainty.replicates):
        sample = outputs.resample(np.random.default_rng([seed, j]))
        # The first len(fits) replicates fit the attacks on their redrawn populations (an empty dict is filled);
        # the others reuse those fits in turn on their own redrawn forget set.
        replicates.append(score(sample, mia_variants=variants if j < len(fits) else reusable, seed=seed,
                                judges=fits[j % len(fits)], cv_repeats=1))
    return replicates


def intervals(replicates: Sequence[Mapping[str, float]], level: float = 0.95) -> dict[str, list[float]]:
    """``{metric: [low, high]}``: the central ``level`` percentile interval of each metric over the replicates
    (replicates where it is undefined, e.g. an AP without a positive, are left out; a metric undefined in all of
    them gets no interval)."""
    names: list[str] = []
    for replicate in replicates:
        names.extend(k for k in replicate if k not in names)
    tail = 100.0 * (1.0 - level) / 2.0
    out = {}
    for name in names:
        values = np.array([r[name] for r in replicates if name in r and np.isfinite(r[name])], dtype=float)
        if len(values):
            low, high = np.percentile(values, [tail, 100.0 - tail])
            out[name] = [float(low), float(high)]
    return out


def gap_replicates(model: Sequence[Mapping[str, float]], reference: Sequence[Mapping[str, float]]) -> list[float]:
    """The average gap of each paired replicate (model replicate ``j`` against reference replicate ``j``)."""
    if len(model) != len(reference):
        raise ValueError(f"{len(model)} model replicates but {len(reference)} reference replicates: evaluate both "
                         "with the same Uncertainty")
    return [avg_gap(m, r) for m, r in zip(model, reference, strict=True)]


def percentile_interval(values: Sequence[float], level: float = 0.95) -> list[float]:
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100.0 - tail])
    return [float(low), float(high)]


@dataclass
class Evidence:
    """Intervals of one evaluation: ``intervals`` per metric, and with a reference the average gap's interval
    and its paired replicates (kept so that several seeds can be pooled, see :mod:`excise.bench.report`)."""

    uncertainty: Uncertainty
    intervals: dict[str, list[float]] = field(default_factory=dict)
    avg_gap_interval: list[float] | None = None
    avg_gap_replicates: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"uncertainty": self.uncertainty.to_dict(), "intervals": self.intervals,
                "avg_gap_interval": self.avg_gap_interval}


def evidence(outputs: Outputs | None, uncertainty: Uncertainty, *, seed: int, evaluated: Iterable[str],
             reference: Sequence[Mapping[str, float]] | None = None) -> Evidence:
    """The intervals of one evaluation from its ``outputs``; with ``reference`` (the reference model's
    :func:`replicate_metrics` with the same ``uncertainty`` and ``seed``) the average gap's too. Empty for a task
    whose evaluator exposes no outputs."""
    if outputs is None or not uncertainty.enabled:
        return Evidence(uncertainty)
    replicates = replicate_metrics(outputs, uncertainty, seed=seed,
                                   mia_variants=uncertainty.mia_variants(_mia_names(evaluated)))
    found = Evidence(uncertainty, intervals(replicates, uncertainty.level))
    if reference is not None:
        gaps = gap_replicates(replicates, reference)
        found.avg_gap_interval = percentile_interval(gaps, uncertainty.level)
        found.avg_gap_replicates = [round(g, 4) for g in gaps]
    return found


def _mia_names(metrics: Iterable[str]) -> list[str]:
    """The population MIA variants among evaluated metric names (not U-LiRA's, which no bootstrap redraws)."""
    return [name.removeprefix("MIA:") for name in metrics if name.removeprefix("MIA:") in MIA_VARIANTS]


__all__ = ["Evidence", "Uncertainty", "evidence", "gap_replicates", "intervals", "percentile_interval",
           "replicate_metrics"]
