"""SCRUB: a student that stays close to the original (teacher) on the retain set and moves away on the forget set.

Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning", NeurIPS 2023
(arXiv 2302.09880); official code ``meghdadk/SCRUB`` (``large_scale_unlearning.ipynb`` for the settings,
``thirdparty/repdistiller/helper/loops.py: train_distill``, ``thirdparty/repdistiller/distiller_zoo/KD.py:
DistillKL``).

Algorithm (the official code). The teacher is the original model, frozen in eval mode; the student starts
as a copy and trains in train mode. With ``d(x) = T^2 * KL(softmax(t(x)/T) || softmax(s(x)/T))``, each epoch

- **max-steps** (only in the first ``max_epochs`` epochs): one pass over the forget set minimising
  ``-d`` — the student is pushed *away* from the teacher on the forget data;
- **min-steps**: one pass over the retain set minimising ``gamma * CE(s(x), y) + alpha * d`` — it stays
  accurate and close to the teacher on everything else.

One SGD optimiser (momentum 0.9, weight decay 5e-4) serves both passes. Large-scale (CIFAR) settings of the
official notebook: ``kd_T = 4``, ``gamma = 0.99``, ``alpha = 0.001``, ``msteps = 2`` max epochs out of
``sgda_epochs = 3``, lr 5e-4 (its lr decay milestones ``[3, 5, 9]`` are never reached in 3 epochs, so the
learning rate is constant), forget batch 512, retain batch 256. (The small-scale notebook uses Adam, T = 2,
gamma 1, alpha 0.5, 3 of 10 epochs.) The "SCRUB+R" rewinding variant is not implemented.

Choices, measured on ``small_cnn`` (width 16) trained 15 epochs at lr 0.05 (cosine), seed 0 ("gap" = mean
|FA, RA, TA, MIA - retrain| in points):

- **learning rate** relative to the original recipe (``lr_scale``), constant as in the official code
  (``schedule="constant"``; ``None`` takes the recipe's). The official 5e-4 is 1/20 of the lr that
  notebook's model was fine-tuned at; at 1/20 (``lr_scale`` 0.05) the digits did not forget (full class 3:
  FA 85.4, gap 29.5). Default ``lr_scale = 0.1``; 0.2 forgot the digits a little better but destroyed the
  model on MNIST random 10% (RA 62.0, gap 38.5, against 0.81 at 0.1).
- **batch size** the recipe's for both passes, so a max epoch takes ``ceil(|forget| / batch)`` steps and the
  forgetting budget scales with the forget set (at the official 512 a 135-sample forget set gets one step).
- measured with the defaults: digits full class 3: FA 0.0 / RA 99.8 / TA 98.8 / MIA 100, gap 0.31; digits
  random 10%: gap 0.80; digits sub-class "8" of "3|8": FA 29.8 vs retrain 35.9, MIA 58.0 vs 91.6, gap 10.8
  (at ``lr_scale`` 0.2: 3.96); MNIST (4,000 images) random 10%: FA 97.3 / RA 97.1 / TA 94.4 / MIA 16.8,
  gap 0.81. **Limitation seen at the second size:** MNIST full class 3: FA 0.0 but RA 87.1 / TA 86.2
  (retrain 98.0 / 94.9), gap 4.88. The loss is in the weights (re-estimating BatchNorm statistics on the
  retain set did not recover it) and comes from the max-steps: more min-steps (``epochs=5``, cosine: gap
  5.33) or a stronger pull to the teacher on retain (``alpha=0.5``, cosine: RA 77.7) did not help, a single
  max epoch helped (``max_epochs=1``, lr_scale 0.2: RA 90.9, gap 3.40) but weakens sub-class forgetting on
  the digits and left MNIST random-10% MIA at 78.5 (gap 16.4). The official two max epochs are kept; tune
  ``max_epochs`` / ``lr_scale`` on a held-out request for larger sets.
- **The max-step budget of a class request** (an excise extension; ``class_stop_accuracy=None`` restores the
  official budget). Two max epochs are not enough everywhere: on ``benchmarks/zoo.py``'s CIFAR-style ResNet-18
  trained with Adam on MNIST (class 3, seed 0) they left FA at 65 (gap 18.26; 3 max epochs: FA 20.5, gap 5.50; 5: FA
  0, gap 0.40, RA 99.9). A class the retrained model never saw is almost never predicted, so a class request takes
  one more max epoch (with its min pass) while more than ``class_stop_accuracy`` (1%, MU-Mis's class level) of the
  forgotten class is still predicted after the planned ones, up to ``class_max_epochs`` (8), then the official
  trailing min-only epoch — and no more once an extra one did not lower it (``stop_reason`` ``"no_progress"``): on a
  user's GroupNorm CNN that had already forgotten class 3 with SCRUB, the max step raised its divergence on class 5
  by sharpening the student (KL 0.45 -> 24.75 over 8 max epochs, class 5 still at 100%) while classes 6-8 fell to
  88-91%; stopping after the first extra epoch that did not help, and undoing it (weights and optimizer state as
  before it), keeps every class but the forgotten one at 98-100% (the class, unforgotten, is then flagged by the
  guard). Where the official two already reach the level the run is the official one, bit for bit (every digits zoo
  setting). The forget accuracy is read in eval mode after the planned max epochs' min passes and after each extra
  one's; under a schedule (``schedule`` not "constant") the official budget holds, since the schedule's length is
  fixed before the first step. Sub-class requests keep the official budget (no level is known for a sub-class);
  random-sample requests keep it as a cap and may stop sooner (next item). ``stats``: ``max_epochs_run``,
  ``forget_accuracy_after_max_epochs``, ``stop_reason``.
- **Random-sample requests stop** at a ``max_accuracy_drop`` (2-point) fall of the forget accuracy, checked after
  every epoch, keeping the nearer of the last two checks (:class:`excise.methods._common.SamplesStop`, the rule of
  random labels, bad teacher, SalUn and NegGrad+; ``None``: every epoch). Zoo, 3 seeds: the CIFAR-style ResNet-18's
  random 1% (20 rows) 5.13 -> 0.94 (the original's 1.76), the plain CNN's 1.34 -> 0.68; on the under-fit
  Animal-MNIST CNN, whose retrained forget accuracy is 5.5 points under the original's, the 2-point level stops one
  seed early: random 10% 3.13 -> 3.96, random 1% 2.80 -> 3.03. Runs it does not fire on are unchanged, bit for bit.
  Under U-LiRA (``benchmarks/ulira.py``, digits, 16 shadows) the AUC went 0.606 -> 0.600 and 0.516 -> 0.529: at the
  larger size it left retrain's band (0.478-0.523).
- a cosine schedule (the recipe's) was worse: digits full class gap 0.64, MNIST full class RA 73.9 (both at
  ``lr_scale`` 0.2).
- cost on the digits (1 core, CPU time): 0.38 s against 1.26 s for the retrain, a 3.3x speed-up;
- the max-step objective is unbounded: a non-finite KL stops the run with an error naming ``lr_scale`` and
  ``max_epochs`` rather than returning a broken model;
- one hand-written loop (not :func:`excise.training.train`) because a single optimiser must alternate
  between two objectives on two data sets, as the official code does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from excise.methods._common import SamplesStop, check_schedule, kl_to_teacher, relative_optimizer
from excise.methods.base import UnlearnData, UnlearningMethod, _correct, register_method
from excise.progress import progress_bar
from excise.training import (
    check_nonnegative,
    check_optional_probability,
    check_positive,
    check_positive_int,
    make_loader,
    per_sample_loss,
)


@dataclass
class ScrubConfig:
    """Hyper-parameters of SCRUB (official large-scale names in brackets; measurements in the module docstring)."""

    epochs: int = 3  # [sgda_epochs] min passes over the retain set
    max_epochs: int = 2  # [msteps] the first max_epochs epochs also take a max pass over the forget set
    temperature: float = 4.0  # [kd_T]
    gamma: float = 0.99  # weight of the retain cross-entropy in the min-steps
    alpha: float = 0.001  # weight of the retain KL to the teacher in the min-steps
    lr_scale: float = 0.1  # learning rate = lr_scale x the original recipe's
    batch_size: int | None = None  # None: the original recipe's, for both passes
    schedule: str | None = "constant"  # learning-rate schedule (official: constant); None: the original recipe's
    # Class requests: more max epochs (up to class_max_epochs) while more than this share of the forgotten class is
    # still predicted (module doc, "The max-step budget of a class request"); None: the official budget alone.
    class_stop_accuracy: float | None = 0.01
    class_max_epochs: int = 8
    max_accuracy_drop: float | None = 0.02  # samples requests: excise's stop (SamplesStop); None: every epoch

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "class_max_epochs")
        if self.class_stop_accuracy is not None and isinstance(self.max_epochs, int) \
                and self.class_max_epochs < self.max_epochs:
            raise ValueError(f"class_max_epochs={self.class_max_epochs!r} must be >= max_epochs={self.max_epochs!r} "
                             "(it caps the max epochs a class request may take; the planned ones always run)")
        check_optional_probability(self, "class_stop_accuracy", "max_accuracy_drop")
        check_nonnegative(self, "max_epochs", "gamma", "alpha", "lr_scale")
        if not isinstance(self.max_epochs, int) or self.max_epochs > self.epochs:
            raise ValueError(f"max_epochs={self.max_epochs!r} must be an integer in [0, epochs={self.epochs}]")
        check_positive(self, "temperature")
        if self.lr_scale == 0:
            raise ValueError("lr_scale=0 must be > 0 (the learning rate is lr_scale x the original recipe's)")
        if self.batch_size is not None:
            check_positive_int(self, "batch_size")
        check_schedule(self.schedule)


def _forget_accuracy(model: nn.Module, data: UnlearnData) -> float:
    """Share of the forget rows still predicted as their label (eval mode; the model's mode is restored)."""
    return float(_correct(model, data.forget_set).double().mean())


def distill_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Batch-mean ``T^2 KL(teacher_T || student_T)``, the official ``DistillKL`` (Hinton et al.'s T^2 scale)."""
    teacher = torch.softmax(teacher_logits / temperature, dim=1)
    return kl_to_teacher(student_logits, teacher, temperature).mean() * temperature ** 2


@register_method
class Scrub(UnlearningMethod):
    name = "scrub"
    paper = "Kurmanji et al., 'Towards Unbounded Machine Unlearning', NeurIPS 2023 (SCRUB)"
    needs_retain = True
    Config = ScrubConfig

    def _unlearn(self, student: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        teacher = copy.deepcopy(student).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        batch_size = cfg.batch_size or data.recipe.batch_size
        optimizer = relative_optimizer(student.parameters(), data.recipe, cfg.lr_scale, momentum=0.9,
                                       weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed)
        forget_loader = make_loader(data.forget_set, batch_size, shuffle=True, generator=generator)
        retain_loader = make_loader(data.retain_set, batch_size, shuffle=True, generator=generator)
        total = cfg.max_epochs * len(forget_loader) + cfg.epochs * len(retain_loader)  # the official budget
        scheduler = None
        if (cfg.schedule or data.recipe.schedule) == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        forget_kls: list[float] = []
        retain_losses: list[float] = []
        # A class request may take more max epochs (each with its min pass), checked after the planned ones; the
        # official trailing min-only epochs follow. Under a schedule the budget is the official one (the schedule's
        # length is set before the first step).
        extend = (data.request.kind == "class" and cfg.class_stop_accuracy is not None and scheduler is None
                  and cfg.max_epochs > 0)
        max_epochs, epoch = cfg.max_epochs, 0
        before_extra: tuple[dict[str, Any], dict[str, Any]] = ({}, {})  # the state before an extra max epoch
        forget_checks: list[float] = []
        stop_reason = "epochs"
        samples_stop = SamplesStop(student, data, cfg.max_accuracy_drop)
        student.train()
        with progress_bar("scrub", total) as bar:
            while epoch < max_epochs + (cfg.epochs - cfg.max_epochs):
                if epoch < max_epochs:
                    forget_kls.append(self._pass(student, teacher, forget_loader, optimizer, scheduler, data.task,
                                                 "max", bar))
                retain_losses.append(self._pass(student, teacher, retain_loader, optimizer, scheduler, data.task,
                                                "min", bar))
                epoch += 1
                if extend and epoch == max_epochs:
                    forget_checks.append(_forget_accuracy(student, data))
                    if forget_checks[-1] <= cfg.class_stop_accuracy:
                        stop_reason = "forget_accuracy"
                    elif len(forget_checks) > 1 and forget_checks[-1] >= forget_checks[-2]:
                        # The extra max epoch did not lower the class (the max step can raise its divergence by
                        # sharpening the student instead): it is undone, and more would only cost the others.
                        student.load_state_dict(before_extra[0])
                        optimizer.load_state_dict(before_extra[1])
                        stop_reason = "no_progress"
                    elif max_epochs < cfg.class_max_epochs:
                        before_extra = (copy.deepcopy(student.state_dict()), copy.deepcopy(optimizer.state_dict()))
                        max_epochs += 1
                    else:
                        stop_reason = "class_max_epochs"
                if samples_stop.reached(student):
                    break
        student.eval()
        return {
            "max_epochs_run": len(forget_kls),
            "max_steps": len(forget_kls) * len(forget_loader),
            "min_steps": epoch * len(retain_loader),
            "forget_kl_per_max_epoch": forget_kls,
            "retain_loss_per_epoch": retain_losses,
            "forget_accuracy_after_max_epochs": forget_checks,
            "stop_reason": stop_reason,
            **samples_stop.stats(),
        }

    def _pass(self, student: nn.Module, teacher: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
              scheduler: Any, task: str, direction: str, bar: Any) -> float:
        """One pass; returns the mean forget KL (max) or the mean min-step loss (min) over the pass."""
        cfg = self.config
        running = 0.0
        for batch in loader:
            logits = student(batch["inputs"])
            with torch.no_grad():
                teacher_logits = teacher(batch["inputs"])
            divergence = distill_divergence(logits, teacher_logits, cfg.temperature)
            if not torch.isfinite(divergence):
                # The max-step objective (-KL) is unbounded; a diverged student must not be returned as a result.
                raise FloatingPointError(
                    f"SCRUB diverged: the KL to the teacher became {float(divergence)} during a {direction}-step; "
                    f"lower lr_scale (now {cfg.lr_scale}) or max_epochs (now {cfg.max_epochs})"
                )
            if direction == "max":
                loss = -divergence
                running += float(divergence.detach())
            else:
                ce = per_sample_loss(logits, batch["targets"], task, batch.get("label_mask")).mean()
                loss = cfg.gamma * ce + cfg.alpha * divergence
                running += float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            bar.advance(**{direction: float(loss.detach())})
        return running / max(len(loader), 1)
