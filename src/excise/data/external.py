"""A user's own data as an excise data set: ``--data package.module:factory`` / ``load_dataset("pkg.mod:fn")``.

The factory may return a :class:`~excise.data.base.DatasetBundle`, or a ``(train, test)`` pair whose parts are
:class:`~excise.data.base.LabeledData` or map-style ``torch.utils.data.Dataset`` objects yielding
``(input, label)`` pairs with integer class labels (``torchvision``'s convention). A ``Dataset`` is read in
batches through a ``DataLoader`` and kept as tensors: excise's methods and metrics index rows of in-memory
tensors, so a data set must fit in memory today (streaming larger ones is issue 19's open part). Class names
come from the training set's ``classes`` attribute when it has one, else ``"0" … "K-1"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from excise.data.base import DatasetBundle, LabeledData


def call_factory(factory: Callable[..., Any], name: str, *, root: Any, seed: int, **options: Any) -> DatasetBundle:
    """Call a user's data factory with the options it accepts (``root`` and ``seed`` only if it takes them) and
    turn what it returns into a bundle named by its import path, so a checkpoint's sidecar rebuilds it."""
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    given = dict(options)
    for key, value in (("root", root), ("seed", seed)):
        if takes_any or key in parameters:
            given[key] = value
    value = factory(**given)
    if isinstance(value, DatasetBundle):
        return DatasetBundle(name, value.train, value.test, dict(value.meta))
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"dataset={name!r} returned a {type(value).__name__}; a data factory returns a "
                         "DatasetBundle or a (train, test) pair of LabeledData or torch Datasets")
    train_part, test_part = value
    classes = _class_names(train_part, test_part, name)
    train = as_labeled(train_part, classes, name, "train")
    test = as_labeled(test_part, classes, name, "test")
    return DatasetBundle(name, train, test, {"source": f"user factory {name}"})


def as_labeled(part: Any, classes: tuple[str, ...], name: str, which: str, batch_size: int = 256) -> LabeledData:
    """A ``LabeledData`` as is (renamed), or a map-style ``Dataset`` of ``(input, label)`` read in batches."""
    if isinstance(part, LabeledData):
        return replace(part, name=name)
    if not isinstance(part, Dataset) or not hasattr(part, "__len__"):
        raise ValueError(f"dataset={name!r}: the {which} part is a {type(part).__name__}; expected LabeledData or "
                         "a map-style torch.utils.data.Dataset (with __len__) of (input, label) pairs")
    if len(part) == 0:
        raise ValueError(f"dataset={name!r}: the {which} part is empty")
    inputs, targets = [], []
    for batch in DataLoader(part, batch_size=batch_size, shuffle=False):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"dataset={name!r}: the {which} part must yield (input, label) pairs")
        x, y = batch
        inputs.append(torch.as_tensor(x).float())
        targets.append(torch.as_tensor(y))
    labels = torch.cat(targets)
    if labels.dtype.is_floating_point or labels.dim() != 1:
        raise ValueError(f"dataset={name!r}: the {which} labels must be integer class indices, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise ValueError(f"dataset={name!r}: the {which} labels span {int(labels.min())}..{int(labels.max())}, "
                         f"outside the {len(classes)} classes {list(classes)[:10]}")
    return LabeledData(torch.cat(inputs), labels.long(), classes, name=name)


def _class_names(train: Any, test: Any, name: str) -> tuple[str, ...]:
    named = getattr(train, "classes", None)
    if named is not None:
        return tuple(str(c) for c in named)
    highest = -1
    for part in (train, test):
        if isinstance(part, Dataset) and hasattr(part, "__len__"):
            for _, y in DataLoader(part, batch_size=1024, shuffle=False):
                highest = max(highest, int(torch.as_tensor(y).max()))
    if highest < 1:
        raise ValueError(f"dataset={name!r}: found fewer than two classes; give the training set a `classes` "
                         "attribute naming them")
    return tuple(str(i) for i in range(highest + 1))
