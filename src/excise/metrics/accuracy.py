"""Accuracy-type metrics: single-label accuracy, per-target accuracy and average precision."""

from __future__ import annotations

import numpy as np
import torch
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
    truth = targets.numpy() > 0.5
    out = np.full(truth.shape[1], np.nan)
    for column in range(truth.shape[1]):
        if truth[:, column].any():
            out[column] = 100.0 * average_precision(truth[:, column], scores[:, column])
    return out


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """``sklearn.metrics.average_precision_score`` of one binary column, ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds (tied scores form one threshold), without its per-call input validation: the
    bootstrap of :mod:`excise.metrics.uncertainty` computes it ~1000 times per evaluation of a multi-label model,
    where the validation took 40% of the time. ``tests/test_metrics.py`` checks it equals scikit-learn's."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], truth[order].astype(np.float64)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[last_of_threshold]
    precision = true_positives / (last_of_threshold + 1)
    recall_step = np.diff(np.r_[0.0, true_positives]) / true_positives[-1]
    return float(np.sum(recall_step * precision))
