"""Gradient ascent (GA / "NegGrad"): maximise the training loss on the forget set.

Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine Unlearning", EuroS&P 2022;
Golatkar et al. CVPR 2020 call it NegGrad. Forget-only. Unbounded ascent destroys a model, so the budget
is expressed in passes over the forget set (it scales with the forget-set size) with a gradient-norm clip,
and two optional stopping rules: stop once the forget set's accuracy under the model being unlearned falls
to ``stop_accuracy`` (checked after every pass), or once its mean loss reaches ``stop_loss`` (``"uniform"``:
the loss of a uniform prediction; checked every ``check_every`` steps on ``check_size`` forget samples,
:class:`excise.methods._common.LossLevelStop` — the rule `imu_sequence` stops by, so the two compare fairly on
sequence models). For ``target`` requests the loss is the forgotten target's
BCE over the instances that carry it (the instance-level migration the Essential Graph paper argues against).

Default lr 1e-3 (SGD, momentum 0.9) for 5 passes, measured on the digits (small_cnn, full class 3):
lr 1e-3 -> FA 18%, RA 89% (avg gap to retrain 10.7); lr 3e-3 -> FA 1%, RA 70% (gap 16.3);
lr 1e-2 x 2 passes -> FA 6%, RA 82% (gap 27.8). GA trades retain accuracy for forgetting by nature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from excise.methods._common import LossLevelStop, ascend_forget_loss, check_stop_loss
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.training import check_nonnegative, check_optional_probability, check_positive_int, predict_logits


@dataclass
class GradientAscentConfig:
    epochs: int = 5
    lr: float = 0.001
    batch_size: int = 64
    max_grad_norm: float = 5.0
    stop_accuracy: float | None = None
    stop_loss: float | str | None = None
    check_every: int = 5
    check_size: int = 256

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "batch_size", "check_every", "check_size")
        check_nonnegative(self, "lr", "max_grad_norm")
        check_optional_probability(self, "stop_accuracy")
        check_stop_loss(self)


def forget_accuracy(model: nn.Module, data: UnlearnData) -> float:
    logits = predict_logits(model, data.forget_set)
    targets = data.forget_set.targets
    if data.task == "multiclass":
        return float((logits.argmax(1) == targets).float().mean())
    if data.task == "sequence":  # next-token accuracy over the valid (non-padded) positions
        valid = targets >= 0
        return float((logits.argmax(-1) == targets)[valid].float().mean())
    mask = data.forget_set.label_mask
    correct = ((logits > 0).float() == targets)
    return float(correct[mask].float().mean()) if mask is not None else float(correct.float().mean())


@register_method
class GradientAscent(UnlearningMethod):
    name = "gradient_ascent"
    paper = "Thudi et al., 'Unrolling SGD: Understanding Factors Influencing Machine Unlearning', EuroS&P 2022"
    needs_retain = False
    kinds = ("samples", "class", "subclass", "target")
    tasks = ("multiclass", "multilabel", "sequence")
    Config = GradientAscentConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        curve: list[float] = []

        def reached_stop_accuracy() -> bool:  # checked after every pass when stop_accuracy is set
            curve.append(forget_accuracy(model, data))
            return curve[-1] <= cfg.stop_accuracy

        level = None if cfg.stop_loss is None else LossLevelStop(data.forget_set, cfg.stop_loss,
                                                                  every=cfg.check_every, size=cfg.check_size, seed=seed)
        steps, _ = ascend_forget_loss(
            model, data.forget_set, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
            max_grad_norm=cfg.max_grad_norm, seed=seed, description="gradient ascent",
            after_epoch=None if cfg.stop_accuracy is None else reached_stop_accuracy, after_step=level,
        )
        stopped = bool(curve) and curve[-1] <= cfg.stop_accuracy
        reason = "stop_accuracy" if stopped else "epochs"
        if level is not None and level.reached_at is not None:
            reason = "stop_loss"
        return {"steps": steps, "stop_reason": reason, "forget_accuracy_curve": curve,
                **({} if level is None else level.stats())}
