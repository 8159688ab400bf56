"""The training loop's augmentation (random crop with zero padding, horizontal flip): what the papers' recipes
use, reproducible from the seed, refused where it would misalign labels."""

from __future__ import annotations

import pytest
import torch

from excise.data import load_dataset
from excise.experiment import build_model
from excise.training import Augmenter, TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_crop_is_a_shifted_window_of_the_zero_padded_image(digits) -> None:
    augmenter = Augmenter(TrainConfig(augment="crop", crop_padding=2), digits.train, seed=0)
    images = digits.train.inputs[:64]
    out = augmenter(images)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        windows = [padded[i, :, t:t + 8, s:s + 8] for t in range(5) for s in range(5)]
        assert any(torch.equal(out[i], w) for w in windows), i
    moved = sum(not torch.equal(out[i], images[i]) for i in range(len(images)))
    assert moved > 40  # 24 of 25 offsets move the image: almost every image is shifted
    # Pixels are only moved or zero: nothing is invented.
    assert set(out.unique().tolist()) <= set(images.unique().tolist()) | {0.0}


def test_flip_mirrors_about_half_the_images(digits) -> None:
    augmenter = Augmenter(TrainConfig(augment="crop-flip", crop_padding=1), digits.train, seed=3)
    images = digits.train.inputs[:400]
    out = augmenter(images)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    flipped = 0
    for i in range(len(images)):
        windows = [padded[i, :, t:t + 8, s:s + 8] for t in range(3) for s in range(3)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 150 < flipped < 250


def test_augmented_training_is_reproducible_and_differs_from_plain(digits) -> None:
    def trained(augment: str) -> dict[str, torch.Tensor]:
        model = build_model(digits, "small_cnn", seed=0, width=4)
        train(model, digits.train, TrainConfig(epochs=1, augment=augment, crop_padding=1), seed=0)
        return model.state_dict()

    first, second, plain = trained("crop"), trained("crop"), trained("none")
    assert all(torch.equal(a, b) for a, b in zip(first.values(), second.values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.values(), plain.values(), strict=True))


def test_bad_augment_options_and_dense_tasks_are_refused() -> None:
    with pytest.raises(ValueError, match="augment='rotate' is not one of"):
        TrainConfig(augment="rotate")
    with pytest.raises(ValueError, match="crop_padding=0 must be a positive integer"):
        TrainConfig(augment="crop", crop_padding=0)
    canvases = load_dataset("multidigits-seg", seed=0, num_train=20, num_test=10, canvas_size=24, max_digits=3)
    with pytest.raises(ValueError, match="augment='crop' applies to image classification"):
        Augmenter(TrainConfig(augment="crop"), canvases.train, seed=0)


def test_cli_train_records_the_augmentation_and_the_reference_repeats_it(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from excise.cli import app

    runner = CliRunner()
    base = ["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--augment", "crop"]
    original = tmp_path / "original.safetensors"
    assert runner.invoke(app, [*base, "--out", str(original)]).exit_code == 0
    sidecar = json.loads(original.with_suffix(".json").read_text())
    assert sidecar["recipe"]["augment"] == "crop" and sidecar["recipe"]["crop_padding"] == 4
    retrained = tmp_path / "retrained.safetensors"
    assert runner.invoke(app, [*base, "--request", "class:3", "--out", str(retrained)]).exit_code == 0
    # The reference was trained the same way: unlearn accepts it (a recipe mismatch would be refused).
    result = runner.invoke(app, ["unlearn", str(original), "--method", "imu", "--request", "class:3",
                                 "--reference", str(retrained), "--replicates", "0"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, [*base[:-1], "spin", "--out", str(tmp_path / "bad.safetensors")])
    assert bad.exit_code != 0 and "augment='spin' is not one of" in " ".join(bad.output.split())
    plain = tmp_path / "plain.safetensors"
    assert runner.invoke(app, ["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--request",
                               "class:3", "--out", str(plain)]).exit_code == 0
    mismatch = runner.invoke(app, ["unlearn", str(original), "--method", "imu", "--request", "class:3",
                                   "--reference", str(plain), "--replicates", "0"])
    assert mismatch.exit_code != 0 and "augment" in mismatch.output


def test_a_reference_from_before_augmentation_is_compared_as_unaugmented() -> None:
    from types import SimpleNamespace

    from excise.provenance.history import reference_differences

    recipe = TrainConfig(epochs=3).to_dict()
    old = {k: v for k, v in recipe.items() if k not in ("augment", "crop_padding")}  # an older sidecar
    def checkpoint(recipe: dict) -> SimpleNamespace:
        return SimpleNamespace(meta={"model": {"name": "small_cnn", "kwargs": {}}, "recipe": recipe, "seed": 0})

    augmented = {**recipe, "augment": "crop-flip"}
    assert reference_differences(checkpoint(old), checkpoint(augmented)) == [
        "recipe.augment: 'none' (reference) vs 'crop-flip' (original)"]
    assert reference_differences(checkpoint(old), checkpoint(recipe)) == []
    # Without a crop its padding never mattered.
    assert reference_differences(checkpoint({**recipe, "crop_padding": 2}), checkpoint(recipe)) == []
