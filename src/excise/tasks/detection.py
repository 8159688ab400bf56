"""Object detection on the ``multidigits`` canvases, and what forgetting a class means for it.

Data (``multidigits-det``): the ``multidigits`` canvases; ``extras["boxes"]`` (xyxy, exclusive far edges)
and ``extras["box_labels"]`` are the ground truth, and ``targets`` are the CenterNet training maps computed
from them (:func:`excise.models.dense.encode_centernet_targets`, output stride 2): ``K`` Gaussian centre
heat-maps, then ``w, h, dx, dy`` and ``1 + class`` at each centre cell. Model: ``centernet``.

Loss (Zhou et al., "Objects as Points", arXiv 1904.07850): the penalty-reduced pixel focal loss on the
heat-maps (alpha 2, beta 4, sigmoid clamped to [1e-4, 1 - 1e-4] as the reference code does) + 0.1 x L1 on
the box size + L1 on the centre offset at the centre cells, each divided by the image's number of objects
(per image, so the shared loop can average per-sample losses). With a ``label_mask`` the loss is the selected
classes' loss where they are present — the focal term at their objects' centres and their size and offset
terms — so the forget view's loss (what gradient ascent ascends) is the forgotten class's.

Target requests: ``target:c`` forgets class ``c``. The *forget view* is every training canvas that contains
a ``c`` box, with its original boxes and maps and a label mask naming ``c``. The *retain view* is every
canvas with ``c``'s boxes removed (from the extras and from the training maps): the retrained reference
never sees a ``c`` box, so its ``c`` heat-map learns to stay low on ``c`` digits.

Metrics (percent; :func:`evaluate_detection`), against the *original* boxes: COCO ``AP50`` and ``AP``
(AP@[.5:.95]) per class (``AP50:<class>``, ``AP:<class>``) on the test canvases. Detections are the top-50
heat-map peaks per image (3x3 max-pool peak extraction, no NMS — CenterNet's decoding) whose score reaches
the detector's operating threshold :data:`SCORE_THRESHOLD` (0.3). ``forget_AP50`` = ``TA_forget`` and
``forget_AP`` for the forgotten class, ``retain_mAP50`` = ``TA`` and ``retain_mAP`` over the remaining
classes; ``FA`` = the forgotten class's AP50 on the forget view, ``RA`` = remaining mAP50 on the training
canvases. ``forget_AP50_all`` / ``retain_mAP50_all`` are the same AP50s over *every* top-50 peak (the COCO
protocol, no threshold). Why both: AP only ranks scores, so pruning that pushes a class's peaks far below
the threshold but keeps their order leaves its threshold-free AP high — the class is no longer detected,
yet its residue is still ranked (measured in ``benchmarks/dense.py``). No MIA is defined for dense outputs;
``avg_gap`` is over FA, RA and TA.

Essential Graph importance (:func:`graph_score`): the target's heat-map probability summed over the cells
where the target is present (its objects' centre cells, CenterNet's positives).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from excise.data.base import LabeledData
from excise.metrics.dense import detection_ap, nanmean
from excise.metrics.evaluate import EvalViews
from excise.models.dense import OUTPUT_STRIDE, TARGET_EXTRA_CHANNELS, decode_centernet, encode_centernet_targets
from excise.tasks.common import (
    colour_for,
    eval_mode_outputs,
    headline_metrics,
    legend_text,
    register_dense_task,
    target_eval_views,
)

TASK = "detection"
SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
TOP_K = 50
# The detector's operating point: a heat-map peak is a detection when its score reaches this (CenterNet's
# visualisation threshold). The headline metrics use it; the ``*_all`` metrics use every top-k peak, as COCO
# evaluation does. Both are reported because they disagree on unlearning: AP only ranks scores, so a class
# whose peaks were pushed far down but kept in order keeps its ranking AP while it is no longer detected.
SCORE_THRESHOLD = 0.3
_EPS = 1e-4


# --- loss ----------------------------------------------------------------------------------------
def detection_loss(outputs: Tensor, targets: Tensor, label_mask: Tensor | None) -> Tensor:
    """Per-image CenterNet loss (see the module docstring)."""
    k = targets.shape[1] - TARGET_EXTRA_CHANNELS
    if outputs.dim() != 4 or outputs.shape[1] != k + 4 or outputs.shape[2:] != targets.shape[2:]:
        raise ValueError(
            f"detection needs outputs N x {k + 4} x H x W matching targets {tuple(targets.shape)}, "
            f"got {tuple(outputs.shape)}"
        )
    n = len(outputs)
    probability = torch.sigmoid(outputs[:, :k]).clamp(_EPS, 1 - _EPS)
    heat = targets[:, :k]
    positive = heat.eq(1).to(probability.dtype)
    focal = -(
        positive * (1 - probability) ** 2 * torch.log(probability)
        + (1 - positive) * (1 - heat) ** 4 * probability**2 * torch.log(1 - probability)
    )
    centre_class = centre_classes(targets)
    centres = centre_class > 0
    if label_mask is not None:
        # The selected classes' loss where they are present: the focal loss at their objects' centres (the
        # positive term) and their size/offset terms, as the segmentation forget loss covers a class's pixels.
        focal = focal * positive * label_mask[:, :, None, None].to(focal.dtype)
        selected = label_mask[torch.arange(n)[:, None, None], (centre_class - 1).clamp_min(0)]
        centres = centres & selected
    weight = centres.to(probability.dtype)
    count = weight.flatten(1).sum(dim=1).clamp_min(1.0)
    size_l1 = ((outputs[:, k : k + 2] - targets[:, k : k + 2]).abs().sum(dim=1) * weight).flatten(1).sum(dim=1)
    offset_l1 = ((outputs[:, k + 2 : k + 4] - targets[:, k + 2 : k + 4]).abs().sum(dim=1) * weight).flatten(1).sum(1)
    return (focal.flatten(1).sum(dim=1) + SIZE_WEIGHT * size_l1 + OFFSET_WEIGHT * offset_l1) / count


# --- data and target requests --------------------------------------------------------------------
def _encode(boxes: list[Tensor], labels: list[Tensor], num_classes: int, inputs: Tensor) -> Tensor:
    return encode_centernet_targets(boxes, labels, num_classes, tuple(inputs.shape[-2:]), OUTPUT_STRIDE)


def _part(base: LabeledData) -> LabeledData:
    boxes, labels = base.extras["boxes"], base.extras["box_labels"]
    return LabeledData(
        inputs=base.inputs, targets=_encode(boxes, labels, base.num_classes, base.inputs), classes=base.classes,
        task=TASK, source_indices=base.source_indices,
        extras={"boxes": list(boxes), "box_labels": list(labels)}, name="multidigits-det",
    )


def presence(data: LabeledData) -> Tensor:
    """``N x K`` bool: which classes have a box in each image."""
    out = torch.zeros(len(data), data.num_classes, dtype=torch.bool)
    for i, labels in enumerate(data.extras["box_labels"]):
        out[i, labels] = True
    return out


def centre_classes(targets: Tensor) -> Tensor:
    """``N x H/2 x W/2`` from training maps: ``1 + c`` at the centre cell of every object of class ``c``, else 0."""
    return targets[:, targets.shape[1] - TARGET_EXTRA_CHANNELS + 4].long()


def instance_cells(data: LabeledData) -> Tensor:
    """:func:`centre_classes` of ``data``: where a linear probe reads what the detector knows of each class
    (:func:`excise.metrics.probe.dense_probe_ap`)."""
    return centre_classes(data.targets)


def drop_classes(data: LabeledData, labels: tuple[int, ...]) -> LabeledData:
    """The same canvases with the boxes of ``labels`` removed, and the training maps rebuilt without them."""
    gone = torch.as_tensor(labels)
    keep = [~torch.isin(lab, gone) for lab in data.extras["box_labels"]]
    boxes = [b[k] for b, k in zip(data.extras["boxes"], keep, strict=True)]
    box_labels = [lab[k] for lab, k in zip(data.extras["box_labels"], keep, strict=True)]
    targets = _encode(boxes, box_labels, data.num_classes, data.inputs)
    return replace(data, targets=targets, extras={**data.extras, "boxes": boxes, "box_labels": box_labels},
                   label_mask=None)


# --- evaluation ----------------------------------------------------------------------------------
def predict_boxes(
    model: nn.Module, inputs: Tensor, num_classes: int, threshold: float = SCORE_THRESHOLD
) -> list[dict[str, Tensor]]:
    """Detections per image: the top-k heat-map peaks whose score is at least ``threshold``."""
    stride = getattr(model, "output_stride", OUTPUT_STRIDE)
    outputs = eval_mode_outputs(model, inputs)
    found = decode_centernet(outputs, num_classes, top_k=TOP_K, stride=stride, image_size=tuple(inputs.shape[-2:]))
    return [{key: value[d["scores"] >= threshold] for key, value in d.items()} for d in found]


def class_ap(model: nn.Module, data: LabeledData, threshold: float = SCORE_THRESHOLD) -> dict[str, np.ndarray]:
    """Per-class ``AP50`` and ``AP`` (percent) of ``model`` on ``data``'s boxes, detections >= ``threshold``."""
    predictions = predict_boxes(model, data.inputs, data.num_classes, threshold)
    return detection_ap(predictions, data.extras["boxes"], data.extras["box_labels"], data.num_classes)


def evaluate_detection(
    model: nn.Module, views: EvalViews, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, float]:
    """Per-class AP and the forgotten/remaining summaries for a ``target`` request (see the module doc)."""
    forgotten, remaining, test_view, train_view = target_eval_views(views, TASK)
    test = class_ap(model, test_view)
    test_all = class_ap(model, test_view, threshold=0.0)
    forget = class_ap(model, views.forget_set)
    train = class_ap(model, train_view)
    out = {
        **headline_metrics(forget["AP50"], train["AP50"], test["AP50"], forgotten, remaining),
        "forget_AP50": nanmean(test["AP50"][forgotten]),
        "forget_AP": nanmean(test["AP"][forgotten]),
        "retain_mAP50": nanmean(test["AP50"][remaining]),
        "retain_mAP": nanmean(test["AP"][remaining]),
        "forget_AP50_all": nanmean(test_all["AP50"][forgotten]),
        "retain_mAP50_all": nanmean(test_all["AP50"][remaining]),
    }
    for c, name in enumerate(views.forget_set.classes):
        out[f"AP50:{name}"] = float(test["AP50"][c])
        out[f"AP:{name}"] = float(test["AP"][c])
    return out


# --- essential graph -----------------------------------------------------------------------------
def graph_score(outputs: Tensor, targets: Tensor, target: int) -> Tensor:
    """Per image: the heat-map probability of ``target`` summed over its objects' centre cells."""
    probability = torch.sigmoid(outputs[:, target])
    centres = (centre_classes(targets) == 1 + target).to(probability.dtype)
    return (probability * centres).flatten(1).sum(dim=1)


# --- pictures ------------------------------------------------------------------------------------
def draw_boxes(ax, boxes: Tensor, labels: Tensor, classes: tuple[str, ...], forgotten: list[int],  # noqa: ANN001
               palette: list[str]) -> None:
    from matplotlib.patches import Rectangle

    for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist(), strict=True):
        colour = colour_for(c, forgotten, palette)
        # imshow puts pixel centres on integers: a box over columns x1..x2-1 spans x1 - 0.5 .. x2 - 0.5.
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
        ax.text(x1 - 0.5, y1 - 1, classes[c], color=colour, fontsize=6, va="bottom")


def grid_panels(models: dict[str, nn.Module], data: LabeledData, rows: list[int], forgotten: list[int]) -> dict:
    from excise.tasks.common import _palette

    palette = _palette(data.num_classes)
    inputs = data.inputs[rows]

    def truth(ax, row: int, col: int) -> None:  # noqa: ANN001
        draw_boxes(ax, data.extras["boxes"][row], data.extras["box_labels"][row], data.classes, forgotten, palette)

    panels = {"truth": truth}
    for name, model in models.items():
        detections = predict_boxes(model, inputs, data.num_classes)

        def draw(ax, row: int, col: int, found=detections) -> None:  # noqa: ANN001
            draw_boxes(ax, found[col]["boxes"], found[col]["labels"], data.classes, forgotten, palette)

        panels[name] = draw
    return panels


def grid_title(data: LabeledData, forgotten: list[int]) -> str:
    return f"detections (score >= {SCORE_THRESHOLD}) — {legend_text(data.classes, forgotten)}"


register_dense_task(TASK, "multidigits-det", loss=detection_loss, evaluator=evaluate_detection,
                    presence=presence, drop=drop_classes, make_part=_part,
                    instance_cells=instance_cells)
