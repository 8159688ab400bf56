"""Random labels: fine-tune on the forget set relabelled with random wrong classes.

Graves, Nagisetty and Ganesh, "Amnesiac Machine Learning", AAAI 2021 (the "amnesiac" / random-label
baseline); Golatkar et al. CVPR 2020. Forget-only, as in Graves et al.: SalUn (its own module) is the
variant that also replays the retain set. The budget is passes over the forget set, so it scales with
the forget-set size. Labels are re-drawn each pass, uniformly among the wrong classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.progress import progress_bar
from excise.training import batch_loss, check_nonnegative, check_positive_int, make_loader, make_optimizer


def random_wrong_labels(targets: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    offset = torch.randint(1, num_classes, targets.shape, generator=generator)
    return (targets + offset) % num_classes


@dataclass
class RandomLabelsConfig:
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "batch_size")
        check_nonnegative(self, "lr")


@register_method
class RandomLabels(UnlearningMethod):
    name = "random_labels"
    paper = "Graves, Nagisetty and Ganesh, 'Amnesiac Machine Learning', AAAI 2021"
    needs_retain = False
    Config = RandomLabelsConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        generator = torch.Generator().manual_seed(seed)
        optimizer = make_optimizer(model.parameters(), "sgd", cfg.lr, momentum=0.9)
        steps = 0
        with progress_bar("random labels", None) as bar:
            for _ in range(cfg.epochs):
                relabelled = data.forget_set.with_targets(
                    random_wrong_labels(data.forget_set.targets, data.num_classes, generator)
                )
                model.train()
                for batch in make_loader(relabelled, cfg.batch_size, shuffle=True, generator=generator):
                    loss = batch_loss(model, batch, data.task)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    bar.advance(loss=float(loss.detach()))
        return {"steps": steps}
