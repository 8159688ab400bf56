"""Detection: CenterNet targets/decoding, pure-torch NMS and peaks, COCO AP on hand-computed cases, the
target split (boxes removed), and target-level unlearning on small seeded canvases."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from excise.data import load_dataset
from excise.erasure import erase_in_dense_stage
from excise.experiment import run_method, train_original
from excise.methods import UnlearnData, get_method
from excise.methods.dense_target_erasure import training_cells
from excise.metrics import EvalViews, evaluate
from excise.metrics.dense import detection_ap
from excise.metrics.probe import dense_probe_ap
from excise.models import create_model
from excise.models.dense import (
    OUTPUT_STRIDE,
    batched_nms,
    box_iou,
    decode_centernet,
    encode_centernet_targets,
    heatmap_peaks,
    nms,
)
from excise.models.heads import HeadError
from excise.requests import ForgetRequest, RequestError, split
from excise.tasks.detection import TARGET_EXTRA_CHANNELS, detection_loss, graph_score, instance_cells
from excise.training import TrainConfig

# --- NMS and peaks -------------------------------------------------------------------------------------


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [0, 0, 10, 6.2]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0, 0.62]]))


def test_nms_hand_case() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(box 1, box 3) = 81 / 119 = 0.68: suppressed at 0.5, kept at 0.7. Box 0 duplicates box 3 (IoU 1).
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    # Equal IoU and threshold: torchvision keeps a box whose IoU is not *greater* than the threshold.
    assert nms(boxes[[0, 3]], scores[[0, 3]], 1.0).tolist() == [1, 0]


def _reference_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    def iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_a_brute_force_reference_on_random_boxes() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 25)
        boxes = []
        for _ in range(n):
            x, y = rng.uniform(0, 20), rng.uniform(0, 20)
            boxes.append([x, y, x + rng.uniform(1, 10), y + rng.uniform(1, 10)])
        scores = [rng.random() for _ in range(n)]
        threshold = rng.choice([0.3, 0.5, 0.7])
        got = nms(torch.tensor(boxes), torch.tensor(scores), threshold).tolist()
        assert got == _reference_nms(boxes, scores, threshold)


def test_batched_nms_only_suppresses_within_a_label() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]


def test_nms_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="boxes M x 4"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_heatmap_peaks_keep_local_maxima_only() -> None:
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 1, 1], heat[0, 0, 1, 2], heat[0, 0, 3, 3], heat[0, 0, 4, 4] = 0.9, 0.5, 0.7, 0.6
    peaks = heatmap_peaks(heat)
    assert torch.nonzero(peaks[0, 0]).tolist() == [[1, 1], [3, 3]]
    assert peaks[0, 0, 1, 1] == 0.9 and peaks[0, 0, 3, 3] == 0.7
    with pytest.raises(ValueError, match="kernel"):
        heatmap_peaks(heat, kernel=2)


# --- targets, decoding, loss ------------------------------------------------------------------------


def _ideal_outputs(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What a perfect CenterNet would output for these training maps."""
    heat = targets[:, :num_classes].clamp(1e-6, 1 - 1e-6)
    logits = torch.log(heat / (1 - heat))
    return torch.cat([logits, targets[:, num_classes : num_classes + 4]], dim=1)


def test_encode_then_decode_recovers_the_boxes() -> None:
    boxes = [torch.tensor([[2.0, 3, 9, 11], [13, 1, 18, 8]]), torch.tensor([[5.0, 5, 12, 13]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    targets = encode_centernet_targets(boxes, labels, 3, (24, 24))
    assert targets.shape == (2, 3 + 5, 24 // OUTPUT_STRIDE, 24 // OUTPUT_STRIDE)
    # Peak 1 exactly at each centre cell, size/offset/class written there.
    cx, cy = (2 + 9) / 2 / OUTPUT_STRIDE, (3 + 11) / 2 / OUTPUT_STRIDE
    assert targets[0, 0, int(cy), int(cx)] == 1.0
    assert targets[0, 3:5, int(cy), int(cx)].tolist() == [7.0, 8.0]
    assert targets[0, 7, int(cy), int(cx)] == 1.0  # 1 + class 0
    detections = decode_centernet(_ideal_outputs(targets, 3), 3, image_size=(24, 24))
    for image, (truth, truth_labels) in enumerate(zip(boxes, labels, strict=True)):
        confident = detections[image]["scores"] > 0.99
        found = detections[image]["boxes"][confident]
        assert sorted(detections[image]["labels"][confident].tolist()) == sorted(truth_labels.tolist())
        order = torch.argsort(detections[image]["labels"][confident])
        assert torch.allclose(found[order], truth[torch.argsort(truth_labels)], atol=1e-4)


def test_decode_refuses_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="outputs must be N x 7"):
        decode_centernet(torch.zeros(1, 5, 4, 4), 3)


def test_loss_is_near_zero_for_ideal_outputs_and_respects_the_label_mask() -> None:
    boxes = [torch.tensor([[2.0, 3, 9, 11], [13, 1, 18, 8]])]
    labels = [torch.tensor([0, 2])]
    targets = encode_centernet_targets(boxes, labels, 3, (24, 24))
    ideal = _ideal_outputs(targets, 3)
    # Not exactly 0: the focal loss still penalises the Gaussian's shoulders a little, (1 - h)^4 h^2 log(1 - h).
    assert detection_loss(ideal, targets, None).item() < 1e-2
    wrong = ideal.clone()
    wrong[:, 2] = 0.0  # class 2's heat-map says 0.5 everywhere
    assert detection_loss(wrong, targets, None).item() > 1.0
    only_class0 = torch.tensor([[True, False, False]])
    only_class2 = torch.tensor([[False, False, True]])
    assert detection_loss(wrong, targets, only_class0).item() < 1e-2  # class 2 is outside the mask
    # Class 2's loss where it is present: the focal term at its one centre, p = 0.5 there.
    assert detection_loss(wrong, targets, only_class2).item() == pytest.approx(0.25 * math.log(2), abs=1e-4)
    spread = ideal.clone()
    spread[:, 2] = 5.0  # confident class-2 heat everywhere: only the negatives are wrong
    assert detection_loss(spread, targets, only_class2).item() < 1e-2
    assert detection_loss(spread, targets, None).item() > 1.0
    bad_size = ideal.clone()
    bad_size[:, 3:5] += 2.0  # every size off by 2 px: 0.1 x (2 + 2) per object
    base = detection_loss(ideal, targets, None).item()
    assert detection_loss(bad_size, targets, None).item() == pytest.approx(base + 0.4, abs=1e-4)


# --- COCO AP on hand-computed cases -------------------------------------------------------------------


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.long)}


def test_ap_of_a_ranked_list_with_one_false_positive() -> None:
    truth_boxes = [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 5, 15, 15]])]
    truth_labels = [torch.tensor([0]), torch.tensor([0])]
    preds = [_pred([[0, 0, 10, 10]], [0.9], [0]),
             _pred([[20, 20, 30, 30], [5, 5, 15, 15]], [0.8, 0.7], [0, 0])]
    # Ranked TP, FP, TP: precision 1 up to recall 0.5, then 2/3. COCO's 101 recall points: 51 at 1, 50 at 2/3.
    expected = 100 * (51 * 1.0 + 50 * (2 / 3)) / 101
    out = detection_ap(preds, truth_boxes, truth_labels, num_classes=2)
    assert out["AP50"][0] == pytest.approx(expected, abs=1e-6)
    assert out["AP"][0] == pytest.approx(expected, abs=1e-6)  # exact boxes: every IoU threshold agrees
    assert math.isnan(out["AP50"][1]) and math.isnan(out["AP"][1])  # class 1 has no ground truth


def test_ap_over_iou_thresholds_and_missed_classes() -> None:
    truth_boxes = [torch.tensor([[0.0, 0, 10, 10], [12, 12, 20, 20]])]
    truth_labels = [torch.tensor([0, 1])]
    # Class 0 found with IoU 0.62: a match at thresholds 0.50, 0.55, 0.60 only. Class 1 is predicted as class 0.
    preds = [_pred([[0, 0, 10, 6.2], [12, 12, 20, 20]], [0.9, 0.6], [0, 0])]
    out = detection_ap(preds, truth_boxes, truth_labels, num_classes=2)
    assert out["AP50"][0] == pytest.approx(100.0)  # the false positive ranks below the only true positive
    assert out["AP"][0] == pytest.approx(30.0)
    assert out["AP50"][1] == 0.0 and out["AP"][1] == 0.0


def test_ap_with_no_detection_is_zero_where_there_is_truth() -> None:
    out = detection_ap([_pred([], [], [])], [torch.tensor([[0.0, 0, 4, 4]])], [torch.tensor([1])], num_classes=2)
    assert math.isnan(out["AP50"][0]) and out["AP50"][1] == 0.0


def test_ap_refuses_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        detection_ap([], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], num_classes=1)


# --- data and requests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_det():
    return load_dataset("multidigits-det", seed=0, num_train=60, num_test=30, canvas_size=24, max_digits=3)


def test_view_matches_multidigits(small_det) -> None:
    base = load_dataset("multidigits", seed=0, num_train=60, num_test=30, canvas_size=24, max_digits=3)
    assert small_det.task == "detection" and small_det.classes == base.classes
    assert torch.equal(small_det.train.inputs, base.train.inputs)
    for mine, theirs in zip(small_det.train.extras["boxes"], base.train.extras["boxes"], strict=True):
        assert torch.equal(mine, theirs)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("multidigits-det", colour=True)


def test_target_split_removes_the_boxes(small_det) -> None:
    forget, retain = split(small_det.train, ForgetRequest(kind="target", labels=("2",)))
    carries = [2 in labels.tolist() for labels in small_det.train.extras["box_labels"]]
    assert len(forget) == sum(carries) and len(retain) == len(small_det.train)
    assert forget.label_mask[:, 2].all() and not forget.label_mask[:, [0, 1, 3, 4]].any()
    assert all(2 in labels.tolist() for labels in forget.extras["box_labels"])
    assert all(2 not in labels.tolist() for labels in retain.extras["box_labels"])
    assert retain.targets[:, 2].abs().sum() == 0  # no heat for class 2 anywhere
    # The other classes' maps are untouched.
    assert torch.equal(retain.targets[:, [0, 1, 3, 4]], small_det.train.targets[:, [0, 1, 3, 4]])
    # The caller's data is never modified.
    assert any(2 in labels.tolist() for labels in small_det.train.extras["box_labels"])


def test_class_requests_are_refused_on_detection(small_det) -> None:
    with pytest.raises(ValueError, match="is detection"):
        split(small_det.train, ForgetRequest(kind="class", labels=("2",)))
    with pytest.raises(ValueError, match="not a known target"):
        split(small_det.train, ForgetRequest(kind="target", labels=("background",)))


def test_centernet_is_refused_bad_width() -> None:
    with pytest.raises(ValueError, match="width=0"):
        create_model("centernet", width=0)




# --- target-level unlearning on small seeded canvases ---------------------------------------------------
# The benchmark's setting (benchmarks/dense.py): 24 px canvases of 2-3 digits of 5 classes, width-16 CenterNet.
DATA = {"num_train": 600, "num_test": 300, "canvas_size": 24, "max_digits": 3}
RECIPE = TrainConfig(epochs=15, batch_size=16, lr=0.003, optimizer="adam", weight_decay=0.0)
FORGET = "2"


@pytest.fixture(scope="module")
def trained(one_thread):
    # The trained detector depends on the thread count (float summation order) like on a seed: the seed-0
    # detector's forgotten AP50 after pruning is 31.7 at one thread, 1.0 at two. Pinned so that the numbers
    # quoted below are this module's.
    bundle = load_dataset("multidigits-det", seed=0, **DATA)
    model, _ = train_original(bundle, "centernet", RECIPE, seed=0, width=16)
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(FORGET,)))
    retrained, reference = run_method("retrain", model, views, RECIPE, seed=0)
    return {"bundle": bundle, "model": model, "views": views, "original": evaluate(model, views),
            "reference": reference, "retrained": retrained}


def test_original_and_retrained_models(trained) -> None:
    original, reference = trained["original"], trained["reference"].metrics
    assert original["forget_AP50"] > 90 and original["retain_mAP50"] > 90
    assert reference["forget_AP50"] < 5 and reference["forget_AP50_all"] < 5
    assert reference["retain_mAP50"] > 90


def centre_probability(model: torch.nn.Module, data) -> list[float]:  # noqa: ANN001
    """Per class: the mean heat-map probability at the centre cells of its test objects."""
    with torch.no_grad():
        outputs = model.eval()(data.inputs)
    centres = data.targets[:, data.targets.shape[1] - TARGET_EXTRA_CHANNELS + 4]
    return [float(graph_score(outputs, data.targets, c).sum() / (centres == 1 + c).sum())
            for c in range(data.num_classes)]


@pytest.fixture(scope="module")
def seeded_detectors(trained) -> list[tuple]:
    """The default balanced graph on the detectors of training seeds 0-2 on the module's data (seed 0 is the
    module's): ``(original model, its metrics, pruned model, run record)``, each pruned once for every test."""
    originals = [(trained["model"], trained["original"])]
    for seed in (1, 2):
        model, _ = train_original(trained["bundle"], "centernet", RECIPE, seed=seed, width=16)
        originals.append((model, evaluate(model, trained["views"])))
    runs = []
    for model, metrics in originals:
        pruned, record = run_method("dense_essential_graph", model, trained["views"], RECIPE, seed=0)
        runs.append((model, metrics, pruned, record))
    return runs


def test_essential_graph_pushes_the_forgotten_class_down_more_than_the_others(trained, seeded_detectors) -> None:
    """What the balanced graph did on every detector measured: the forgotten class's heat-map peaks fall by a
    larger factor than the remaining classes' (16 of 16 runs: digits 2 and 4; data and training seeds 0-4 at
    one thread and 0-2 at two; forgotten ratio 0.07-0.82, remaining classes' mean ratio 0.84-1.00)."""
    bundle = trained["bundle"]
    forgotten = bundle.train.class_index(FORGET)
    for model, _, pruned, record in seeded_detectors:
        assert record.stats["pruned_channels"] > 0
        ratio = [after / before for after, before in
                 zip(centre_probability(pruned, bundle.test), centre_probability(model, bundle.test), strict=True)]
        remaining = [r for c, r in enumerate(ratio) if c != forgotten]
        assert ratio[forgotten] < sum(remaining) / len(remaining), ratio


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known limitation, measured: the dense Essential Graph brings the forgotten class's AP50 (at the 0.3 "
    "operating threshold) to the retrained level (0.0) within 10 points with the remaining mAP50 within 3 in "
    "only 4 of 16 runs at the defaults (digits 2 and 4; data and training seeds 0-4 at one thread, 0-2 at two). "
    "On this module's data, training seeds 0-4 gave AP50 31.7 / 11.9 / 1.0 / 86.1 / 64.4 with mAP50 -0.1 / -0.5 "
    "/ -0.2 / -0.1 / -1.1: 1 of 5 within both bounds (benchmarks/dense.py --seeds 0,1,2,3,4). The "
    "threshold-free AP50 stays 54-100: the class's peaks fall (test above) but keep their order. No proportion "
    "(0.1-0.3) x layer count (3-7) x image count (8, 32) met both bounds in more than 3 of 8 runs in a sweep "
    "(closing note of 2026-12-04)"))
def test_essential_graph_forgets_the_class_and_keeps_the_others_on_every_seed(seeded_detectors) -> None:
    # Retrained detectors score the class 0.0 AP50 (test_original_and_retrained_models): the bound is 0 + 10.
    for _, original, _, record in seeded_detectors:
        assert record.metrics["forget_AP50"] <= 10
        assert record.metrics["retain_mAP50"] >= original["retain_mAP50"] - 3


@pytest.mark.xfail(strict=True, reason=(
    "known limitation, measured: the pruned neck/backbone channels also feed the box-size head, so the remaining "
    "classes' boxes get less precise: their AP@[.5:.95] fell 4-60 points over 16 runs (digits 2 and 4; data and "
    "training seeds 0-4 at one thread, 0-2 at two), 18-25 on this seed-0 detector (benchmarks/dense.py)"))
def test_essential_graph_keeps_the_remaining_classes_box_precision(trained, seeded_detectors) -> None:
    record = seeded_detectors[0][3]  # the seed-0 detector's run
    assert record.metrics["retain_mAP"] >= trained["original"]["retain_mAP"] - 3


def test_balanced_graph_beats_the_unbalanced_one_on_the_remaining_classes(trained, seeded_detectors) -> None:
    model, views = trained["model"], trained["views"]
    balanced = seeded_detectors[0][3]  # the seed-0 detector's run
    _, unbalanced = run_method("dense_essential_graph_unbalanced", model, views, RECIPE, seed=0)
    assert unbalanced.stats["pruned_channels"] > balanced.stats["pruned_channels"]
    assert balanced.metrics["retain_mAP50"] > unbalanced.metrics["retain_mAP50"]
    assert balanced.metrics["retain_mAP"] > unbalanced.metrics["retain_mAP"]


def test_baselines_lower_the_forgotten_class(trained) -> None:
    model, views, original = trained["model"], trained["views"], trained["original"]
    _, finetuned = run_method("dense_finetune", model, views, RECIPE, seed=0)
    _, ascended = run_method("dense_gradient_ascent", model, views, RECIPE, seed=0)
    assert finetuned.metrics["forget_AP50"] < original["forget_AP50"] - 20
    assert ascended.metrics["forget_AP50"] < original["forget_AP50"] - 20


# --- the command line --------------------------------------------------------------------------------


def test_cli_train_unlearn_evaluate_and_plot(tmp_path) -> None:
    from typer.testing import CliRunner

    from excise.cli import app

    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, ["--quiet", *map(str, args)])

    options = ["--data-option", "num_train=40", "--data-option", "num_test=20", "--data-option", "canvas_size=24",
               "--data-option", "max_digits=3"]
    original = tmp_path / "det.safetensors"
    result = invoke("train", "--task", "detection", "--out", original, "--width", 4, "--epochs", 1,
                    "--optimizer", "adam", "--lr", 0.003, *options)
    assert result.exit_code == 0, result.output
    meta = json.loads(original.with_suffix(".json").read_text())
    assert meta["model"]["name"] == "centernet" and meta["dataset"]["name"] == "multidigits-det"
    unlearned = tmp_path / "unlearned.safetensors"
    # One epoch at width 4: every channel the target needs, a remaining target needs too, so the balanced graph
    # prunes nothing — and a run that returned the model unchanged gets no file and no certificate.
    result = invoke("unlearn", original, "--method", "dense_essential_graph", "--request", "target:2",
                    "--out", unlearned, "--param", "proportion=0.5")
    assert result.exit_code != 0 and "returned the model unchanged" in " ".join(result.output.split())
    assert not unlearned.exists()
    result = invoke("unlearn", original, "--method", "dense_essential_graph_unbalanced", "--request", "target:2",
                    "--out", unlearned, "--param", "proportion=0.5")
    assert result.exit_code == 0, result.output
    assert json.loads(unlearned.with_suffix(".json").read_text())["method_stats"]["pruned_channels"] > 0
    picture = tmp_path / "grid.png"
    result = invoke("evaluate", unlearned, "--request", "target:2", "--plot", picture, "--before", original)
    assert result.exit_code == 0, result.output
    assert "forget_AP50" in result.output and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke("evaluate", unlearned, "--request", "target:2", "--plot", picture)
    assert result.exit_code != 0 and "exists" in result.output
    result = invoke("train", "--task", "detection", "--dataset", "multidigits-seg", "--out", tmp_path / "x.safetensors")
    assert result.exit_code != 0 and "multidigits-seg" in result.output and "multidigits-det" in result.output
    result = invoke("train", "--task", "pose", "--out", tmp_path / "x.safetensors")
    assert result.exit_code != 0 and "task='pose'" in result.output


def test_masking_the_class_heatmap_forgets_the_class_and_keeps_every_other_box(trained) -> None:
    """dense_target_mask on CenterNet: the forgotten class's heat-map has no peak above any threshold (AP50 0,
    with and without the operating threshold) and every other channel — the other heat-maps, sizes and offsets —
    equals the original's bit for bit, so the remaining mAP is exactly the original's."""
    model, views = trained["model"], trained["views"]
    unlearned, record = run_method("dense_target_mask", model, views, RECIPE, seed=0)
    assert record.metrics["forget_AP50"] == 0.0 and record.metrics["forget_AP50_all"] == 0.0
    assert record.metrics["retain_mAP50"] == trained["original"]["retain_mAP50"]
    assert record.metrics["retain_mAP"] == trained["original"]["retain_mAP"]
    forgotten = views.forget_set.classes.index(FORGET)
    with torch.no_grad():
        before, after = model.eval()(views.test_retain.inputs[:16]), unlearned.eval()(views.test_retain.inputs[:16])
    others = [c for c in range(before.shape[1]) if c != forgotten]
    assert torch.equal(before[:, others], after[:, others])


def test_masking_leaves_what_the_heatmap_head_reads_of_the_class(trained) -> None:
    """dense_target_mask leaves the features its masked heat-map read: a linear probe tells the class's object
    centres from the other digits' exactly as on the original, and far above the class's share of the centres."""
    bundle, model, views = trained["bundle"], trained["model"], trained["views"]
    target = bundle.classes.index(FORGET)
    masked, _ = run_method("dense_target_mask", model, views, RECIPE, seed=0)
    for layer in (None, "heatmap.0.0"):  # the class-map input, and the neck the box heads share
        before, after = (dense_probe_ap(m, bundle.train, bundle.test, target, layer=layer) for m in (model, masked))
        assert after.ap == before.ap and before.ap > before.prevalence + 50


def test_erasing_the_class_from_the_neck_brings_its_probe_to_retrains_and_keeps_the_other_boxes(trained) -> None:
    """dense_target_erasure: the neck is trained until a linear probe no longer reads the class at its object
    centres (at most the retrained detector's + 5, and far below the original's; benchmark seeds 0-3: 22-26 against
    retrain's 78-99), a one-hidden-layer reader finds no more than in the retrained neck + 5, the class's heat-map is
    masked (AP50 0), and the remaining classes' mAP50 stays within 1 point of the original's. Only the neck and the
    masked map change; the caller's model is not touched."""
    bundle, model, views = trained["bundle"], trained["model"], trained["views"]
    target = bundle.classes.index(FORGET)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    erased, record = run_method("dense_target_erasure", model, views, RECIPE, seed=0)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    moved = {name for name, p in erased.named_parameters() if not torch.equal(before[name], p)}
    assert moved and all(name.startswith(("neck.", "heatmap.1.")) for name in moved), moved
    assert record.metrics["forget_AP50"] == 0.0
    assert abs(record.metrics["retain_mAP50"] - trained["original"]["retain_mAP50"]) <= 1.0
    for reader in ("linear", "mlp"):
        erased_ap, original_ap, retrained_ap = (
            dense_probe_ap(m, bundle.train, bundle.test, target, layer="heatmap.0.0", reader=reader).ap
            for m in (erased, model, trained["retrained"]))
        assert erased_ap <= retrained_ap + 5, (reader, erased_ap, retrained_ap)
        if reader == "linear":
            assert erased_ap < original_ap - 30
    stats = record.stats
    assert stats["erased"] == "stage" and stats["erased_stage"] == "neck" and stats["forgotten_output"] == "masked"
    assert stats["separation_after"] < 0.1 * stats["separation_before"]


def test_the_neck_erasure_refuses_what_it_cannot_serve(trained) -> None:
    model, views = trained["model"], trained["views"]
    with pytest.raises(HeadError, match="stage='trunk' is not a submodule"):
        run_method(get_method("dense_target_erasure", stage="trunk"), model, views, RECIPE, seed=0)
    with pytest.raises(HeadError, match="read='nope' is not a submodule"):
        run_method(get_method("dense_target_erasure", read="nope"), model, views, RECIPE, seed=0)
    with pytest.raises(HeadError, match="read='heatmap' is called 0 times"):  # a container, not a call
        run_method(get_method("dense_target_erasure", read="heatmap"), model, views, RECIPE, seed=0)
    for field, value in (("epochs", 0), ("penalty", -1.0), ("lr", float("nan")), ("stage", "")):
        with pytest.raises(ValueError, match=field):
            get_method("dense_target_erasure", **{field: value})
    segmenter = create_model("unet", num_classes=5, width=4)
    seg_views = EvalViews.from_bundle(load_dataset("multidigits-seg", seed=0, **DATA),
                                      ForgetRequest(kind="target", labels=(FORGET,)))
    with pytest.raises(RequestError, match="does not support segmentation"):
        run_method("dense_target_erasure", segmenter, seg_views, RECIPE, seed=0)


def test_the_erasure_sees_every_canvas_with_the_forgotten_centres_put_back(small_det) -> None:
    views = EvalViews.from_bundle(small_det, ForgetRequest(kind="target", labels=(FORGET, "3")))
    data = UnlearnData(forget_set=views.forget_set, request=views.request, recipe=RECIPE,
                       _retain_set=views.retain_set)
    rows = views.retain_set.source_indices
    assert torch.equal(training_cells(data), instance_cells(small_det.train)[rows])


def test_the_stage_erasure_trains_the_stage_alone_and_refuses_bad_cells(small_det) -> None:
    torch.manual_seed(0)
    model = create_model("centernet", num_classes=5, width=4).train()
    images, cells = small_det.train.inputs[:24], instance_cells(small_det.train)[:24]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    done = erase_in_dense_stage(model, images, cells, [2], [2], "neck", "heatmap.0.0", 2, 0.01, 1e-3, 0, 8)
    assert done.steps == 6 and model.training
    assert all(p.grad is None for p in model.parameters())
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert moved and all(name.startswith("neck.") for name in moved)
    assert all(torch.equal(buffers[name], b) for name, b in model.named_buffers())
    with pytest.raises(ValueError, match="one map per image"):
        erase_in_dense_stage(model, images, cells[:4], [2], [2], "neck", "heatmap.0.0", 1, 0.01, 1e-3, 0)
    with pytest.raises(ValueError, match="concept=\\[\\]"):
        erase_in_dense_stage(model, images, cells, [], [2], "neck", "heatmap.0.0", 1, 0.01, 1e-3, 0)
    with pytest.raises(ValueError, match="drop=\\[42\\]"):
        erase_in_dense_stage(model, images, cells, [2], [42], "neck", "heatmap.0.0", 1, 0.01, 1e-3, 0)
