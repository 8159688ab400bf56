"""Target-level information removal: LEACE concept erasure folded into the head, a masked forgotten output,
and a re-fit of the remaining outputs' biases.

Belrose, Schneider-Joseph, Ravfogel, Cotterell, Raff, Biderman, "LEACE: Perfect linear concept erasure in
closed form", NeurIPS 2023 (arXiv 2306.03819); the eraser is the ``concept-erasure`` package's
``LeaceFitter``. Pruning a target's essential graph (:mod:`excise.graph`) moves its thresholded decision but
leaves the target readable: on the distractor canvases (``bottleneck_resnet``, 2 seeds x 5 targets,
``benchmarks/target_level.py``) a linear probe on the features the logit layer reads gave a pruned target
AP 98 (median) where retraining left 54, for a prevalence of 29. These three steps are what remove it there
and keep the rest working:

- :func:`erase_target` fits LEACE on the training set's classifier-input features (the input of the layer
  that produces the logits, :func:`excise.models.heads.head_features`) against the forgotten target's labels,
  and folds the affine map ``E(h) = h - L R (h - mu)`` into the model so it keeps its architecture and cost;
  the fold is exact up to float rounding (:func:`fold_error` measures it against applying ``E`` explicitly).
  Where it is folded decides what is removed, so the record says which:

  - ``"features"``: when a linear layer of the head produces those features (the paper's ``linear1 ->
    linear2``), ``E`` is folded into that producer, ``W' = W - L (R W)``, ``b' = b - L R (b - mu)``. The
    features the classifier reads are then erased: no linear probe on them, and no logit, predicts the
    target better than a constant on the fitting distribution.
  - ``"logits"``: when the head is a single linear layer (a CIFAR ResNet's ``fc`` after pooling), nothing
    linear produces its input, so ``E`` is folded into the head itself, ``W' = W - (W L) R``,
    ``b' = b + W L R mu``. The logits are blind to the target, but the pooled features the body computes
    still carry it for anyone who reads them; the probe reports it.

  Folding into a producer rather than after it is the choice that makes the erased representation one the
  model actually computes; folding into the consumer leaves the probed features untouched, measured to keep
  the probe at AP 99.8 on the bottleneck model.
- :func:`mask_output` sets the forgotten output to a constant: its weight row is zeroed and its bias set to
  ``MASKED_LOGIT`` (probability 0.001), so it reads "absent" on every input and no input can move it (a
  model-inversion attack has no gradient to follow). The head keeps its K outputs, so indices and every
  consumer of the model stay valid; the sidecar records the mask.
- :func:`refit_biases` re-fits only the *remaining* outputs' final biases (a 1-D Newton fit of the BCE per
  output on training instances, nothing else trains). Pruning or erasure shifts the remaining logits; a bias
  shift restores their thresholded accuracy without touching their ranking. Fine-tuning on the remaining
  labels instead was measured to bring the forgotten target back (recall 10% -> 66% after one epoch), which
  is why only biases move.
- :func:`erase_in_body` is for a head that no fold reaches: when one linear layer reads the pooled body features
  (a CIFAR ResNet's ``fc``), those features are a ReLU and a pooling away from the last affine map, and no fold
  can change them. It trains the body's last stage instead, from its recorded inputs, so that the features the
  head reads no longer separate the target's class means (:func:`mean_separation`) while the remaining logits
  stay what they were. The probe reads what is left.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from excise.models.heads import (
    HeadError,
    affine_head,
    body_tail,
    classifier_output,
    head_features,
    module_inputs,
    stage_tail,
)

__all__ = ["MASKED_LOGIT", "BodyErasure", "Erasure", "StageErasure", "erase_in_body", "erase_in_dense_stage",
           "erase_target", "fit_bias_shifts", "fit_erasure",
           "fold_erasure", "fold_error", "mask_output", "mean_separation", "refit_biases", "shift_biases"]

MASKED_LOGIT = math.log(1e-3 / (1 - 1e-3))


@dataclass
class Erasure:
    """A fitted LEACE eraser ``x -> x - left @ right @ (x - mean)`` at the input of ``layer``."""

    layer: str
    left: Tensor  # D x r
    right: Tensor  # r x D
    mean: Tensor  # D

    def apply(self, features: Tensor) -> Tensor:
        return features - (features - self.mean) @ self.right.T @ self.left.T

    @property
    def rank(self) -> int:
        return int((self.left.abs().sum(0) > 0).sum())


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        raise HeadError(f"{name!r} is not an nn.Linear of {type(model).__name__}")
    return module


def fit_erasure(features: Tensor, concept: Tensor, layer: str) -> Erasure:
    """LEACE fitted on ``N x D`` features against ``N`` (or ``N x k``) concept labels, in float64."""
    with warnings.catch_warnings():  # the package's other modules use torch.jit.script, deprecated in torch 2.13
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
        from concept_erasure import LeaceFitter

    if features.dim() != 2 or len(features) != len(concept):
        raise ValueError(f"features must be N x D with one concept label per row; got {tuple(features.shape)} "
                         f"features and {len(concept)} labels")
    labels = concept.reshape(len(concept), -1).double()
    if len(features) < 2 or bool((labels == labels[0]).all()):
        raise ValueError("the concept to erase must take both values on the fitting rows (the forgotten "
                         "target must be present on some training instances and absent on others)")
    # constrain_cov_trace=False keeps the exact LEACE projection (equal class means on the fitting rows); the
    # package's default mixes in an orthogonal projection when the trace would grow, which gives that up.
    eraser = LeaceFitter.fit(features.double(), labels, constrain_cov_trace=False).eraser
    return Erasure(layer, eraser.proj_left, eraser.proj_right, eraser.bias)


def _bias_of(linear: nn.Linear, name: str) -> Tensor:
    # A layer without a bias is refused rather than given one: a new parameter would change the architecture
    # and the checkpoint's keys, and a strict load of the unlearned model would fail.
    if linear.bias is None:
        raise HeadError(f"the head layer {name!r} has no bias; folding an eraser or masking an output needs one")
    return linear.bias


@torch.no_grad()
def fold_erasure(model: nn.Module, erasure: Erasure) -> str:
    """Fold the eraser of the input of ``erasure.layer`` into the model in place (see the module docstring);
    returns ``"features"`` (folded into the head layer that produces them) or ``"logits"`` (into the
    classifier itself)."""
    chain = affine_head(model)
    if erasure.layer not in chain:
        raise HeadError(f"{erasure.layer!r} is not a layer of the model's linear head {chain}")
    position = chain.index(erasure.layer)
    if position > 0:
        producer = _linear(model, chain[position - 1])
        bias = _bias_of(producer, chain[position - 1])
        weight, left, right = producer.weight.double(), erasure.left.to(bias.device), erasure.right.to(bias.device)
        producer.weight.copy_(weight - left @ (right @ weight))
        bias.copy_(bias.double() - left @ (right @ (bias.double() - erasure.mean.to(bias.device))))
        return "features"
    linear = _linear(model, erasure.layer)
    bias = _bias_of(linear, erasure.layer)
    weight, left, right = linear.weight.double(), erasure.left.to(bias.device), erasure.right.to(bias.device)
    weight_left = weight @ left
    linear.weight.copy_(weight - weight_left @ right)
    bias.copy_(bias.double() + weight_left @ (right @ erasure.mean.to(bias.device)))
    return "logits"


def erase_target(model: nn.Module, inputs: Tensor, concept: Tensor) -> tuple[Erasure, str]:
    """Fit LEACE on the classifier-input features of ``inputs`` against ``concept`` and fold it into the head
    of ``model`` in place. Returns the eraser (for :func:`fold_error`) and where it was folded."""
    name = classifier_output(model)
    erasure = fit_erasure(head_features(model, inputs, name), concept, name)
    return erasure, fold_erasure(model, erasure)


@torch.no_grad()
def fold_error(original: nn.Module, folded: nn.Module, erasure: Erasure, inputs: Tensor) -> float:
    """Largest absolute difference between ``folded``'s logits and ``original`` run with the eraser applied
    explicitly to its classifier-input features: the fold's exactness."""
    module = _linear(original, erasure.layer)

    def erase(_module: nn.Module, args: tuple) -> tuple:
        shape = args[0].shape
        flat = args[0].flatten(1).double()
        return (erasure.apply(flat).to(args[0].dtype).reshape(shape),)

    handle = module.register_forward_pre_hook(erase)
    was = original.training, folded.training
    original.eval()
    folded.eval()
    try:
        explicit = original(inputs)
    finally:
        handle.remove()
        original.train(was[0])
        folded.train(was[1])
    return float((folded(inputs) - explicit).abs().max())


@torch.no_grad()
def mask_output(model: nn.Module, targets: Sequence[int], logit: float = MASKED_LOGIT) -> str:
    """Set the given outputs to the constant ``logit`` on every input, in place; returns the head's name."""
    name = classifier_output(model)
    linear = _linear(model, name)
    index = torch.as_tensor(list(targets), dtype=torch.long)
    if len(index) and (index.min() < 0 or index.max() >= linear.out_features):
        raise ValueError(f"targets {list(targets)} out of range for a head of {linear.out_features} outputs")
    linear.weight[index] = 0
    _bias_of(linear, name)[index] = logit
    return name


def fit_bias_shifts(logits: Tensor, targets: Tensor, outputs: Sequence[int], iterations: int = 25) -> dict[int, float]:
    """Per output of ``outputs``, the shift of its bias that minimises the BCE of ``logits[:, k] + shift``
    against ``targets[:, k]`` (1-D Newton). An output whose rows all carry one label keeps its bias (the
    maximum-likelihood shift is infinite)."""
    logits = logits.double()
    shifts = {}
    for k in outputs:
        z, y = logits[:, k], targets[:, k].double()
        if len(y) == 0 or bool((y == y[0]).all()):
            shifts[int(k)] = 0.0
            continue
        delta = 0.0
        for _ in range(iterations):
            p = torch.sigmoid(z + delta)
            step = float((p - y).sum()) / max(float((p * (1 - p)).sum()), 1e-12)
            delta -= max(-5.0, min(5.0, step))  # damped: a first step from saturated logits can overshoot
            if abs(step) < 1e-8:
                break
        shifts[int(k)] = delta
    return shifts


@torch.no_grad()
def shift_biases(model: nn.Module, shifts: dict[int, float]) -> None:
    """Add ``shifts[k]`` to the bias of output ``k`` of the classifier, in place."""
    name = classifier_output(model)
    bias = _bias_of(_linear(model, name), name)
    for k, delta in shifts.items():
        bias[k] += delta


@torch.no_grad()
def refit_biases(model: nn.Module, inputs: Tensor, targets: Tensor, outputs: Sequence[int]) -> dict[int, float]:
    """Re-fit the final bias of each of ``outputs`` (BCE, 1-D Newton per output) on ``inputs``/``targets``
    (``N x K`` multi-hot), in place. Only those biases move. Returns each output's bias shift."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(inputs[s:s + 512]) for s in range(0, len(inputs), 512)])
    finally:
        model.train(was_training)
    shifts = fit_bias_shifts(logits, targets, outputs)
    shift_biases(model, shifts)
    return shifts


def mean_separation(features: Tensor, concept: Tensor, ridge: float = 1e-3) -> Tensor:
    """Squared Mahalanobis distance between the class-conditional means of ``features`` (``N x D``) under a
    binary ``concept``, in the pooled within-class covariance (plus ``ridge`` times its mean variance, so a
    collapsed direction cannot blow it up): the separation a linear probe exploits. LEACE's condition, equal class
    means, is where it is 0. Differentiable; 0 when either class has fewer than 2 rows."""
    positive = concept > 0.5
    if int(positive.sum()) < 2 or int((~positive).sum()) < 2:
        return features.sum() * 0.0
    ones, zeros = features[positive], features[~positive]
    gap = ones.mean(0) - zeros.mean(0)
    centred = torch.cat([ones - ones.mean(0), zeros - zeros.mean(0)])
    covariance = centred.T @ centred / len(centred)
    # The absolute floor keeps the solve defined when every row of a class is the same.
    shrink = (ridge * covariance.diagonal().mean()).clamp_min(torch.finfo(features.dtype).eps)
    covariance = covariance + shrink * torch.eye(len(gap), dtype=gap.dtype, device=gap.device)
    return gap @ torch.linalg.solve(covariance, gap)


@dataclass
class BodyErasure:
    """What :func:`erase_in_body` did: the module trained, its optimiser steps, and the mean separation of the
    body features (summed over the erased targets, on the fitting rows) before and after."""

    module: str
    steps: int
    separation_before: float
    separation_after: float
    classifier_features: Tensor  # the fitting rows' classifier-input features after the change


_CHUNK = 512


def _trainable(model: nn.Module, module: str, field: str) -> tuple[nn.Module, list[nn.Parameter]]:
    stage = dict(model.named_modules())[module]
    parameters = [p for p in stage.parameters() if p.requires_grad]
    if not parameters:
        raise HeadError(f"{field}={module!r} has no trainable parameters to erase with")
    return stage, parameters


@torch.no_grad()
def _tail_outputs(tail: nn.Module, stage_inputs: Tensor, chunk: int) -> tuple[Tensor, ...]:
    parts = [tail(stage_inputs[s:s + chunk]) for s in range(0, len(stage_inputs), chunk)]
    return tuple(torch.cat([part[i] for part in parts]) for i in range(len(parts[0])))


def _train_stage(tail: nn.Module, parameters: list[nn.Parameter], stage_inputs: Tensor,
                 batch_loss: Callable[[tuple[Tensor, ...], Tensor], Tensor], epochs: int, lr: float, seed: int,
                 batch_size: int) -> int:
    """Adam at ``lr`` on ``parameters`` for ``epochs`` seeded passes over ``stage_inputs`` in batches of
    ``batch_size``, minimising ``batch_loss(tail outputs, batch rows)``; returns the steps taken. No ``.grad``
    is left anywhere."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(len(stage_inputs), generator=generator)
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    loss = batch_loss(tail(stage_inputs[rows]), rows)
                    # autograd.grad, not backward: nothing outside the stage gets (or loses) a .grad
                    for parameter, grad in zip(parameters, torch.autograd.grad(loss, parameters), strict=True):
                        parameter.grad = grad
                    optimizer.step()
                    steps += 1
    finally:
        for parameter in parameters:
            parameter.grad = None
    return steps


def erase_in_body(model: nn.Module, inputs: Tensor, concept: Tensor, keep: Sequence[int], module: str, epochs: int,
                  penalty: float, lr: float, seed: int, batch_size: int = 256) -> BodyErasure:
    """Train ``module`` (in place; every other parameter and buffer stays, and no ``.grad`` is left anywhere) so
    that the body features, the input of the head's first linear layer, no longer separate ``concept`` (``N`` or
    ``N x k`` binary labels of ``inputs``) while the logits of the outputs ``keep`` stay the original's.

    The inputs of ``module`` are recorded once, and ``module`` plus what follows it
    (:func:`excise.models.heads.body_tail`) is trained on them for ``epochs`` passes of Adam at ``lr``, in eval
    mode (BatchNorm's running statistics are part of the model and stay), minimising
    ``mean((logits_keep - original_logits_keep)^2) + penalty * sum_k mean_separation(features, concept_k)``
    per batch of ``batch_size``. Only ``module``'s parameters receive gradients."""
    was_training = model.training
    model.eval()  # before tracing: fx fixes the mode where a forward reads self.training
    try:
        tail = body_tail(model, module)
        stage, parameters = _trainable(model, module, "body_module")
        labels = concept.reshape(len(concept), -1)
        keep = list(keep)
        stage_inputs = module_inputs(model, stage, inputs, _CHUNK)
        if stage_inputs is None:
            raise ValueError("erase_in_body needs at least one input row")

        def separation(features: Tensor, rows: slice | Tensor) -> Tensor:
            total = features.new_zeros((), dtype=torch.float64)
            for k in range(labels.shape[1]):
                total = total + mean_separation(features.double(), labels[rows, k])
            return total

        def batch_loss(outputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
            features, _, logits = outputs
            loss = penalty * separation(features, rows).to(logits.dtype)
            if keep:
                loss = loss + (logits[:, keep] - original_logits[rows][:, keep]).pow(2).mean()
            return loss

        body_features, _, original_logits = _tail_outputs(tail, stage_inputs, _CHUNK)
        before = float(separation(body_features, slice(None)))
        steps = _train_stage(tail, parameters, stage_inputs, batch_loss, epochs, lr, seed, batch_size)
        body_features, classifier_features, _ = _tail_outputs(tail, stage_inputs, _CHUNK)
        after = float(separation(body_features, slice(None)))
    finally:
        model.train(was_training)
    return BodyErasure(module, steps, before, after, classifier_features)


@dataclass
class StageErasure:
    """What :func:`erase_in_dense_stage` did: its optimiser steps, and the mean separation of the concept's cells
    from the other instance cells in the read features, on every cell, before and after."""

    steps: int
    separation_before: float
    separation_after: float


def erase_in_dense_stage(model: nn.Module, images: Tensor, cells: Tensor, concept: Sequence[int], drop: Sequence[int],
                         module: str, read: str, epochs: int, penalty: float, lr: float, seed: int,
                         batch_size: int = 128) -> StageErasure:
    """The dense form of :func:`erase_in_body`: train ``module`` (in place; nothing else moves, no ``.grad`` is
    left) so that the feature map ``read`` receives no longer separates, by the class means a linear probe reads,
    the instance cells of each class of ``concept`` from the other instance cells (``cells``: ``N x H x W``, one map
    per image, ``1 + c`` at each instance cell of class ``c``, 0 elsewhere, at ``read``'s resolution), while every
    output channel but those in ``drop`` (the concept's own maps, which are masked next) stays the original's at
    every cell. The inputs of ``module`` are recorded once; Adam at ``lr``, eval mode, ``epochs`` passes over
    ``images`` in batches of ``batch_size``; per batch the loss is ``mean((out_kept - original_kept)^2) + penalty *
    sum_c mean_separation(cell features, cell of class c)``."""
    concept = [int(c) for c in concept]
    if cells.dim() != 3 or len(cells) != len(images):
        raise ValueError(f"cells must be N x H x W with one map per image; got {tuple(cells.shape)} for "
                         f"{len(images)} images")
    where = torch.nonzero(cells > 0)
    classes = cells[where[:, 0], where[:, 1], where[:, 2]]
    if not concept or any(int((classes == 1 + c).sum()) < 2 for c in concept):
        raise ValueError(f"concept={concept} must name classes with at least 2 instance cells each")
    was_training = model.training
    model.eval()  # before tracing: fx fixes the mode where a forward reads self.training
    try:
        tail = stage_tail(model, module, (read,), "stage", "read")
        stage, parameters = _trainable(model, module, "stage")
        stage_inputs = module_inputs(model, stage, images)
        if stage_inputs is None:
            raise ValueError("erase_in_dense_stage needs at least one image")
        features, original = _tail_outputs(tail, stage_inputs, batch_size)
        if tuple(features.shape[-2:]) != tuple(cells.shape[-2:]):
            raise ValueError(f"read={read!r} receives {tuple(features.shape[-2:])} maps; the instance cells are "
                             f"{tuple(cells.shape[-2:])}")
        if any(not 0 <= d < original.shape[1] for d in drop) or len(set(drop)) >= original.shape[1]:
            raise ValueError(f"drop={list(drop)} must name some, not all, of the model's {original.shape[1]} output "
                             "channels")
        keep = [k for k in range(original.shape[1]) if k not in set(drop)]
        original = original[:, keep]

        def separation(features: Tensor, rows: Tensor) -> Tensor:
            position = torch.full((len(cells),), -1, dtype=torch.long)
            position[rows] = torch.arange(len(rows))
            mine = position[where[:, 0]] >= 0
            chosen = where[mine]
            found = features[position[chosen[:, 0]], :, chosen[:, 1], chosen[:, 2]].double()
            total = found.new_zeros(())
            for c in concept:
                total = total + mean_separation(found, classes[mine] == 1 + c)
            return total

        def batch_loss(outputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
            features, out = outputs
            loss = (out[:, keep] - original[rows]).pow(2).mean()
            return loss + penalty * separation(features, rows).to(loss.dtype)

        everything = torch.arange(len(stage_inputs))
        before = float(separation(features, everything))
        steps = _train_stage(tail, parameters, stage_inputs, batch_loss, epochs, lr, seed, batch_size)
        after = float(separation(_tail_outputs(tail, stage_inputs, batch_size)[0], everything))
    finally:
        model.train(was_training)
    return StageErasure(steps, before, after)
