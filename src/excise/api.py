"""The Python API behind the CLI: train, unlearn and evaluate models stored as checkpoints.

Each function validates its inputs up front (data set, model, request, method hyper-parameters,
output path) before any training starts, so a bad flag fails in a second, not after an hour, and a
failed run leaves existing files untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from excise import distributed
from excise.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from excise.data import DatasetBundle, load_dataset
from excise.data.registry import dataset_builder
from excise.experiment import RunRecord, build_model, run_method
from excise.methods import get_method
from excise.metrics import EvalViews, avg_gap, evaluate
from excise.requests import ForgetRequest, split
from excise.training import TrainConfig, seed_everything, train


def _dataset_record(bundle: DatasetBundle, options: dict[str, Any], seed: int, root: str | None) -> dict[str, Any]:
    return {"name": bundle.name, "options": options, "seed": seed, "root": root, "fingerprint": bundle.fingerprint()}


def _check_output(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"out={str(out)!r} must end in .safetensors")
    for path in (out, out.with_suffix(".json")):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{str(path)!r} exists; refusing to overwrite it (pass --overwrite)")
    return out


def train_model(
    dataset: str,
    model: str,
    out: str | Path,
    *,
    recipe: TrainConfig | None = None,
    model_kwargs: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    root: str | None = None,
    request: ForgetRequest | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Checkpoint:
    """Train a model on ``dataset`` (on the retain set of ``request`` if given: a retrained reference)."""
    out = _check_output(out, overwrite)
    recipe = recipe or TrainConfig()
    dataset_options = dict(dataset_options or {})
    dataset_builder(dataset)
    bundle = load_dataset(dataset, root=root, seed=seed, **dataset_options)
    training_set = bundle.train
    if request is not None:
        _, training_set = split(bundle.train, request)
    network = build_model(bundle, model, seed=seed, **(model_kwargs or {}))
    seed_everything(seed)
    stats = train(network, training_set, recipe, seed=seed, description="train")
    meta = {
        "kind": "original" if request is None else "retrained",
        "dataset": _dataset_record(bundle, dataset_options, seed, root),
        "recipe": recipe.to_dict(),
        "seed": seed,
        "request": None if request is None else request.to_dict(),
        "train_seconds": stats.seconds,
        "final_loss": stats.losses[-1],
    }
    if request is not None:
        meta["metrics"] = evaluate(network, EvalViews.from_bundle(bundle, request), seed=seed)
    # Only rank 0 writes; the others wait until the file is complete, then read the same checkpoint.
    if distributed.is_main():
        save_checkpoint(out, network, meta, overwrite=overwrite)
    distributed.barrier()
    return load_checkpoint(out)


def bundle_for(checkpoint: Checkpoint) -> DatasetBundle:
    """Rebuild the data set a checkpoint was trained on, and check it is the same data."""
    record = checkpoint.meta.get("dataset")
    if not record:
        raise ValueError(f"checkpoint {str(checkpoint.path)!r} records no data set; it was not trained by excise")
    bundle = load_dataset(record["name"], root=record.get("root"), seed=record["seed"], **record.get("options", {}))
    if record.get("fingerprint") and bundle.fingerprint() != record["fingerprint"]:
        raise ValueError(
            f"the data set {record['name']!r} now differs from the one checkpoint {str(checkpoint.path)!r} was "
            "trained on (fingerprint mismatch): refusing to evaluate against other data"
        )
    return bundle


@dataclass
class UnlearnOutcome:
    model: nn.Module
    record: RunRecord
    path: Path | None


def unlearn_checkpoint(
    model_path: str | Path,
    method: str,
    request: ForgetRequest,
    *,
    out: str | Path | None = None,
    hyperparameters: dict[str, Any] | None = None,
    reference_path: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    graph: str | Path | None = None,
) -> UnlearnOutcome:
    """Unlearn ``request`` from the model at ``model_path``; the input checkpoint is never modified.

    ``graph``: an essential-graph file (``excise graph``) for the methods that prune with one."""
    if out is not None:
        out = _check_output(out, overwrite)
        if Path(out).resolve() == Path(model_path).resolve():
            raise ValueError("out must differ from the input model: the original model is never overwritten")
    if graph is not None:
        from excise.graph import graph_hyperparameters

        hyperparameters = graph_hyperparameters(method, hyperparameters, graph)
    unlearner = get_method(method, **(hyperparameters or {}))
    original = load_checkpoint(model_path)
    bundle = bundle_for(original)
    views = EvalViews.from_bundle(bundle, request)
    unlearner.check_request(request, bundle.task)
    reference = load_checkpoint(reference_path) if reference_path else None
    recipe = TrainConfig.from_dict(original.meta.get("recipe"))
    model, record = run_method(unlearner, original.model, views, recipe, seed=seed)
    if reference is not None:
        ref_metrics = reference.meta.get("metrics") or evaluate(reference.model, views, seed=seed)
        record.avg_gap = avg_gap(record.metrics, ref_metrics)
        if reference.meta.get("train_seconds"):
            record.speedup = reference.meta["train_seconds"] / max(record.seconds, 1e-9)
    path = None
    if out is not None:
        meta = {
            "kind": "unlearned",
            "dataset": original.meta["dataset"],
            "recipe": original.meta.get("recipe"),
            "seed": seed,
            "request": request.to_dict(),
            "method": method,
            "method_config": record.config,
            "parent_sha256": original.sha256,
            "metrics": record.metrics,
            "unlearn_seconds": record.seconds,
        }
        path = Path(out)
        if distributed.is_main():
            save_checkpoint(out, model, meta, overwrite=overwrite)
        distributed.barrier()
    return UnlearnOutcome(model, record, path)


def evaluate_checkpoint(model_path: str | Path, request: ForgetRequest, seed: int = 0) -> dict[str, float]:
    checkpoint = load_checkpoint(model_path)
    bundle = bundle_for(checkpoint)
    return evaluate(checkpoint.model, EvalViews.from_bundle(bundle, request), seed=seed)
