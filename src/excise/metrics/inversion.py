"""Model-inversion check: can the forgotten target still be reconstructed from a model?

The Essential-Graph paper (Xu et al., arXiv 2406.10954) argues that a target-level unlearned model resists
model-inversion: optimising an input to maximise the forgotten target's output of the *unlearned* model
should no longer produce something the target's detector recognises. excise measures it as
``shared/methods/evaluation.md`` describes (the paper's exact protocol is not public):

1. For each model (original, retrained, unlearned), start ``num_images`` seeded inputs and maximise the
   forgotten target's logit with Adam, under a total-variation and an L2 prior; pixels are kept in the data
   range ``[0, 1]`` by a sigmoid parametrisation (the data sets excise ships are ``[0, 1]`` images).
2. Score each model's reconstructions by how strongly a *judge* — the original model, which certainly
   knows the target — recognises them: its mean sigmoid probability for the target, in percent
   (``recognition``). Optionally, ``similarity``: the mean cosine similarity of the reconstructions
   (centred) to a template image of the target (the mean training image with the target minus the mean
   without it).

Reading it: the original model's own reconstructions score high by construction; the retrained model's
(whose forgotten output never learned the target) give the floor; an unlearned model should be near that
floor. Inversion from a pruned copy of the original can still find inputs the original recognises, since
most weights are shared — that is exactly what this check exposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from excise.training import check_nonnegative, check_positive_int


@dataclass
class InversionConfig:
    steps: int = 200
    lr: float = 0.1
    tv_weight: float = 0.05
    l2_weight: float = 0.01
    num_images: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self, "steps", "num_images")
        check_nonnegative(self, "lr", "tv_weight", "l2_weight")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels, per image."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert(model: nn.Module, target: int, shape: tuple[int, ...], config: InversionConfig | None = None) -> Tensor:
    """``num_images x shape`` inputs in [0, 1] that maximise ``model``'s logit for ``target``.

    The model's parameters are not touched (gradients are taken with respect to the input only) and its
    train/eval mode is restored.
    """
    cfg = config or InversionConfig()
    generator = torch.Generator().manual_seed(cfg.seed)
    # Start dark (sigmoid(-2) ~ 0.12) with noise: excise's image sets are mostly black background.
    z = (torch.randn((cfg.num_images, *shape), generator=generator) * 0.5 - 2.0).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=cfg.lr)
    was_training = model.training
    model.eval()
    try:
        for _ in range(cfg.steps):
            x = torch.sigmoid(z)
            logit = model(x)[:, target]
            loss = (-logit + cfg.tv_weight * total_variation(x) + cfg.l2_weight * x.pow(2).flatten(1).mean(1)).mean()
            (grad,) = torch.autograd.grad(loss, [z])
            z.grad = grad
            optimizer.step()
    finally:
        model.train(was_training)
    return torch.sigmoid(z).detach()


@torch.no_grad()
def recognition(judge: nn.Module, images: Tensor, target: int) -> float:
    """Mean sigmoid probability (percent) the judge gives ``target`` on ``images``."""
    was_training = judge.training
    judge.eval()
    probability = torch.sigmoid(judge(images)[:, target])
    judge.train(was_training)
    return 100.0 * float(probability.mean())


def target_template(inputs: Tensor, targets: Tensor, target: int) -> Tensor:
    """Mean training image with the target minus the mean without it: where the target's evidence sits."""
    has = targets[:, target] > 0.5
    if has.all() or not has.any():
        raise ValueError(f"target {target} must be present in some instances and absent from others")
    return inputs[has].mean(0) - inputs[~has].mean(0)


def similarity(images: Tensor, template: Tensor) -> float:
    """Mean cosine similarity (percent) of the centred images to the template."""
    centred = images.flatten(1) - images.flatten(1).mean(1, keepdim=True)
    t = template.flatten()
    return 100.0 * float(nn.functional.cosine_similarity(centred, t.expand_as(centred), dim=1).mean())


def inversion_scores(
    models: dict[str, nn.Module],
    judge: nn.Module,
    target: int,
    shape: tuple[int, ...],
    *,
    config: InversionConfig | None = None,
    template: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """For every named model: the judge's recognition of its reconstructions (and template similarity)."""
    out = {}
    for name, model in models.items():
        images = invert(model, target, shape, config)
        scores = {"recognition": recognition(judge, images, target), "self": recognition(model, images, target)}
        if template is not None:
            scores["similarity"] = similarity(images, template)
        out[name] = scores
    return out
