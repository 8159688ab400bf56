"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, BSD-3): no download, ever.

Two registered views:
- ``digits``: the 10 digit classes.
- ``digits-super``: 5 super-classes, each pairing two digits (super-class ``k`` = digits ``k`` and ``k+5``),
  with the digit kept as the fine (sub-class) label, so sub-class forgetting ("forget digit 7 inside
  super-class 2") has a bundled test bed, as CIFAR-20/100 has for users with the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from excise.data.base import DatasetBundle, LabeledData
from excise.data.registry import DatasetInfo, register_dataset
from excise.data.splits import stratified_split

DIGIT_NAMES = tuple(str(d) for d in range(10))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    # The pixel values are counts 0..16; scale to [0, 1] so every image data set shares one range.
    images = (raw.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, raw.target.astype(np.int64)


@register_dataset("digits", DatasetInfo(
    "multiclass", "1,797 images, 8x8 grey (1,347 train / 450 test)", "10 digits", "bundled (scikit-learn)",
    "UCI hand-written digits, CC BY 4.0"))
def digits(*, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.25) -> DatasetBundle:
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)

    def part(idx: np.ndarray) -> LabeledData:
        return LabeledData(
            inputs=torch.from_numpy(images[idx]),
            targets=torch.from_numpy(labels[idx]),
            classes=DIGIT_NAMES,
            name="digits",
        )

    return DatasetBundle("digits", part(train_idx), part(test_idx), {"source": "sklearn.datasets.load_digits"})


SUPER_NAMES = tuple(f"{k}|{k + 5}" for k in range(5))


@register_dataset("digits-super", DatasetInfo(
    "multiclass", "1,797 images, 8x8 grey (1,347 train / 450 test)", "5 super-classes", "bundled (scikit-learn)",
    "UCI hand-written digits, CC BY 4.0", superclasses="10 digits in pairs {k, k+5}"))
def digits_super(
    *, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.25
) -> DatasetBundle:
    images, fine = _digits_arrays()
    coarse = fine % 5
    train_idx, test_idx = stratified_split(fine, test_fraction, seed)

    def part(idx: np.ndarray) -> LabeledData:
        return LabeledData(
            inputs=torch.from_numpy(images[idx]),
            targets=torch.from_numpy(coarse[idx]),
            classes=SUPER_NAMES,
            subclass_targets=torch.from_numpy(fine[idx]),
            subclasses=DIGIT_NAMES,
            subclass_parent=tuple(d % 5 for d in range(10)),
            name="digits-super",
        )

    return DatasetBundle(
        "digits-super", part(train_idx), part(test_idx), {"source": "sklearn.datasets.load_digits"}
    )
