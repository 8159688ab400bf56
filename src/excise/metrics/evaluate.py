"""One evaluation path for every model, request kind and entry point (Python, CLI, bench).

Values are percentages. ``FA``/``RA``/``TA`` follow ``shared/methods/evaluation.md``: for class and
sub-class requests ``TA`` is measured on the test samples of the *remaining* (sub)classes and the
forgotten (sub)class's test accuracy is reported separately as ``TA_forget``; for random samples ``TA``
is the whole test set. ``MIA`` is the SVC confidence MIA-efficacy (the papers' column), and every
variant is reported as ``MIA:<variant>``. For ``target`` requests FA is the forgotten target's
accuracy on the training instances that carry it, RA/TA the mean accuracy of the remaining targets,
and the forgotten target's and remaining targets' average precision on the test set are added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from excise.data.base import DatasetBundle, LabeledData
from excise.metrics.accuracy import accuracy, per_target_accuracy, per_target_ap
from excise.metrics.mia import HEADLINE_MIA, MiaInputs, run_mia
from excise.requests import ForgetRequest, split, split_test
from excise.training import predict_logits

DIRECTIONS: dict[str, str] = {
    "FA": "closer to retrain is better",
    "RA": "higher is better",
    "TA": "higher is better",
    "TA_forget": "closer to retrain is better",
    "MIA": "share of forget set called non-member; closer to retrain is better",
    "forget_AP": "closer to retrain (chance) is better",
    "retain_mAP": "higher is better",
}


@dataclass
class EvalViews:
    """The populations a model is judged on for one request."""

    forget_set: LabeledData
    retain_set: LabeledData
    test_retain: LabeledData
    test_forget: LabeledData | None
    request: ForgetRequest

    @classmethod
    def from_bundle(cls, bundle: DatasetBundle, request: ForgetRequest) -> EvalViews:
        forget_set, retain_set = split(bundle.train, request)
        test_forget, test_retain = split_test(bundle.test, request)
        return cls(forget_set, retain_set, test_retain, test_forget, request)


def _probs(logits: Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).numpy()


def _binary_probs(logits: Tensor) -> np.ndarray:
    p = torch.sigmoid(logits).numpy()
    return np.stack([1.0 - p, p], axis=1)


Evaluator = Callable[..., dict[str, float]]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(task: str, evaluator: Evaluator) -> None:
    """Register ``evaluator(model, views, *, mia_variants, seed) -> metrics`` for a task (dense, sequence)."""
    _EVALUATORS[task] = evaluator


def evaluate(
    model: nn.Module, views: EvalViews, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, float]:
    """Every metric of ``model`` on ``views``, in percent."""
    task = views.forget_set.task
    if task in _EVALUATORS:
        return _EVALUATORS[task](model, views, mia_variants=mia_variants, seed=seed)
    if task == "multilabel":
        if views.request.kind != "target":  # samples: whole instances forgotten, every label with them
            return _evaluate_instances(model, views, mia_variants, seed)
        return _evaluate_target(model, views, mia_variants, seed)
    forget_logits = predict_logits(model, views.forget_set)
    retain_logits = predict_logits(model, views.retain_set)
    test_logits = predict_logits(model, views.test_retain)
    out = {
        "FA": accuracy(forget_logits, views.forget_set.targets),
        "RA": accuracy(retain_logits, views.retain_set.targets),
        "TA": accuracy(test_logits, views.test_retain.targets),
    }
    if views.test_forget is not None:
        out["TA_forget"] = accuracy(predict_logits(model, views.test_forget), views.test_forget.targets)
    mia = run_mia(
        MiaInputs(
            _probs(retain_logits), views.retain_set.targets.numpy(),
            _probs(test_logits), views.test_retain.targets.numpy(),
            _probs(forget_logits), views.forget_set.targets.numpy(),
            seed=seed,
        ),
        mia_variants,
    )
    out.update({f"MIA:{name}": 100.0 * result.value for name, result in mia.items()})
    if HEADLINE_MIA in mia:
        out["MIA"] = 100.0 * mia[HEADLINE_MIA].value
    return out


def _multilabel_outputs(model: nn.Module, views: EvalViews) -> tuple[Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
    """A multi-label model's logits on the forget, retain and test views, and its per-target test accuracy / AP."""
    test_logits = predict_logits(model, views.test_retain)
    return (predict_logits(model, views.forget_set), predict_logits(model, views.retain_set), test_logits,
            per_target_accuracy(test_logits, views.test_retain.targets),
            per_target_ap(test_logits, views.test_retain.targets))


def _per_target_scores(classes: tuple[str, ...], test_acc: np.ndarray, test_ap: np.ndarray) -> dict[str, float]:
    """``acc:<target>`` and ``AP:<target>`` on the test set, for every target."""
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        out[f"acc:{name}"] = float(test_acc[c])
        out[f"AP:{name}"] = float(test_ap[c])
    return out


def _evaluate_target(
    model: nn.Module, views: EvalViews, mia_variants: tuple[str, ...] | None, seed: int
) -> dict[str, float]:
    forgotten = views.forget_set.label_mask.any(dim=0).nonzero().flatten().tolist()
    remaining = [c for c in range(views.forget_set.num_classes) if c not in forgotten]
    forget_logits, retain_logits, test_logits, test_acc, test_ap = _multilabel_outputs(model, views)
    out = {
        "FA": float(per_target_accuracy(forget_logits[:, forgotten], views.forget_set.targets[:, forgotten]).mean()),
        "RA": float(per_target_accuracy(retain_logits[:, remaining], views.retain_set.targets[:, remaining]).mean()),
        "TA": float(test_acc[remaining].mean()),
        "forget_AP": float(np.nanmean(test_ap[forgotten])),
        "retain_mAP": float(np.nanmean(test_ap[remaining])),
    }
    if views.test_forget is not None:
        out["TA_forget"] = float(per_target_accuracy(
            predict_logits(model, views.test_forget)[:, forgotten], views.test_forget.targets[:, forgotten]
        ).mean())
    out.update(_per_target_scores(views.forget_set.classes, test_acc, test_ap))
    # The Essential-Graph paper's protocol: per-target accuracy on the test instances that carry every target
    # (there, a forgotten target's positives predicted negative is the reported collapse). Absent when no test
    # instance carries all targets.
    every = (views.test_retain.targets > 0.5).all(dim=1)
    if every.any():
        all_positive_acc = per_target_accuracy(test_logits[every], views.test_retain.targets[every])
        for c, name in enumerate(views.forget_set.classes):
            out[f"acc_all_positive:{name}"] = float(all_positive_acc[c])
    out.update(_per_target_mia(forgotten, retain_logits, test_logits, forget_logits, views, mia_variants, seed))
    return out


def _per_target_mia(columns: list[int], retain_logits: Tensor, test_logits: Tensor, forget_logits: Tensor,
                    views: EvalViews, mia_variants: tuple[str, ...] | None, seed: int) -> dict[str, float]:
    """Every MIA variant on each of ``columns``' outputs (the sigmoid as a two-class distribution over absent /
    present: members = retain, non-members = test, judged = forget), averaged over the columns, so a request
    forgetting several targets (or a sequence step) is judged on all of them, whatever their order.

    Read it with care: when that output carries no membership signal (retrained, or pruned, on a task the model
    generalises perfectly) members and non-members look alike and the SVC's decision is arbitrary. Measured on
    the multidigits fixture over six member draws (evaluation seeds 0-5): retrain 20.6-79.1, essential graph
    3.8-93.4, original 0.0 in all six. Compare seeds, not single values."""
    values: dict[str, list[float]] = {}
    for column in columns:
        mia = run_mia(
            MiaInputs(
                _binary_probs(retain_logits[:, column]), views.retain_set.targets[:, column].long().numpy(),
                _binary_probs(test_logits[:, column]), views.test_retain.targets[:, column].long().numpy(),
                _binary_probs(forget_logits[:, column]), views.forget_set.targets[:, column].long().numpy(),
                seed=seed,
            ),
            mia_variants,
        )
        for name, result in mia.items():
            values.setdefault(name, []).append(result.value)
    out = {f"MIA:{name}": 100.0 * float(np.mean(v)) for name, v in values.items()}
    if HEADLINE_MIA in values:
        out["MIA"] = 100.0 * float(np.mean(values[HEADLINE_MIA]))
    return out


def _evaluate_instances(
    model: nn.Module, views: EvalViews, mia_variants: tuple[str, ...] | None, seed: int
) -> dict[str, float]:
    """A ``samples`` request on a multi-label model forgets whole instances with every label they carry: FA / RA
    / TA are the mean per-target accuracy on the forget set, the retain set and the test set, the MIA is every
    target's averaged, and each target's test accuracy and AP are reported."""
    forget_logits, retain_logits, test_logits, test_acc, test_ap = _multilabel_outputs(model, views)
    out = {
        "FA": float(per_target_accuracy(forget_logits, views.forget_set.targets).mean()),
        "RA": float(per_target_accuracy(retain_logits, views.retain_set.targets).mean()),
        "TA": float(test_acc.mean()),
        "test_mAP": float(np.nanmean(test_ap)),
    }
    out.update(_per_target_scores(views.forget_set.classes, test_acc, test_ap))
    columns = list(range(views.forget_set.num_classes))
    out.update(_per_target_mia(columns, retain_logits, test_logits, forget_logits, views, mia_variants, seed))
    return out
