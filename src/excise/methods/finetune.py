"""Fine-tune: continue training on the retain set only, relying on catastrophic forgetting.

Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023; Golatkar et al.,
"Eternal Sunshine of the Spotless Net", CVPR 2020 (the "Fine-tune" baseline). Defaults follow the
SalUn / "Model Sparsity" benchmark recipe in spirit (a few epochs at a lower learning rate than
training), expressed relative to the original recipe so they hold across data-set sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from excise.methods._common import scaled_recipe
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.training import check_fraction, check_positive_int, train


@dataclass
class FinetuneConfig:
    epochs: int = 5
    lr_scale: float = 0.2  # learning rate = lr_scale x the original recipe's
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs")
        check_fraction(self, "lr_scale", closed=True)
        if self.batch_size is not None:
            check_positive_int(self, "batch_size")  # 0 would silently fall back to the recipe's


@register_method
class Finetune(UnlearningMethod):
    name = "finetune"
    paper = "Warnecke et al., 'Machine Unlearning of Features and Labels', NDSS 2023 (FT baseline)"
    needs_retain = True
    Config = FinetuneConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        recipe = scaled_recipe(data.recipe, self.config.epochs, self.config.lr_scale, self.config.batch_size)
        stats = train(model, data.retain_set, recipe, seed=seed, description="finetune")
        return {"steps": stats.steps, "final_loss": stats.losses[-1]}
