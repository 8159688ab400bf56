"""Random labels (RL): fine-tune on the forget set relabelled with random wrong classes, replaying the retain set.

Golatkar, Achille and Soatto, "Eternal Sunshine of the Spotless Net", CVPR 2020 and Graves, Nagisetty and
Ganesh, "Amnesiac Machine Learning", AAAI 2021 introduced relabelling; the form implemented here is the
"RL" baseline of the benchmark tables (Jia et al. NeurIPS 2023; Fan et al. "SalUn", ICLR 2024): each
epoch trains on the relabelled forget set together with the retain set. SalUn is exactly this with a
weight-saliency mask, so the pair is a clean ablation. Labels are re-drawn each epoch, uniformly among the
wrong classes.

Choice: a forget-only variant (Graves et al.'s relabel-and-train on the forget set alone) was measured on the
digits (full class 3, small_cnn): at lr 1e-3 it left FA at 71% and at lr 3e-3 on a random 10% it collapsed
RA to 27% — without the retain replay there is no step size that forgets without destroying the model, so
the retain replay is the default form. The learning rate is relative to the original recipe's so the
default transfers across data sets.

Budget on a random-samples request (an excise extension; the benchmark tables use a fixed number of epochs):
:class:`excise.methods._common.SamplesStop` — after each epoch, stop once the forget accuracy has fallen
``max_accuracy_drop`` (2 points) below where it started, keeping the nearer of the last two checked states. On
the robustness zoo the fixed two epochs over-forgot every random 10% setting (gap 3.4-8.2 against the original's
1.5-2.6); a run whose first epoch already overshoots returns the model unchanged and says so in ``stop_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.data.base import LabeledData
from excise.data.lazy import concat_inputs
from excise.methods._common import SamplesStop
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.training import TrainConfig, check_fraction, check_optional_probability, check_positive_int, train


def random_wrong_labels(targets: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    offset = torch.randint(1, num_classes, targets.shape, generator=generator)
    return (targets + offset) % num_classes


def relabelled_union(forget_set: LabeledData, retain_set: LabeledData, generator: torch.Generator) -> LabeledData:
    """Forget samples with random wrong labels, followed by the retain samples with their own labels."""
    wrong = random_wrong_labels(forget_set.targets, forget_set.num_classes, generator)
    return LabeledData(
        inputs=concat_inputs([forget_set.inputs, retain_set.inputs]),
        targets=torch.cat([wrong, retain_set.targets]),
        classes=forget_set.classes,
        task=forget_set.task,
        source_indices=torch.cat([forget_set.source_indices, retain_set.source_indices]),
        name=forget_set.name,
    )


@dataclass
class RandomLabelsConfig:
    epochs: int = 2
    lr_scale: float = 0.2  # learning rate = lr_scale x the original recipe's
    max_accuracy_drop: float | None = 0.02  # samples requests: excise's stop (SamplesStop); None: every epoch

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs")
        check_fraction(self, "lr_scale", closed=True)
        check_optional_probability(self, "max_accuracy_drop")


@register_method
class RandomLabels(UnlearningMethod):
    name = "random_labels"
    paper = ("Golatkar et al., 'Eternal Sunshine of the Spotless Net', CVPR 2020; RL baseline as in "
             "Fan et al., 'SalUn', ICLR 2024")
    needs_retain = True
    Config = RandomLabelsConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        recipe = TrainConfig(**{**data.recipe.to_dict(), "epochs": 1, "lr": data.recipe.lr * self.config.lr_scale,
                                "schedule": "constant"})
        steps = 0
        stop = SamplesStop(model, data, self.config.max_accuracy_drop)
        for epoch in range(self.config.epochs):
            union = relabelled_union(data.forget_set, data.retain_set, generator)
            stats = train(model, union, recipe, seed=seed + epoch, description="random labels")
            steps += stats.steps
            if stop.reached(model):
                break
        return {"steps": steps, **stop.stats()}
