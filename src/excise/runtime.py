"""One-time process setup, paid before any timed region so that every entry point times the same work.

A fresh Python process pays for things the first time torch does them, not every time:

- the first ``torch.optim`` optimizer imports ``torch._dynamo`` and, through it, sympy and mpmath: about 800
  modules, measured at 1.0-1.3 s of a digits-sized method's first call on an idle 2-core machine (``imu`` 1.08 s
  first vs 0.06 s second; ``gradient_ascent`` 1.22 vs 0.06; ``mu_mis`` 1.59 vs 0.52) and at 2-7 s on a loaded one;
- the first ``torch.func`` transform, double backward, convolution and batch norm set up their kernels and the
  intra-op thread pool.

- the first pass of a model over inputs of a given shape creates that shape's kernels (oneDNN primitives) and
  grows the allocator: 40 ms of a 90 ms ``imu`` run on digits in a fresh process, after the above.

``excise bench`` used to escape this because training the original model paid first, while a one-shot
``excise unlearn`` paid it inside the method's timed region: the same method on the same checkpoint was timed
~4x slower from the CLI than from the API. :func:`prepare` does the first part once, on tiny tensors, and
:func:`excise.methods.base.warm_model` the second, once per model class, input shape and batch size, on a copy
of the model; :meth:`excise.methods.base.UnlearningMethod.unlearn` calls both (and :func:`excise.training.train`
the first) before starting its clock, and reports the seconds they took (``setup_seconds`` in a method's stats).
"""

from __future__ import annotations

import time

import torch
from torch import nn

_done = False


def prepare() -> float:
    """Do the process's one-time torch setup; the seconds it took (0.0 once done)."""
    global _done
    if _done:
        return 0.0
    start = time.perf_counter()
    weight = torch.zeros(4, requires_grad=True)
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        optimizer = optimizer_class([weight], lr=0.1)  # the first one imports torch._dynamo (and sympy)
        (weight * 2.0).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # Per-sample gradients (IMU's influence, SSD's and JiT's Fisher) go through torch.func.
    torch.func.vmap(torch.func.grad(lambda w, x: (w * x).sum()), in_dims=(None, 0))(weight.detach(),
                                                                                     torch.ones(3, 4))
    # Convolution, batch norm and double backward (MU-Mis' input-gradient objective) on a tiny input.
    images = torch.randn(2, 1, 6, 6, requires_grad=True)
    block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    (input_grad,) = torch.autograd.grad(block(images).square().sum(), images, create_graph=True)
    input_grad.square().sum().backward()
    _done = True
    return time.perf_counter() - start


__all__ = ["prepare"]
