"""Per-sample head gradients, diagonal-Fisher influence and influence weights — model-agnostic.

The building blocks of IMU (Fan et al., "Influence-guided Machine Unlearning", arXiv 2508.01620; official
code ``goodluckisallyouneed/IMU``), kept free of any model family so the vision method
(:mod:`excise.methods.imu`) and a sequence-model variant share them:

- the *head* is any list of parameters of the model (a classifier's final linear layer, a transformer's
  output projection or a few attention projections): :func:`resolve_head` maps it to names, refusing a
  tensor that is not a parameter of the model;
- the per-sample loss is any callable ``sample_loss(forward, sample) -> scalar``: ``forward`` calls the
  model (with the head bound functionally) and ``sample`` is the batch dict of ONE sample, every tensor
  keeping a leading batch dimension of 1. Cross-entropy of an image classifier and the mean token
  cross-entropy of a sequence are both one line.

Per-sample gradients use ``torch.func`` (``functional_call`` + ``vmap(grad)``), one vectorised call per
chunk of samples instead of a Python loop over samples (the official code loops with batch size 1). Only
the head is differentiated; the rest of the model is detached. Gradients are taken with the model in
``eval()`` mode (as the official ``grad_z_last`` does) so BatchNorm uses its running statistics and a
sample's gradient does not depend on which other samples share its chunk; the mode is restored after.

Influence (classic influence-function form with a damped diagonal empirical Fisher as the Hessian):
``F = mean_i g_i ⊙ g_i + damping`` (damping added *after* averaging), ``ḡ = mean_i g_i`` and
``I_i = −g_iᵀ F⁻¹ ḡ``. Since ``Σ_i I_i = −N ḡᵀF⁻¹ḡ ≤ 0``, at least one sample has negative influence
whenever ``ḡ ≠ 0``.

Under ``torchrun`` :func:`compute_influence` splits every batch across ranks: each rank computes the
per-sample gradients of its rows, the Fisher and mean-gradient sums are all-reduced, and the influences
are all-gathered in the input order, so every rank holds the same ``Influence`` a single process computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from excise import distributed
from excise.progress import progress_bar

SampleLoss = Callable[[Callable[..., Any], Mapping[str, Tensor]], Tensor]
POSITIVE_MODES = ("drop", "zero")
# Above this many stored gradient entries (N x P), influence recomputes the gradients in a second pass
# instead of keeping them (2**26 float32 entries = 256 MiB).
DEFAULT_CACHE_ELEMENTS = 2**26


def resolve_head(model: nn.Module, head: Sequence[Tensor] | nn.Module | None = None) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs of the head, in the order given.

    ``head`` is a module of ``model`` (all its parameters), a sequence of parameters of ``model``, or
    ``None`` for the classifier's final linear layer (:func:`excise.models.final_linear`, found by type).
    Matching is by identity, never by name substring.
    """
    if head is None:
        from excise.models import final_linear

        head = final_linear(model)
    params = list(head.parameters()) if isinstance(head, nn.Module) else list(head)
    if not params:
        raise ValueError("head selects no parameters; pass a module or a non-empty list of the model's parameters")
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or id(p) not in names:
            raise ValueError(f"head[{i}] (shape {tuple(getattr(p, 'shape', ()))}) is not a parameter of the model")
        if id(p) in seen:
            raise ValueError(f"head[{i}] ({names[id(p)]!r}) is listed twice")
        seen.add(id(p))
        out.append((names[id(p)], p))
    return out


def head_size(head: Sequence[tuple[str, Tensor]]) -> int:
    return sum(p.numel() for _, p in head)


def per_sample_grads(
    model: nn.Module,
    head: Sequence[Tensor] | nn.Module | None,
    sample_loss: SampleLoss,
    batch: Mapping[str, Tensor],
) -> Tensor:
    """``N x P``: row ``i`` is the flattened gradient of sample ``i``'s loss w.r.t. the head.

    Head parameters are flattened in order and concatenated (``P`` = total head size). Every tensor in
    ``batch`` must have the samples on its first dimension. The model is put in ``eval()`` for the
    computation and restored to its previous mode after.
    """
    named = resolve_head(model, head)
    head_names = [n for n, _ in named]
    head_values = tuple(p.detach() for _, p in named)
    head_set = set(head_names)
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in head_set}

    def loss_of(values: tuple[Tensor, ...], sample: Mapping[str, Tensor]) -> Tensor:
        params = dict(zip(head_names, values, strict=True))

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(model, (params, frozen), args, kwargs)

        one = {k: v.unsqueeze(0) for k, v in sample.items()}
        loss = sample_loss(forward, one)
        if loss.dim() != 0:
            loss = loss.reshape(())  # a per-sample loss of one sample returned as shape (1,)
        return loss

    tensors = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
    was_training = model.training
    model.eval()
    try:
        grads = vmap(grad(loss_of), in_dims=(None, 0))(head_values, tensors)
    finally:
        model.train(was_training)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


@dataclass
class Influence:
    """Influence of each sample on the mean loss of the set it belongs to (the forget set, for IMU)."""

    influences: Tensor  # N, I_i = -g_i^T F^-1 gbar
    fisher: Tensor  # P, diagonal empirical Fisher + damping
    mean_grad: Tensor  # P, gbar


def diagonal_fisher(grads: Tensor, damping: float = 0.01) -> Tensor:
    """Damped diagonal empirical Fisher ``mean_i g_i ⊙ g_i + damping`` of an ``N x P`` gradient matrix."""
    _check_damping(damping)
    return grads.pow(2).mean(0) + damping


def influence_from_grads(grads: Tensor, damping: float = 0.01) -> Influence:
    """``I_i = −g_iᵀ F⁻¹ ḡ`` for every row ``g_i`` of ``grads`` (``N x P``)."""
    if grads.dim() != 2 or grads.shape[0] == 0:
        raise ValueError(f"grads must be a non-empty N x P matrix, got shape {tuple(grads.shape)}")
    fisher = diagonal_fisher(grads, damping)
    mean_grad = grads.mean(0)
    return Influence(-(grads @ (mean_grad / fisher)), fisher, mean_grad)


def compute_influence(
    model: nn.Module,
    head: Sequence[Tensor] | nn.Module | None,
    sample_loss: SampleLoss,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    damping: float = 0.01,
    cache_elements: int = DEFAULT_CACHE_ELEMENTS,
    description: str = "influence",
) -> Influence:
    """Influence of every sample of ``batches`` (in iteration order) on their mean loss.

    Two passes as in the official code — Fisher and mean gradient first, then ``−g_iᵀF⁻¹ḡ`` — but the
    per-sample gradients of the first pass are kept when ``N x P ≤ cache_elements``; beyond that they
    are recomputed, so ``batches`` must be re-iterable (a list or a DataLoader, not a generator).
    """
    _check_damping(damping)
    named = resolve_head(model, head)
    size = head_size(named)
    params = [p for _, p in named]
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    # Under torchrun each rank takes its contiguous share of every batch; the Fisher and mean-gradient sums
    # are reduced and the per-sample influences gathered batch by batch, which restores the input order.
    grad_sum = torch.zeros(size, dtype=params[0].dtype)
    grad_sq = torch.zeros(size, dtype=params[0].dtype)
    cached: list[Tensor] | None = []
    count = 0

    def local_grads(batch: Mapping[str, Tensor]) -> Tensor:
        local = distributed.shard_rows(batch)
        if len(next(iter(local.values()))) == 0:
            return torch.zeros(0, size, dtype=params[0].dtype)
        return per_sample_grads(model, params, sample_loss, local)

    with progress_bar(f"{description}: per-sample gradients", total) as bar:
        for batch in batches:
            g = local_grads(batch)
            grad_sum += g.sum(0)
            grad_sq += g.pow(2).sum(0)
            count += g.shape[0]
            if cached is not None:
                cached.append(g)
                if count * size > cache_elements:
                    cached = None
            bar.advance(samples=count)
    reduced = distributed.all_reduce_tensors(
        {"sum": grad_sum, "sq": grad_sq, "count": torch.tensor([float(count)], dtype=grad_sum.dtype)}
    )
    count = int(reduced["count"].item())
    if count == 0:
        raise ValueError("batches held no samples: there is nothing to compute influence on")
    fisher = reduced["sq"] / count + damping
    mean_grad = reduced["sum"] / count
    direction = mean_grad / fisher
    if cached is not None:
        influences = torch.cat([distributed.all_gather_cat(-(g @ direction)) for g in cached])
    else:
        if iter(batches) is batches:
            raise TypeError("batches is a one-shot iterator; pass a list or DataLoader so it can be read twice")
        parts = []
        with progress_bar(f"{description}: influence", total) as bar:
            for batch in batches:
                parts.append(distributed.all_gather_cat(-(local_grads(batch) @ direction)))
                bar.advance()
        influences = torch.cat(parts)
    return Influence(influences, fisher, mean_grad)


@dataclass
class InfluenceWeights:
    indices: Tensor  # positions (into the influence vector) of the samples kept, most influential first
    weights: Tensor  # their weights, aligned with ``indices``
    num_negative: int  # how many samples had negative influence


def influence_weights(
    influences: Tensor,
    *,
    top_fraction: float = 1.0,
    clip_quantile: float | None = 0.93,
    positive: str = "drop",
    min_count: int = 1,
) -> InfluenceWeights:
    """IMU's sample selection and weights from an influence vector.

    Samples with negative influence (their gradient is aligned with the set's mean gradient in the
    Fisher metric) are the candidates; the ``max(int(n_neg · top_fraction), min_count)`` (at most ``n_neg``;
    ``min_count=1`` is the official ``max(..., 1)``) of largest ``|I|`` are kept, weighted ``√|I|`` and
    clipped from above at the ``clip_quantile`` quantile of the kept weights (``None``: no clip; no lower
    clip). ``positive="drop"`` (the classification code) returns only the
    kept samples; ``positive="zero"`` (the official sequence-model code) returns every sample, with
    weight 0 for positive-influence and unselected ones, and takes the quantile over all weights,
    zeros included. No negative influence at all gives empty indices (``drop``) or all-zero weights.
    """
    if influences.dim() != 1:
        raise ValueError(f"influences must be a 1-D vector, got shape {tuple(influences.shape)}")
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction={top_fraction!r} must lie in (0, 1]")
    if clip_quantile is not None and (
        isinstance(clip_quantile, bool) or not isinstance(clip_quantile, (int, float)) or not 0 < clip_quantile <= 1
    ):
        raise ValueError(f"clip_quantile={clip_quantile!r} must lie in (0, 1] or be None")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count={min_count!r} must be a positive integer")
    if positive not in POSITIVE_MODES:
        raise ValueError(f"positive={positive!r} is not one of {POSITIVE_MODES}")
    negative = torch.nonzero(influences < 0).flatten()
    n_neg = int(negative.numel())
    if n_neg:
        order = torch.argsort(influences[negative].abs(), descending=True, stable=True)
        keep = min(n_neg, max(int(n_neg * top_fraction), min_count))
        selected = negative[order[:keep]]
    else:
        selected = negative
    weights = influences[selected].abs().sqrt()
    if positive == "drop":
        if clip_quantile is not None and weights.numel():
            weights = weights.clamp(max=torch.quantile(weights, clip_quantile))
        return InfluenceWeights(selected, weights, n_neg)
    dense = torch.zeros_like(influences)
    dense[selected] = weights
    if clip_quantile is not None and dense.numel() > 1:
        dense = dense.clamp(max=torch.quantile(dense, clip_quantile))
    return InfluenceWeights(torch.arange(influences.numel()), dense, n_neg)


def l1_norm(params: Iterable[Tensor]) -> Tensor:
    """``Σ |θ|`` over every entry of ``params`` (IMU's sparsity term on the head; unscaled by size)."""
    return sum(p.abs().sum() for p in params)  # type: ignore[return-value]


def weighted_ascent_loss(losses: Tensor, weights: Tensor) -> Tensor:
    """``−Σ_b w_b ℓ_b / Σ_b w_b``: the per-batch normalised weighted gradient-ascent objective."""
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} must align")
    total = weights.sum()
    if float(total) <= 0:
        # A batch of all-zero weights (sequence variant) contributes nothing rather than dividing by 0.
        return losses.sum() * 0.0
    return -(weights * losses).sum() / total


def _check_damping(damping: float) -> None:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 < damping < math.inf:
        raise ValueError(f"damping={damping!r} must be a finite number > 0")
