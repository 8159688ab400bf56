"""Small helpers shared by several unlearning methods. Not a method: the leading underscore keeps this
module out of the auto-import in ``excise.methods``. Append only (several methods depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excise import distributed
from excise.data.base import LabeledData
from excise.data.lazy import concat_inputs
from excise.progress import progress_bar
from excise.training import (
    SCHEDULES,
    TrainConfig,
    batch_loss,
    check_fraction,
    check_positive_int,
    make_loader,
    make_optimizer,
    per_sample_loss,
    predict_logits,
    train,
)


# --- data ----------------------------------------------------------------------------------------
def concat_labeled(*parts: LabeledData, name: str | None = None) -> LabeledData:
    """Rows of several views of one data set, in order (inputs, targets, label masks, source indices).

    Sub-class labels and extras are dropped: the union is for training or importance estimation, which
    only read inputs and targets.
    """
    if not parts:
        raise ValueError("concat_labeled needs at least one LabeledData")
    first = parts[0]
    masks = [p.label_mask for p in parts]
    if any(m is None for m in masks) and not all(m is None for m in masks):
        raise ValueError("cannot concatenate views where only some carry a label_mask")
    return LabeledData(
        inputs=concat_inputs([p.inputs for p in parts]),
        targets=torch.cat([p.targets for p in parts]),
        classes=first.classes,
        task=first.task,
        label_mask=None if masks[0] is None else torch.cat(masks),
        source_indices=torch.cat([p.source_indices for p in parts]),
        name=name or first.name,
    )


# --- importance ----------------------------------------------------------------------------------
def diagonal_fisher(
    model: nn.Module,
    data: LabeledData,
    *,
    batch_size: int = 64,
    per_sample: bool = False,
) -> dict[str, Tensor]:
    """Diagonal (empirical) Fisher information of the training loss w.r.t. every named parameter.

    ``per_sample=False`` is the estimator of the Selective Synaptic Dampening code (itself adapted from
    Avalanche's EWC): the *mini-batch mean* gradient is squared and the squares are averaged over the
    ``ceil(N / batch_size)`` batches, taken in the data's order. It depends on the batch size and on
    how classes mix inside a batch. ``per_sample=True`` is the textbook empirical Fisher
    ``mean_i (d loss_i / d theta)^2`` (per-sample gradients via ``torch.func.vmap``), independent of both.

    Computed in eval mode (BatchNorm running statistics, no dropout) and restored afterwards; the model's
    ``.grad`` fields are not touched. Uses the observed labels (empirical, not the model's predictions).
    """
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    totals = {n: torch.zeros_like(p) for n, p in named}
    loader = make_loader(data, batch_size, shuffle=False)
    count = 0
    try:
        for number, batch in enumerate(loader):
            # Under torchrun the batches are dealt round-robin to the ranks and the sums reduced below: the
            # same estimate as one process (every batch is one term either way).
            if number % distributed.world_size() != distributed.rank():
                continue
            if per_sample:
                squares = _per_sample_squared_grads(model, named, batch, data.task)
                for n in totals:
                    totals[n] += squares[n]
                count += len(batch["inputs"])
            else:
                logits = model(batch["inputs"])
                loss = per_sample_loss(logits, batch["targets"], data.task, batch.get("label_mask")).mean()
                grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
                for (n, _), g in zip(named, grads, strict=True):
                    if g is not None:
                        totals[n] += g.detach().pow(2)
                count += 1
    finally:
        model.train(was_training)
    reduced = distributed.all_reduce_tensors({**totals, "__count__": torch.tensor([float(count)])})
    count = int(reduced.pop("__count__").item())
    return {n: t / max(count, 1) for n, t in reduced.items()}


def _per_sample_squared_grads(
    model: nn.Module, named: list[tuple[str, Tensor]], batch: dict[str, Tensor], task: str
) -> dict[str, Tensor]:
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in named}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    mask = batch.get("label_mask")

    def loss_of(p: dict[str, Tensor], x: Tensor, y: Tensor, m: Tensor | None) -> Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return per_sample_loss(logits, y.unsqueeze(0), task, None if m is None else m.unsqueeze(0)).sum()

    if mask is None:
        g = vmap(lambda x, y: grad(loss_of)(params, x, y, None))(batch["inputs"], batch["targets"])
    else:
        g = vmap(lambda x, y, m: grad(loss_of)(params, x, y, m))(batch["inputs"], batch["targets"], mask)
    return {n: v.pow(2).sum(0) for n, v in g.items()}


# --- distillation ----------------------------------------------------------------------------------
def kl_to_teacher(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample ``KL(teacher || student)`` at ``temperature``: ``sum_k t_k (log t_k - log s_k)``.

    ``teacher_probs`` are already softened (``softmax(teacher_logits / T)``), so a caller can mix several
    teachers' distributions per sample before calling.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher_probs, reduction="none").sum(dim=1)


# --- BatchNorm -----------------------------------------------------------------------------------
BN_MODES: tuple[str, ...] = ("train", "eval")


def set_train_mode(model: nn.Module, bn_mode: str = "train") -> nn.Module:
    """``model.train()``, except that with ``bn_mode="eval"`` every BatchNorm layer stays in eval mode: its
    running statistics are used and left unchanged while its affine weights still train."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r} is not one of {BN_MODES}")
    model.train()
    if bn_mode == "eval":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


# --- paired loaders --------------------------------------------------------------------------------
def endless_batches(data: LabeledData, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
    """Shuffled batches of ``data`` without end, reshuffled at every pass.

    For methods that step through one set and draw a companion batch from another (NegGrad+'s forget
    batch beside each retain batch, as the official code's ``zip(retain_loader, cycle(forget_loader))``).
    ``itertools.cycle`` would replay the first pass's order forever; this draws a new order each pass.
    """
    if len(data) == 0:
        raise ValueError("cannot draw batches from an empty data set")
    while True:
        yield from make_loader(data, batch_size, shuffle=True, generator=generator)


def check_schedule(schedule: str | None) -> None:
    """Validate a method's optional learning-rate schedule override (``None`` = the original recipe's)."""
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES} (or None: the original recipe's)")


@contextmanager
def keep_bn_running_stats(model: nn.Module) -> Iterator[None]:
    """Run a train-mode forward whose batch statistics normalise as usual but leave no trace in the BatchNorm
    running estimates (they are restored on exit); gradients are unaffected.

    For methods that forward forget-only batches next to retain batches (NegGrad+): without this the
    running estimates absorb the forget class's statistics, which evaluation then uses for every input.
    """
    # The forward runs on copies of the buffers and the originals are put back untouched: writing into the
    # originals would bump their version and break the backward of an earlier forward that saved them.
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_mean.clone()
            m.running_var = m.running_var.clone()
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


# --- relabel-and-fine-tune ---------------------------------------------------------------------------
@dataclass
class RelabelFinetuneConfig:
    """Budget of a relabel-and-fine-tune baseline, relative to the original recipe. Subclasses set defaults."""

    epochs: int  # passes over the relabelled instances
    lr_scale: float  # learning rate = lr_scale x the original recipe's
    batch_size: int | None = None  # None: the recipe's

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs")
        check_fraction(self, "lr_scale", closed=True)
        if self.batch_size is not None:
            check_positive_int(self, "batch_size")


class NearerOfLastTwo:
    """The end of a run stopped at a forget-accuracy ``target``: the check that crosses it may land far past it, so the
    run keeps whichever of the last two checked states is nearer the target. ``tensors`` are the model's live tensors
    that the run changes (all of its state, or only a head); a copy is kept at each check and put back in place."""

    def __init__(self, tensors: Iterable[Tensor], target: float, start: float) -> None:
        self.tensors, self.target, self.last, self.checks = list(tensors), target, start, 0
        self.kept = [t.detach().clone() for t in self.tensors]

    def check(self, accuracy: float) -> str | None:
        """``None``: not reached yet (this state is kept); else the stop reason, the previous state put back when it
        was nearer the target."""
        self.checks += 1
        if accuracy > self.target:
            self.kept = [t.detach().clone() for t in self.tensors]
            self.last = accuracy
            return None
        if self.target - accuracy <= self.last - self.target:
            return "stop_accuracy"
        with torch.no_grad():
            for kept, tensor in zip(self.kept, self.tensors, strict=True):
                tensor.copy_(kept)
        return ("stop_accuracy: kept the model as handed over (the first check overshot)" if self.checks == 1
                else "stop_accuracy: kept the previous check, nearer the target")


class SamplesStop:
    """excise's stop for a random-samples request, the rule IMU and MU-Mis use, for methods that train whole passes
    (random labels, bad teacher, SalUn, NegGrad+): the forget set is an i.i.d. draw of the training set, so a model that
    never saw it scores about its test accuracy on it — a little under the original's — and a run that pushes the
    forget accuracy far below that over-forgets (random labels on random 10%: gap 3.4-8.2 against the original's
    1.5-2.6 on four zoo settings; on a ResNet-18 trained with Adam on MNIST, random 1% = 20 samples, seeds 0-2,
    NegGrad+ reached forget accuracy 10-20 and SalUn 75-85 where the retrained model keeps ~100: gaps 38-46 and
    13-20 against the original's 0-2; with the stop, the zoo's harmful pairs fell 6 -> 1 and 5 -> 2). After each
    pass the forget accuracy is checked; at the first that falls to ``start − max_drop`` or below the run stops and
    keeps whichever of the last two checked states is nearer that target (the first is the model as handed over, so
    a run whose very first pass overshoots returns it unchanged and says so in ``stop_reason``). Inactive for other
    request kinds, for other tasks, or with ``max_drop=None``."""

    def __init__(self, model: nn.Module, data: Any, max_drop: float | None) -> None:
        self.data = data
        self.active = max_drop is not None and data.request.kind == "samples" and data.task == "multiclass"
        self.curve: list[float] = []
        self.reason: str | None = None
        if self.active:
            self.start = self._accuracy(model)
            self.target = self.start - float(max_drop)
            self.keeper = NearerOfLastTwo(model.state_dict().values(), self.target, self.start)

    def _accuracy(self, model: nn.Module) -> float:
        forget = self.data.forget_set
        return float((predict_logits(model, forget).argmax(1) == forget.targets).float().mean())

    def reached(self, model: nn.Module) -> bool:
        """Check after a pass; ``True`` means stop (the model may have been put back to the previous check)."""
        if not self.active:
            return False
        self.curve.append(self._accuracy(model))
        self.reason = self.keeper.check(self.curve[-1])
        return self.reason is not None

    def stats(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {"start_forget_accuracy": self.start, "stop_accuracy": self.target, "forget_accuracy_curve": self.curve,
                **({"stop_reason": self.reason} if self.reason else {})}


REFERENCE_MOMENTUM = 0.9
"""The momentum of the SGD recipes the fine-tuning baselines' ``lr_scale`` defaults were set against."""


def relative_step(recipe: TrainConfig, lr_scale: float, *, momentum: float, weight_decay: float) -> dict[str, Any]:
    """A fine-tuning baseline's optimizer, ``lr_scale`` relative to the recipe the model was trained with, as
    :class:`TrainConfig` fields (``optimizer``, ``lr``, ``momentum``, ``weight_decay``).

    On an SGD recipe: SGD at ``lr_scale`` x its learning rate with the method's own ``momentum`` and
    ``weight_decay`` (the papers' unlearning recipe). On an Adam or AdamW recipe a fraction of Adam's learning rate
    is no SGD step at all: a ResNet-18 trained with Adam at 3e-3 on MNIST kept the forgotten class at FA 95-100
    under ℓ1-sparse, NegGrad+ and SCRUB at their defaults (gap 46-50, the original's 50). There the method steps
    with the recipe's own optimizer, at the fraction of the training step that its SGD step is of a momentum-0.9
    SGD recipe's: ``lr_scale · (1 − 0.9) / (1 − momentum)`` x the recipe's rate (plain SGD at 4x is 0.4x the step
    of momentum SGD at 1x), with the recipe's weight decay."""
    if recipe.optimizer == "sgd":
        return {"optimizer": "sgd", "lr": recipe.lr * lr_scale, "momentum": momentum, "weight_decay": weight_decay}
    ratio = lr_scale * (1.0 - REFERENCE_MOMENTUM) / (1.0 - momentum)
    return {"optimizer": recipe.optimizer, "lr": recipe.lr * ratio, "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay}


def relative_optimizer(params: Any, recipe: TrainConfig, lr_scale: float, *, momentum: float,
                       weight_decay: float) -> torch.optim.Optimizer:
    """:func:`relative_step` as an optimizer over ``params``."""
    step = relative_step(recipe, lr_scale, momentum=momentum, weight_decay=weight_decay)
    return make_optimizer(params, step["optimizer"], step["lr"], step["momentum"], step["weight_decay"])


def scaled_recipe(recipe: TrainConfig, epochs: int, lr_scale: float, batch_size: int | None) -> TrainConfig:
    """The original recipe for ``epochs`` passes at ``lr_scale`` times its learning rate, with ``batch_size``
    (``None``: the recipe's); everything else (optimizer, schedule, ...) as it was."""
    return TrainConfig(**{
        **recipe.to_dict(),
        "epochs": epochs,
        "lr": recipe.lr * lr_scale,
        "batch_size": batch_size or recipe.batch_size,
    })


def retain_rows_of(forget: LabeledData, retain: LabeledData) -> LabeledData:
    """The rows of ``retain`` that hold ``forget``'s instances (matched by ``source_indices``, in ``forget``'s
    order). For a target request: the instances that carry the forgotten target, as the retain view labels them
    (the target removed), with every remaining label."""
    position = {int(s): i for i, s in enumerate(retain.source_indices.tolist())}
    return retain.subset([position[int(s)] for s in forget.source_indices.tolist()])


def finetune_on(
    model: nn.Module, instances: LabeledData, recipe: TrainConfig, config: RelabelFinetuneConfig, seed: int,
    description: str,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``instances`` with the original ``recipe`` scaled by ``config``; the run's stats."""
    scaled = scaled_recipe(recipe, config.epochs, config.lr_scale, config.batch_size)
    stats = train(model, instances, scaled, seed=seed, description=description)
    return {"steps": stats.steps, "instances": len(instances), "final_loss": stats.losses[-1]}


# --- gradient ascent ---------------------------------------------------------------------------------
def ascend_forget_loss(
    model: nn.Module,
    data: LabeledData,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    max_grad_norm: float,
    seed: int,
    description: str,
    after_epoch: Callable[[], bool] | None = None,
    after_step: Callable[[nn.Module, int], bool] | None = None,
) -> tuple[int, list[float]]:
    """Gradient ascent (NegGrad) on ``data``'s task loss: ``epochs`` shuffled passes (batch order seeded by
    ``seed``) of SGD steps (momentum 0.9) on ``-loss``, the gradient norm clipped at ``max_grad_norm`` (0: no
    clip), the model put in train mode at the start of every pass. ``after_epoch()`` runs after each pass and
    ``after_step(model, step)`` after each step; either stops the ascent by returning ``True``. Returns the
    number of steps and the loss of every step."""
    loader = make_loader(data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = make_optimizer(model.parameters(), "sgd", lr, momentum=0.9)
    steps, losses = 0, []
    with progress_bar(description, epochs * len(loader)) as bar:
        for _ in range(epochs):
            model.train()
            for batch in loader:
                loss = batch_loss(model, batch, data.task)
                optimizer.zero_grad(set_to_none=True)
                (-loss).backward()
                if max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                steps += 1
                losses.append(float(loss.detach()))
                bar.advance(loss=losses[-1])
                if after_step is not None and after_step(model, steps):
                    return steps, losses
            if after_epoch is not None and after_epoch():
                break
    return steps, losses


# --- training a subset of the parameters ---------------------------------------------------------------
@contextmanager
def only_trainable(model: nn.Module, params: Iterable[Tensor]) -> Iterator[None]:
    """Within the block only ``params`` require gradients (the rest of ``model`` is frozen, so backward does not
    compute its gradients); every parameter's ``requires_grad`` flag is restored on exit."""
    requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(requires_grad[id(p)])


# --- a forget-only stopping rule: the forget set's loss reaches a level -------------------------------
UNIFORM = "uniform"


def check_stop_loss(config: Any) -> None:
    """``config.stop_loss`` is ``None`` (no rule), ``"uniform"`` or a positive number of nats."""
    value = config.stop_loss
    if value is None or value == UNIFORM:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"stop_loss={value!r} must be None, {UNIFORM!r} (the loss of a uniform prediction, log of "
                         "the number of outputs) or a positive number of nats")


class LossLevelStop:
    """Stop an ascent once the forget set's mean per-sample loss reaches ``level``, checked every ``every``
    steps on a fixed draw of at most ``size`` forget samples (so a check costs a fraction of the updates it
    watches, whatever the forget-set size). ``level="uniform"``: the loss of a uniform prediction, ``log V``
    for ``V`` outputs per position — where a model that never learned the forgotten data puts it when nothing
    else it learned applies (measured on the three-chain Markov benchmark: a model retrained without the
    forgotten chain scores 2.38-2.40 nats on it, ``log 10`` = 2.30, see :mod:`excise.methods.imu_sequence`).

    Uses only the forget set: no retain data, no retrained model. Records ``curve`` as ``(step, loss)``.

    ``outputs``, when given, maps the checked rows (indices into ``data``, :attr:`rows`) to the model's outputs
    on them, in place of a forward of the model: a head-only method whose body's output is recorded passes the
    head applied to that record (the same numbers at the cost of the head)."""

    def __init__(self, data: LabeledData, level: float | str, *, every: int, size: int, seed: int,
                 outputs: Callable[[Tensor], Tensor] | None = None) -> None:
        self.rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size].sort().values
        self.data = data.subset(self.rows)
        self.level = None if level == UNIFORM else float(level)
        self.every = every
        self.outputs = outputs
        self.curve: list[tuple[int, float]] = []
        self.reached_at: int | None = None

    @torch.no_grad()
    def loss(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            if self.outputs is not None:  # the head alone: all checked rows at once
                logits = self.outputs(self.rows)
                losses = [per_sample_loss(logits, self.data.targets, self.data.task, self.data.label_mask)]
            else:
                losses = []
                for b in make_loader(self.data, 256, shuffle=False):
                    logits = model(b["inputs"])
                    losses.append(per_sample_loss(logits, b["targets"], self.data.task, b.get("label_mask")))
            if self.level is None:  # a multi-label output is one binary decision per target: log 2
                self.level = math.log(2 if self.data.task == "multilabel" else logits.shape[-1])
        finally:
            model.train(was_training)
        return float(torch.cat(losses).mean())

    def __call__(self, model: nn.Module, step: int) -> bool:
        """After optimizer step ``step``: ``True`` once the level is reached (checked every ``every`` steps)."""
        if step % self.every:
            return False
        self.curve.append((step, self.loss(model)))
        assert self.level is not None
        if self.curve[-1][1] >= self.level:
            self.reached_at = step
            return True
        return False

    def stats(self) -> dict[str, Any]:
        return {"stop_level": self.level, "stop_check_every": self.every, "stop_check_size": len(self.data),
                "stop_reached_at": self.reached_at, "forget_loss_curve": self.curve}
