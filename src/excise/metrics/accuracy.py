"""Accuracy-type metrics: single-label accuracy, per-target accuracy and average precision."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def check_logits(logits: Tensor, where: str, task: str = "multiclass") -> Tensor:
    """``logits`` as they are, or a clear error: every metric assumes finite logits (an all-NaN row's argmax is
    class 0, and the attacks fail deep in scikit-learn), and a multiclass model must return logits, not
    probabilities — excise applies the softmax itself, and a second one flattens every output (a new user's softmax
    model read "fully forgotten" on two MIA variants and half the gap, with no warning)."""
    finite = torch.isfinite(logits).all(dim=-1) if logits.dim() > 1 else torch.isfinite(logits)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"the model's outputs are not finite (NaN or inf) on {bad} of {len(logits)} rows of {where}: "
                         "its weights or inputs are broken; no metric can be computed from them")
    if task == "multiclass" and logits.dim() == 2 and logits.shape[1] > 1 and len(logits) > 1:
        sums = logits.double().sum(dim=1)
        if bool((logits >= 0).all()) and bool(((sums - 1).abs() < 1e-4).all()):
            raise ValueError(f"the model returns probabilities on {where} (every row non-negative, summing to 1), not "
                             "logits: excise applies the softmax itself; return the logits (or log-probabilities), "
                             "e.g. drop the final nn.Softmax")
    return logits


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
