"""Dense-task metrics: per-class IoU for segmentation, COCO average precision for detection.

- IoU of class ``c`` = TP / (TP + FP + FN) over every pixel of the evaluated images (the dataset-level
  confusion matrix, as PASCAL VOC / Cityscapes compute it, not a mean of per-image IoUs). A class absent
  from both the predictions and the ground truth has no IoU (NaN), so it is left out of a mean.
- Detection AP comes from ``faster-coco-eval`` (a maintained C++ re-implementation of pycocotools'
  ``COCOeval``; torchmetrics' ``MeanAveragePrecision`` would wrap the same code but requires torchvision,
  which cannot be installed beside this torch). ``AP50`` is COCO's AP at IoU 0.5 and ``AP`` the mean over
  IoU 0.50:0.05:0.95, both with 101-point interpolation, area range "all" and 100 detections per image.
  A class with no ground-truth box has no AP (NaN). Values are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


# --- segmentation --------------------------------------------------------------------------------
def confusion_matrix(predicted: Tensor, truth: Tensor, num_classes: int) -> Tensor:
    """``num_classes x num_classes`` pixel counts; row = true class, column = predicted class."""
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and truth {tuple(truth.shape)} must have one shape")
    truth, predicted = truth.reshape(-1).long(), predicted.reshape(-1).long()
    for name, values in (("truth", truth), ("predicted", predicted)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes - 1}]")
    return torch.bincount(truth * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_iou(confusion: Tensor) -> np.ndarray:
    """IoU of every class in percent from a confusion matrix; NaN where the class is in neither."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return 100.0 * iou.numpy()


# --- detection -------------------------------------------------------------------------------------
def detection_ap(
    predictions: Sequence[dict[str, Tensor]],
    truth_boxes: Sequence[Tensor],
    truth_labels: Sequence[Tensor],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Per-class ``AP50`` and ``AP`` (COCO AP@[.5:.95]) in percent, via ``faster-coco-eval``.

    ``predictions[i]`` holds ``boxes`` (xyxy), ``scores`` and ``labels`` of image ``i``; ``truth_boxes[i]`` /
    ``truth_labels[i]`` its ground truth. Boxes follow torchvision's xyxy convention with exclusive far
    edges, so a box's width is ``x2 - x1`` (COCO's ``w``).
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as err:  # an optional dependency: say how to get it
        raise ImportError(
            "detection metrics need faster-coco-eval: pip install 'excise[dense]' (or pip install faster-coco-eval)"
        ) from err
    if not len(predictions) == len(truth_boxes) == len(truth_labels):
        raise ValueError(
            f"predictions ({len(predictions)}), truth_boxes ({len(truth_boxes)}) and truth_labels "
            f"({len(truth_labels)}) must have one entry per image"
        )
    nan = np.full(num_classes, np.nan)
    images, annotations, detections = [], [], []
    present = np.zeros(num_classes, dtype=bool)
    for i, (boxes, labels) in enumerate(zip(truth_boxes, truth_labels, strict=True)):
        images.append({"id": i + 1})
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            present[label] = True
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
        pred = predictions[i]
        for box, score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(),
                                     strict=True):
            x1, y1, x2, y2 = box
            detections.append({"image_id": i + 1, "category_id": int(label) + 1,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    if not detections or not annotations:
        zero = np.where(present, 0.0, np.nan)
        return {"AP50": zero, "AP": zero.copy()}
    ground_truth = COCO({"images": images, "annotations": annotations,
                         "categories": [{"id": c + 1} for c in range(num_classes)]}, print_function=_silent)
    evaluator = COCOeval_faster(ground_truth, ground_truth.loadRes(detections), iouType="bbox",
                                print_function=_silent)
    evaluator.params.catIds = [c + 1 for c in range(num_classes)]
    evaluator.evaluate()
    evaluator.accumulate()
    # precision: [IoU threshold, recall threshold, class, area range, max detections]; -1 = no ground truth.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    ap50, ap = nan.copy(), nan.copy()
    for c in range(num_classes):
        if present[c]:
            per_threshold = np.where(precision[:, :, c] > -1, precision[:, :, c], 0.0).mean(axis=1)
            ap50[c], ap[c] = 100.0 * per_threshold[0], 100.0 * per_threshold.mean()
    return {"AP50": ap50, "AP": ap}


def _silent(*_args: object, **_kwargs: object) -> None:
    return None


def nanmean(values: np.ndarray | Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (not a warning) when every value is NaN."""
    values = np.asarray(values, dtype=float)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


__all__ = ["confusion_matrix", "detection_ap", "nanmean", "per_class_iou"]
