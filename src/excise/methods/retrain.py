"""Retrain: train from scratch on the retain set only — the gold standard every method is measured against.

Exact unlearning by definition (see e.g. Bourtoule et al., "Machine Unlearning", IEEE S&P 2021, for the
framing). Same architecture, same recipe and same seed policy as the original model, so any gap to it
is the cost of *not* retraining. For ``target`` requests the retain set carries the label mask that
drops the forgotten target, so its output receives no training signal.

``seed_offset`` trains a *twin*: the same retain set and recipe with the run's seed plus the offset (another
initialisation and batch order). Scored against the reference like any method, its gap is the gap's noise floor —
how far retraining itself lands from one retrained model — which no method can be asked to beat. In a bench suite:
``{name: retrain, label: retrain-twin, params: {seed_offset: 1000}}``. Measured on the robustness zoo
(``benchmarks/zoo.py``): 0.02-0.86 on a class request, 0.43-2.16 on random 10%, 0.04-3.53 on random 1%, where in
three of six settings it exceeds the original's own gap. In a sequence step k is retrained with seed + k + offset
against the reference retrained with seed + k: a twin at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.models import create_model
from excise.training import TrainConfig, reinitialize, seed_everything, train


@dataclass
class RetrainConfig:
    epochs: int | None = None  # None: the original recipe's epochs
    seed_offset: int = 0  # train with seed + seed_offset: a twin of the reference (the gap's noise floor)

    def __post_init__(self) -> None:
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise ValueError(f"epochs={self.epochs!r} must be a positive integer or None (use the recipe)")
        if (isinstance(self.seed_offset, bool) or not isinstance(self.seed_offset, int)
                or not 0 <= self.seed_offset < 2**31):
            raise ValueError(f"seed_offset={self.seed_offset!r} must be an integer in [0, 2**31) (0: the reference "
                             "itself)")


@register_method
class Retrain(UnlearningMethod):
    name = "retrain"
    paper = "Exact unlearning by retraining on the retain set (Bourtoule et al., IEEE S&P 2021, 'Machine Unlearning')"
    needs_retain = True
    kinds = ("samples", "class", "subclass", "target")
    tasks = ("multiclass", "multilabel", "sequence", "segmentation", "detection")
    Config = RetrainConfig
    rolls_back = False  # the reference itself: a guard finding is recorded beside it, the model is never swapped

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        seed += self.config.seed_offset
        seed_everything(seed)
        spec = getattr(model, "excise_spec", None)
        fresh = create_model(spec["name"], **spec["kwargs"]) if spec else reinitialize(model, seed)
        recipe = data.recipe
        if self.config.epochs is not None:
            recipe = TrainConfig(**{**recipe.to_dict(), "epochs": self.config.epochs})
        stats = train(fresh, data.retain_set, recipe, seed=seed, description="retrain")
        return {"model": fresh, "steps": stats.steps, "epochs": stats.epochs, "final_loss": stats.losses[-1]}
