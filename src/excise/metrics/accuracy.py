"""Accuracy-type metrics: single-label accuracy, per-target accuracy and average precision."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import Tensor


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(targets) == 0:
        return float("nan")
    return 100.0 * float((logits.argmax(dim=1) == targets).float().mean())


def per_target_accuracy(logits: Tensor, targets: Tensor, threshold: float = 0.5) -> np.ndarray:
    """Accuracy of each target column (sigmoid > ``threshold``), in percent."""
    predicted = (torch.sigmoid(logits) > threshold).float()
    return 100.0 * (predicted == targets).float().mean(dim=0).numpy()


def per_target_ap(logits: Tensor, targets: Tensor) -> np.ndarray:
    """Average precision of each target column, in percent (NaN where a column has no positive)."""
    scores = torch.sigmoid(logits).numpy()
    truth = targets.numpy()
    out = np.full(truth.shape[1], np.nan)
    for column in range(truth.shape[1]):
        if truth[:, column].any():
            out[column] = 100.0 * average_precision_score(truth[:, column], scores[:, column])
    return out
