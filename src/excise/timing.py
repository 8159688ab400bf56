"""Timing references measured in the same run as the method: the practical floor of a gradient method."""

from __future__ import annotations

import copy
import time

from torch import nn

from excise.data.base import LabeledData
from excise.training import batch_loss, make_loader


def forward_backward_seconds(model: nn.Module, data: LabeledData, batch_size: int = 64, repeats: int = 3) -> float:
    """Wall time of one forward+backward pass over ``data`` (best of ``repeats``), on a copy of ``model``.

    Gradient methods cannot unlearn faster than one such pass over the forget set, so
    ``unlearn time / this`` says how many passes' worth of work a method spent.
    """
    probe = copy.deepcopy(model)
    probe.train()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in make_loader(data, batch_size, shuffle=False):
            probe.zero_grad(set_to_none=True)
            batch_loss(probe, batch, data.task).backward()
        best = min(best, time.perf_counter() - start)
    return best
