"""A model excise did not write, for the robustness zoo (``benchmarks/zoo.py``): a plain two-convolution BatchNorm
CNN in the style of a user's own code (``nn.Sequential``, its own argument names, nothing registered), reached as
``zoo_models:plain_cnn`` through excise's import-path factories. Issue 19's first measurements used this shape."""

from __future__ import annotations

from torch import nn


def plain_cnn(channels: int = 1, n_out: int = 10, hidden: int = 32) -> nn.Module:
    """conv(3x3, hidden) - BN - ReLU - maxpool - conv(3x3, 2*hidden) - BN - ReLU - global average - linear."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(hidden, 2 * hidden, 3, padding=1), nn.BatchNorm2d(2 * hidden), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * hidden, n_out),
    )
