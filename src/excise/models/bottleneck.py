"""A small SE-ResNet shaped like the Essential-Graph paper's multi-label model, sized for CPU runs.

Xu et al. (arXiv 2406.10954) prune a custom SE-ResNet (official code ``models/models.py``,
``CustomResNetFor_Multi``), not a torchvision ResNet-18: after a deep stem, its last two blocks are
``block6 = Bottleneck(512, 64, 512)`` (identity shortcut, squeeze-and-excitation) and
``block6_2 = Bottleneck(512, 64, 1024, apply_SE=False)`` (1x1 projection shortcut), then global average
pooling and a head ``linear1(1024, 256) -> linear2(256, K)`` with no non-linearity in between. Its
bottleneck differs from a torchvision/CIFAR block in ways that matter for channel pruning:

- the ReLU comes *before* the residual add (``x + relu(bn3(conv3(...)))``) and there is none after it, so a
  pruned channel removes a non-negative contribution from the block output instead of being re-mixed by a
  ReLU over ``shortcut + main``;
- the projection shortcut is a plain 1x1 conv *with bias* and no BatchNorm;
- the SE gate is a two-layer MLP on the spatially pooled block output (reduction 4), multiplied into it
  before the add.

``bottleneck_resnet`` keeps exactly that tail (the five main-path convs the paper's graph uses —
``block6.conv2``, ``block6.conv3``, ``block6_2.conv1``, ``block6_2.conv2``, ``block6_2.conv3`` — followed by
the same head) and replaces the paper's eleven stem blocks by three conv-BN-ReLU layers with two max-pools,
so it trains on 20x20 multi-digit canvases in seconds. Widths scale the paper's 64 / 512 / 1024 / 256 down to
``mid`` / ``tail // 2`` / ``tail`` / ``hidden`` (defaults 64 / 128 / 256 / 64). The head returns logits; the
sigmoid is the multi-label loss's concern (the paper's model applies it inside ``forward``).
"""

from __future__ import annotations

from torch import Tensor, nn

from excise.models.registry import register_model


class SqueezeExcite(nn.Module):
    """The paper's ``SEBlock``: pooled channels -> Linear(C, C/4) -> ReLU -> Linear(C/4, C) -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, max(1, channels // reduction))
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(max(1, channels // reduction), channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * gate.sigmoid()[:, :, None, None]


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU -> conv3x3-BN-ReLU -> conv1x1-BN-ReLU [-> SE] + shortcut (identity or 1x1 conv with bias)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, se: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()  # not in-place: some methods differentiate through the forward twice
        self.se = SqueezeExcite(out_channels) if se else None
        self.projection = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.relu(self.bn3(self.conv3(out)))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.projection is None else self.projection(x)
        return shortcut + out


class BottleneckResNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, mid: int = 64,
                 tail: int = 256, hidden: int = 64) -> None:
        super().__init__()
        for name, value in (("width", width), ("mid", mid), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if tail < 2 or tail % 2:
            raise ValueError(f"tail={tail} must be an even number >= 2 (block6 has tail // 2 channels)")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, tail // 2, 3, padding=1, bias=False), nn.BatchNorm2d(tail // 2), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block6 = Bottleneck(tail // 2, mid, tail // 2, se=True)
        self.block6_2 = Bottleneck(tail // 2, mid, tail, se=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(tail, hidden)
        self.linear2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block6_2(self.block6(self.stem(x)))
        return self.linear2(self.linear1(self.flatten(self.pool(out))))


@register_model("bottleneck_resnet")
def bottleneck_resnet(in_channels: int = 1, num_classes: int = 10, width: int = 8, mid: int = 64, tail: int = 256,
                      hidden: int = 64) -> BottleneckResNet:
    return BottleneckResNet(in_channels, num_classes, width, mid, tail, hidden)
