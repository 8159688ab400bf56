"""A user's own data as an excise data set: ``--data package.module:factory`` / ``load_dataset("pkg.mod:fn")``.

The factory may return a :class:`~excise.data.base.DatasetBundle`, or a ``(train, test)`` pair whose parts are
:class:`~excise.data.base.LabeledData` or map-style ``torch.utils.data.Dataset`` objects yielding
``(input, label)`` pairs with integer class labels (``torchvision``'s convention). A ``Dataset`` is read in
batches through a ``DataLoader`` and kept as tensors: excise's methods and metrics index rows of in-memory
tensors, so a data set must fit in memory today (streaming larger ones is issue 19's open part). Class names
come from the training set's ``classes`` attribute when it has one, else ``"0" … "K-1"`` from the labels read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
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
    return DatasetBundle(name, parts["train"], parts["test"], {"source": f"user factory {name}"})


def _read(part: Any, name: str, which: str, batch_size: int = 256) -> LabeledData | tuple[Tensor, Tensor]:
    """A ``LabeledData`` as is, or a map-style ``Dataset`` of ``(input, label)`` read once, in batches."""
    if isinstance(part, LabeledData):
        if len(part) == 0:
            raise ValueError(f"dataset={name!r}: the {which} part is empty")
        return part
    if not isinstance(part, Dataset) or not hasattr(part, "__len__"):
        raise ValueError(f"dataset={name!r}: the {which} part is a {type(part).__name__}; expected LabeledData or "
                         "a map-style torch.utils.data.Dataset (with __len__) of (input, label) pairs")
    if len(part) == 0:
        raise ValueError(f"dataset={name!r}: the {which} part is empty")
    inputs, targets = [], []
    try:
        for batch in DataLoader(part, batch_size=batch_size, shuffle=False):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError("it must yield (input, label) pairs")
            x, y = batch
            inputs.append(torch.as_tensor(x).float())
            targets.append(torch.as_tensor(y))
        features, labels = torch.cat(inputs), torch.cat(targets)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"dataset={name!r}: the {which} part could not be read as (tensor input, integer label) "
                         f"batches: {err}") from err
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(f"dataset={name!r}: the {which} labels must be integer class indices, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    return features, labels
