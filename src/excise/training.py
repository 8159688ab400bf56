"""The one training loop: original models, retrained references and every fine-tune-style method use it.

Deterministic on CPU for a given seed: the shuffling order comes from a ``torch.Generator`` seeded by
the caller and parameter initialisation from :func:`seed_everything`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excise import distributed, runtime
from excise.data.base import LabeledData, load_task
from excise.progress import progress_bar

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "crop", "crop-flip")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for data order."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an integer")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@dataclass
class TrainConfig:
    """A training recipe. Every field is validated; unknown keys are refused in :meth:`from_dict`.

    ``augment``: the standard augmentation of the papers' CIFAR recipes, applied to every training batch of an
    image classification task — ``"crop"``: zero-pad by ``crop_padding`` pixels and crop back at a random offset
    per image; ``"crop-flip"``: also a horizontal flip with probability 1/2 (not for digits or text, whose
    mirror image is another symbol). It is drawn from its own generator seeded by the run's seed, so a run
    stays reproducible; ``"none"`` (the default) leaves batches as they are.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str = "none"
    crop_padding: int = 4

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "batch_size", "crop_padding")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment={self.augment!r} is not one of {AUGMENTS}")
        check_nonnegative(self, "lr", "momentum", "weight_decay")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainConfig:
        return config_from_dict(cls, values or {}, "training")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys by name."""
    if not isinstance(values, dict):
        raise ValueError(f"{what} config must be a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def check_positive_int(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def check_nonnegative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name}={value!r} must be a finite number >= 0")


def check_positive(obj: Any, *names: str) -> None:
    """Each of ``names`` a finite number > 0 (a learning rate, a temperature): ``True`` is not 1 here, and an
    infinite value ran to non-finite outputs that named no field."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name}={value!r} must be a finite number > 0")


def check_fraction(obj: Any, *names: str, closed: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            0 < value <= 1 if closed else 0 < value < 1
        )
        if not ok:
            raise ValueError(f"{name}={value!r} must lie in {'(0, 1]' if closed else '(0, 1)'}")


def check_optional_probability(obj: Any, *names: str) -> None:
    """``None`` or a number in [0, 1] (an accuracy threshold); a string is refused before it is compared."""
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}={value!r} must be a number in [0, 1] or None")


# --- losses ------------------------------------------------------------------------------------
TaskLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
_TASK_LOSSES: dict[str, TaskLoss] = {}


def register_task_loss(task: str, loss: TaskLoss) -> None:
    """Register ``loss(outputs, targets, label_mask) -> per-sample loss`` for a task, so the one training
    loop (and every method built on it) trains dense or sequence models too."""
    from excise.data.base import register_task

    register_task(task)
    _TASK_LOSSES[task] = loss


def _multiclass_loss(logits: Tensor, targets: Tensor, label_mask: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _multilabel_loss(logits: Tensor, targets: Tensor, label_mask: Tensor | None) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if label_mask is None:
        return bce.mean(dim=1)
    mask = label_mask.to(bce.dtype)
    return (bce * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


register_task_loss("multiclass", _multiclass_loss)
register_task_loss("multilabel", _multilabel_loss)


def per_sample_loss(logits: Tensor, targets: Tensor, task: str, label_mask: Tensor | None = None) -> Tensor:
    """Loss of each sample: cross-entropy (multiclass), BCE averaged over the sample's masked labels
    (multilabel), or a registered task's loss."""
    if task not in _TASK_LOSSES:
        load_task(task)  # a plug-in task registers its loss when first used
    if task not in _TASK_LOSSES:
        raise ValueError(f"task={task!r} has no registered loss; known: {sorted(_TASK_LOSSES)}")
    return _TASK_LOSSES[task](logits, targets, label_mask)


def batch_loss(model: nn.Module, batch: dict[str, Tensor], task: str) -> Tensor:
    """Mean loss of a batch dict produced by :meth:`LabeledData.batch`."""
    logits = model(batch["inputs"])
    return per_sample_loss(logits, batch["targets"], task, batch.get("label_mask")).mean()


# --- loops -------------------------------------------------------------------------------------
def make_loader(
    data: LabeledData, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> torch.utils.data.DataLoader:
    """Batches of ``data`` as dicts; whole batches are gathered by ``LabeledData.__getitems__``.

    An unshuffled loader gets a private generator: a DataLoader without one draws its base seed from torch's global
    generator at every pass, so each evaluation would shift the dropout masks (or any other global draw) of the
    training that follows it — and a method that checks its progress would no longer match the same run unchecked.
    """
    if generator is None and not shuffle:
        generator = torch.Generator()
    return torch.utils.data.DataLoader(
        data,
        batch_size=min(batch_size, max(len(data), 1)),
        shuffle=shuffle,
        generator=generator,
        collate_fn=_identity,
    )


def _identity(batch: Any) -> Any:
    return batch


def make_optimizer(params: Iterable[Tensor], name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}")


@dataclass
class TrainStats:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


StepHook = Callable[[nn.Module, dict[str, Tensor], Tensor], Tensor]


def train(
    model: nn.Module,
    data: LabeledData,
    config: TrainConfig,
    *,
    seed: int = 0,
    description: str = "train",
    loss_hook: StepHook | None = None,
    params: Iterable[Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``data`` with ``config``.

    Under ``torchrun`` the same call trains with ``DistributedDataParallel`` and a ``DistributedSampler``
    (seeded, re-shuffled per epoch) at the same effective batch size; see :mod:`excise.distributed`.

    ``loss_hook(model, batch, loss) -> loss`` lets a method add a term (an l1 penalty, say) without a
    second loop; ``params`` restricts what the optimizer updates; ``after_step`` runs after each
    optimizer step (e.g. to re-apply a mask).
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    sampler = None
    if distributed.is_distributed():
        # Each rank sees batch_size / N samples per step so one DDP step averages the gradient of
        # batch_size samples, exactly as on one process.
        sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=seed)
        if len(data) < config.batch_size:
            # The whole set is one step, as on one process; each rank takes its ceil(len / N) share (the sampler
            # repeats at most N - 1 samples to even the shards), so no batch size the user never set is refused.
            per_rank = -(-len(data) // distributed.world_size())
        else:
            per_rank = distributed.per_rank_batch_size(config.batch_size)
        loader = torch.utils.data.DataLoader(data, batch_size=per_rank, sampler=sampler, collate_fn=_identity)
    else:
        generator = torch.Generator().manual_seed(seed)
        loader = make_loader(data, config.batch_size, shuffle=True, generator=generator)
    optimizer = make_optimizer(
        params if params is not None else model.parameters(),
        config.optimizer, config.lr, config.momentum, config.weight_decay,
    )
    network = distributed.wrap_model(model)
    total_steps = config.epochs * len(loader)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if config.schedule == "cosine" else None
    )
    # Its own stream, not the shuffle generator's (seeded with ``seed`` itself), and one per rank.
    augment_seed = (seed + 1) * 2654435761 % 2**61 + 7919 * distributed.rank()
    augmenter = Augmenter(config, data, augment_seed) if config.augment != "none" else None
    stats = TrainStats()
    runtime.prepare()  # one-time process setup, outside the timed region (excise.runtime)
    start = time.perf_counter()
    model.train()
    with progress_bar(description, total_steps) as bar:
        for epoch in range(config.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            running = 0.0
            for batch in loader:
                if augmenter is not None:
                    batch = {**batch, "inputs": augmenter(batch["inputs"])}
                loss = batch_loss(network, batch, data.task)
                if loss_hook is not None:
                    loss = loss_hook(model, batch, loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(model)
                stats.steps += 1
                running += float(loss.detach())
                bar.advance(epoch=epoch + 1, loss=float(loss.detach()))
            stats.losses.append(float(distributed.all_reduce_mean(torch.tensor(running / len(loader)))))
            stats.epochs += 1
    distributed.sync_buffers(model)
    model.eval()
    stats.seconds = time.perf_counter() - start
    return stats


class Augmenter:
    """Random crop with zero padding (and horizontal flip) of image batches: :attr:`TrainConfig.augment`."""

    def __init__(self, config: TrainConfig, data: LabeledData, seed: int) -> None:
        if data.task not in ("multiclass", "multilabel") or len(data.inputs.shape) != 4:
            raise ValueError(f"augment={config.augment!r} applies to image classification (N x C x H x W inputs); "
                             f"this data set is task={data.task!r} with inputs of shape {tuple(data.inputs.shape)} "
                             "(a crop would move masks and boxes off their pixels): use augment='none'")
        self.padding = config.crop_padding
        self.flip = config.augment == "crop-flip"
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> Tensor:
        n, _, height, width = inputs.shape
        pad = self.padding
        padded = F.pad(inputs, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator)
        rows = (top[:, None] + torch.arange(height)[None, :])[:, None, :, None]
        cols = (left[:, None] + torch.arange(width)[None, :])[:, None, None, :]
        batch = torch.arange(n)[:, None, None, None]
        channels = torch.arange(inputs.shape[1])[None, :, None, None]
        out = padded[batch, channels, rows, cols]
        if self.flip:
            flip = torch.rand(n, generator=self.generator) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out.contiguous()


def output_width(model: nn.Module, inputs: Tensor, what: str) -> int:
    """How many values ``model`` outputs for one of ``inputs`` (one eval-mode forward, no gradient, the model's mode
    put back); any failure of the forward is a ``ValueError`` naming ``what`` was fed and its shape."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(inputs[:1]).shape[-1])
    except Exception as err:  # noqa: BLE001 - any failure of a user's forward, reported with the input shape
        raise ValueError(f"{what} of shape {tuple(inputs.shape[1:])}: {err}") from err
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_logits(model: nn.Module, data: LabeledData, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` on every row of ``data``, in eval mode, without changing its mode for good."""
    was_training = model.training
    model.eval()
    outputs = [model(batch["inputs"]) for batch in make_loader(data, batch_size, shuffle=False)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh parameters for the same architecture (every submodule's ``reset_parameters``)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return model
