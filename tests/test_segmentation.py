"""Segmentation: masks from logits, the pixel loss and its label mask, per-class IoU by hand, the target split
(pixels relabelled background), and target-level unlearning on small seeded canvases."""

from __future__ import annotations

import math

import pytest
import torch

from excise.data import load_dataset
from excise.experiment import run_method, train_original
from excise.methods import get_method
from excise.metrics import EvalViews, evaluate
from excise.metrics.dense import confusion_matrix, per_class_iou
from excise.metrics.probe import dense_probe_ap
from excise.models import create_model
from excise.requests import ForgetRequest, split
from excise.tasks.segmentation import masks_from_logits, segmentation_loss
from excise.training import TrainConfig


def test_confusion_and_iou_by_hand() -> None:
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 0]])
    cm = confusion_matrix(pred, truth, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = per_class_iou(cm)
    # background: TP 3, FP 1 (a 2 called 0), FN 1 -> 3/5; class 1: 2/3; class 2: 1/2; class 3 absent -> NaN.
    assert iou[:3].tolist() == pytest.approx([60.0, 100 * 2 / 3, 50.0])
    assert math.isnan(iou[3])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, truth, 2)


def test_masks_from_logits_threshold_and_argmax() -> None:
    logits = torch.tensor([[-1.0, -2.0], [3.0, 1.0], [0.5, 2.0]]).T.reshape(1, 2, 1, 3)
    assert masks_from_logits(logits).tolist() == [[[0, 1, 2]]]


def test_loss_label_mask_counts_only_the_selected_class_where_present() -> None:
    targets = torch.tensor([[[0, 1], [2, 2]]])
    perfect = torch.full((1, 3, 2, 2), -20.0)
    for c in range(3):
        perfect[0, c][targets[0] == 1 + c] = 20.0
    assert segmentation_loss(perfect, targets, None).item() < 1e-6
    wrong = perfect.clone()
    wrong[0, 1] = -20.0  # class 1 (mask value 2) is never predicted
    assert segmentation_loss(wrong, targets, None).item() > 1.0
    assert segmentation_loss(wrong, targets, torch.tensor([[True, False, False]])).item() < 1e-6
    # Selected class 1: the BCE of its map over its own two pixels, both at logit -20.
    assert segmentation_loss(wrong, targets, torch.tensor([[False, True, False]])).item() == pytest.approx(20.0)
    with pytest.raises(ValueError, match="targets N x H x W"):
        segmentation_loss(perfect, targets[0], None)


@pytest.fixture(scope="module")
def small_seg():
    return load_dataset("multidigits-seg", seed=0, num_train=60, num_test=30, canvas_size=24, max_digits=3)


def test_view_matches_multidigits(small_seg) -> None:
    base = load_dataset("multidigits", seed=0, num_train=60, num_test=30, canvas_size=24, max_digits=3)
    assert small_seg.task == "segmentation" and small_seg.classes == base.classes
    assert torch.equal(small_seg.train.inputs, base.train.inputs)
    assert torch.equal(small_seg.train.targets, base.train.extras["masks"])


def test_target_split_relabels_the_pixels_background(small_seg) -> None:
    train = small_seg.train
    forget, retain = split(train, ForgetRequest(kind="target", labels=("3",)))
    carries = (train.targets == 4).flatten(1).any(dim=1)
    assert len(forget) == int(carries.sum()) and len(retain) == len(train)
    assert (forget.targets == 4).flatten(1).any(dim=1).all()
    assert not (retain.targets == 4).any()
    was_three = train.targets == 4
    assert (retain.targets[was_three] == 0).all()
    assert torch.equal(retain.targets[~was_three], train.targets[~was_three])
    assert forget.label_mask[:, 3].all() and forget.label_mask.sum() == len(forget)
    assert (train.targets == 4).any()  # the caller's data is untouched


def test_unet_shapes_and_refusals() -> None:
    model = create_model("unet", in_channels=1, num_classes=5, width=4, depth=2)
    assert model(torch.zeros(2, 1, 24, 24)).shape == (2, 5, 24, 24)
    with pytest.raises(ValueError, match="depth=0"):
        create_model("unet", depth=0)
    with pytest.raises(ValueError, match="width=-1"):
        create_model("unet", width=-1)


# --- target-level unlearning on small seeded canvases ---------------------------------------------------
# The benchmark's setting (benchmarks/dense.py): 24 px canvases of 2-3 digits of 5 classes, width-16 U-Net.
DATA = {"num_train": 600, "num_test": 300, "canvas_size": 24, "max_digits": 3}
RECIPE = TrainConfig(epochs=15, batch_size=16, lr=0.003, optimizer="adam", weight_decay=0.0)
FORGET = "2"


# The trained U-Net depends on the thread count (float summation order) like on a seed, and the graph
# selects 1-2 channels per layer at this width, so the claims below are pinned to one thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    bundle = load_dataset("multidigits-seg", seed=0, **DATA)
    model, _ = train_original(bundle, "unet", RECIPE, seed=0, width=16)
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(FORGET,)))
    retrained, reference = run_method("retrain", model, views, RECIPE, seed=0)
    return {"bundle": bundle, "model": model, "views": views, "original": evaluate(model, views),
            "reference": reference, "retrained": retrained}


def test_original_and_retrained_models(trained) -> None:
    original, reference = trained["original"], trained["reference"].metrics
    assert original["forget_IoU"] > 90 and original["retain_mIoU"] > 90
    # The retrained model calls the class's ink background and still segments the others.
    assert reference["forget_IoU"] < 5 and reference["retain_mIoU"] > 90
    assert reference["IoU:background"] > 95


@pytest.fixture(scope="module")
def seeded_runs(trained):
    """The default balanced graph on the U-Nets of training seeds 0, 1, 2: ``(original, unlearned metrics)``."""
    bundle, views = trained["bundle"], trained["views"]
    runs = []
    for seed in range(3):
        model = trained["model"] if seed == 0 else train_original(bundle, "unet", RECIPE, seed=seed, width=16)[0]
        before = [p.detach().clone() for p in model.parameters()]
        unlearned, record = run_method("dense_essential_graph", model, views, RECIPE, seed=0)
        # Pruning zeroed channels of the copy, never of the caller's model.
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        runs.append((model, evaluate(model, views), record))
    return runs


def test_essential_graph_hits_the_forgotten_class_hardest(seeded_runs) -> None:
    """What held in every run measured (digits 2 and 4, data and training seeds 0-4; digit 2 on this data with
    training seeds 0-4; one thread; and the U-Nets of an earlier machine): when the balanced graph prunes
    anything, the forgotten class loses more IoU than the remaining classes' mean. How much it loses varies
    from 4 to 98 points (see the xfail below)."""
    forgotten = f"IoU:{FORGET}"
    pruned = [(original, record) for _, original, record in seeded_runs if record.stats["pruned_channels"] > 0]
    assert pruned, [record.stats for *_, record in seeded_runs]  # 9 of 10 measured U-Nets had a channel to prune
    for original, record in pruned:
        forgotten_drop = original[forgotten] - record.metrics[forgotten]
        remaining_drop = original["retain_mIoU"] - record.metrics["retain_mIoU"]
        assert forgotten_drop > remaining_drop, (original, record.metrics)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known limitation, measured: at width 16 the default graph (10% of 16 channels = 1 per target per layer, two "
    "layers) prunes 0-2 channels, and whether the forgotten class's one channel is shared with a remaining class "
    "decides the outcome. On this data, U-Nets of training seeds 0-4 (digit 2, one thread) gave forgotten IoU "
    "97.0 (nothing pruned) / 5.8 / 8.3 / 0.0 / 92.8 (retrain 0.0) with remaining mIoU +0.0 / -1.6 / -6.3 / -2.4 / "
    "-2.2 (benchmarks/dense.py --seeds 0,1,2,3,4): the issue's bound (within 10 of retrain, mIoU within 3) held "
    "on 2 of 5 (1 of 5 with the data seed varied too), and on at most 3 of 5 for every proportion (0.1-0.3) x "
    "layer count (2-4) x image count (8, 32) in a sweep for digits 2 and 4 (closing note of 2026-12-04). An "
    "earlier machine gave IoU 0.6 / 1.5 / 5.5 with mIoU -1.7 / -1.5 / -8.1 on this test's first three U-Nets"))
def test_essential_graph_forgets_the_class_and_keeps_the_others_on_every_seed(trained, seeded_runs) -> None:
    reference = trained["reference"].metrics
    for _, original, record in seeded_runs:
        metrics = record.metrics
        assert metrics["forget_IoU"] <= reference["forget_IoU"] + 10, metrics
        assert metrics["retain_mIoU"] >= original["retain_mIoU"] - 3, metrics


def test_balanced_graph_beats_the_unbalanced_one_on_the_remaining_classes(trained, seeded_runs) -> None:
    """The balanced graph is the unbalanced one minus the channels a remaining class needs, so it never prunes
    more; where it prunes less, the remaining classes keep more. Compared on every U-Net whose two graphs
    differ (on this data seed 1's two graphs were identical, 2 channels each)."""
    differing = 0
    for model, _, balanced in seeded_runs:
        _, unbalanced = run_method("dense_essential_graph_unbalanced", model, trained["views"], RECIPE, seed=0)
        assert unbalanced.stats["pruned_channels"] >= balanced.stats["pruned_channels"]
        if unbalanced.stats["pruned_channels"] > balanced.stats["pruned_channels"]:
            differing += 1
            assert balanced.metrics["retain_mIoU"] > unbalanced.metrics["retain_mIoU"]
    assert differing, "no U-Net where the balanced graph spared a channel: the comparison would be empty"


def test_baselines_lower_the_forgotten_class(trained) -> None:
    model, views, original = trained["model"], trained["views"], trained["original"]
    _, finetuned = run_method("dense_finetune", model, views, RECIPE, seed=0)
    _, ascended = run_method("dense_gradient_ascent", model, views, RECIPE, seed=0)
    assert finetuned.metrics["forget_IoU"] < original["forget_IoU"] - 20
    assert ascended.metrics["forget_IoU"] < original["forget_IoU"] - 20


def test_dense_methods_refuse_what_they_cannot_serve(trained) -> None:
    views = trained["views"]
    with pytest.raises(ValueError, match="head"):
        get_method("dense_essential_graph", layers=["head"]).unlearn(
            trained["model"], views.request, views.forget_set, views.retain_set, recipe=RECIPE)
    digits = load_dataset("multidigits", seed=0, num_train=40, num_test=20)
    request = ForgetRequest(kind="target", labels=("2",))
    forget, retain = split(digits.train, request)
    with pytest.raises(ValueError, match="does not support multilabel"):
        get_method("dense_essential_graph").unlearn(trained["model"], request, forget, retain)
    with pytest.raises(ValueError, match="proportion=0"):
        get_method("dense_essential_graph", proportion=0)


def test_a_sequence_of_class_requests_runs_and_the_graph_skips_the_earlier_class(trained) -> None:
    """Step 2 of a sequence: the earlier class is gone from the retain view (relabelled background), so the
    graph neither scores it (no instance would carry it) nor spares channels for it."""
    from excise.methods.base import UnlearnData
    from excise.methods.dense_baselines import dense_graph
    from excise.methods.essential_graph import EssentialGraphConfig
    from excise.sequential import cumulative_views, run_sequence, step_forget_sets

    bundle = trained["bundle"]
    sequence = [ForgetRequest(kind="target", labels=(FORGET,)), ForgetRequest(kind="target", labels=("4",))]
    views = cumulative_views(bundle, sequence)
    steps = step_forget_sets(bundle.train, sequence)
    second = UnlearnData(forget_set=steps[1], request=sequence[1], recipe=RECIPE, _retain_set=views[1].retain_set)
    graph = dense_graph(trained["model"], second, EssentialGraphConfig())
    earlier, current = bundle.train.class_index(FORGET), bundle.train.class_index("4")
    assert all(earlier not in layer.top and current in layer.top for layer in graph.layers)
    final, records = run_sequence("dense_essential_graph", trained["model"], bundle, sequence, RECIPE,
                                  reference=None)
    from tests.test_sequential import assert_served_or_said

    assert_served_or_said(records, [f"target:{FORGET}", "target:4"])
    # Step 2 is judged exactly as one request forgetting both classes (class 2 is not a remaining class).
    together = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(FORGET, "4")))
    assert records[1].metrics == evaluate(final, together)


def test_masking_the_class_map_forgets_the_class_and_leaves_every_other_map_bit_identical(trained) -> None:
    """dense_target_mask: the forgotten class's map reads 0.001 everywhere, so its IoU is the retrained
    model's 0 by construction; every other output channel equals the original's bit for bit, so the remaining
    mIoU is exactly the original's. No data is read."""
    model, views = trained["model"], trained["views"]
    unlearned, record = run_method("dense_target_mask", model, views, RECIPE, seed=0)
    assert record.metrics["forget_IoU"] == 0.0
    assert record.metrics["retain_mIoU"] == trained["original"]["retain_mIoU"]
    forgotten = views.forget_set.classes.index(FORGET)
    with torch.no_grad():
        before, after = model.eval()(views.test_retain.inputs[:16]), unlearned.eval()(views.test_retain.inputs[:16])
    others = [c for c in range(before.shape[1]) if c != forgotten]
    assert torch.equal(before[:, others], after[:, others])
    assert record.stats["masked_layer"] == "head" and record.stats["masked_classes"] == [FORGET]


def test_masking_leaves_what_the_features_tell_of_the_class_and_so_does_retraining(trained) -> None:
    """What dense_target_mask does not do, measured: the decoder features its masked map read still tell the
    class's ink from the other digits' (a linear probe, exactly as on the original). A retrained U-Net's do too —
    it must, to leave that ink unsegmented (benchmark: AP 99-100 for both, prevalence ~19)."""
    bundle, model, views = trained["bundle"], trained["model"], trained["views"]
    target = bundle.classes.index(FORGET)
    masked, _ = run_method("dense_target_mask", model, views, RECIPE, seed=0)
    before, after, retrained = (dense_probe_ap(m, bundle.train, bundle.test, target)
                                for m in (model, masked, trained["retrained"]))
    assert after.ap == before.ap and after.layer == "head"
    assert before.ap > before.prevalence + 50 and retrained.ap > retrained.prevalence + 50
