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
- **Methods with their own loops** shard each batch's rows across ranks (:func:`shard_rows`, contiguous
  chunks in rank order, so a gather restores the original order), scale the local loss by the local share of
  the batch and sum gradients over ranks (:func:`all_reduce_gradients`): one step is the single-process step
  on the whole batch. Statistics that drive a decision (a stopping rule, a Fisher diagonal, per-sample
  influences) are reduced or gathered so every rank decides the same; what no method parallelises runs
  replicated (same data, same seed on every rank), and :func:`broadcast_module` makes rank 0's result final.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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
    # Torn down before the interpreter exits: a gloo group left to the exit handlers can abort a rank at exit
    # ("terminate called without an active exception", SIGABRT) after all its work is done — seen once in a CI run
    # of tests/test_distributed.py, which then failed a job that had written every result. PyTorch asks for this.
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_independent = False


def is_distributed() -> bool:
    """True under torchrun with more than one process, outside :func:`independent` blocks."""
    return not _independent and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def independent() -> Iterator[None]:
    """Run a block as if single-process: no collectives, no DDP, this rank acts alone (and as "main").

    For work dealt to one rank (a benchmark cell): the caller decides who writes *before* entering."""
    global _independent
    previous, _independent = _independent, True
    try:
        yield
    finally:
        _independent = previous


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


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[T] = [None] * world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, obj)
    return gathered


def on_main(fn: Callable[[], T]) -> T:
    """Compute on rank 0 and broadcast the result to every rank."""
    return broadcast_object(fn() if is_main() else None)


def shard_slice(n: int) -> slice:
    """This rank's contiguous chunk of ``n`` rows (``numpy.array_split`` sizes; may be empty when n < N)."""
    size, r = world_size(), rank()
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def shard_rows(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The rows of ``batch`` (a dict of tensors sharing dim 0) that this rank computes on."""
    n = len(next(iter(batch.values())))
    rows = shard_slice(n)
    return {key: value[rows] if isinstance(value, Tensor) and value.dim() > 0 and len(value) == n else value
            for key, value in batch.items()}


def all_reduce_gradients(params: Iterable[Tensor]) -> None:
    """Sum ``.grad`` over ranks in place (missing gradients count as zeros) with one collective."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def all_reduce_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Sum every tensor of ``tensors`` over ranks (one collective; copies, inputs untouched)."""
    if not is_distributed():
        return dict(tensors)
    names = list(tensors)
    flat = all_reduce_sum(torch.cat([tensors[n].reshape(-1) for n in names]))
    out, offset = {}, 0
    for n in names:
        out[n] = flat[offset:offset + tensors[n].numel()].view_as(tensors[n]).clone()
        offset += tensors[n].numel()
    return out


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (the result rank 0 writes)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=src)


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
