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
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from excise.data.base import DatasetBundle, LabeledData, load_task
from excise.metrics.accuracy import accuracy, check_logits, per_target_accuracy, per_target_ap
from excise.metrics.mia import CV_REPEATS, HEADLINE_MIA, Judge, MiaInputs, run_mia
from excise.metrics.robustness import batchnorm_refit_logits
from excise.requests import ForgetRequest, named_classes, split, split_test
from excise.training import predict_logits

DIRECTIONS: dict[str, str] = {
    "FA": "closer to retrain is better",
    "RA": "higher is better",
    "TA": "higher is better",
    "TA_forget": "closer to retrain is better",
    "MIA": "share of forget set called non-member; closer to retrain is better",
    "forget_AP": "closer to retrain (chance) is better",
    "retain_mAP": "higher is better",
    "TA_sibling_min": "the worst test accuracy among the forgotten sub-class's siblings (the other fine classes of "
                      "its super-class); higher is better, retrain's is the reference",
    "FA_class_max": "the highest forget accuracy among the forgotten classes of a request naming several (a "
                    "sequence's step names every class so far); retrain's is the reference, and a class handed back "
                    "shows here when the pooled FA hides it",
    "FA_bn_refit": "forget accuracy after the BatchNorm statistics are recomputed on the retain set "
                   "(excise.metrics.robustness); it should stay at FA, as retrain's does — a rise means the "
                   "forgetting lived in stale statistics, not in the weights",
    "MIA:seq_loss": "AUC (%) telling forget from held-out sequences by their loss; 50 = indistinguishable "
                    "(never trained on), above = still recognised, below = over-forgotten; closer to retrain",
    "MIA:seq_min_k": "AUC (%) telling forget from held-out sequences by min-20% token probability; 50 = "
                     "indistinguishable, above = still recognised, below = over-forgotten; closer to retrain",
}


@dataclass
class EvalViews:
    """The populations a model is judged on for one request."""

    forget_set: LabeledData
    retain_set: LabeledData
    test_retain: LabeledData
    test_forget: LabeledData | None
    request: ForgetRequest
    # Every request the views judge, oldest first, when they are a sequence's cumulative views (the forget set then
    # holds every step's rows); empty for one request. Class-level metrics read their classes from it.
    history: tuple[ForgetRequest, ...] = ()

    @property
    def requests(self) -> tuple[ForgetRequest, ...]:
        return self.history or (self.request,)

    @classmethod
    def from_bundle(cls, bundle: DatasetBundle, request: ForgetRequest) -> EvalViews:
        forget_set, retain_set = split(bundle.train, request)
        test_forget, test_retain = split_test(bundle.test, request)
        return cls(forget_set, retain_set, test_retain, test_forget, request)


def _probs(logits: Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).numpy()


@dataclass(frozen=True)
class Population:
    """A model's logits on one evaluated population, with that population's targets and label mask."""

    logits: Tensor
    targets: Tensor
    label_mask: Tensor | None = None
    fine: Tensor | None = None  # fine (sub-class) label of each row, for data with super-classes

    @classmethod
    def of(cls, model: nn.Module, data: LabeledData, where: str = "the evaluated rows") -> Population:
        logits = check_logits(predict_logits(model, data), where, data.task)
        return cls(logits, data.targets, data.label_mask, data.subclass_targets)

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, rows: np.ndarray) -> Population:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Population(self.logits[index], self.targets[index],
                          None if self.label_mask is None else self.label_mask[index],
                          None if self.fine is None else self.fine[index])

    def pairs(self, positives: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A multi-label population as (instance, target) pairs: each label column's sigmoid as a two-class
        distribution over absent / present, and the label; only the entries the label mask selects, and of those
        only the targets present in the instance when ``positives``."""
        keep = torch.ones_like(self.targets, dtype=torch.bool) if self.label_mask is None else self.label_mask
        if positives:
            keep = keep & (self.targets > 0.5)
        p = torch.sigmoid(self.logits[keep]).numpy()
        return np.stack([1.0 - p, p], axis=1), self.targets[keep].long().numpy()


@dataclass(frozen=True)
class Outputs:
    """Everything a model is scored on for one request: its logits on every population of :class:`EvalViews`.
    Metrics are functions of this alone, so :mod:`excise.metrics.uncertainty` can resample it."""

    forget: Population
    retain: Population
    test_retain: Population
    test_forget: Population | None
    task: str
    kind: str
    classes: tuple[str, ...]
    siblings: tuple[int, ...] = ()  # fine classes sharing a super-class with the forgotten sub-class(es)
    forgotten_classes: tuple[int, ...] = ()  # a class request's classes, fixed here so a replicate keeps them

    def resample(self, rng: np.random.Generator) -> Outputs:
        """A bootstrap replicate: every population drawn with replacement at its own size."""
        def draw(population: Population | None) -> Population | None:
            return None if population is None else population.take(rng.integers(0, len(population), len(population)))

        return replace(self, forget=draw(self.forget), retain=draw(self.retain),
                       test_retain=draw(self.test_retain), test_forget=draw(self.test_forget))


Evaluator = Callable[..., dict[str, float]]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(task: str, evaluator: Evaluator) -> None:
    """Register ``evaluator(model, views, *, mia_variants, seed) -> metrics`` for a task (dense, sequence)."""
    _EVALUATORS[task] = evaluator


def collect_outputs(model: nn.Module, views: EvalViews) -> Outputs | None:
    """``model``'s logits on every population of ``views``; ``None`` for a task with its own registered
    evaluator (dense, sequence), which scores the model itself."""
    task = views.forget_set.task
    load_task(task)  # a plug-in task registers its evaluator when first used
    if task in _EVALUATORS:
        return None
    test_forget = views.test_forget
    return Outputs(
        Population.of(model, views.forget_set, "the forget set"),
        Population.of(model, views.retain_set, "the retain set"),
        Population.of(model, views.test_retain, "the test set"),
        None if test_forget is None or len(test_forget) == 0 else Population.of(model, test_forget, "the test set"),
        task, views.request.kind, views.forget_set.classes, siblings_of(views), forgotten_classes(views),
    )


def forgotten_classes(views: EvalViews) -> tuple[int, ...]:
    """The classes the class requests of ``views`` name (every step's, for a sequence's cumulative views); empty
    when none does. Read from the requests: the forget set of a sequence also holds the rows of its sample and
    sub-class steps, whose classes are kept (a random step's rows of classes 0 and 3 made ``FA_class_max`` read a
    kept class as "handed back")."""
    if views.forget_set.task != "multiclass" or len(views.forget_set) == 0:
        return ()
    return tuple(sorted({c for r in views.requests for c in named_classes(views.forget_set, r)
                         if r.kind == "class"}))


def siblings_of(views: EvalViews) -> tuple[int, ...]:
    """The fine classes that share a super-class with the sub-class requests' forgotten fine classes (and are not
    forgotten themselves); empty when no request is a sub-class one."""
    data = views.forget_set
    if data.subclass_targets is None or data.subclass_parent is None:
        return ()
    forgotten = {f for r in views.requests if r.kind == "subclass" for f in named_classes(data, r)}
    if not forgotten:
        return ()
    parents = {data.subclass_parent[f] for f in forgotten}
    return tuple(j for j, parent in enumerate(data.subclass_parent) if parent in parents and j not in forgotten)


def evaluate(
    model: nn.Module, views: EvalViews, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, float]:
    """Every metric of ``model`` on ``views``, in percent."""
    return evaluate_outputs(model, views, collect_outputs(model, views), mia_variants=mia_variants, seed=seed)


def evaluate_outputs(model: nn.Module, views: EvalViews, outputs: Outputs | None, *,
                     mia_variants: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, float]:
    """:func:`evaluate` with ``outputs`` already collected (``None``: the task's registered evaluator)."""
    if outputs is None:
        return _EVALUATORS[views.forget_set.task](model, views, mia_variants=mia_variants, seed=seed)
    metrics = score(outputs, mia_variants=mia_variants, seed=seed)
    if outputs.task == "multiclass":
        refit = batchnorm_refit_logits(model, views.retain_set, views.forget_set)
        if refit is not None:
            metrics["FA_bn_refit"] = accuracy(refit, views.forget_set.targets)
    return metrics


def score(outputs: Outputs, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0,
          judges: dict[str, Judge] | None = None, cv_repeats: int = CV_REPEATS) -> dict[str, float]:
    """Every metric computed from a model's :class:`Outputs`, in percent. ``judges`` and ``cv_repeats``: see
    :func:`excise.metrics.mia.run_mia` and :class:`excise.metrics.mia.MiaInputs`."""
    mia = _MiaRun(mia_variants, seed, judges, cv_repeats)
    if outputs.task == "multilabel":
        if outputs.kind != "target":  # samples: whole instances forgotten, every label with them
            return _score_instances(outputs, mia)
        return _score_target(outputs, mia)
    out = {
        "FA": accuracy(outputs.forget.logits, outputs.forget.targets),
        "RA": accuracy(outputs.retain.logits, outputs.retain.targets),
        "TA": accuracy(outputs.test_retain.logits, outputs.test_retain.targets),
    }
    test_forget = outputs.test_forget
    if test_forget is not None:
        out["TA_forget"] = accuracy(test_forget.logits, test_forget.targets)
    sibling = _worst_sibling(outputs)
    if sibling is not None:
        out["TA_sibling_min"] = sibling
    handed_back = _most_remembered_class(outputs)
    if handed_back is not None:
        out["FA_class_max"] = handed_back

    def probs_labels(population: Population) -> tuple[np.ndarray, np.ndarray]:
        return _probs(population.logits), population.targets.numpy()

    out.update(mia(probs_labels(outputs.retain), probs_labels(outputs.test_retain), probs_labels(outputs.forget),
                   None if test_forget is None else probs_labels(test_forget)))
    return out


def _worst_sibling(outputs: Outputs) -> float | None:
    """The lowest test accuracy among the siblings of a sub-class request (each sibling's own test rows): the
    forgotten fine class shares its super-class's label with them, so a method that forgets the super-class
    instead shows here first."""
    test = outputs.test_retain
    if not outputs.siblings or test.fine is None:
        return None
    accuracies = [accuracy(test.logits[test.fine == j], test.targets[test.fine == j])
                  for j in outputs.siblings if bool((test.fine == j).any())]
    return min(accuracies) if accuracies else None


def _most_remembered_class(outputs: Outputs) -> float | None:
    """The highest forget accuracy among the classes of a class request naming two or more (each class's own forget
    rows). Measured on the mid-scale five-step sequence (seed 0): forgetting 7 at step 4 handed 10.5% of the
    forgotten 1s back while the pooled FA read 2.6."""
    forget = outputs.forget
    if len(outputs.forgotten_classes) < 2:
        return None
    # Over the classes present: a bootstrap replicate can miss a small class, and still has a value.
    return max(accuracy(forget.logits[forget.targets == c], forget.targets[forget.targets == c])
               for c in outputs.forgotten_classes if bool((forget.targets == c).any()))


Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _MiaRun:
    """How one scoring runs the MIA variants: which, with which seed, reusing which fitted attacks."""

    variants: tuple[str, ...] | None
    seed: int
    judges: dict[str, Judge] | None
    cv_repeats: int

    def __call__(self, retain: Pair, test: Pair, forget: Pair, test_forget: Pair | None) -> dict[str, float]:
        """``MIA:<variant>`` for every variant asked, and the headline ``MIA``, in percent."""
        inputs = MiaInputs(*retain, *test, *forget, seed=self.seed, cv_repeats=self.cv_repeats,
                           **({} if test_forget is None else
                              {"test_forget_probs": test_forget[0], "test_forget_labels": test_forget[1]}))
        results = run_mia(inputs, self.variants, self.judges)
        out = {f"MIA:{name}": 100.0 * result.value for name, result in results.items()}
        if HEADLINE_MIA in results:
            out["MIA"] = 100.0 * results[HEADLINE_MIA].value
        return out


def _per_target_scores(outputs: Outputs) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per-target test accuracy and AP, and ``acc:<target>`` / ``AP:<target>`` for every target."""
    test = outputs.test_retain
    test_acc = per_target_accuracy(test.logits, test.targets)
    test_ap = per_target_ap(test.logits, test.targets)
    out: dict[str, float] = {}
    for c, name in enumerate(outputs.classes):
        out[f"acc:{name}"] = float(test_acc[c])
        out[f"AP:{name}"] = float(test_ap[c])
    return test_acc, test_ap, out


def _score_target(outputs: Outputs, mia: _MiaRun) -> dict[str, float]:
    forget, retain, test = outputs.forget, outputs.retain, outputs.test_retain
    gone = forget.label_mask.any(dim=0)
    forgotten = gone.nonzero().flatten().tolist()
    remaining = (~gone).nonzero().flatten().tolist()
    test_acc, test_ap, per_target = _per_target_scores(outputs)
    out = {
        "FA": float(per_target_accuracy(forget.logits[:, forgotten], forget.targets[:, forgotten]).mean()),
        "RA": float(per_target_accuracy(retain.logits[:, remaining], retain.targets[:, remaining]).mean()),
        "TA": float(test_acc[remaining].mean()),
        "forget_AP": float(np.nanmean(test_ap[forgotten])),
        "retain_mAP": float(np.nanmean(test_ap[remaining])),
    }
    if outputs.test_forget is not None:
        test_forget = outputs.test_forget
        out["TA_forget"] = float(per_target_accuracy(test_forget.logits[:, forgotten],
                                                     test_forget.targets[:, forgotten]).mean())
    out.update(per_target)
    # The Essential-Graph paper's protocol: per-target accuracy on the test instances that carry every target
    # (there, a forgotten target's positives predicted negative is the reported collapse). Absent when no test
    # instance carries all targets.
    every = (test.targets > 0.5).all(dim=1)
    if every.any():
        all_positive_acc = per_target_accuracy(test.logits[every], test.targets[every])
        for c, name in enumerate(outputs.classes):
            out[f"acc_all_positive:{name}"] = float(all_positive_acc[c])
    # The MIA on (instance, present target) pairs, as a class request's on samples: members are the training pairs
    # of the remaining targets (the labels retraining keeps), non-members their test pairs plus the forgotten
    # targets' test pairs (where a never-trained output lands), judged: the forgotten targets' training pairs.
    # (Each forgotten target's own column alone, with members = every training instance, forget set included,
    # made the SVC's verdict arbitrary when that output carries no membership signal: retrain 20.6-79.1 over six
    # member draws.) Present targets only: a target's data is where it appears, and absent pairs would double the
    # attack's training set (its SVC fits are quadratic) without covering where forget pairs land.
    test_forget = outputs.test_forget
    out.update(mia(retain.pairs(positives=True), test.pairs(positives=True), forget.pairs(positives=True),
                   None if test_forget is None else test_forget.pairs(positives=True)))
    return out


def _score_instances(outputs: Outputs, mia: _MiaRun) -> dict[str, float]:
    """A ``samples`` request on a multi-label model forgets whole instances with every label they carry: FA / RA
    / TA are the mean per-target accuracy on the forget set, the retain set and the test set, the MIA is judged
    on the forget set's (instance, present target) pairs against the retain set's and the test set's (as for a
    target request, :func:`_score_target`), and each target's test accuracy and AP are reported."""
    forget, retain, test = outputs.forget, outputs.retain, outputs.test_retain
    test_acc, test_ap, per_target = _per_target_scores(outputs)
    out = {
        "FA": float(per_target_accuracy(forget.logits, forget.targets).mean()),
        "RA": float(per_target_accuracy(retain.logits, retain.targets).mean()),
        "TA": float(test_acc.mean()),
        "test_mAP": float(np.nanmean(test_ap)),
    }
    out.update(per_target)
    out.update(mia(retain.pairs(positives=True), test.pairs(positives=True), forget.pairs(positives=True), None))
    return out
