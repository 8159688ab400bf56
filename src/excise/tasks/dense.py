"""Dense tasks — semantic segmentation and object detection — plugged into the shared machinery.

Importing this module registers, for each task: its loss with :func:`excise.training.register_task_loss`
(so the one training loop, retraining and every fine-tune-style method train it), its evaluator with
:func:`excise.metrics.evaluate.register_evaluator`, its ``target``-request splitter with
:func:`excise.requests.register_target_splitter`, and its data set (``multidigits-seg``,
``multidigits-det``: thin views over the ``multidigits`` canvases). ``excise.data`` imports it, so the data
sets are there whenever data sets are.

What forgetting a class means on a dense task (the retrained reference's training data):

- segmentation: the class's pixels are relabelled background;
- detection: the class's boxes are removed.

See :mod:`excise.tasks.segmentation` and :mod:`excise.tasks.detection` for the losses, the metrics and the
Essential-Graph importance score of each task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from excise.data.base import LabeledData
from excise.tasks import detection, segmentation
from excise.tasks.common import DENSE_DATASETS, TASK_DEFAULTS, pick_images, plot_grid, train_defaults

DENSE_TASKS: dict[str, Any] = {segmentation.TASK: segmentation, detection.TASK: detection}


def task_module(task: str) -> Any:
    if task not in DENSE_TASKS:
        raise ValueError(f"task={task!r} is not a dense task; dense tasks: {sorted(DENSE_TASKS)}")
    return DENSE_TASKS[task]


def plot_dense_grid(
    models: dict[str, nn.Module],
    data: LabeledData,
    forgotten: Sequence[int],
    path: str | Path,
    *,
    n_with: int = 4,
    n_without: int = 2,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Picture grid: the first ``n_with`` images of ``data`` that contain a forgotten class and the first
    ``n_without`` that do not (columns), showing the ground truth and each model's masks or boxes (rows).

    ``data`` must carry the original targets (a test split, not a retain view)."""
    module = task_module(data.task)
    forgotten = list(forgotten)
    rows = pick_images(module.presence(data), forgotten, n_with, n_without)
    if not rows:
        raise ValueError("the data set has no image to draw")
    panels = module.grid_panels(models, data, rows, forgotten)
    return plot_grid(data, rows, panels, title or module.grid_title(data, forgotten), path, overwrite=overwrite)


def plot_checkpoints(
    model_paths: dict[str, str | Path], request: Any, path: str | Path, *, overwrite: bool = False
) -> Path:
    """The picture grid for checkpoints of one dense data set (e.g. ``{"original": ..., "unlearned": ...}``),
    on the test canvases, for the classes ``request`` forgets."""
    from excise.checkpoint import load_checkpoint
    from excise.provenance.history import bundle_for
    from excise.requests import resolve

    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"plot={str(path)!r} must end in .png")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; refusing to overwrite it (pass --overwrite)")
    checkpoints = {name: load_checkpoint(p) for name, p in model_paths.items()}
    first = next(iter(checkpoints.values()))
    bundle = bundle_for(first)
    if bundle.task not in DENSE_TASKS:
        raise ValueError(f"--plot draws masks or boxes: {str(first.path)!r} is a {bundle.task} model, not a dense one")
    for name, checkpoint in checkpoints.items():
        if checkpoint.meta.get("dataset", {}).get("fingerprint") != first.meta.get("dataset", {}).get("fingerprint"):
            raise ValueError(f"model {name!r} ({str(checkpoint.path)!r}) was trained on another data set")
    forgotten = resolve(bundle.train, request).label_indices
    return plot_dense_grid({name: c.model for name, c in checkpoints.items()}, bundle.test, forgotten, path,
                           overwrite=overwrite)


__all__ = [
    "DENSE_DATASETS",
    "DENSE_TASKS",
    "TASK_DEFAULTS",
    "detection",
    "plot_checkpoints",
    "plot_dense_grid",
    "segmentation",
    "task_module",
    "train_defaults",
]
