"""Model-inversion check: can the forgotten target still be reconstructed from a model?

The Essential-Graph paper (Xu et al., arXiv 2406.10954) argues that a target-level unlearned model resists
model-inversion: optimising an input to maximise the forgotten target's output of the *unlearned* model
should no longer produce something the target's detector recognises. excise measures it as
``shared/methods/evaluation.md`` describes (the paper's exact protocol is not public):

1. For each model (original, retrained, unlearned), optimise ``num_images`` inputs to maximise the
   forgotten target's logit with Adam, keeping pixels in the data range ``[0, 1]`` (the data sets excise
   ships are ``[0, 1]`` images). Two starts (``InversionConfig.start``), each with its own parametrisation:

   - ``"negatives"`` (default): start from held-out instances that do **not** carry the target and optimise
     the pixels directly, clamped to ``[0, 1]`` after each step (a sigmoid parametrisation would saturate on
     the starts' exact 0s and 1s), with the total-variation and L2 priors on the *change* to that start.
     The question is "can this model paint the target into an image that lacks it?". A model whose
     forgotten output is exactly blind to the input leaves the start as it is (the floor is then the
     judge's false-positive rate on real negatives). A retrained model's forgotten output is only nearly
     blind — its head row decays under weight decay but is not 0 — and Adam rescales its tiny gradient to
     full steps, so its floor sits above the starts' score: measured 0-71% on the multidigits fixture
     across start sets, against 100% for the original.
   - ``"noise"``: the classic model inversion from dark noise through a sigmoid parametrisation of the
     pixels, with the priors on the image itself. Its floor is whatever the judge makes of the priors'
     smooth images, which depends on the data: on the multidigits canvases the original model calls the
     mean canvas, and any smooth blob, a "0" (probability 1.00), so a retrained model's prior-only
     reconstructions of digit 0 score as high as the original's own.
     That is why ``"negatives"`` is the default; ``"noise"`` stays for comparison with the literature.
2. Score each model's reconstructions by how strongly a *judge* — the original model, which certainly
   knows the target — recognises them: its mean sigmoid probability for the target, in percent
   (``recognition``), next to its recognition of the starts (``start_recognition``, the floor of a blind
   model under ``"negatives"``). Optionally, ``similarity``: the mean cosine similarity of the change the
   inversion made (centred) to a template image of the target (the mean training image with the target
   minus the mean without it).

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
    start: str = "negatives"  # "negatives": held-out instances without the target; "noise": dark noise

    def __post_init__(self) -> None:
        check_positive_int(self, "steps", "num_images")
        if self.start not in ("negatives", "noise"):
            raise ValueError(f"start={self.start!r} must be 'negatives' or 'noise'")
        check_nonnegative(self, "lr", "tv_weight", "l2_weight")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels, per image."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert(
    model: nn.Module,
    target: int,
    shape: tuple[int, ...],
    config: InversionConfig | None = None,
    starts: Tensor | None = None,
) -> Tensor:
    """Inputs in [0, 1] that maximise ``model``'s logit for ``target``.

    With ``starts`` (``N x shape`` images in [0, 1]) the pixels are optimised directly from those images and
    projected back to [0, 1] after every step, with the priors on the change, so a model blind to the input
    returns the starts exactly. Without, ``config.num_images`` dark noise images are optimised through a
    sigmoid parametrisation under priors on the image. The model's parameters are not touched (gradients are
    taken with respect to the input only) and its train/eval mode is restored.
    """
    cfg = config or InversionConfig()
    if starts is None:
        generator = torch.Generator().manual_seed(cfg.seed)
        # Start dark (sigmoid(-2) ~ 0.12) with noise: excise's image sets are mostly black background.
        variable = torch.randn((cfg.num_images, *shape), generator=generator) * 0.5 - 2.0
        anchor = None
    else:
        if tuple(starts.shape[1:]) != tuple(shape):
            raise ValueError(f"starts have shape {tuple(starts.shape[1:])} per image, expected {tuple(shape)}")
        # Direct pixels, not a sigmoid: a sigmoid cannot start at exactly 0 or 1 (the black background of
        # excise's images), and nudging the starts to 0.02 already moves this judge's score from 0.1% to 14%.
        anchor = starts.detach().float().clamp(0, 1)
        variable = anchor.clone()
    variable.requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=cfg.lr)
    was_training = model.training
    model.eval()
    try:
        for _ in range(cfg.steps):
            x = torch.sigmoid(variable) if anchor is None else variable
            change = x if anchor is None else x - anchor
            logit = model(x)[:, target]
            prior = cfg.tv_weight * total_variation(change) + cfg.l2_weight * change.pow(2).flatten(1).mean(1)
            (grad,) = torch.autograd.grad((prior - logit).mean(), [variable])
            variable.grad = grad
            optimizer.step()
            if anchor is not None:
                with torch.no_grad():
                    variable.clamp_(0, 1)
    finally:
        model.train(was_training)
    return (torch.sigmoid(variable) if anchor is None else variable).detach()


def target_negatives(inputs: Tensor, targets: Tensor, target: int, num_images: int, seed: int = 0) -> Tensor:
    """``num_images`` instances (seeded choice) that do not carry ``target``: the starts of a ``"negatives"``
    inversion. Pass held-out instances (e.g. the test set)."""
    absent = (targets[:, target] < 0.5).nonzero().flatten()
    if len(absent) < num_images:
        raise ValueError(
            f"the inversion needs num_images={num_images} instances without target {target}, found {len(absent)}"
        )
    order = torch.randperm(len(absent), generator=torch.Generator().manual_seed(seed))
    return inputs[absent[order[:num_images]]]


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
    negatives: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """For every named model: the judge's recognition of its reconstructions (and template similarity).

    With ``config.start == "negatives"`` (the default), ``negatives`` must hold at least ``num_images``
    held-out instances without the target (see :func:`target_negatives`); every model starts from the same
    ones.
    """
    cfg = config or InversionConfig()
    starts = None
    if cfg.start == "negatives":
        if negatives is None:
            raise ValueError("start='negatives' needs negatives= (instances without the target; see "
                             "target_negatives), or use InversionConfig(start='noise')")
        if len(negatives) < cfg.num_images:
            raise ValueError(f"negatives holds {len(negatives)} images, num_images={cfg.num_images} are needed")
        starts = negatives[: cfg.num_images].detach().float().clamp(0, 1)
    out = {}
    for name, model in models.items():
        images = invert(model, target, shape, cfg, starts)
        scores = {"recognition": recognition(judge, images, target), "self": recognition(model, images, target)}
        if starts is not None:
            scores["start_recognition"] = recognition(judge, starts, target)
        if template is not None:
            scores["similarity"] = similarity(images if starts is None else images - starts, template)
        out[name] = scores
    return out
