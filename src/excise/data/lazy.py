"""Inputs that stay in the user's ``Dataset`` until a batch needs them (issue 19: data larger than memory).

:class:`LazyInputs` stands where :class:`~excise.data.base.LabeledData` keeps its ``N x ...`` input tensor. It
holds a map-style ``Dataset`` of ``(input, label)`` pairs and the dataset rows it shows, and reads rows only when
they are indexed: a batch of the one training loop or of an evaluation reads that batch; a view
(:meth:`LabeledData.subset`, a forget or retain set) composes row indices and reads nothing. Labels are small and
are kept in memory as usual.

What reads every row is said where it happens: the data fingerprint a checkpoint records streams the rows
through sha256 in chunks (:meth:`LazyInputs.chunks`), and :func:`as_tensor` reads a view whole — used only on
forget sets (a deletion request's rows: small by nature) by methods that need their statistics (JiT's noise
scale, Boundary Shrink's value range, MU-Mis's sensitivity rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

READ_CHUNK = 256
"""Rows a single read asks of the user's ``Dataset`` at most."""


class LazyInputs:
    """The inputs of rows ``rows`` of ``dataset`` (``dataset[i] = (input, label)``), read when indexed.

    Indexing with an int, a slice, a sequence or a tensor of rows returns a tensor of those rows, read in chunks
    of at most :data:`READ_CHUNK` rows; :meth:`view` returns another ``LazyInputs`` without reading."""

    def __init__(self, dataset: Dataset, rows: Tensor | None = None, *, sample_shape: tuple[int, ...] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.dataset = dataset
        self.rows = torch.arange(len(dataset)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.dtype = dtype
        if sample_shape is None:
            sample_shape = tuple(self._fetch(self.rows[:1])[0].shape) if len(self.rows) else ()
        self.sample_shape = tuple(sample_shape)

    # --- tensor-like surface used by LabeledData and the methods -----------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.sample_shape))

    def dim(self) -> int:
        return 1 + len(self.sample_shape)

    def __getitem__(self, index: Any) -> Tensor:
        rest: tuple[Any, ...] = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        scalar = isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.dim() == 0)
        if scalar:
            values = self._fetch(self.rows[int(index)].reshape(1))[0]
            return values[rest] if rest else values
        picked = self.rows[index]  # any row index a tensor takes: slices with steps, masks, N-D index tensors
        values = self._fetch(picked.reshape(-1)).reshape(*picked.shape, *self.sample_shape)
        return values[(slice(None),) * picked.dim() + rest] if rest else values

    def view(self, index: Sequence[int] | Tensor | np.ndarray) -> LazyInputs:
        """The rows ``index`` of this view, still unread."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)
        return LazyInputs(self.dataset, self.rows[idx], sample_shape=self.sample_shape, dtype=self.dtype)

    def chunks(self, size: int = READ_CHUNK) -> Iterator[Tensor]:
        """Every row, in order, ``size`` at a time (for a streaming pass: a fingerprint, a full evaluation)."""
        for start in range(0, len(self.rows), size):
            yield self._fetch(self.rows[start:start + size])

    def __repr__(self) -> str:
        return f"LazyInputs({type(self.dataset).__name__}, rows={len(self.rows)}, sample_shape={self.sample_shape})"

    # --- reading -------------------------------------------------------------------------------------------
    def _fetch(self, rows: Tensor) -> Tensor:
        parts = [self._read(rows[start:start + READ_CHUNK].tolist()) for start in range(0, len(rows), READ_CHUNK)]
        if not parts:
            return torch.empty((0, *getattr(self, "sample_shape", ())), dtype=self.dtype)
        return torch.cat(parts)

    def _read(self, rows: list[int]) -> Tensor:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(rows) if many is not None else [self.dataset[i] for i in rows]
        try:
            return torch.stack([torch.as_tensor(_input_of(item)) for item in items]).to(self.dtype)
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"{type(self.dataset).__name__} rows {rows[:3]}... could not be read as (tensor "
                             f"input, label) pairs of one shape: {err}") from err


def _input_of(item: Any) -> Any:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise TypeError(f"an item is a {type(item).__name__}; expected an (input, label) pair")
    return item[0]


def is_lazy(inputs: Any) -> bool:
    return isinstance(inputs, LazyInputs)


def take_rows(inputs: Tensor | LazyInputs, index: Tensor) -> Tensor | LazyInputs:
    """Rows ``index`` of ``inputs``: a tensor's rows, or a lazy view (nothing read)."""
    return inputs.view(index) if isinstance(inputs, LazyInputs) else inputs[index]


def as_tensor(inputs: Tensor | LazyInputs) -> Tensor:
    """``inputs`` as one tensor (a lazy view is read whole: use it on forget sets, not on a whole data set)."""
    return inputs[:] if isinstance(inputs, LazyInputs) else inputs


def concat_inputs(parts: Sequence[Tensor | LazyInputs]) -> Tensor | LazyInputs:
    """Rows of several views one after the other: ``torch.cat`` for tensors, a lazy view over the datasets
    otherwise (an in-memory part joins as a dataset of its own rows)."""
    if not any(isinstance(p, LazyInputs) for p in parts):
        return torch.cat(list(parts))
    datasets, rows, offset = [], [], 0
    for part in parts:
        lazy = part if isinstance(part, LazyInputs) else LazyInputs(_TensorRows(part))
        datasets.append(lazy.dataset)
        rows.append(lazy.rows + offset)
        offset += len(lazy.dataset)
    first = next(p for p in parts if isinstance(p, LazyInputs))
    return LazyInputs(ConcatDataset(datasets), torch.cat(rows), sample_shape=first.sample_shape, dtype=first.dtype)


class _TensorRows(Dataset):
    """In-memory inputs as a dataset of ``(input, -1)`` pairs, to join a lazy concatenation."""

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inputs[index], -1


def read_labels(dataset: Dataset, batch_size: int = READ_CHUNK) -> Tensor:
    """The ``N`` labels of a map-style ``Dataset``: its ``targets`` attribute when it has one (torchvision's
    convention) and it is what the items carry — no ``target_transform``, and eight spread rows agree — else one
    streaming pass that keeps the labels and drops the inputs."""
    stored = getattr(dataset, "targets", None)
    if (stored is not None and getattr(dataset, "target_transform", None) is None
            and len(stored) == len(dataset)):
        labels = torch.as_tensor(np.asarray(stored))
        probe = np.unique(np.linspace(0, len(dataset) - 1, num=min(8, len(dataset))).astype(int)).tolist()
        if labels.dim() == 1 and all(int(torch.as_tensor(dataset[i][1])) == int(labels[i]) for i in probe):
            return labels
    labels = []
    many = getattr(dataset, "__getitems__", None)
    for start in range(0, len(dataset), batch_size):
        rows = list(range(start, min(start + batch_size, len(dataset))))
        items = many(rows) if many is not None else [dataset[i] for i in rows]
        labels.extend(int(torch.as_tensor(item[1])) for item in items)
    return torch.tensor(labels)
