"""Probe evidence for target-level forgetting: how well a fresh linear classifier (or, ``reader="mlp"``, one
with a hidden layer) still reads a forgotten target from a model's classifier-input features.

An output that no longer predicts a target says little about whether the model still knows it: after Essential-
Graph pruning a probe read the pruned target at AP 98 from the features the logit layer reads, where the retrained
model's gave 54 (distractor canvases, ``bottleneck_resnet``, median of 10 runs). The probe is a logistic regression
(scikit-learn, standardised features, ``C=1``) fitted on the training instances' features and scored by AP on the
test instances'. Read it next to the retrained model's probe AP (what a model that never learned the target still
encodes, e.g. through correlated targets or shared strokes) and the target's test prevalence (a probe that reads
nothing). A linear probe reads only what the class means separate; an eraser that equalises them (LEACE) defeats it
by construction, and the MLP reader then still found the target at AP 85-97 where a retrained model's features gave
43-55 (``benchmarks/probe_readers.py``).

Dense models (:func:`dense_probe_ap`) have no instance-level features: their class maps are 1x1 convs reading a
feature map, so the probe reads the feature vector at each *instance cell* — a digit's ink pixel (segmentation),
an object's centre cell (detection) — and tells the forgotten class's cells from the other classes' cells.
Background cells are left out: telling ink from empty canvas says nothing about the class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from excise.data.base import LabeledData
from excise.models.heads import HeadError, affine_head, head_features, module_inputs

__all__ = ["DenseProbe", "dense_probe_ap", "heldout_probe_ap", "information_left", "label_leakage", "probe_ap",
           "register_instance_cells"]

_INSTANCE_CELLS: dict[str, Callable[[LabeledData], Tensor]] = {}


def register_instance_cells(task: str, cells: Callable[[LabeledData], Tensor]) -> None:
    """Where :func:`dense_probe_ap` reads a dense task's data: ``cells(data)`` is ``N x H x W``, ``1 + c`` at each
    instance cell of class ``c`` and 0 elsewhere (:func:`excise.tasks.common.register_dense_task` registers it)."""
    _INSTANCE_CELLS[task] = cells


def _logistic_probe(seed: int):  # noqa: ANN202 - a scikit-learn Pipeline, imported lazily
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))


PROBE_READERS = ("linear", "mlp")


def _reader(kind: str, seed: int):  # noqa: ANN202 - a scikit-learn Pipeline, imported lazily
    _check_reader(kind)
    if kind == "linear":
        return _logistic_probe(seed)
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=3000,
                                                         random_state=seed))


def _check_reader(reader: str) -> None:
    if reader not in PROBE_READERS:
        raise ValueError(f"reader={reader!r} must be one of {list(PROBE_READERS)}")


# What each reader ranks by. The linear probe's margin, not its probability: a saturated sigmoid would tie the scores
# AP ranks (the MLP has no margin; its probabilities may tie at 1.0 on rows it is sure of).
_SCORE_METHOD = {"linear": "decision_function", "mlp": "predict_proba"}


def _positive_scores(raw: np.ndarray, reader: str) -> np.ndarray:
    return raw[:, 1] if _SCORE_METHOD[reader] == "predict_proba" else raw


def _scores(fitted, features: np.ndarray, reader: str) -> np.ndarray:  # noqa: ANN001 - a fitted Pipeline
    return _positive_scores(getattr(fitted, _SCORE_METHOD[reader])(features), reader)


def probe_ap(model: nn.Module, train_inputs: Tensor, train_labels: Tensor, test_inputs: Tensor,
             test_labels: Tensor, layer: str | None = None, seed: int = 0, reader: str = "linear") -> float:
    """AP (percent) on the test rows of a logistic-regression probe fitted on the train rows' classifier-input
    features (``layer``: the input of that ``nn.Linear``, default the layer that produces the logits).
    ``reader="mlp"``: a one-hidden-layer network (64 units) instead, which reads what a linear eraser leaves."""
    from sklearn.metrics import average_precision_score

    _check_reader(reader)
    y_train = train_labels.numpy().astype(int).ravel()
    y_test = test_labels.numpy().astype(int).ravel()
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        raise ValueError("the probe needs both labels among the train rows and among the test rows")
    train = head_features(model, train_inputs, layer).double().numpy()
    test = head_features(model, test_inputs, layer).double().numpy()
    probe = _reader(reader, seed).fit(train, y_train)
    return 100.0 * float(average_precision_score(y_test, _scores(probe, test, reader)))


def heldout_probe_ap(model: nn.Module, inputs: Tensor, labels: Tensor, folds: int = 5, layer: str | None = None,
                     seed: int = 0, reader: str = "linear") -> float:
    """AP (percent) of the same probe cross-validated on ``inputs`` alone (stratified ``folds``, each row scored
    by a probe that did not see it). Pass rows the unlearning method never saw (a test split): an eraser fitted
    on the training rows equalises the class means there by construction, so a probe fitted on those rows is
    the weaker adversary. Measured on the distractor canvases (bottleneck model, seed 0, targets 0-4): after
    ``target_erasure`` the held-out probe read 28-38 where the train-fitted one read 25-32 (prevalence 28-32;
    retrain 52 and 58)."""
    _check_reader(reader)
    y = labels.numpy().astype(int).ravel()
    if np.bincount(y, minlength=2).min() < folds:
        raise ValueError(f"the held-out probe needs at least folds={folds} rows of each label")
    return _heldout_ap(head_features(model, inputs, layer).double().numpy(), y, folds, seed, reader)


def _heldout_ap(features: np.ndarray, y: np.ndarray, folds: int, seed: int, reader: str) -> float:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folding = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(_reader(reader, seed), features, y, cv=folding, method=_SCORE_METHOD[reader])
    return 100.0 * float(average_precision_score(y, _positive_scores(scores, reader)))


def information_left(model: nn.Module, test: LabeledData, targets: list[int], seed: int = 0,
                     folds: int = 5) -> tuple[dict[str, float], str | None]:
    """What a target request's evidence needs beside the outputs: how well the forgotten ``targets`` can still be
    read from the model (``excise unlearn`` and ``excise evaluate`` add it to a multi-label model's metrics).

    Per forgotten target ``t`` (by name), in percent:

    - ``probe_AP:t``: :func:`heldout_probe_ap` on the ``test`` rows (rows no method fitted anything on), reading the
      features the logit layer reads;
    - ``probe_AP_head:t``: the same at the input of the head's first linear layer (the pooled body features), when
      the head has more than one — an eraser folded into the first layer hides the target from the second's input
      only;
    - ``prevalence:t``: the target's share of the test rows, what a probe that reads nothing scores.

    A probe near the prevalence reads nothing; one near the original's reads it as before, whatever the output says
    (a new user's ``target_erasure`` run read FA 0 and MIA 100 while the probe read 95.9, the original's value). A
    retrained model is the fair reference: it still reads what the other targets give away. Returns the metrics and
    ``None``, or no metrics and why not (a head not found on the module graph, too few test positives)."""
    try:
        head = affine_head(model)
    except HeadError as err:
        return {}, f"no probe: {err}"
    if not head:
        return {}, "no probe: the model's logits do not come from an nn.Linear"
    layers = {"probe_AP": head[-1]} | ({"probe_AP_head": head[0]} if len(head) > 1 else {})
    features = {key: head_features(model, test.inputs, layer).double().numpy() for key, layer in layers.items()}
    out: dict[str, float] = {}
    skipped = []
    for target in targets:
        name = test.classes[target]
        labels = (test.targets[:, target] > 0.5).long()
        if int(labels.sum()) < folds or int((1 - labels).sum()) < folds:
            skipped.append(name)
            continue
        for key, feats in features.items():
            out[f"{key}:{name}"] = _heldout_ap(feats, labels.numpy(), folds, seed, "linear")
        out[f"prevalence:{name}"] = 100.0 * float(labels.double().mean())
    note = (None if not skipped else f"no probe for {skipped}: fewer than {folds} test rows with or without it")
    return out, note


def label_leakage(train_targets: Tensor, test_targets: Tensor, target: int) -> float:
    """AP (percent) of a logistic regression predicting ``target`` from the other labels alone (fitted on the
    train rows, scored on the test rows): how much of the target the remaining labels give away, the floor a
    probe reaches on any model that still predicts them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    others = [k for k in range(train_targets.shape[1]) if k != target]
    fit = LogisticRegression(max_iter=1000).fit(train_targets[:, others].numpy(), train_targets[:, target].numpy())
    scores = fit.decision_function(test_targets[:, others].numpy())
    return 100.0 * float(average_precision_score(test_targets[:, target].numpy(), scores))


@dataclass
class DenseProbe:
    """What :func:`dense_probe_ap` measured: the probe's AP (percent) on the test cells, the forgotten class's share
    of those cells (the AP of a probe that reads nothing), the feature map read and the cells used."""

    ap: float
    prevalence: float
    layer: str
    train_cells: int
    test_cells: int


def _cell_features(model: nn.Module, module: nn.Module, layer: str, data: LabeledData, target: int, limit: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The feature vectors ``module`` receives at (at most ``limit``, a seeded draw of) ``data``'s instance cells, and
    whether each is ``target``'s. Only the drawn cells are kept, batch by batch: never the whole feature maps."""
    cells = _INSTANCE_CELLS[data.task](data)
    where = torch.nonzero(cells > 0)
    if len(where) > limit:
        generator = torch.Generator().manual_seed(seed)
        where = where[torch.randperm(len(where), generator=generator)[:limit].sort().values]

    def select(maps: Tensor, start: int) -> Tensor:
        if maps.dim() != 4 or tuple(maps.shape[-2:]) != tuple(cells.shape[-2:]):
            raise ValueError(f"layer={layer!r} must read an N x C x H x W feature map at the resolution of the "
                             f"task's instance cells {tuple(cells.shape[-2:])}; it reads {tuple(maps.shape[1:])}")
        mine = where[(where[:, 0] >= start) & (where[:, 0] < start + len(maps))]
        return maps[mine[:, 0] - start, :, mine[:, 1], mine[:, 2]]

    features = module_inputs(model, module, data.inputs, select=select)
    if features is None:
        raise ValueError(f"the probe needs at least one {data.task} image; got none")
    image, row, column = where.unbind(1)
    return features.double().numpy(), (cells[image, row, column] == 1 + target).numpy().astype(int)


def dense_probe_ap(model: nn.Module, train: LabeledData, test: LabeledData, target: int, layer: str | None = None,
                   max_cells: int = 20_000, seed: int = 0, reader: str = "linear") -> DenseProbe:
    """AP (percent) of the linear probe (the same as :func:`probe_ap`'s) telling class ``target``'s instance
    cells from the other classes' cells by the feature vector that ``layer`` reads there (default: the model's
    class-map conv, ``model.class_maps``), fitted on ``train``'s cells and scored on ``test``'s, at most
    ``max_cells`` of each (seeded draws, one per split). Read it against the retrained model's: a model trained
    to leave the class unsegmented (or undetected) must still tell it apart from the other classes. ``reader="mlp"``
    fits a one-hidden-layer network (64 units) instead: the stronger reader, for features trained to defeat a
    linear one (``dense_target_erasure``)."""
    from sklearn.metrics import average_precision_score

    if train.task not in _INSTANCE_CELLS:
        raise ValueError(f"task={train.task!r} is not a dense task with instance cells; dense tasks: "
                         f"{sorted(_INSTANCE_CELLS)}")
    if train.task != test.task or train.classes != test.classes:
        raise ValueError(f"train and test must be the same task and classes; got {train.task!r} {train.classes} "
                         f"(train) and {test.task!r} {test.classes} (test)")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < train.num_classes:
        raise ValueError(f"target={target!r} must be a class index in [0, {train.num_classes})")
    if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 2:
        raise ValueError(f"max_cells={max_cells!r} must be an integer >= 2")
    _check_reader(reader)
    if layer is None:
        layer = getattr(model, "class_maps", None)
        if not isinstance(layer, str):
            raise ValueError(f"{type(model).__name__} names no `class_maps` layer: pass layer= (a module name)")
    module = dict(model.named_modules()).get(layer) if layer else None
    if module is None:
        raise ValueError(f"layer={layer!r} is not a submodule of {type(model).__name__}")
    x_train, y_train = _cell_features(model, module, layer, train, target, max_cells, seed)
    x_test, y_test = _cell_features(model, module, layer, test, target, max_cells, seed + 1)
    for part, labels in (("train", y_train), ("test", y_test)):
        if len(np.unique(labels)) < 2:
            raise ValueError(f"the probe needs cells of class {target} and of other classes among the {part} "
                             f"cells; found {int(labels.sum())} cells of class {target} among {len(labels)}")
    scores = _scores(_reader(reader, seed).fit(x_train, y_train), x_test, reader)
    return DenseProbe(ap=100.0 * float(average_precision_score(y_test, scores)),
                      prevalence=100.0 * float(y_test.mean()), layer=layer, train_cells=len(y_train),
                      test_cells=len(y_test))
