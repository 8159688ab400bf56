"""A user's ``Dataset`` larger than memory is served in batches (issue 19): it is never read whole, and training,
unlearning and evaluation on it give what they give on the same data held in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from excise.data import LabeledData, load_dataset
from excise.data.external import call_factory
from excise.data.lazy import READ_CHUNK, LazyInputs, concat_inputs
from excise.experiment import evaluate_original, run_method, train_original
from excise.metrics import EvalViews
from excise.requests import ForgetRequest
from excise.training import TrainConfig

RECIPE = TrainConfig(epochs=4, batch_size=64, lr=0.05)


class StrictDataset(Dataset):
    """Digits images behind a map-style ``Dataset`` that refuses to be read whole: a single request for more than
    :data:`READ_CHUNK` rows fails, and it counts every row it hands out."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._images, self._labels = images, labels
        self.rows_read = 0
        self.largest_request = 0

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.rows_read += 1
        self.largest_request = max(self.largest_request, 1)
        return self._images[index], int(self._labels[index])

    def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, int]]:
        if len(rows) > READ_CHUNK or len(rows) >= len(self):
            raise AssertionError(f"asked for {len(rows)} rows at once: the data set was to be streamed")
        self.largest_request = max(self.largest_request, len(rows))
        self.rows_read += len(rows)
        return [(self._images[i], int(self._labels[i])) for i in rows]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def streamed(digits):
    train = StrictDataset(digits.train.inputs.clone(), digits.train.targets.clone())
    test = StrictDataset(digits.test.inputs.clone(), digits.test.targets.clone())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXCISE_MEMORY_LIMIT_MB", "0")  # everything counts as too large: stream it
        bundle = call_factory(lambda: (train, DataLoader(test, batch_size=32)), "tests:strict", root=None, seed=0)
    return bundle, train


def test_a_large_dataset_stays_lazy_and_views_read_nothing(streamed, digits) -> None:
    bundle, source = streamed
    assert isinstance(bundle.train.inputs, LazyInputs) and isinstance(bundle.test.inputs, LazyInputs)
    assert torch.equal(bundle.train.targets, digits.train.targets)
    assert bundle.input_shape == (1, 8, 8)
    before = source.rows_read
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="class", labels=("3",)))
    assert isinstance(views.retain_set.inputs, LazyInputs) and source.rows_read == before
    # Same bytes as in memory: a checkpoint's data fingerprint does not depend on how the data is held.
    assert bundle.train.fingerprint() == digits.train.fingerprint()
    assert source.largest_request <= READ_CHUNK
    batch = views.forget_set.batch([0, 2])
    assert torch.equal(batch["inputs"], digits.train.inputs[views.forget_set.source_indices[[0, 2]]])


def test_concatenated_lazy_and_memory_rows_keep_their_order(streamed, digits) -> None:
    bundle, _ = streamed
    joined = concat_inputs([bundle.train.inputs.view([5, 1]), digits.test.inputs[:2]])
    assert isinstance(joined, LazyInputs) and len(joined) == 4
    expected = torch.cat([digits.train.inputs[[5, 1]], digits.test.inputs[:2]])
    assert torch.equal(joined[:], expected) and torch.equal(joined[torch.tensor([3, 0])], expected[[3, 0]])


def test_train_unlearn_evaluate_on_a_streamed_dataset_match_memory(streamed, digits, monkeypatch) -> None:
    bundle, source = streamed
    # No code path may index a whole view at once: the largest single read is a batch (or the small forget set).
    largest = [0]
    fetch = LazyInputs._fetch

    def recording_fetch(self: LazyInputs, rows: torch.Tensor) -> torch.Tensor:
        largest[0] = max(largest[0], len(rows))
        return fetch(self, rows)

    monkeypatch.setattr(LazyInputs, "_fetch", recording_fetch)
    # The same Dataset read into memory (under the limit) is the comparison: same rows, same tensor layout.
    memory = call_factory(lambda: (StrictDataset(digits.train.inputs.clone(), digits.train.targets.clone()),
                                   StrictDataset(digits.test.inputs.clone(), digits.test.targets.clone())),
                          "tests:memory", root=None, seed=0)
    assert isinstance(memory.train.inputs, torch.Tensor)
    request = ForgetRequest(kind="class", labels=("3",))
    lazy_model, _ = train_original(bundle, "small_cnn", RECIPE, seed=0, width=8)
    memory_model, _ = train_original(memory, "small_cnn", RECIPE, seed=0, width=8)
    for (name, a), b in zip(lazy_model.state_dict().items(), memory_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same batches in the same order, bit for bit
    lazy_views = EvalViews.from_bundle(bundle, request)
    memory_views = EvalViews.from_bundle(memory, request)
    original = evaluate_original(lazy_model, lazy_views, seed=0)
    assert original.metrics["FA"] > 90
    # Methods of every family: retain fine-tuning, relabelling (concatenates forget and retain), forget-only
    # ascent, forget-only influence, perturbation (reads the forget set's statistics), distillation.
    for method in ("finetune", "random_labels", "gradient_ascent", "imu", "jit", "boundary_shrink", "scrub"):
        _, lazy = run_method(method, lazy_model, lazy_views, RECIPE, seed=0)
        _, memory = run_method(method, memory_model, memory_views, RECIPE, seed=0)
        for key in ("FA", "RA", "TA", "MIA"):
            assert lazy.metrics[key] == memory.metrics[key], (method, key)
    assert isinstance(bundle.train.inputs, LazyInputs)
    assert source.largest_request <= READ_CHUNK
    assert 0 < largest[0] <= 512 < len(lazy_views.retain_set), largest[0]


def test_a_small_dataset_is_read_into_memory(digits) -> None:
    data = StrictDataset(digits.test.inputs.clone(), digits.test.targets.clone())
    bundle = call_factory(lambda: (data, data), "tests:small", root=None, seed=0)
    assert isinstance(bundle.train.inputs, torch.Tensor)
    assert torch.equal(bundle.train.inputs, digits.test.inputs)


def test_train_and_test_parts_of_different_sample_shapes_are_refused_by_name(digits) -> None:
    train = StrictDataset(digits.train.inputs.clone(), digits.train.targets.clone())
    test = StrictDataset(digits.test.inputs[..., :7].clone(), digits.test.targets.clone())
    with pytest.raises(ValueError, match=r"dataset='tests:cut': the train samples have shape \(1, 8, 8\) but the "
                                         r"test samples \(1, 8, 7\)"):
        call_factory(lambda: (train, test), "tests:cut", root=None, seed=0)
    labeled = digits.test.subset(range(20))
    cut = LabeledData(labeled.inputs[..., :7].clone(), labeled.targets, labeled.classes)
    with pytest.raises(ValueError, match="the train samples have shape"):
        call_factory(lambda: (labeled, cut), "tests:cut", root=None, seed=0)


def test_multi_hot_labels_from_a_dataset_are_refused_with_the_way_to_give_them(digits) -> None:
    hot = torch.nn.functional.one_hot(digits.test.targets[:40], 10).float()
    data = torch.utils.data.TensorDataset(digits.test.inputs[:40].clone(), hot)  # (image, multi-hot row) pairs
    with pytest.raises(ValueError, match=r"labels must be integer class indices.*LabeledData\(inputs, targets, "
                                         r"classes, task='multilabel'\)"):
        call_factory(lambda: (data, data), "tests:hot", root=None, seed=0)


def test_labels_that_skip_a_class_are_refused_naming_it(digits) -> None:
    """Labels 1..10 read as eleven classes, a phantom "0" with no rows, until 2026-12-07."""
    data = torch.utils.data.TensorDataset(digits.test.inputs[:60].clone(), digits.test.targets[:60] + 1)
    with pytest.raises(ValueError, match=r"span 1\.\.10, so classes \['0'\] have no training rows; labels must be "
                                         r"0\.\.K-1"):
        call_factory(lambda: (data, data), "tests:one_based", root=None, seed=0)


def test_bad_memory_limit_is_refused(monkeypatch, digits) -> None:
    monkeypatch.setenv("EXCISE_MEMORY_LIMIT_MB", "lots")
    data = StrictDataset(digits.test.inputs.clone(), digits.test.targets.clone())
    with pytest.raises(ValueError, match="EXCISE_MEMORY_LIMIT_MB='lots' must be a number"):
        call_factory(lambda: (data, data), "tests:small", root=None, seed=0)


def test_a_dataset_of_unequal_shapes_is_refused_by_name(monkeypatch) -> None:
    class Ragged(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int):
            return torch.zeros(1, 4 + index % 2, 4), index % 2

    monkeypatch.setenv("EXCISE_MEMORY_LIMIT_MB", "0")
    bundle = call_factory(lambda: (Ragged(), Ragged()), "tests:ragged", root=None, seed=0)
    with pytest.raises(ValueError, match="could not be read as"):
        bundle.train.batch(np.arange(4))


def test_text_labels_are_refused_with_how_to_name_classes() -> None:
    class Named(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int):
            return torch.zeros(1, 4, 4), ("three", "five")[index % 2]

    with pytest.raises(ValueError, match=r"labels are text \('three', \.\.\.\): return integer class indices .* "
                                         "`classes` attribute"):
        call_factory(lambda: (Named(), Named()), "tests:named", root=None, seed=0)


class Transformed(Dataset):
    """torchvision's convention: ``targets`` holds the raw labels, ``target_transform`` maps what items carry."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.data, self.targets = images, labels.tolist()
        self.target_transform = lambda y: y // 2

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.data[index], self.target_transform(self.targets[index])


def test_streamed_labels_are_what_the_items_carry(monkeypatch, digits) -> None:
    monkeypatch.setenv("EXCISE_MEMORY_LIMIT_MB", "0")
    data = Transformed(digits.test.inputs, digits.test.targets)
    bundle = call_factory(lambda: (data, data), "tests:transformed", root=None, seed=0)
    assert torch.equal(bundle.train.targets, digits.test.targets // 2) and len(bundle.classes) == 5


def test_a_dataloader_gives_the_rows_it_yields(monkeypatch, digits) -> None:
    from torch.utils.data import SubsetRandomSampler, TensorDataset, WeightedRandomSampler

    whole = TensorDataset(digits.train.inputs, digits.train.targets)
    train = DataLoader(whole, batch_size=32, sampler=SubsetRandomSampler(range(0, 1000)))
    test = DataLoader(whole, batch_size=32, sampler=SubsetRandomSampler(range(1000, len(whole))))
    bundle = call_factory(lambda: (train, test), "tests:samplers", root=None, seed=0)
    assert len(bundle.train) == 1000 and len(bundle.test) == len(whole) - 1000  # no test row in training
    assert torch.equal(bundle.test.inputs, digits.train.inputs[1000:])
    weighted = DataLoader(whole, sampler=WeightedRandomSampler([1.0] * len(whole), 100))
    with pytest.raises(ValueError, match="WeightedRandomSampler"):
        call_factory(lambda: (weighted, test), "tests:weighted", root=None, seed=0)


def test_lazy_inputs_index_like_the_tensor_they_stand_for() -> None:
    from torch.utils.data import TensorDataset

    images = torch.randn(10, 3, 4, 4)
    lazy = LazyInputs(TensorDataset(images, torch.zeros(10)))
    grid = torch.tensor([[1, 2], [3, 4]])
    mask = images[:, 0, 0, 0] > 0
    for index in [(slice(None), 0), slice(1, 8, 3), grid, (grid, 1), -1, (-2, 0, 1), mask,
                  (slice(None), slice(None), 2, 3), 3]:
        assert torch.equal(lazy[index], images[index]), index


def test_uint8_inputs_are_read_as_given_with_a_warning_about_scaling(digits) -> None:
    pixels = (digits.test.inputs[:40] * 255 / digits.test.inputs[:40].max()).to(torch.uint8)
    data = torch.utils.data.TensorDataset(pixels, digits.test.targets[:40])
    with pytest.warns(UserWarning, match=r"inputs are uint8 \(0-255\); excise casts them to float without scaling"):
        bundle = call_factory(lambda: (data, data), "tests:uint8", root=None, seed=0)
    assert torch.equal(bundle.train.inputs, pixels.float())  # as the Dataset yields them: the model saw those
