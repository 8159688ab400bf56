"""A small convolutional classifier: two conv-BN-ReLU stages and a linear head.

Sized for CPU work on 8x8 to 32x32 images; BatchNorm is kept because several methods
(Essential Graph pruning, IMU's BN-mode choice, MU-Mis's eval-mode input gradients) must handle it.
"""

from __future__ import annotations

from torch import Tensor, nn

from excise.models.registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width={width} must be >= 1")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("small_cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width)


class MLP(nn.Module):
    """A fully connected network on the image average-pooled to ``grid x grid`` (so one model serves any input
    size: 8 keeps digits' 8x8 as they are, 14 halves MNIST's 28x28)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: int = 256, depth: int = 2,
                 grid: int = 8) -> None:
        super().__init__()
        for name, value in (("hidden", hidden), ("depth", depth), ("grid", grid)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
        width = in_channels * grid * grid
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("mlp")
def mlp(in_channels: int = 1, num_classes: int = 10, hidden: int = 256, depth: int = 2, grid: int = 8) -> MLP:
    return MLP(in_channels, num_classes, hidden, depth, grid)
