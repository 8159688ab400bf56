"""A user's own data as an excise data set: ``--data package.module:factory`` / ``load_dataset("pkg.mod:fn")``.

The factory may return a :class:`~excise.data.base.DatasetBundle`, or a ``(train, test)`` pair whose parts are
:class:`~excise.data.base.LabeledData` or map-style ``torch.utils.data.Dataset`` objects yielding
``(input, label)`` pairs with integer class labels (``torchvision``'s convention), or ``DataLoader`` objects over
them. A ``Dataset`` whose inputs fit ``$EXCISE_MEMORY_LIMIT_MB`` (default 1024) as float32 is read once, in
batches, into tensors (fastest); a larger one is streamed: its inputs stay in the ``Dataset`` as
:class:`~excise.data.lazy.LazyInputs`, read a batch at a time by training, unlearning and evaluation, and only its
labels are held (from its ``targets`` attribute, or one streaming pass). Class names
come from the training set's ``classes`` attribute when it has one, else ``"0" … "K-1"`` from the labels read.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    default_collate,
)

from excise.data.base import DatasetBundle, LabeledData
from excise.data.lazy import LazyInputs, read_labels


def call_factory(factory: Callable[..., Any], name: str, *, root: Any, seed: int, **options: Any) -> DatasetBundle:
    """Call a user's data factory with the options it accepts (``root`` and ``seed`` only if it takes them) and
    turn what it returns into a bundle named by its import path, so a checkpoint's sidecar rebuilds it."""
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    given = dict(options)
    for key, value in (("root", root), ("seed", seed)):
        if takes_any or key in parameters:
            given[key] = value
    if root is not None and "root" not in given:
        warnings.warn(f"root={str(root)!r} is not read: the data factory {name!r} takes no root argument",
                      UserWarning, stacklevel=3)
    bundle = _as_bundle(factory(**given), name)
    if bundle.task == "multiclass":  # a sequence task's parts may pad to different lengths
        _check_sample_shapes(name, bundle.train.inputs, bundle.test.inputs)
    return bundle


def _as_bundle(value: Any, name: str) -> DatasetBundle:
    """What a data factory returned, as a bundle named ``name``."""
    if isinstance(value, DatasetBundle):
        return DatasetBundle(name, value.train, value.test, dict(value.meta))
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"dataset={name!r} returned a {type(value).__name__}; a data factory returns a "
                         "DatasetBundle or a (train, test) pair of LabeledData or torch Datasets")
    train_part, test_part = value
    read = {which: _read(part, name, which) for which, part in (("train", train_part), ("test", test_part))}
    if all(isinstance(part, LabeledData) for part in read.values()):
        if read["train"].classes != read["test"].classes:
            raise ValueError(f"dataset={name!r}: the train and test parts name different classes")
        return DatasetBundle(name, replace(read["train"], name=name), replace(read["test"], name=name),
                             {"source": f"user factory {name}"})
    if any(isinstance(part, LabeledData) for part in read.values()):
        raise ValueError(f"dataset={name!r}: give both parts as LabeledData or both as torch Datasets")
    named = getattr(train_part, "classes", None)
    highest = max(int(labels.max()) for _, labels in read.values())
    classes = tuple(str(c) for c in named) if named is not None else tuple(str(i) for i in range(highest + 1))
    if len(classes) < 2:
        raise ValueError(f"dataset={name!r}: found fewer than two classes; give the training set a `classes` "
                         "attribute naming them")
    parts = {}
    for which, (inputs, labels) in read.items():
        if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
            raise ValueError(f"dataset={name!r}: the {which} labels span {int(labels.min())}..{int(labels.max())}, "
                             f"outside the {len(classes)} classes {list(classes)[:10]}")
        parts[which] = LabeledData(inputs, labels.long(), classes, name=name)
    # Classes read off the labels (no `classes` attribute) must each have training rows: labels 1..10 made an
    # 11-class model with a phantom class "0" that `class:0` then found empty.
    missing = [c for i, c in enumerate(classes) if not bool((parts["train"].targets == i).any())]
    if named is None and missing:
        raise ValueError(f"dataset={name!r}: the training labels span {int(read['train'][1].min())}.."
                         f"{int(read['train'][1].max())}, so classes {missing[:10]} have no training rows; labels "
                         "must be 0..K-1 (shift them), or give the training set a `classes` attribute naming every "
                         "class")
    return DatasetBundle(name, parts["train"], parts["test"], {"source": f"user factory {name}"})


def _check_sample_shapes(name: str, train_inputs: Any, test_inputs: Any) -> None:
    """Refuse parts whose samples differ in shape: the model would otherwise fail with a matrix-size error deep in
    its forward, after a whole training run (a new user's train and test tables had 13 and 12 columns)."""
    train_shape, test_shape = tuple(train_inputs.shape[1:]), tuple(test_inputs.shape[1:])
    if train_shape != test_shape:
        raise ValueError(f"dataset={name!r}: the train samples have shape {train_shape} but the test samples "
                         f"{test_shape}; both parts must give inputs of one shape")


def memory_limit_bytes() -> int:
    """A user ``Dataset`` whose inputs would take more than this as float32 tensors is streamed, not read into
    memory: ``$EXCISE_MEMORY_LIMIT_MB`` (default 1024 MB)."""
    raw = os.environ.get("EXCISE_MEMORY_LIMIT_MB", "1024")
    try:
        megabytes = float(raw)
    except ValueError as err:
        raise ValueError(f"EXCISE_MEMORY_LIMIT_MB={raw!r} must be a number of megabytes") from err
    if megabytes < 0:
        raise ValueError(f"EXCISE_MEMORY_LIMIT_MB={raw!r} must be >= 0")
    return int(megabytes * 2**20)


def _read(part: Any, name: str, which: str, batch_size: int = 256) -> LabeledData | tuple[Tensor | LazyInputs,
                                                                                             Tensor]:
    """A ``LabeledData`` as is, or a map-style ``Dataset`` (or a ``DataLoader``'s) of ``(input, label)``: read once,
    in batches, into tensors when its inputs fit :func:`memory_limit_bytes`, else kept as :class:`LazyInputs`
    (rows read when a batch needs them) with its labels read in one streaming pass."""
    if isinstance(part, DataLoader):
        part = _dataset_of(part, name, which)
    if isinstance(part, LabeledData):
        if len(part) == 0:
            raise ValueError(f"dataset={name!r}: the {which} part is empty")
        return part
    if not isinstance(part, Dataset) or not hasattr(part, "__len__"):
        raise ValueError(f"dataset={name!r}: the {which} part is a {type(part).__name__}; expected LabeledData or "
                         "a map-style torch.utils.data.Dataset (with __len__) of (input, label) pairs")
    if len(part) == 0:
        raise ValueError(f"dataset={name!r}: the {which} part is empty")
    try:
        lazy = LazyInputs(part)
        if lazy.shape.numel() * 4 > memory_limit_bytes():
            return lazy, _check_labels(read_labels(part, batch_size), name, which)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"dataset={name!r}: the {which} part could not be read as (tensor input, integer label) "
                         f"pairs: {err}") from err
    inputs, targets = [], []
    try:
        for batch in DataLoader(part, batch_size=batch_size, shuffle=False):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError("it must yield (input, label) pairs")
            x, y = batch
            if isinstance(y, (list, tuple)) and y and isinstance(y[0], str):
                raise ValueError(f"its labels are text ({y[0]!r}, ...): return integer class indices and name the "
                                 "classes in a `classes` attribute of the Dataset (class requests then take the "
                                 "names)")
            x = torch.as_tensor(x)
            if x.dtype == torch.uint8 and not inputs:
                # Cast as given, not rescaled: the user's model was trained on what their Dataset yields.
                warnings.warn(f"dataset={name!r}: the {which} inputs are uint8 (0-255); excise casts them to float "
                              "without scaling, as the Dataset yields them. If the model was trained on inputs "
                              "scaled to [0, 1] (or normalised), yield those from the Dataset instead", stacklevel=2)
            inputs.append(x.float())
            targets.append(torch.as_tensor(y))
        features, labels = torch.cat(inputs), torch.cat(targets)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"dataset={name!r}: the {which} part could not be read as (tensor input, integer label) "
                         f"batches: {err}") from err
    return features, _check_labels(labels, name, which)


def _dataset_of(loader: DataLoader, name: str, which: str) -> Dataset:
    """The rows a ``DataLoader`` yields, as a ``Dataset``: its dataset when it visits every row (sequential or
    random order: excise draws its own batches), the sampler's rows when it samples a fixed subset. A custom
    ``collate_fn`` or batch sampler could change what the rows are, so it is refused."""
    if loader.collate_fn is not default_collate or not isinstance(loader.batch_sampler, BatchSampler):
        raise ValueError(f"dataset={name!r}: the {which} DataLoader has a custom collate_fn or batch sampler, which "
                         "may change its rows; give the Dataset itself")
    sampler = loader.sampler
    if isinstance(sampler, (SequentialSampler, RandomSampler)) and not getattr(sampler, "replacement", False) \
            and getattr(sampler, "_num_samples", None) is None:
        return loader.dataset
    if isinstance(sampler, SubsetRandomSampler):
        return Subset(loader.dataset, sorted(int(i) for i in sampler.indices))
    raise ValueError(f"dataset={name!r}: the {which} DataLoader draws rows with {type(sampler).__name__}, which "
                     "excise cannot turn into a fixed set of rows; give the Dataset (or a Subset of it)")


def _check_labels(labels: Tensor, name: str, which: str) -> Tensor:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        multi_hot = labels.dim() == 2 and (labels.dtype.is_floating_point or labels.dtype == torch.bool)
        raise ValueError(f"dataset={name!r}: the {which} labels must be integer class indices, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}" + (
                             "; for a multi-label task (one 0/1 column per target) return the parts as "
                             "excise.data.LabeledData(inputs, targets, classes, task='multilabel')" if multi_hot
                             else ""))
    return labels
