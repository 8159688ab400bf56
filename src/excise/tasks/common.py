"""Pieces the dense tasks share: their registration (loss, evaluator, target splitter, ``multidigits`` view),
original-target reconstruction for evaluation, the forgotten/remaining class split of a request and the headline
metrics, and the before/after picture grid."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from excise.data.base import DatasetBundle, LabeledData, _resolve_label
from excise.data.multidigits import multidigits
from excise.data.registry import dataset_info, register_dataset
from excise.metrics.dense import nanmean
from excise.metrics.evaluate import EvalViews, register_evaluator
from excise.metrics.probe import register_instance_cells
from excise.requests import TargetSplitter, register_target_splitter
from excise.training import register_task_loss

# Data set -> task of the dense views, and the defaults `excise train --task` fills in.
DENSE_DATASETS: dict[str, str] = {}
TASK_DEFAULTS: dict[str, dict[str, str]] = {
    "segmentation": {"dataset": "multidigits-seg", "model": "unet"},
    "detection": {"dataset": "multidigits-det", "model": "centernet"},
}


def register_multidigits_view(
    name: str, task: str, make_part: Callable[[LabeledData], LabeledData]
) -> Callable[..., DatasetBundle]:
    """Register ``name`` as a thin view over ``multidigits`` (same options, same canvases) for ``task``."""

    def builder(**options: Any) -> DatasetBundle:
        base = multidigits(**options)
        meta = {**base.meta, "view_of": "multidigits", "task": task}
        return DatasetBundle(name, make_part(base.train), make_part(base.test), meta)

    # load_dataset checks options against the builder's signature: expose multidigits' own.
    builder.__signature__ = inspect.signature(multidigits)  # type: ignore[attr-defined]
    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"``{task}`` view of the ``multidigits`` canvases; takes the same options."
    base = dataset_info("multidigits")
    register_dataset(name, replace(base, task=task, source=f"synthetic: {task} view of multidigits"))(builder)
    DENSE_DATASETS[name] = task
    return builder


def register_dense_task(
    task: str,
    dataset: str,
    *,
    loss: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    evaluator: Callable[..., dict[str, float]],
    presence: Callable[[LabeledData], Tensor],
    drop: Callable[[LabeledData, tuple[int, ...]], LabeledData],
    make_part: Callable[[LabeledData], LabeledData],
    instance_cells: Callable[[LabeledData], Tensor],
) -> None:
    """Plug a dense task into the shared machinery: its per-sample loss (the one training loop), its evaluator,
    its ``target``-request splitter (``presence`` of each class per image, ``drop`` of forgotten classes), its
    data set ``dataset`` (a view over ``multidigits``) and where a linear probe reads each class
    (``instance_cells``, :func:`excise.metrics.probe.register_instance_cells`)."""
    register_task_loss(task, loss)
    register_evaluator(task, evaluator)
    register_target_splitter(task, TargetSplitter(presence=presence, drop=drop))
    register_multidigits_view(dataset, task, make_part)
    register_instance_cells(task, instance_cells)


def train_defaults(task: str | None, dataset: str | None, model: str | None) -> tuple[str, str]:
    """The data set and model ``excise train`` uses for ``--task`` (classification when ``task`` is None)."""
    if task is None:
        dataset = dataset or "digits"
        if dataset in DENSE_DATASETS:
            raise ValueError(
                f"dataset={dataset!r} is a {DENSE_DATASETS[dataset]} data set; pass --task {DENSE_DATASETS[dataset]}"
            )
        return dataset, model or "small_cnn"
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task={task!r} is not a dense task; allowed: {sorted(TASK_DEFAULTS)} (or omit --task)")
    dataset = dataset or TASK_DEFAULTS[task]["dataset"]
    if DENSE_DATASETS.get(dataset) != task:
        choices = [name for name, t in DENSE_DATASETS.items() if t == task]
        raise ValueError(f"dataset={dataset!r} has no {task} targets; --task {task} needs one of {choices}")
    return dataset, model or TASK_DEFAULTS[task]["model"]


def forgotten_and_remaining(data: LabeledData, labels: Sequence[str | int]) -> tuple[list[int], list[int]]:
    forgotten = sorted({_resolve_label(label, data.classes, "labels", "target") for label in labels})
    return forgotten, [c for c in range(data.num_classes) if c not in forgotten]


def target_eval_views(views: EvalViews, task: str) -> tuple[list[int], list[int], LabeledData, LabeledData]:
    """What a dense evaluator scores: ``(forgotten, remaining, test, train)`` — the forgotten and remaining class
    indices, and the test and training canvases with their original targets (:func:`original_view`). A dense
    model serves ``target`` requests only: any other kind is refused."""
    if views.request.kind != "target":
        raise ValueError(f"{task} models serve kind='target' requests, got kind={views.request.kind!r}")
    forgotten, remaining = forgotten_and_remaining(views.forget_set, views.request.labels)
    test = original_view(views.test_forget, views.test_retain)
    train = original_view(views.forget_set, views.retain_set)
    return forgotten, remaining, test, train


def headline_metrics(
    forget: np.ndarray, train: np.ndarray, test: np.ndarray, forgotten: Sequence[int], remaining: Sequence[int]
) -> dict[str, float]:
    """The ``FA``/``RA``/``TA``/``TA_forget`` columns every evaluator reports, here from a dense task's per-class
    scores (percent; indexed by ``forgotten`` and ``remaining``) on the forget view, the training canvases and the
    test canvases: ``FA`` = the forgotten classes' score on the forget view, ``RA`` = the remaining classes' on the
    training canvases, ``TA`` = the remaining classes' on the test canvases, ``TA_forget`` = the forgotten
    classes' on the test canvases."""
    return {
        "FA": nanmean(forget[forgotten]),
        "RA": nanmean(train[remaining]),
        "TA": nanmean(test[remaining]),
        "TA_forget": nanmean(test[forgotten]),
    }


def original_view(forget_view: LabeledData | None, retain_view: LabeledData) -> LabeledData:
    """The rows of ``retain_view`` with their original targets and extras.

    A dense retain view has the forgotten class removed from every row; the forget view holds the original
    rows that carried it. Evaluation scores the forgotten class (and everything else) against the truth, so
    it puts those rows back. Rows are matched by ``source_indices``.
    """
    if forget_view is None or len(forget_view) == 0:
        return retain_view
    position = {int(s): i for i, s in enumerate(retain_view.source_indices.tolist())}
    rows = torch.as_tensor([position[int(s)] for s in forget_view.source_indices.tolist()], dtype=torch.long)
    targets = retain_view.targets.clone()
    targets[rows] = forget_view.targets
    extras = {}
    for key, value in retain_view.extras.items():
        if isinstance(value, Tensor):
            value = value.clone()
            value[rows] = forget_view.extras[key]
        elif isinstance(value, list):
            value = list(value)
            for j, row in enumerate(rows.tolist()):
                value[row] = forget_view.extras[key][j]
        extras[key] = value
    return replace(retain_view, targets=targets, extras=extras, label_mask=None)


# --- pictures ------------------------------------------------------------------------------------
_FORGOTTEN_COLOUR = "#d62728"


def _palette(num_classes: int) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    # Reds are kept for the forgotten class; tab20's even entries first (the saturated ones).
    colours = [matplotlib.colors.to_hex(cmap(i)) for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    return [c for c in colours if c not in (_FORGOTTEN_COLOUR, "#ff9896")][:num_classes]


def pick_images(present: Tensor, forgotten: Sequence[int], n_with: int, n_without: int) -> list[int]:
    """The first ``n_with`` rows carrying a forgotten class and the first ``n_without`` carrying none."""
    carries = present[:, list(forgotten)].any(dim=1)
    with_rows = torch.nonzero(carries).flatten()[:n_with].tolist()
    without_rows = torch.nonzero(~carries).flatten()[:n_without].tolist()
    return with_rows + without_rows


def plot_grid(
    data: LabeledData,
    rows: Sequence[int],
    panels: Mapping[str, Callable[[Any, int, int], None]],
    title: str,
    path: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """A grid: one column per image in ``rows``, one row per panel; ``draw(ax, image_row, column)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from excise._files import save_figure

    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"plot={str(path)!r} must end in .png")
    fig, axes = plt.subplots(len(panels), len(rows), figsize=(1.6 * len(rows) + 0.6, 1.7 * len(panels) + 0.5),
                             squeeze=False)
    for r, (label, draw) in enumerate(panels.items()):
        for col, row in enumerate(rows):
            ax = axes[r][col]
            ax.imshow(data.inputs[row, 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            draw(ax, row, col)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, overwrite=overwrite)


def colour_for(c: int, forgotten: Sequence[int], palette: Sequence[str]) -> str:
    return _FORGOTTEN_COLOUR if c in forgotten else palette[c]


def legend_text(classes: Sequence[str], forgotten: Sequence[int]) -> str:
    names = ", ".join(classes[c] for c in forgotten)
    return f"forgotten class {names} in red; columns: images with it, then images without"


def as_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def eval_mode_outputs(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """Outputs of ``model`` in eval mode, batched, without changing its mode for good."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    model.train(was_training)
    return out
