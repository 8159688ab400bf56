"""Dense-prediction models: a U-Net-style segmenter and a CenterNet-style detector, both with BatchNorm.

Both are small enough to train on one CPU core in seconds on the 32x32 ``multidigits`` canvases, and both
are plain ``torch.fx``-traceable module graphs in which every hidden conv feeds exactly one BatchNorm, so
the Essential-Graph pruning (:mod:`excise.graph`) applies to them unchanged.

- ``unet`` (Ronneberger et al., "U-Net", MICCAI 2015, shrunk): ``depth`` down-sampling levels of two
  conv-BN-ReLU each, a two-conv bottleneck, nearest-neighbour up-sampling + skip concatenation + two
  conv-BN-ReLU per level on the way up, and a 1x1 head. It outputs one logit map per class (``num_classes``
  maps, sigmoid): a pixel is background when no class's probability exceeds 0.5, else the most probable
  class (:func:`excise.tasks.segmentation.masks_from_logits`). Why per-class sigmoid maps rather than a
  softmax over background + classes: with a softmax, switching one class off hands its pixels to whichever
  other class scores next — measured on the seeded canvases, pruning the forgotten digit's channels sent
  most of its pixels to another digit and cost the remaining classes 14 points of mIoU — whereas independent
  maps let a class fall back to background, which is what the retrained reference (trained with the class
  relabelled background) does. It is also the multi-label structure the Essential Graph was defined on.
  Nearest up-sampling rather than transposed convs: no checkerboard artefacts, and every conv of the
  decoder is an ``nn.Conv2d`` the graph code can enumerate.
- ``centernet`` (Zhou et al., "Objects as Points", arXiv 1904.07850, shrunk): a BatchNorm backbone down to
  1/4 resolution, one up-sampling neck back to ``OUTPUT_STRIDE`` = 2 with a skip connection, and three
  heads (conv3x3-BN-ReLU-conv1x1; CenterNet has no BatchNorm there, see :func:`_head`): a per-class centre
  heat-map (sigmoid), the
  box size ``(w, h)`` in input pixels, and the sub-cell centre offset. The output is one tensor
  ``N x (K + 4) x H/2 x W/2`` (heat-map logits, then w, h, then dx, dy) so the shared training loop, the
  prediction helpers and checkpoints treat it like any other model.

Why CenterNet among anchor-free detectors: one peak per object in a per-class heat-map needs no anchor
matching and no NMS (a 3x3 max-pool keeps local maxima), its losses are a focal loss and two L1 terms, and
"the target's output where the target is present" — what the Essential Graph scores — is simply the
target's heat-map channel at its objects' centres. Output stride 2 (not CenterNet's 4): the digits are
only ~4-8 px wide, and at stride 4 two small objects could share a heat-map cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excise.models.registry import register_model

OUTPUT_STRIDE = 2
# CenterNet's heat-map bias: sigmoid(-2.19) = 0.1, so training starts with few confident false peaks.
_HEATMAP_PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)


def _check_width(width: int, name: str = "width") -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{name}={width!r} must be a positive integer")
    return width


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class UNet(nn.Module):
    """Encoder-decoder segmenter; ``forward`` returns ``N x num_classes x H x W`` class-map logits."""

    class_maps = "head"  # the 1x1 conv whose output channel c is class c's map (see dense_target_mask)

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        _check_width(width)
        _check_width(num_classes, "num_classes")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 4:
            raise ValueError(f"depth={depth!r} must be an integer in [1, 4] (down-sampling levels)")
        self.depth = depth
        channels = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        previous = in_channels
        for level in range(depth):
            self.down.append(double_conv(previous, channels[level]))
            previous = channels[level]
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(channels[depth - 1], channels[depth])
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = nn.ModuleList(
            double_conv(channels[level + 1] + channels[level], channels[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        # Start every class map at a small prior probability, as CenterNet's heat-map (and RetinaNet) do: with
        # sparse foreground, maps that start at 0.5 spend their first steps learning "mostly background".
        nn.init.constant_(self.head.bias, _HEATMAP_PRIOR_BIAS)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(torch.cat([self.upsample(x), skip], dim=1))
        return self.head(x)


@register_model("unet")
def unet(in_channels: int = 1, num_classes: int = 5, width: int = 16, depth: int = 2) -> UNet:
    """U-Net-style segmenter; ``num_classes`` foreground class maps (background is "none of them")."""
    return UNet(in_channels, num_classes, width, depth)


def _head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    # CenterNet's heads are conv3x3-ReLU-conv1x1; a BatchNorm after the 3x3 makes the head's hidden layer — the
    # most class-specific layer of the detector, as the last convs before a classifier are — prunable exactly.
    return nn.Sequential(conv_bn_relu(in_channels, hidden), nn.Conv2d(hidden, out_channels, 1))


class CenterNet(nn.Module):
    """Anchor-free detector; ``forward`` returns ``N x (K + 4) x H/2 x W/2``: heat-map logits, w, h, dx, dy."""

    output_stride = OUTPUT_STRIDE
    class_maps = "heatmap.1"  # the 1x1 conv whose output channel c is class c's heat-map

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        _check_width(width)
        _check_width(num_classes, "num_classes")
        self.num_classes = num_classes
        self.stem = conv_bn_relu(in_channels, width)
        self.stage1 = nn.Sequential(conv_bn_relu(width, 2 * width, stride=2), conv_bn_relu(2 * width, 2 * width))
        self.stage2 = nn.Sequential(conv_bn_relu(2 * width, 4 * width, stride=2), conv_bn_relu(4 * width, 4 * width))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = double_conv(4 * width + 2 * width, 2 * width)
        self.size = _head(2 * width, 2 * width, 2)
        self.offset = _head(2 * width, 2 * width, 2)
        self.heatmap = _head(2 * width, 2 * width, num_classes)
        nn.init.constant_(self.heatmap[-1].bias, _HEATMAP_PRIOR_BIAS)

    def importance_layers(self) -> list[str]:
        """The convs on the path from the input to the class heat-maps, in forward order (the size and offset
        heads carry no class information): where the Essential Graph looks for a class's channels."""
        names = [name for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]
        return [n for n in names if not n.startswith(("size.", "offset.")) and n != "heatmap.1"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        feat = self.neck(torch.cat([self.upsample(s2), s1], dim=1))
        return torch.cat([self.heatmap(feat), self.size(feat), self.offset(feat)], dim=1)


@register_model("centernet")
def centernet(in_channels: int = 1, num_classes: int = 5, width: int = 16) -> CenterNet:
    """CenterNet-style detector at output stride 2; ``num_classes`` heat-map channels."""
    return CenterNet(in_channels, num_classes, width)


# --- CenterNet targets and decoding ------------------------------------------------------------------
TARGET_EXTRA_CHANNELS = 5  # w, h, dx, dy, centre class (1 + c at an object's centre cell, 0 elsewhere)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (from CornerNet): the largest corner shift that keeps IoU >= ``min_overlap``.

    The smallest of the three quadratic roots, as in the reference implementation (``utils/image.py``).
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_centernet_targets(
    boxes: list[Tensor], labels: list[Tensor], num_classes: int, image_size: tuple[int, int],
    stride: int = OUTPUT_STRIDE,
) -> Tensor:
    """Dense training targets ``N x (K + 5) x H/stride x W/stride`` from per-image boxes (xyxy, exclusive).

    Channels: ``K`` Gaussian centre heat-maps (peak 1 at each object's centre cell, CenterNet's radius),
    then at each centre cell the box width and height in input pixels, the sub-cell offset of the exact
    centre, and ``1 + class`` (0 elsewhere) so a loss can tell which class a size/offset target belongs to.
    """
    height, width = image_size
    out_h, out_w = height // stride, width // stride
    out = torch.zeros(len(boxes), num_classes + TARGET_EXTRA_CHANNELS, out_h, out_w)
    ys = torch.arange(out_h, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(out_w, dtype=torch.float32).view(1, -1)
    for n, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        for (x1, y1, x2, y2), c in zip(image_boxes.tolist(), image_labels.tolist(), strict=True):
            if not 0 <= c < num_classes:
                raise ValueError(f"box label {c} is outside [0, {num_classes - 1}]")
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            ix, iy = min(int(cx), out_w - 1), min(int(cy), out_h - 1)
            radius = max(0, int(gaussian_radius((y2 - y1) / stride, (x2 - x1) / stride)))
            sigma = (2 * radius + 1) / 6
            blob = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
            blob[(xs - ix).abs().expand_as(blob) > radius] = 0
            blob[(ys - iy).abs().expand_as(blob) > radius] = 0
            out[n, c] = torch.maximum(out[n, c], blob)
            extra = out[n, num_classes:, iy, ix]
            extra[0], extra[1] = x2 - x1, y2 - y1
            extra[2], extra[3] = cx - ix, cy - iy
            extra[4] = 1 + c
    return out


def heatmap_peaks(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep only local maxima of ``N x K x H x W`` heat-map scores (CenterNet's max-pool NMS); zeros elsewhere."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel={kernel!r} must be a positive odd integer")
    pooled = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    return heat * (pooled == heat).to(heat.dtype)


def decode_centernet(
    outputs: Tensor, num_classes: int, *, top_k: int = 50, stride: int = OUTPUT_STRIDE,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image: ``{"boxes": M x 4 xyxy, "scores": M, "labels": M}``, the ``top_k`` peaks by score.

    Boxes are ``centre +- size / 2`` in input pixels, clipped to the image when ``image_size`` is given.
    """
    if outputs.dim() != 4 or outputs.shape[1] != num_classes + 4:
        raise ValueError(f"outputs must be N x {num_classes + 4} x H x W, got {tuple(outputs.shape)}")
    n, _, out_h, out_w = outputs.shape
    heat = heatmap_peaks(torch.sigmoid(outputs[:, :num_classes]))
    size, offset = outputs[:, num_classes : num_classes + 2], outputs[:, num_classes + 2 :]
    k = min(top_k, num_classes * out_h * out_w)
    scores, flat = heat.flatten(1).topk(k, dim=1)
    labels = flat // (out_h * out_w)
    cell = flat % (out_h * out_w)
    iy, ix = (cell // out_w).float(), (cell % out_w).float()
    detections = []
    for i in range(n):
        keep = scores[i] > 0
        cells = cell[i][keep]
        w, h = size[i, 0].flatten()[cells].clamp_min(0), size[i, 1].flatten()[cells].clamp_min(0)
        cx = (ix[i][keep] + offset[i, 0].flatten()[cells]) * stride
        cy = (iy[i][keep] + offset[i, 1].flatten()[cells]) * stride
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
        if image_size is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
        detections.append({"boxes": boxes, "scores": scores[i][keep], "labels": labels[i][keep]})
    return detections


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``len(a) x len(b)`` of xyxy boxes (area = (x2 - x1) * (y2 - y1), as COCO and torchvision)."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, pure torch, with ``torchvision.ops.nms``'s contract: indices of the
    kept boxes by decreasing score; a box is dropped when its IoU with a kept, higher-scoring box is
    strictly greater than ``iou_threshold``. Ties in score keep the lower index first (stable sort)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise ValueError(f"nms needs boxes M x 4 and scores M, got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= iou[i] > iou_threshold
    return torch.as_tensor(keep, dtype=torch.long)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each label separately (``torchvision.ops.batched_nms``), indices by decreasing score."""
    keep = [torch.nonzero(labels == c).flatten()[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
            for c in labels.unique().tolist()]
    if not keep:
        return torch.empty(0, dtype=torch.long)
    kept = torch.cat(keep)
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]
