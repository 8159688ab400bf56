"""Target relabelling: fine-tune on the instances that carry the forgotten target, with it relabelled negative.

The instance-level "relabel and fine-tune" baseline (Graves et al., "Amnesiac Machine Learning", AAAI 2021,
relabel the forget set and train on it) migrated to target-level unlearning as the Essential-Graph paper
(Xu et al., arXiv 2406.10954) does with its instance-level baselines: the forget set is every training
instance that carries a forgotten target; on those instances the forgotten target's label is set to 0 and
the model is fine-tuned with the recipe's optimizer at ``lr_scale`` times its learning rate.

Choices (the paper does not specify its baselines' recipe):

- Every label column of those instances is supervised — the forgotten one(s), and in a sequence every target
  an earlier step forgot, at 0, the remaining ones at their true values — so the features the remaining
  targets share with the forgotten one are anchored by the same images. Reading the remaining labels means
  reading the retain view (``needs_retain=True``); only the rows that carry the forgotten target are used.
- Budget in passes over the forget instances (``epochs``), so it scales with the forget set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.data.base import _resolve_label
from excise.methods._common import RelabelFinetuneConfig, finetune_on, retain_rows_of
from excise.methods.base import UnlearnData, UnlearningMethod, register_method


@dataclass
class TargetFinetuneConfig(RelabelFinetuneConfig):
    epochs: int = 5
    lr_scale: float = 0.2  # learning rate = lr_scale x the original recipe's
    # batch_size: None (the recipe's), validated by RelabelFinetuneConfig


@register_method
class TargetFinetune(UnlearningMethod):
    name = "target_finetune"
    paper = ("Relabel-and-fine-tune (Graves et al., 'Amnesiac Machine Learning', AAAI 2021) migrated to "
             "target-level unlearning as in Xu et al., arXiv 2406.10954")
    needs_retain = True
    kinds = ("target",)
    tasks = ("multilabel",)
    Config = TargetFinetuneConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        classes = data.forget_set.classes
        forgotten = sorted({_resolve_label(label, classes, "labels", "target") for label in data.request.labels})
        instances = retain_rows_of(data.forget_set, data.retain_set)
        relabelled = instances.targets.clone()
        relabelled[:, forgotten] = 0.0
        # Targets an earlier request of a sequence forgot are hidden by the retain view's mask but still in its
        # targets: supervising them at their true value would teach them again. They stay at 0 (absent).
        if instances.label_mask is not None:
            relabelled[~instances.label_mask] = 0.0
        instances = instances.with_targets(relabelled)
        instances.label_mask = torch.ones_like(relabelled, dtype=torch.bool)
        return finetune_on(model, instances, data.recipe, self.config, seed, "target finetune")
