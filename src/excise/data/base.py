"""In-memory labelled data: the one container every dataset, split and method works on.

Everything excise trains on fits in memory on the machines it targets (digits, MNIST-scale sets,
CIFAR at 32x32), so a dataset is a handful of aligned tensors. Batches are fetched with
``__getitems__`` so a :class:`torch.utils.data.DataLoader` (and later a ``DistributedSampler``)
gathers a whole batch with one indexing op instead of collating thousands of single samples.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from excise.data.lazy import LazyInputs, is_lazy, take_rows

Task = str
TASK_PLUGINS: dict[str, str] = {
    "sequence": "excise.tasks.sequence",
    "segmentation": "excise.tasks.segmentation",
    "detection": "excise.tasks.detection",
}
"""The module that plugs each non-classification task in: its loss (:mod:`excise.training`), evaluator
(:mod:`excise.metrics.evaluate`) and ``target`` splitter (:mod:`excise.requests`). Those modules sit above the
data, training and metrics layers, so the layers below import them when a task is first needed
(:func:`load_task`), never at import time: no import cycle, and ``import excise`` stays cheap."""
# Tasks a LabeledData may carry: classification, the plug-in tasks above, and any a user registers.
TASKS: set[str] = {"multiclass", "multilabel", *TASK_PLUGINS}

CLASS_TARGETS = "class_targets"
"""``LabeledData.extras`` key of a per-sample class index (into ``classes``) for tasks whose ``targets`` are not
class indices — a sequence's source chain (:mod:`excise.tasks.sequence`); ``class`` requests select on it."""


def register_task(name: str) -> None:
    """Declare a task name (e.g. ``"segmentation"``) so data sets may carry it."""
    TASKS.add(name)


def load_task(task: str) -> None:
    """Import the module that plugs ``task`` in (:data:`TASK_PLUGINS`), if it has one and it is not loaded."""
    if task in TASK_PLUGINS:
        importlib.import_module(TASK_PLUGINS[task])


@dataclass
class LabeledData(torch.utils.data.Dataset):
    """Aligned tensors of one data set (or a view of one).

    Attributes:
        inputs: ``N x C x H x W`` float tensor (or ``N x ...`` for other modalities), or a
            :class:`~excise.data.lazy.LazyInputs` that reads the rows of a user's ``Dataset`` only when a batch
            needs them (views compose row indices and read nothing).
        targets: ``N`` long class indices (``multiclass``) or ``N x K`` float multi-hot (``multilabel``).
        classes: names of the target classes (index ``i`` names class ``i``).
        task: ``"multiclass"`` (softmax, one label) or ``"multilabel"`` (sigmoid, several targets).
        subclass_targets: optional ``N`` long fine labels inside the coarse ``targets``
            (CIFAR-100 fine labels inside CIFAR-20 super-classes).
        subclasses: names of the fine classes; ``subclass_parent[j]`` is the coarse class of fine class ``j``.
        label_mask: optional ``N x K`` bool: which target columns this view is *about*. A retain view of a
            ``target`` request masks out the forgotten target (train on the remaining labels only); the
            forget view selects only the forgotten target. ``None`` means every column counts.
        source_indices: index of each row in the data set this view was taken from.
        extras: per-sample aligned tensors a task may need later (masks, boxes), subset together.
        name: the registry name of the data set, for records.
    """

    inputs: Tensor | LazyInputs
    targets: Tensor
    classes: tuple[str, ...]
    task: Task = "multiclass"
    subclass_targets: Tensor | None = None
    subclasses: tuple[str, ...] | None = None
    subclass_parent: tuple[int, ...] | None = None
    label_mask: Tensor | None = None
    source_indices: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    name: str = "unnamed"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {sorted(TASKS)}")
        n = len(self.inputs)
        self.classes = tuple(str(c) for c in self.classes)
        if len(self.targets) != n:
            raise ValueError(f"targets has {len(self.targets)} rows but inputs has {n}")
        if self.task == "multiclass":
            if self.targets.dim() != 1:
                raise ValueError(f"multiclass targets must be 1-D class indices, got shape {tuple(self.targets.shape)}")
            # Refused, not coerced: 2.7 became class 2, and a label past the classes failed much later as an index
            # error deep in a run.
            if self.targets.is_floating_point() and not bool((self.targets == self.targets.round()).all()):
                raise ValueError("multiclass targets must be integer class indices; got fractional values such as "
                                 f"{float(self.targets[self.targets != self.targets.round()][0])}")
            self.targets = self.targets.long()
            if self.classes and len(self.targets):
                low, high = int(self.targets.min()), int(self.targets.max())
                if low < 0 or high >= len(self.classes):
                    raise ValueError(f"targets span {low}..{high} but there are {len(self.classes)} classes "
                                     f"{list(self.classes)[:10]}: a label must index one of them (0.."
                                     f"{len(self.classes) - 1})")
        elif self.task == "multilabel":
            if self.targets.dim() != 2 or self.targets.shape[1] != len(self.classes):
                raise ValueError(
                    f"multilabel targets must be N x {len(self.classes)} (one column per class), "
                    f"got shape {tuple(self.targets.shape)}"
                )
            self.targets = self.targets.float()
        if self.subclass_targets is not None:
            if len(self.subclass_targets) != n:
                raise ValueError("subclass_targets must have one entry per sample")
            if self.subclasses is None or self.subclass_parent is None:
                raise ValueError("subclass_targets needs subclasses (names) and subclass_parent (coarse index)")
            self.subclasses = tuple(str(c) for c in self.subclasses)
            self.subclass_parent = tuple(int(p) for p in self.subclass_parent)
        if self.label_mask is not None and tuple(self.label_mask.shape) != (n, len(self.classes)):
            raise ValueError(f"label_mask must be N x K = {n} x {len(self.classes)}")
        if self.source_indices is None:
            self.source_indices = torch.arange(n)

    # --- torch Dataset protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batch([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        return self.batch(indices)

    def batch(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """A batch as a dict: ``inputs``, ``targets``, ``index`` and ``label_mask`` when set."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = {"inputs": self.inputs[idx], "targets": self.targets[idx], "index": idx}
        if self.label_mask is not None:
            out["label_mask"] = self.label_mask[idx]
        return out

    # --- views -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray, **overrides: Any) -> LabeledData:
        """A view of the given rows; ``source_indices`` keeps pointing at the parent's source."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        extras = {k: _take(v, idx) for k, v in self.extras.items()}
        view = replace(
            self,
            inputs=take_rows(self.inputs, idx),
            targets=self.targets[idx],
            subclass_targets=None if self.subclass_targets is None else self.subclass_targets[idx],
            label_mask=None if self.label_mask is None else self.label_mask[idx],
            source_indices=self.source_indices[idx],
            extras=extras,
        )
        return replace(view, **overrides) if overrides else view

    def with_targets(self, targets: Tensor) -> LabeledData:
        """The same inputs with other labels (random labels, relabelled forget sets)."""
        return replace(self, targets=targets)

    def class_index(self, label: str | int) -> int:
        """Resolve a class given by name or index; unknown labels raise with the known ones listed."""
        return _resolve_label(label, self.classes, "label")

    def fingerprint(self) -> str:
        """sha256 over inputs and targets: identifies the exact data a model saw."""
        h = hashlib.sha256()
        # A lazy view streams its rows through the hash: the same bytes, in the same order, as a tensor's.
        chunks = self.inputs.chunks() if is_lazy(self.inputs) else (self.inputs,)
        for t in (*chunks, self.targets):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        if self.label_mask is not None:
            h.update(self.label_mask.cpu().numpy().tobytes())
        return h.hexdigest()


def _take(value: Any, idx: Tensor) -> Any:
    if isinstance(value, Tensor):
        return value[idx]
    if isinstance(value, list):
        return [value[i] for i in idx.tolist()]
    return value


def _resolve_label(label: str | int, names: Sequence[str], field_name: str, what: str = "class") -> int:
    """The index of ``label`` among ``names``; ``what`` names what the labels are in the error ("class", "target",
    "fine class"). A string is read as a name first, and as an index only when no class has that name (the CLI's
    `class:3` on the digits); an int is an index, refused when a class is named by the same number at another index
    (it would mean one class here and another in the CLI's spelling)."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if 0 <= int(label) < len(names):
            named = list(names).index(str(int(label))) if str(int(label)) in names else int(label)
            if named != int(label):
                # Class names that are numbers in another order (UCI wine's cultivars "1", "2", "3"): the index 1
                # and the name "1" are two classes, and both requests would read `class:1` in every record.
                raise ValueError(
                    f"{field_name}={label!r} is ambiguous on this data: as an index it is the {what} named "
                    f"{names[int(label)]!r}, but the {what} named {str(int(label))!r} is index {named}; name the "
                    f"{what} as a string instead ({names[int(label)]!r} or {str(int(label))!r}): a string is read "
                    "as a name")
            return int(label)
        raise ValueError(
            f"{field_name}={label!r} is out of range: expected a {what} index in [0, {len(names) - 1}] "
            f"or a name in {list(names)}"
        )
    text = str(label)
    if text in names:
        return list(names).index(text)
    if text.isdigit() and text not in names and 0 <= int(text) < len(names):
        return int(text)
    raise ValueError(f"{field_name}={label!r} is not a known {what}; known: {list(names)}")


@dataclass
class DatasetBundle:
    """A named data set with its train and test parts and how it was built."""

    name: str
    train: LabeledData
    test: LabeledData
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.train.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    def fingerprint(self) -> str:
        return hashlib.sha256((self.train.fingerprint() + self.test.fingerprint()).encode()).hexdigest()
