"""Scaling out on ``torch.distributed``: one code path whether or not ``torchrun`` launched us.

Under ``torchrun --nproc_per_node=N`` the environment carries ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``;
:func:`init_from_env` starts the process group (gloo on CPU, nccl on CUDA). Without it every helper
here degrades to the single-process identity, so callers never branch on "am I distributed".

Choices:
- **Effective batch size is independent of the process count**: each rank takes ``batch_size / N``
  samples per step and DDP averages the gradients, so one step sees ``batch_size`` samples, as on one
  process. A ``batch_size`` not divisible by ``N`` is refused.
- **BatchNorm**: on CUDA the model is converted to ``SyncBatchNorm``, so batch statistics are those of the
  whole effective batch, as on one process. ``SyncBatchNorm`` does not run on CPU tensors, so on CPU (gloo)
  each rank normalises with its own per-rank batch statistics and the running statistics of rank 0 are
  broadcast at the end; results then match single-process runs within a small tolerance, not bit for bit.
- **Rank 0 writes**: only the main process writes checkpoints, results and reports (:func:`is_main`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment; ``False`` when single-process."""
    if not launched_by_torchrun():
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks (a copy; the input is untouched). Identity on one process."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: Tensor) -> Tensor:
    return all_reduce_sum(tensor) / world_size()


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate a per-rank tensor along dim 0 over ranks (sizes may differ). Identity on one process."""
    if not is_distributed():
        return tensor
    sizes = [None] * world_size()
    dist.all_gather_object(sizes, tensor.shape[0])
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s object on every rank (e.g. an Essential-Graph computed on rank 0)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def on_main(fn: Callable[[], T]) -> T:
    """Compute on rank 0 and broadcast the result to every rank."""
    return broadcast_object(fn() if is_main() else None)


def per_rank_batch_size(batch_size: int) -> int:
    n = world_size()
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {n} processes: the effective batch size must not "
            "depend on the process count"
        )
    return batch_size // n


def wrap_model(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed; the model itself otherwise."""
    if not is_distributed():
        return model
    if torch.cuda.is_available():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    # Conv weight gradients of 1-channel inputs come out with strides DDP's buckets do not copy
    # directly; the copy is correct, only slower, so the warning is noise here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Per-rank buffers are the point here; the suggested replacement still syncs them at init.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated")
    # broadcast_buffers=False: per-rank BatchNorm statistics on CPU (see module docstring).
    return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)


def sync_buffers(model: nn.Module) -> None:
    """Make every rank's buffers (BatchNorm running statistics) equal to rank 0's."""
    if not is_distributed():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
