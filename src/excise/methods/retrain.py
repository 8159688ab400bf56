"""Retrain: train from scratch on the retain set only — the gold standard every method is measured against.

Exact unlearning by definition (see e.g. Bourtoule et al., "Machine Unlearning", IEEE S&P 2021, for the
framing). Same architecture, same recipe and same seed policy as the original model, so any gap to it
is the cost of *not* retraining. For ``target`` requests the retain set carries the label mask that
drops the forgotten target, so its output receives no training signal.
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

    def __post_init__(self) -> None:
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs={self.epochs!r} must be a positive integer or None (use the recipe)")


@register_method
class Retrain(UnlearningMethod):
    name = "retrain"
    paper = "Exact unlearning by retraining on the retain set (Bourtoule et al., IEEE S&P 2021, 'Machine Unlearning')"
    needs_retain = True
    kinds = ("samples", "class", "subclass", "target")
    tasks = ("multiclass", "multilabel", "sequence", "segmentation", "detection")
    Config = RetrainConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        seed_everything(seed)
        spec = getattr(model, "excise_spec", None)
        fresh = create_model(spec["name"], **spec["kwargs"]) if spec else reinitialize(model, seed)
        recipe = data.recipe
        if self.config.epochs is not None:
            recipe = TrainConfig(**{**recipe.to_dict(), "epochs": self.config.epochs})
        stats = train(fresh, data.retain_set, recipe, seed=seed, description="retrain")
        return {"model": fresh, "steps": stats.steps, "epochs": stats.epochs, "final_loss": stats.losses[-1]}
