"""Semantic segmentation of the ``multidigits`` canvases, and what forgetting a class means for it.

Data (``multidigits-seg``): the ``multidigits`` canvases with ``targets`` = the ``N x H x W`` semantic masks
(0 = background, ``1 + c`` = ink of digit class ``c``); ``classes`` are the digit classes (background is
implicit, so ``target:2`` names digit 2 and cannot name the background). Model: ``unet``
(:mod:`excise.models.dense`): one logit map per class; a pixel's predicted class is the most probable one if
its probability exceeds 0.5, else background. Loss: pixel cross-entropy of every class map (binary, the
per-pixel form of the multi-label loss; see the model's docstring for why not a softmax), averaged over
pixels and classes.

Target requests (the definition this task adds to :mod:`excise.requests`): ``target:c`` forgets class
``c``. The *forget view* is every training canvas that contains ``c``, with its original mask and a label
mask naming ``c`` — its loss (what gradient ascent ascends) is ``c``'s map's cross-entropy over ``c``'s
pixels: the target's loss where the target is present. The *retain view* is every training canvas with
``c``'s pixels relabelled background: the retrained reference is trained on it, so it learns to call ``c``'s
ink background.

Metrics (percent; :func:`evaluate_segmentation`), all against the *original* masks: per-class IoU
(``IoU:<class>``, ``IoU:background``) on the test canvases; ``forget_IoU`` = ``TA_forget`` = the forgotten
class's test IoU; ``retain_mIoU`` = ``TA`` = mean test IoU of the remaining digit classes (background is
reported separately, not averaged in); ``FA`` = forgotten class's IoU on the forget view (training canvases
that contain it); ``RA`` = remaining classes' mIoU on the training canvases. No membership-inference attack
is defined for dense outputs, so there is no ``MIA`` column; ``avg_gap`` is over FA, RA and TA.

Essential Graph importance (:func:`graph_score`): the target's probability summed over the pixels where the
target is present (its ground-truth pixels); its gradient at a conv layer's output, averaged over space, is
the channel weight, and the rest is the classification code.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excise.data.base import LabeledData
from excise.metrics.dense import confusion_matrix, nanmean, per_class_iou
from excise.metrics.evaluate import EvalViews
from excise.tasks.common import (
    as_numpy,
    colour_for,
    eval_mode_outputs,
    headline_metrics,
    legend_text,
    register_dense_task,
    target_eval_views,
)

TASK = "segmentation"


# --- loss ----------------------------------------------------------------------------------------
def segmentation_loss(logits: Tensor, targets: Tensor, label_mask: Tensor | None) -> Tensor:
    """Per-image pixel binary cross-entropy of the ``K`` class maps, averaged over pixels and classes.

    With ``label_mask`` (``N x K``) the loss is the selected classes' loss where they are present: the BCE of
    their maps over their own pixels (the forget view's loss, which gradient ascent ascends)."""
    if logits.dim() != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"segmentation needs logits N x K x H x W and targets N x H x W, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    k = logits.shape[1]
    onehot = F.one_hot(targets, k + 1)[..., 1:].permute(0, 3, 1, 2).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if label_mask is None:
        return bce.flatten(1).mean(dim=1)
    weight = onehot * label_mask[:, :, None, None].to(logits.dtype)
    return (bce * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1.0)


# --- data and target requests --------------------------------------------------------------------
def _part(base: LabeledData) -> LabeledData:
    return LabeledData(
        inputs=base.inputs, targets=base.extras["masks"], classes=base.classes, task=TASK,
        source_indices=base.source_indices, name="multidigits-seg",
    )


def presence(data: LabeledData) -> Tensor:
    """``N x K`` bool: which classes have at least one pixel in each mask."""
    flat = data.targets.flatten(1)
    return torch.stack([(flat == 1 + c).any(dim=1) for c in range(data.num_classes)], dim=1)


def instance_cells(data: LabeledData) -> Tensor:
    """``N x H x W``: ``1 + c`` at every ink pixel of class ``c``, 0 on background — where a linear probe reads
    what the model knows of each class (:func:`excise.metrics.probe.dense_probe_ap`)."""
    return data.targets


def drop_classes(data: LabeledData, labels: tuple[int, ...]) -> LabeledData:
    """The same canvases with the pixels of ``labels`` relabelled background."""
    targets = data.targets.clone()
    targets[torch.isin(targets, torch.as_tensor([1 + c for c in labels]))] = 0
    return replace(data, targets=targets, label_mask=None)


# --- evaluation ----------------------------------------------------------------------------------
def masks_from_logits(logits: Tensor) -> Tensor:
    """Semantic masks from ``N x K x H x W`` class-map logits: ``1 + argmax`` where the best class's
    probability exceeds 0.5, background (0) elsewhere."""
    best, index = logits.max(dim=1)
    return torch.where(best > 0, index + 1, torch.zeros_like(index))


def predict_masks(model: nn.Module, inputs: Tensor) -> Tensor:
    return masks_from_logits(eval_mode_outputs(model, inputs))


def class_iou(model: nn.Module, data: LabeledData) -> np.ndarray:
    """IoU in percent of background (index 0) and every class (index ``1 + c``) over ``data``'s pixels."""
    predicted = predict_masks(model, data.inputs)
    return per_class_iou(confusion_matrix(predicted, data.targets, data.num_classes + 1))


def evaluate_segmentation(
    model: nn.Module, views: EvalViews, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, float]:
    """Per-class IoU and the forgotten/remaining summaries for a ``target`` request (see the module doc)."""
    forgotten, remaining, test, train = target_eval_views(views, TASK)
    test_iou = class_iou(model, test)
    forget_iou = class_iou(model, views.forget_set)
    train_iou = class_iou(model, train)
    fg = [1 + c for c in forgotten]
    rg = [1 + c for c in remaining]
    out = {
        **headline_metrics(forget_iou, train_iou, test_iou, fg, rg),
        "forget_IoU": nanmean(test_iou[fg]),
        "retain_mIoU": nanmean(test_iou[rg]),
        "IoU:background": float(test_iou[0]),
    }
    for c, name in enumerate(views.forget_set.classes):
        out[f"IoU:{name}"] = float(test_iou[1 + c])
    return out


# --- essential graph -----------------------------------------------------------------------------
def graph_score(outputs: Tensor, targets: Tensor, target: int) -> Tensor:
    """Per image: the sigmoid probability of ``target``'s map summed over its ground-truth pixels."""
    probability = torch.sigmoid(outputs[:, target])
    return (probability * (targets == 1 + target).to(probability.dtype)).flatten(1).sum(dim=1)


# --- pictures ------------------------------------------------------------------------------------
def draw_mask(ax, mask: Tensor, forgotten: list[int], palette: list[str]) -> None:  # noqa: ANN001
    """Overlay a semantic mask: one colour per class, the forgotten class in red."""
    import matplotlib.colors as mcolors

    rgba = np.zeros((*mask.shape, 4))
    values = as_numpy(mask)
    for c in range(len(palette)):
        rgba[values == 1 + c] = mcolors.to_rgba(colour_for(c, forgotten, palette), alpha=0.75)
    ax.imshow(rgba, interpolation="nearest")


def grid_panels(models: dict[str, nn.Module], data: LabeledData, rows: list[int], forgotten: list[int]) -> dict:
    from excise.tasks.common import _palette

    palette = _palette(data.num_classes)
    inputs = data.inputs[rows]
    predicted = {name: predict_masks(model, inputs) for name, model in models.items()}
    panels = {"truth": lambda ax, row, col: draw_mask(ax, data.targets[row], forgotten, palette)}
    for name, masks in predicted.items():
        panels[name] = (lambda m: lambda ax, row, col: draw_mask(ax, m[col], forgotten, palette))(masks)
    return panels


def grid_title(data: LabeledData, forgotten: list[int]) -> str:
    return f"segmentation masks — {legend_text(data.classes, forgotten)}"


register_dense_task(TASK, "multidigits-seg", loss=segmentation_loss, evaluator=evaluate_segmentation,
                    presence=presence, drop=drop_classes, make_part=_part,
                    instance_cells=instance_cells)
