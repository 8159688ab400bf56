"""IMU: Influence-guided Machine Unlearning — weighted gradient ascent on the classifier head, forget set only.

Fan, Wu, Zhou, Liang, Harandi, Phung, "Influence-guided Machine Unlearning", arXiv 2508.01620 (2025);
official code ``goodluckisallyouneed/IMU`` (``Classification/unlearn/IMU.py``, ``arg_parser.py``; the
optimizer comes from ``unlearn/impl.py`` of the Unlearn-Sparse code it builds on). Spec and pitfalls:
``shared/methods/imu.md``. The reusable pieces live in :mod:`excise.influence`.

Algorithm (the official classification code):

1. per-sample gradients ``g_i`` of the cross-entropy w.r.t. the head, model in eval mode, computed with
   ``torch.func.vmap(grad)`` instead of the official batch-of-1 loop (same numbers);
2. damped diagonal empirical Fisher on the forget set ``F = mean g_i² + damping`` (0.01), mean gradient
   ``ḡ``, influence ``I_i = −g_iᵀF⁻¹ḡ``;
3. keep only negative-influence samples, the ``max(int(n_neg · top_fraction), min_kept)`` largest ``|I|``;
   weights ``√|I|`` clipped from above at their ``clip_quantile`` (0.93) quantile;
4. for ``epochs`` passes over the kept samples (shuffled, ``batch_size``): minimise
   ``−Σ_b w_b ℓ_b / Σ_b w_b + alpha · ‖head‖₁`` (weights normalised per batch; L1 on the head's weight and
   bias, unscaled) with SGD (momentum 0.9, weight decay 5e-4) on the head only.

Parameters updated: the official code builds ``SGD(model.parameters(), ...)`` but sets
``requires_grad = ('fc' in name)`` before every loss, so only the final layer gets gradients and SGD (weight
decay included) skips every other parameter. excise updates the head only, selected without a name match:
``head`` is an exact dotted module path (``"fc"``) or ``None`` for the last ``nn.Linear`` found by type
(:func:`excise.models.final_linear`). Influence and weights are computed once, on the model being
unlearned (the official *sequence* code computes them on a freshly initialised model — a bug not copied).

BatchNorm (``bn_mode``). The official loop runs its forwards in ``model.train()``: the loss sees batch
statistics of the forget batch and the backbone's running statistics drift toward it (a second train-mode
forward per step for logging doubles the drift; excise runs one forward per step). Three modes:

- ``"train"``: that behaviour (batch statistics, running statistics updated);
- ``"batch"`` (default): batch statistics in the loss, running statistics left untouched, so the returned
  model differs from the original *only in the head* ("SGD on head only", and auditable as such);
- ``"eval"``: running statistics throughout.

Measured on digits (small_cnn width 16; 3 seeds × {1,347, 539} training images; full class "3" and random
10 %; mean Avg. Gap to retrain in points, worst RA/TA change vs the original):
``batch`` class 0.45 / 0.10, samples 1.41 / 3.27, worst ΔRA −0.2, ΔTA −0.5;
``train`` class 0.68 / 0.73, samples 1.13 / 2.62, worst ΔRA −1.5, ΔTA −2.5;
``eval`` class 49.1 / 36.3 (it does not forget the class in 10 steps: with running statistics the
confident head gets almost no ascent gradient), samples 1.69 / 3.40.
On MNIST (4,000 images, 2 seeds) full class: ``batch`` 0.34 / 0.38, ``train`` 0.33 / 0.69, ``eval``
1.23 / 0.42. ``train`` and ``batch`` tie on the mean gap; ``batch`` keeps RA/TA closest to the original
and touches nothing but the head, hence the default. Why ``train``/``batch`` forget and ``eval`` barely
does: under batch statistics the forget batch's features are re-centred, its predictions are far less
confident, and the ascent has a gradient from the first step.

Defaults and scale — what changed from the official code and why (all overridable):

- lr 0.01, 10 epochs, batch 256, alpha 0.2, top_fraction 0.1, momentum 0.9, weight decay 5e-4, damping
  0.01, clip 0.93: official. The ascent loss is a weighted *mean* and the L1 gradient is ``alpha·sign(θ)``,
  so a step's size does not depend on the forget-set size; at top 10 % with batch 256 the kept set is one or
  two batches on CIFAR-10 as on digits, i.e. 10-20 steps either way (a class request: at least ``min_steps``
  before the cap, below).
- ``min_kept`` 64 (official: 1). With the official ``max(int(0.1 · n_neg), 1)`` a digits-size forget set
  keeps 4-13 samples; batch statistics of so few samples are noise, and a random-sample request then lost
  6-11 points of RA/TA (``train`` mode, digits). The floor uses all negative-influence samples when there
  are fewer than 64 and is inactive from ``n_neg ≥ 640`` on, i.e. at CIFAR scale the official selection
  is unchanged. On the digits grid a floor of 32 still lost ~10 points of RA on a random-sample run and
  128 left FA at 5 % on a class run; 64 passed all twelve.
- ``stop_accuracy="auto"`` (official: none, fixed epochs). Gradient ascent on an unbounded loss has a
  cliff whose position depends on how confident the model is, not on the data-set size: MNIST's full-class
  run reaches FA 0 with RA 97.5 after 6 steps and is at RA 77.7 after the official 10. The forget accuracy
  is checked after every epoch (eval mode) and ascent stops once it reaches the retrained model's value as
  far as a forget-only method can know it: 0 for a full class (a model never trained on a class does not
  predict it); for random samples, the starting forget accuracy minus ``max_accuracy_drop`` (0.02) —
  the forget set is an i.i.d. draw of the training set, so its accuracy tracks the retain accuracy and the
  guard bounds the utility cost (MNIST samples: RA −1.6 to −1.8 instead of −10 to −12). When the forget set is
  too small for that drop to be a whole sample (``n · max_accuracy_drop < 1``: 13 digits at 1 %, 40 MNIST
  digits), the first flipped sample already overshoots the retrained model's expected accuracy (a 7.7-point fall
  on 13 samples; it doubled the gap to retrain on digits width 16, 1.98 → 4.39 and 2.11 → 4.42), so the run keeps
  the head as it was at the last check before the flip (measured, digits 1 %, seeds 0-2: width 16 gaps
  0.11 / 2.16 / 2.24 against the original's 0.17 / 1.98 / 2.11; width 32 0.24 / 0.07 / 0.28 against 0.13 / 1.98 /
  2.09). The same overshoot comes from a coarse check on a larger set (a ResNet-18 on MNIST, random 10 %: one
  epoch took the forget accuracy from 100 to 91.5, gap 7.55 against the original's 2.49), so in general the run
  keeps whichever of the last two checked states is nearer the stop accuracy. For a sub-class no target
  is known (the retrained model may still map it to its super-class), so the epoch budget rules. A float
  sets an explicit target, ``None`` restores the official fixed budget.
- ``min_steps`` 40 (excise extension, class requests with the stop on): the epoch cap is raised to at least this
  many ascent steps. The official 10 epochs of batch 256 are 10-20 steps (above), and, with momentum 0.9, that is
  often not enough to reach the stop: on a new user's tabular MLPs (wine, breast cancer, flattened digits; 44-160 forget
  rows) every class run ended at its cap with FA 100, and 16-19 steps reached FA 0. On ``benchmarks/zoo.py``'s
  class and other-class requests the cap ended 4 of the 6 width-16 digits runs at FA 1.5-2.9 (gaps 0.50-0.96);
  with the floor they stop at FA 0 (gaps 0.12-0.29), and runs the stop ended before step 10 are unchanged. The
  stop, not the floor, ends the run; ``min_steps=0`` is the official budget. The price is in sequences, where
  IMU's head-wide ascent already sinks (below): on the quick suite's 1 → 4 → 7 (width 16, seeds 0-2, last step)
  the mean gap went 14.24 → 16.44 (RA 60.9-82.8 → 60.9-80.3); ``imu_forgotten_rows`` is the method for sequences.

``rows`` ("all", the paper's head-wide ascent) is "forgotten" in :class:`IMUForgottenRows`, excise's extension for
class requests and their sequences (see below and its docstring).

Under ``torchrun``: the influences are computed data-parallel (:func:`excise.influence.compute_influence`
splits the forget set across ranks, all-reduces the Fisher and gathers the per-sample influences), so every
rank selects the same samples with the same weights; the ascent itself (10-40 steps on the head, whose loss
uses the batch statistics of the whole forget batch) runs replicated on every rank with the same seed.
Other choices where paper and code are silent: no data augmentation during unlearning (the official loop
keeps the train transform on; excise's in-memory data has none); no warm-up or schedule (the official
MultiStepLR milestones 91/136 never fire within 10 epochs); ``grad_batch_size`` only chunks the vectorised
gradients (memory, not results). Known limits: on a sub-class inside a kept super-class the head-only ascent
also lowers the super-class for its other members (digits-super, sub-class "8": FA 98.5 → 52.7, retrain
35.9, but RA −5.0); on MNIST random samples the guarded run keeps RA within 2 points but the SVC-confidence
MIA jumped to ~80-90 %, held-out *retain* samples being called non-members at the same rate (90.8 % vs 88.2 %
for the forget set) — measured while the SVC's members were the *first* retain rows, which on class-sorted
MNIST are classes 0-2 only (fixed since in :mod:`excise.metrics.mia`). Re-measured with random members
(small_cnn width 16, 15 epochs, seed 0): MNIST random 10 % MIA 4.0 (original 6.0, retrain 12.8), RA 96.7,
gap 2.63 — the collapse was that artefact; MNIST class 3: FA 0.0, RA 97.3, TA 93.6, MIA 100, gap 0.42.

**Sequences, measured (issue 20).** Digits, ``small_cnn`` width 32, 30 epochs, classes 1 → 4 → 9, seeds 11 / 0 /
1: steps 1 and 2 match retrain (gap 0.0-1.6), but step 3 collapses on two seeds (RA 52.7 and 42.3; seed 1 stays
at 100). The collapse is a *sink*: after step 3 every forgotten sample (1s, 4s and 9s) and every misclassified
retained sample is predicted as one class (5 on seed 11, 8 on seed 0) — the ascent raises the logit row of the
class the 9s fall into until it swallows its neighbours. The per-epoch stop cannot catch it: FA falls 0.64 →
0.11 → 0 over the last two epochs while RA falls with it. Two findings on the way: (1) what makes head-only
ascent forget at all here is ``bn_mode="batch"`` — a batch of one class normalised by its own statistics gives
large, wrong logits (the eval-mode predictions inside such a batch are all wrong); with ``bn_mode="eval"`` the
same ten epochs leave FA at 61-100 %; (2) stopping each sample's ascent once the eval-mode model misclassifies it
(a per-sample stop) softens the sink (step 3 RA 52.7 → 64.4, 42.3 → 81.1) but does not remove it, and is not
kept. ``run_sequence`` with ``imu`` is therefore not safe past two steps on small models; ``salun`` and
``l1_sparse`` (retain data) stayed within 0.2 points of retrain at every step when issue 20 measured them, and
:class:`IMUForgottenRows` (``imu_forgotten_rows``, forget only) removes the sink by moving only the forgotten
classes' rows of the head (measured in its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from excise.data.base import LabeledData
from excise.influence import (
    compute_influence,
    influence_weights,
    l1_norm,
    resolve_head,
    weighted_ascent_loss,
)
from excise.methods._common import NearerOfLastTwo, only_trainable
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.models import final_linear
from excise.progress import progress_bar
from excise.requests import ForgetRequest, RequestError
from excise.training import (
    check_fraction,
    check_nonnegative,
    check_positive,
    check_positive_int,
    make_loader,
    make_optimizer,
    per_sample_loss,
    predict_logits,
)

BN_MODES = ("batch", "train", "eval")
HEAD_ROWS = ("all", "forgotten")


@dataclass
class IMUConfig:
    lr: float = 0.01
    epochs: int = 10
    batch_size: int = 256
    alpha: float = 0.2
    top_fraction: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    damping: float = 0.01
    clip_quantile: float = 0.93
    bn_mode: str = "batch"
    head: str | None = None
    min_kept: int = 64
    stop_accuracy: float | str | None = "auto"
    max_accuracy_drop: float = 0.02
    grad_batch_size: int = 256
    rows: str = "all"
    stop_probability: float | None = None
    min_steps: int = 40

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "batch_size", "min_kept", "grad_batch_size")
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise ValueError(f"min_steps={self.min_steps!r} must be an integer >= 0 (0: the official epoch budget)")
        if self.rows not in HEAD_ROWS:
            raise ValueError(f"rows={self.rows!r} is not one of {HEAD_ROWS}")
        if self.stop_probability is not None and (
                isinstance(self.stop_probability, bool) or not isinstance(self.stop_probability, (int, float))
                or not 0 < self.stop_probability < 1 or self.rows != "forgotten"):
            raise ValueError(f"stop_probability={self.stop_probability!r} must be None or a number in (0, 1), and "
                             "needs rows='forgotten' (head-wide ascent that far collapses the model)")
        if self.rows == "forgotten" and self.bn_mode == "train":
            raise ValueError("rows='forgotten' holds every retained class's row of the head; bn_mode='train' would "
                             "move the body's BatchNorm statistics under them: use bn_mode 'batch' or 'eval'")
        check_nonnegative(self, "lr", "alpha", "momentum", "weight_decay")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        check_positive(self, "damping")
        check_fraction(self, "top_fraction", "clip_quantile", closed=True)
        check_fraction(self, "max_accuracy_drop", closed=True)
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode={self.bn_mode!r} is not one of {BN_MODES}")
        if not (self.stop_accuracy is None or self.stop_accuracy == "auto" or (
                isinstance(self.stop_accuracy, (int, float)) and not isinstance(self.stop_accuracy, bool)
                and 0 <= self.stop_accuracy <= 1)):
            raise ValueError(f"stop_accuracy={self.stop_accuracy!r} must be 'auto' (0 for class requests, off "
                             "otherwise), a number in [0, 1], or None (run every epoch)")
        if self.head is not None and (not isinstance(self.head, str) or not self.head):
            raise ValueError(f"head={self.head!r} must be a dotted module path (e.g. 'fc') or None")


def classification_loss(task: str):
    """The per-sample loss IMU's influence is taken on: cross-entropy of one sample (``calc_loss``)."""

    def sample_loss(forward: Any, sample: dict[str, Tensor]) -> Tensor:
        logits = forward(sample["inputs"])
        return per_sample_loss(logits, sample["targets"], task, sample.get("label_mask")).sum()

    return sample_loss


def forget_accuracy(model: nn.Module, data: UnlearnData) -> float:
    """Accuracy on the forget set in eval mode (the model's mode is restored)."""
    return float((predict_logits(model, data.forget_set).argmax(1) == data.forget_set.targets).float().mean())


class HeadOnlyAccuracy:
    """The forget accuracy at the cost of the head alone, for the checks after every epoch.

    Only the head trains and no BatchNorm statistic moves (``bn_mode`` "eval" or "batch"), so the body's eval-mode
    output on the forget set never changes: it is recorded once — the head's inputs, captured on the full forward
    that measures the starting accuracy, chunk by chunk as :func:`excise.training.predict_logits` runs — and every
    later check applies the head to them. ``exact`` says whether the head applied to the record reproduced the
    model's logits bit for bit; when not (something after the head, a head called twice), the checks fall back to
    full forwards. Either way they decide the same: measured, the full forward was 78% of IMU's time."""

    def __init__(self, model: nn.Module, head: nn.Module, data: LabeledData) -> None:
        self.head, self.targets = head, data.targets
        recorded: list[Tensor] = []
        hook = head.register_forward_pre_hook(lambda module, args: recorded.append(args[0].detach()))
        try:
            with torch.no_grad():
                logits = predict_logits(model, data)
        finally:
            hook.remove()
        self.recorded = recorded
        self.start = float((logits.argmax(1) == self.targets).float().mean())
        self.exact = bool(recorded) and torch.equal(self._logits(), logits)

    @torch.no_grad()
    def _logits(self) -> Tensor:
        was_training = self.head.training
        self.head.eval()
        try:
            return torch.cat([self.head(x) for x in self.recorded])
        finally:
            self.head.train(was_training)

    def accuracy(self, model: nn.Module, data: UnlearnData) -> float:
        if not self.exact:
            return forget_accuracy(model, data)
        return float((self._logits().argmax(1) == self.targets).float().mean())

    def own_probability(self, model: nn.Module, data: UnlearnData) -> float:
        """The forget rows' mean softmax probability of their own class (eval mode)."""
        return own_class_probability(self._logits() if self.exact else predict_logits(model, data.forget_set),
                                     self.targets)


def own_class_probability(logits: Tensor, targets: Tensor) -> float:
    return float(logits.softmax(1).gather(1, targets.view(-1, 1)).mean())


class KeptRows:
    """The head's rows of every class but ``classes``, held exactly where they are (``rows="forgotten"``)."""

    def __init__(self, head: list[nn.Parameter], classes: Tensor, num_classes: int) -> None:
        if any(p.dim() == 0 or p.shape[0] != num_classes for p in head):
            raise ValueError(f"rows='forgotten' needs a head whose parameters have one row per class ({num_classes}:"
                             f" the logit layer's weight and bias); got shapes {[tuple(p.shape) for p in head]}")
        self.head = head
        self.keep = torch.ones(num_classes, dtype=torch.bool)
        self.keep[classes] = False
        self.saved = [p.detach()[self.keep].clone() for p in head]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.head, self.saved, strict=True):
            p[self.keep] = saved


def without_other_forgotten(logits: Tensor, targets: Tensor, forgotten: Tensor) -> Tensor:
    """``logits`` with every forgotten class but each row's own set to -inf (``forgotten``: a bool per class).

    With several classes forgotten at once and only their rows moving, a sample's ascent would raise the other
    forgotten rows along its features; left out of its softmax, they get no gradient from it."""
    others = forgotten.to(logits.device).expand_as(logits).clone()
    others[torch.arange(len(targets), device=logits.device), targets] = False
    return logits.masked_fill(others, float("-inf")) if bool(others.any()) else logits


def head_module(model: nn.Module, head: str | None) -> nn.Module | None:
    """The module named by ``head`` (exact dotted path), or ``None`` for the default final linear layer."""
    if head is None:
        return None
    try:
        module = model.get_submodule(head)
    except AttributeError:
        names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
        raise ValueError(f"head={head!r} is not a submodule of {type(model).__name__}; modules with "
                         f"parameters: {names}") from None
    if not any(True for _ in module.parameters()):
        raise ValueError(f"head={head!r} has no parameters")
    return module


def weighted_ascent_step(
    model: nn.Module,
    batch: dict[str, Tensor],
    weights: Tensor,
    sample_losses: Callable[[Tensor, Tensor], Tensor],
    head: list[nn.Parameter],
    alpha: float,
    optimizer: torch.optim.Optimizer,
) -> tuple[Tensor, Tensor]:
    """IMU step 4, one optimizer step on ``−Σ_b w_b ℓ_b / Σ_b w_b + alpha · ‖head‖₁`` (``weights`` indexed by the
    batch's ``index``; ``sample_losses(outputs, targets)`` the per-sample losses). Returns the (detached) objective
    and its ascent term."""
    losses = sample_losses(model(batch["inputs"]), batch["targets"])
    ascent = weighted_ascent_loss(losses, weights[batch["index"]].to(losses.dtype))
    loss = ascent + alpha * l1_norm(head)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), ascent.detach()


@register_method
class IMU(UnlearningMethod):
    name = "imu"
    paper = ("Fan, Wu, Zhou, Liang, Harandi, Phung, 'Influence-guided Machine Unlearning', arXiv 2508.01620, 2025")
    needs_retain = False
    kinds = ("samples", "class", "subclass")
    tasks = ("multiclass",)
    # The ascent raises the other classes' rows of the head to absorb the forgotten class (module doc, the sink):
    # measured on a user's GroupNorm CNN (digits, class 3), RA 89 / TA 84 in 3 steps where imu_forgotten_rows kept
    # TA 99.4.
    damage_hints: ClassVar[dict[str, str]] = {
        "class": "On a class request imu_forgotten_rows runs the same ascent moving only the forgotten class's row of "
                 "the head, so no other class is pulled toward it"}
    Config = IMUConfig

    def check_request(self, request: ForgetRequest, task: str) -> None:
        super().check_request(request, task)
        if self.config.rows == "forgotten" and request.kind != "class":
            raise RequestError(f"rows='forgotten' serves class requests only (a {request.kind} request shares its "
                               "classes' rows with the data it keeps)")

    def resolve_stop_accuracy(self, kind: str, start_accuracy: float) -> float | None:
        """The forget accuracy at which ascent stops: ``stop_accuracy``, or its ``"auto"`` value for ``kind``."""
        target = self.config.stop_accuracy
        if target != "auto":
            return target
        if kind == "class":
            return 0.0
        if kind == "samples":
            return max(start_accuracy - self.config.max_accuracy_drop, 0.0)
        return None

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        named = resolve_head(model, head_module(model, cfg.head))
        head = [p for _, p in named]
        forget = data.forget_set

        # 1-3: influence on the model as handed over (eval mode), then selection and weights.
        batches = [
            {"inputs": b["inputs"], "targets": b["targets"]}
            for b in make_loader(forget, cfg.grad_batch_size, shuffle=False)
        ]
        influence = compute_influence(
            model, head, classification_loss(data.task), batches, damping=cfg.damping, description="imu"
        )
        chosen = influence_weights(influence.influences, top_fraction=cfg.top_fraction,
                                   clip_quantile=cfg.clip_quantile, min_count=cfg.min_kept)
        indices, weights = chosen.indices, chosen.weights
        stats: dict[str, Any] = {
            "forget_size": len(forget),
            "num_negative": chosen.num_negative,
            "num_kept": int(indices.numel()),
            "head": [n for n, _ in named],
            "weight_min": float(weights.min()) if weights.numel() else 0.0,
            "weight_max": float(weights.max()) if weights.numel() else 0.0,
        }
        if indices.numel() == 0:
            # Influences sum to -N ḡᵀF⁻¹ḡ <= 0, so this happens only when the mean gradient is exactly 0.
            return {**stats, "steps": 0, "stop_reason": "no negative-influence samples", "loss_curve": []}

        checks = None
        if cfg.stop_accuracy is not None:
            head_layer = head_module(model, cfg.head) or final_linear(model)
            checks = (HeadOnlyAccuracy(model, head_layer, forget) if cfg.bn_mode in ("eval", "batch")
                      and {id(p) for p in head_layer.parameters()} == {id(p) for p in head} else None)
        start_accuracy = None if cfg.stop_accuracy is None else (
            checks.start if checks is not None else forget_accuracy(model, data))
        stop_accuracy = self.resolve_stop_accuracy(data.request.kind, start_accuracy or 0.0)
        stats.update(start_forget_accuracy=start_accuracy, stop_accuracy=stop_accuracy)
        if stop_accuracy is not None and start_accuracy is not None and start_accuracy <= stop_accuracy:
            return {**stats, "steps": 0, "stop_reason": "stop_accuracy already reached", "loss_curve": []}

        kept = forget.subset(indices)
        stats["kept_source_indices"] = kept.source_indices.tolist()
        stats["weights"] = weights.tolist()
        loader = make_loader(kept, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        optimizer = make_optimizer(head, "sgd", cfg.lr, cfg.momentum, cfg.weight_decay)
        keep_rows = None if cfg.rows == "all" else KeptRows(head, forget.targets.unique(), len(forget.classes))

        forgotten = torch.zeros(len(forget.classes), dtype=torch.bool)
        forgotten[forget.targets.unique()] = True

        def sample_losses(logits: Tensor, targets: Tensor) -> Tensor:
            if keep_rows is not None:
                logits = without_other_forgotten(logits, targets, forgotten)
            return per_sample_loss(logits, targets, data.task)

        steps, curve, forget_acc, stop_reason = 0, [], [], "epochs"
        # The check that crosses the stop accuracy may land far past it (one epoch of a ResNet moved MNIST's random
        # 10 % from 100 to 91.5 against a target of 98; on 13 samples one flip is 7.7 points against 2): the run
        # keeps whichever of the last two checked states is nearer the target. Head-only, so the copy is cheap.
        # With bn_mode="train" the body's BatchNorm statistics move too: they are kept with the head.
        moving = head + ([b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                          for b in m.buffers()] if cfg.bn_mode == "train" else [])
        keeper = None if stop_accuracy is None else NearerOfLastTwo(moving, stop_accuracy, start_accuracy)
        # A class request's stop knows where to end; the official ten epochs are ten steps on a small forget set.
        passes = cfg.epochs if stop_accuracy is None or data.request.kind != "class" else max(
            cfg.epochs, math.ceil(cfg.min_steps / len(loader)))
        # rows="forgotten" on a class request: past FA 0, on to where a model never trained on the class is (it
        # gives the class almost no probability), so that a later request in a sequence, lowering the class its
        # samples went to, does not hand them back (measured in IMUForgottenRows's docstring).
        probability_stop = cfg.stop_probability is not None and data.request.kind == "class"
        own: list[float] = []

        def own_probability() -> float:
            if checks is not None:
                return checks.own_probability(model, data)
            return own_class_probability(predict_logits(model, forget), forget.targets)
        with only_trainable(model, head):
            model.train(cfg.bn_mode != "eval")
            frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                         and m.track_running_stats] if cfg.bn_mode == "batch" else []
            for m in frozen_bn:
                # Batch statistics in the forward, running statistics left as they are (no update).
                m.track_running_stats = False
            try:
                with progress_bar("imu", passes * len(loader)) as bar:
                    for epoch in range(passes):
                        running = 0.0
                        for batch in loader:
                            loss, ascent = weighted_ascent_step(model, batch, weights, sample_losses, head, cfg.alpha,
                                                                optimizer)
                            if keep_rows is not None:
                                keep_rows.restore()
                            steps += 1
                            running += float(loss)
                            bar.advance(epoch=epoch + 1, loss=float(loss), ascent=float(ascent))
                        curve.append(running / len(loader))
                        if stop_accuracy is not None:
                            forget_acc.append(checks.accuracy(model, data) if checks is not None
                                              else forget_accuracy(model, data))
                            if probability_stop:
                                own.append(own_probability())
                                if own[-1] <= cfg.stop_probability:
                                    stop_reason = "stop_probability"
                                    break
                                continue
                            reached = keeper.check(forget_acc[-1])
                            if reached is not None:
                                stop_reason = reached
                                break
            finally:
                for m in frozen_bn:
                    m.track_running_stats = True
                model.eval()
        return {**stats, "steps": steps, "stop_reason": stop_reason, "loss_curve": curve,
                "forget_accuracy_curve": forget_acc, **({"own_probability_curve": own} if probability_stop else {}),
                "batches_per_epoch": math.ceil(len(kept) / min(cfg.batch_size, len(kept)))}


@register_method
class IMUForgottenRows(IMU):
    """An excise extension of IMU for full-class requests and their sequences: the same influence-weighted ascent,
    but only the forgotten classes' rows of the head (their weight rows and biases) move; every other row is
    restored bit for bit after each step (``rows="forgotten"``). It stops where a model never trained on the class
    is, not at FA 0 (``stop_probability``, below).

    Why the rows: IMU's head-wide ascent raises other classes' rows to absorb the forgotten samples, and in a
    sequence one of them can swallow its neighbours (the *sink* of the module docstring: digits 1 → 4 → 9, RA
    52.7 and 42.3 at step 3). With the retained rows held (and the body untouched: ``bn_mode`` "batch" or "eval",
    "train" is refused), a retained sample's ranking among the retained classes cannot change: its prediction can
    change only to or from a forgotten class. The forgotten samples go to the classes the model already ranked
    next. With several classes in one request, each sample's ascent leaves the other forgotten classes out of its
    softmax, so it cannot raise their rows along its features.

    Why the stop: at FA 0 the forgotten samples sit just below the class that absorbed them, and a later request
    that lowers that class hands them back. Measured on the mid-scale five-step sequence (seed 0): forgetting 7
    brought class 1's forget accuracy from 0 back to 10.5 (the 1s had gone to 7), while the cumulative FA read
    2.6. A model never trained on a class gives it almost no probability anywhere, so the ascent goes on, after
    every epoch's check, until the forget rows' mean probability of their own class is at most
    ``stop_probability`` (0.01); then every forgotten class stayed at FA 0 after every step on 3 seeds.

    Budget: the ascent on one row is slower than on the whole head (10 epochs left FA at 7-38% on digits), and
    with the other rows held no budget can collapse the retained classes, so ``epochs`` is 50, a cap the stop
    ends long before (12-15 steps on digits, 5-7 on the ResNets). Everything else is IMU's default.

    Measured 2026-12-07 (avg gap to the retrained model, 3 seeds):

    - full class, the robustness zoo's six settings (``benchmarks/zoo.py --requests class``): mean gap 0.03-0.32
      per setting, 0.50 at worst on one seed; ``imu`` 0.08-0.52 on the same models;
    - digits 1 -> 4 -> 9 (``small_cnn`` width 16, the tests' recipe): FA 0, RA 100 and gap <= 0.21 after every
      step (``imu``: FA 28.7 after step 1 on seed 0, RA 84.5 after step 2 on seed 2, and a step that forgot
      nothing); width 32, 30 epochs, with the FA-0 stop: gap <= 0.24 and FA 0 (``imu`` sinks to RA 42.3);
    - the mid-scale five-step sequence 1 -> 4 -> 9 -> 7 -> 2 (``benchmarks/suites/midscale.yaml``, ResNet-18 width
      8 with crop augmentation on MNIST): every forgotten class at FA 0 (retrain 0), RA within 0.3 of retrain's,
      gap <= 0.47 after every step (``imu``: RA 20.0-58.5 after step 5).

    What it does not do: like ``imu`` it changes only the head, so the forgotten class stays readable from the
    body's features (a linear probe is not asked here; the target-level erasure of issue 16 is the tool for that).
    """

    name = "imu_forgotten_rows"
    paper = ("excise's extension of IMU (Fan, Wu, Zhou, Liang, Harandi, Phung, 'Influence-guided Machine "
             "Unlearning', arXiv 2508.01620, 2025): only the forgotten classes' head rows move")
    kinds = ("class",)
    damage_hints: ClassVar[dict[str, str]] = {}  # imu's hint points here

    @dataclass
    class Config(IMUConfig):
        rows: str = "forgotten"
        epochs: int = 50
        stop_probability: float | None = 0.01

        def __post_init__(self) -> None:
            if self.rows != "forgotten":
                raise ValueError(f"rows={self.rows!r}: imu_forgotten_rows is rows='forgotten' (use imu for 'all')")
            super().__post_init__()
