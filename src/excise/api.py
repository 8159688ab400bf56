"""The Python API behind the CLI: train, unlearn and evaluate models stored as checkpoints.

Each function validates its inputs up front (data set, model, request, method hyper-parameters,
output path) before any training starts, so a bad flag fails in a second, not after an hour, and a
failed run leaves existing files untouched.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from excise import distributed
from excise.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    versions,
)
from excise.data import DatasetBundle, LabeledData, load_dataset
from excise.data.registry import dataset_builder
from excise.experiment import RunRecord, build_model, judge, reference_replicate_metrics, run_method
from excise.methods import get_method
from excise.metrics import EvalViews, avg_gap, evaluate
from excise.metrics.uncertainty import Uncertainty
from excise.requests import ForgetRequest, RequestError, resolve
from excise.sequential import cumulative_views, step_forget_sets
from excise.training import TrainConfig, seed_everything, train


def _dataset_record(bundle: DatasetBundle, options: dict[str, Any], seed: int, root: str | None) -> dict[str, Any]:
    return {"name": bundle.name, "options": options, "seed": seed, "root": root, "fingerprint": bundle.fingerprint()}


def _check_output(out: str | Path, overwrite: bool, suffix: str = ".safetensors") -> Path:
    """Refuse, before any work, an output that could not be written at the end of the run."""
    out = Path(out)
    if out.suffix != suffix:
        raise ValueError(f"out={str(out)!r} must end in {suffix}")
    written = (out, out.with_suffix(".json")) if suffix == ".safetensors" else (out,)
    for path in written:
        if path.is_dir():
            raise ValueError(f"out={str(out)!r}: {str(path)!r} is a directory")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{str(path)!r} exists; refusing to overwrite it (pass --overwrite)")
    # The first existing ancestor decides whether the directories can be created and the files written.
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"out={str(out)!r}: {str(ancestor)!r} is a file, not a directory")
    # Try it: os.access answers yes to root on a read-only file system (/sys), where the write failed only after
    # the work, with a bare "[Errno 1] Operation not permitted".
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise ValueError(f"out={str(out)!r}: cannot write in {str(ancestor)!r} ({err.strerror or err})") from None
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
    request: ForgetRequest | list[ForgetRequest] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Checkpoint:
    """Train a model on ``dataset`` (on the retain set of ``request`` if given: a retrained reference). A list
    of requests is a sequence: the reference of its last step, trained on what remains after all of them."""
    out = _check_output(out, overwrite)
    recipe = recipe or TrainConfig()
    dataset_options = dict(dataset_options or {})
    dataset_builder(dataset)
    bundle = load_dataset(dataset, root=root, seed=seed, **dataset_options)
    requests = [] if request is None else request if isinstance(request, list) else [request]
    request = requests[-1] if requests else None
    training_set = bundle.train
    views = None
    if requests:
        views, _ = history_views(bundle, None, requests, len(requests) - 1)
        training_set = views.retain_set
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
    if len(requests) > 1:
        meta["history"] = [r.to_dict() for r in requests]  # retrained without all of them
    meta.update(fit_accuracy(network, training_set, bundle.test))
    if views is not None:
        meta["metrics"] = evaluate(network, views, seed=seed)
    # Only rank 0 writes; the others wait until the file is complete, then read the same checkpoint.
    if distributed.is_main():
        save_checkpoint(out, network, meta, overwrite=overwrite)
    distributed.barrier()
    return load_checkpoint(out)


def fit_accuracy(model: nn.Module, train_set: LabeledData, test_set: LabeledData) -> dict[str, float]:
    """``train_accuracy`` / ``test_accuracy`` in percent (a multi-label model's mean per-target accuracy), so
    `excise train` says what it built; empty for dense and sequence tasks, whose own metrics are not accuracies."""
    from excise.metrics.accuracy import accuracy, per_target_accuracy
    from excise.training import predict_logits

    def score(data: LabeledData) -> float:
        logits = predict_logits(model, data)
        if data.task == "multiclass":
            return accuracy(logits, data.targets)
        return float(per_target_accuracy(logits, data.targets).mean())

    if train_set.task not in ("multiclass", "multilabel"):
        return {}
    return {"train_accuracy": score(train_set), "test_accuracy": score(test_set),
            "accuracy_of": "top-1" if train_set.task == "multiclass" else "mean per-target (threshold 0.5)"}


def bundle_for(checkpoint: Checkpoint) -> DatasetBundle:
    """Rebuild the data set a checkpoint was trained on, and check it is the same data."""
    record = checkpoint.meta.get("dataset")
    if not record:
        raise ValueError(f"checkpoint {str(checkpoint.path)!r} records no data set; it was not trained by excise")
    where = f"the sidecar of {str(checkpoint.path)!r}"
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: 'dataset' must be an object, not {type(record).__name__}")
    expected = {"name": str, "seed": int, "options": dict}
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise CheckpointError(
                f"{where}: dataset.{key}={record.get(key)!r} must be a {kind.__name__} (fields: {sorted(expected)})"
            )
    bundle = load_dataset(record["name"], root=record.get("root"), seed=record["seed"], **record["options"])
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
    uncertainty: Uncertainty | None = None,
    allow_reference_mismatch: bool = False,
) -> UnlearnOutcome:
    """Unlearn ``request`` from the model at ``model_path``; the input checkpoint is never modified.

    ``graph``: an essential-graph file (``excise graph``) for the methods that prune with one. ``uncertainty``:
    bootstrap intervals of the metrics and (with a reference) of the average gap; default
    :class:`~excise.metrics.uncertainty.Uncertainty` (``Uncertainty(replicates=0)``: none)."""
    if graph is not None:
        from excise.graph import graph_hyperparameters

        hyperparameters = graph_hyperparameters(method, hyperparameters, graph)
    unlearner = get_method(method, **(hyperparameters or {}))
    # Every check before any model is loaded or any work starts, in the order a user fixes them: the request
    # against the data (rebuilt from the sidecar alone), the method's support for it, the output path, the
    # reference. (An unwritable --out used to surface only when the result was written.)
    head = Checkpoint(None, read_meta(model_path), Path(model_path))
    bundle = bundle_for(head)
    # A checkpoint that already served requests continues its sequence: this step unlearns only what is new
    # and is judged against everything forgotten so far, as excise.sequential.run_sequence does.
    earlier, complete = served_requests(head)
    own_views = EvalViews.from_bundle(bundle, request)  # the request's own errors first, as on a fresh model
    unlearner.check_request(request, bundle.task)
    if out is not None:
        out = _check_output(out, overwrite)
        if Path(out).resolve() == Path(model_path).resolve():
            raise ValueError("out must differ from the input model: the original model is never overwritten")
    if not complete:
        warnings.warn(history_warning(head, earlier), stacklevel=2)
    requests = [*earlier, request]
    if earlier:
        views, step_forget = history_views(bundle, head, requests, len(earlier))
        step_views = EvalViews(step_forget, views.retain_set, views.test_retain, views.test_forget, request)
    else:
        views = step_views = own_views
    recipe = recipe_of(head)
    uncertainty = Uncertainty() if uncertainty is None else uncertainty
    reference, ref_metrics, ref_replicates = None, None, None
    if reference_path:
        # Checked and evaluated before the run: a wrong reference would otherwise fail (or, worse, give a
        # gap to retrain for another request) only after the unlearning work is done.
        reference = load_checkpoint(reference_path)
        # the known history (warned above if partial)
        mismatch = check_reference(reference, head, requests, bundle.train, allow_mismatch=allow_reference_mismatch)
        if mismatch:
            warnings.warn(f"comparing with a reference trained differently ({'; '.join(mismatch)}): recorded beside "
                          "the gap", stacklevel=2)
        ref_metrics = evaluate(reference.model, views, seed=seed)
        if uncertainty.enabled:
            ref_replicates = reference_replicate_metrics(reference.model, views, uncertainty, seed=seed)
    original = load_checkpoint(model_path)
    model, record = run_method(unlearner, original.model, step_views, recipe, seed=seed,
                               reference_model=None if reference is None else reference.model, eval_views=views,
                               uncertainty=uncertainty, reference_replicates=ref_replicates)
    if reference is not None:
        record.avg_gap = avg_gap(record.metrics, ref_metrics)
        # Across runs: the retrain time is the one the reference checkpoint recorded (possibly another machine
        # or thread count). Same-run ratios are what `excise bench` and the demo measure.
        if reference.meta.get("train_seconds"):
            record.speedup = reference.meta["train_seconds"] / max(record.seconds, 1e-9)
    path = None
    if out is not None:
        meta = {
            "kind": "unlearned",
            "dataset": original.meta["dataset"],
            "recipe": original.meta.get("recipe"),
            "seed": seed,
            "train_seed": training_seed(original),  # what a retrained reference must be trained with
            "request": request.to_dict(),
            "history": [r.to_dict() for r in requests],  # every request this model has served, oldest first
            "history_complete": complete,
            "new_samples": len(step_views.forget_set),  # what this step unlearned
            "forget_size": len(views.forget_set),  # what the metrics judge: everything forgotten so far
            "method": method,
            "method_config": record.config,
            "parent_sha256": original.sha256,
            "metrics": record.metrics,
            "evidence": None if record.evidence is None else record.evidence.to_dict(),
            "unlearn_seconds": record.seconds,
        }
        if reference is not None:
            meta["reference"] = {"path": str(reference.path), "sha256": reference.sha256, "metrics": ref_metrics,
                                 "avg_gap": record.avg_gap, "speedup_across_runs": record.speedup,
                                 "mismatch": mismatch}
        if graph is not None:
            from excise.checkpoint import sha256_file

            meta["graph"] = {"path": str(graph), "sha256": sha256_file(graph)}
        path = Path(out)
        if distributed.is_main():
            save_checkpoint(out, model, meta, overwrite=overwrite)
        distributed.barrier()
    return UnlearnOutcome(model, record, path)


def recipe_of(checkpoint: Checkpoint) -> TrainConfig:
    """The training recipe a checkpoint records (methods scale their budgets from it)."""
    try:
        return TrainConfig.from_dict(checkpoint.meta.get("recipe"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the sidecar of {str(checkpoint.path)!r} records an invalid recipe: {err}") from err


def served_requests(checkpoint: Checkpoint) -> tuple[list[ForgetRequest], bool]:
    """The requests a checkpoint has served already, oldest first, and whether that history is complete.

    A retrained reference has served the request(s) it was retrained without; a trained model none. An unlearned
    checkpoint written before excise recorded histories knows only its own last request (incomplete), and so
    does every checkpoint continued from it. A sidecar that contradicts itself is refused, naming the field."""
    meta = checkpoint.meta
    kind = meta.get("kind")
    if kind not in ("unlearned", "retrained"):
        return [], True
    where = f"the sidecar of {str(checkpoint.path)!r}"
    if not meta.get("request"):
        raise CheckpointError(f"{where} is of kind {kind!r} but records no 'request'")
    history = meta.get("history")
    complete = True
    if history is None:
        history = [meta["request"]]
        complete = kind == "retrained"  # an unlearned model of an older excise: earlier requests unknown
    elif kind == "unlearned":
        complete = meta.get("history_complete", True) is True
    try:
        if not isinstance(history, list) or not history:
            raise ValueError(f"'history' must be a non-empty list of requests, got {history!r}")
        requests = [ForgetRequest.from_dict(r) for r in history]
        last = ForgetRequest.from_dict(meta["request"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where} records an invalid request history: {err}") from err
    if requests[-1] != last:
        raise CheckpointError(f"{where}: the last entry of 'history' ({requests[-1].describe()!r}) is not its "
                              f"'request' ({last.describe()!r})")
    return requests, complete


def history_warning(checkpoint: Checkpoint, requests: list[ForgetRequest]) -> str:
    """What an incomplete history means for the numbers built on it."""
    if "history" not in checkpoint.meta:
        return (f"{str(checkpoint.path)!r} was written by an excise that did not record request histories: only "
                f"its last request ({_describe(requests)}) is known, so anything forgotten before it is neither "
                "excluded from the retain set nor judged; start from the original model for an exact sequence")
    return (f"the request history of {str(checkpoint.path)!r} is incomplete: it continues a checkpoint written by "
            f"an older excise, so requests served before {requests[0].describe()!r} are unknown and neither "
            "excluded from the retain set nor judged")


def _describe(requests: list[ForgetRequest]) -> str:
    return " then ".join(repr(r.describe()) for r in requests)


def history_views(bundle: DatasetBundle, checkpoint: Checkpoint | None, requests: list[ForgetRequest],
                  earlier: int) -> tuple[EvalViews, LabeledData]:
    """The cumulative views of ``requests`` and the last one's own forget set; an error names the checkpoint's
    history (its first ``earlier`` requests) rather than a sequence the user never wrote."""
    if len(requests) == 1:
        views = EvalViews.from_bundle(bundle, requests[0])
        return views, views.forget_set
    try:
        return cumulative_views(bundle, requests)[-1], step_forget_sets(bundle.train, requests)[-1]
    except RequestError as err:
        if checkpoint is None:
            raise
        raise RequestError(f"{str(checkpoint.path)!r} has already served {_describe(requests[:earlier])}; "
                           f"{requests[-1].describe()!r} cannot follow it: {err}") from err


def _forgotten(data: LabeledData, requests: list[ForgetRequest]) -> tuple[list[int], list[int]]:
    """What ``requests`` forget together on ``data``: (training rows, label columns of ``target`` requests)."""
    rows: set[int] = set()
    labels: set[int] = set()
    for r in requests:
        resolved = resolve(data, r)
        rows |= set(np.asarray(resolved.forget_indices).tolist())
        if r.kind == "target":
            labels |= set(resolved.label_indices)
    return sorted(rows), sorted(labels)


def check_reference(reference: Checkpoint, original: Checkpoint, request: ForgetRequest | list[ForgetRequest],
                    data: LabeledData, *, allow_mismatch: bool = False) -> list[str]:
    """A retrained reference must be one: trained by excise on the same data without exactly what ``request``
    (or a sequence of requests, together) forgets — compared as resolved on ``data``, so ``class:3`` and
    ``{"kind": "class", "labels": [3]}`` agree, and so do ``class:3`` then ``class:5`` and ``class:3,5`` — and
    trained like the original: the same architecture and arguments, recipe and training seed
    (:func:`reference_differences`). A difference there is refused unless ``allow_mismatch``; the differences
    found are returned, to be recorded beside the numbers they affect."""
    requests = request if isinstance(request, list) else [request]
    where = f"reference {str(reference.path)!r}"
    kind = reference.meta.get("kind")
    if kind != "retrained":
        raise ValueError(f"{where} records kind={kind!r}, not a retrained reference (train one with "
                         "`excise train --request ...`)")
    try:
        retrained_for, _ = served_requests(reference)
        if not retrained_for:
            raise ValueError("it records no request")
    except ValueError as err:
        raise CheckpointError(f"{where} records an invalid request: {err}") from err
    same = ((requests[0].kind == "target") == (retrained_for[0].kind == "target")
            and _forgotten(data, requests) == _forgotten(data, retrained_for))
    if not same:
        hint = ""
        if len(requests) > 1 and len({r.kind for r in requests}) == 1 and requests[0].kind != "samples":
            labels = ",".join(dict.fromkeys(str(label) for r in requests for label in r.labels))
            hint = f"; retrain one with `excise train --request {requests[0].kind}:{labels}`"
        if len(requests) > 1 and not hint:
            hint = "; retrain one with `excise train " + " ".join(f"--request {r.describe()}" for r in requests) + "`"
        raise ValueError(f"{where} was retrained without {_describe(retrained_for)}, but this run forgets "
                         f"{_describe(requests)}: its metrics are not this request's reference{hint}")
    fingerprints = []
    for role, checkpoint in (("reference", reference), ("original model", original)):
        record = checkpoint.meta.get("dataset")
        fingerprint = record.get("fingerprint") if isinstance(record, dict) else None
        if not fingerprint:
            raise CheckpointError(
                f"the sidecar of the {role} {str(checkpoint.path)!r} records no dataset.fingerprint, so the "
                "reference cannot be shown to be trained on the original's data; train both with this excise, "
                "or run without --reference")
        fingerprints.append(fingerprint)
    if fingerprints[0] != fingerprints[1]:
        raise ValueError(f"{where} was trained on other data than {str(original.path)!r} (data set fingerprint "
                         f"{str(fingerprints[0])[:12]} vs {str(fingerprints[1])[:12]})")
    differences = reference_differences(reference, original)
    if differences and not allow_mismatch:
        # Measured: a width-8, 2-epoch reference for a width-32, 20-epoch original gave "avg gap to retrain 22.81";
        # the matching reference gives 3.42.
        raise ValueError(f"{where} was not trained like {str(original.path)!r} ({'; '.join(differences)}): the gap "
                         "to it would measure the difference in training, not in forgetting. Retrain it with the "
                         "original's settings, or pass --allow-reference-mismatch to compare anyway (recorded)")
    return differences


def training_seed(checkpoint: Checkpoint) -> int | None:
    """The seed the weights were trained with (an unlearned checkpoint carries its original's; ``None`` when an
    older sidecar does not say)."""
    meta = checkpoint.meta
    return meta.get("seed") if meta.get("kind") in ("original", "retrained") else meta.get("train_seed")


def reference_differences(reference: Checkpoint, original: Checkpoint) -> list[str]:
    """Each way ``reference`` was trained differently from ``original``, as ``field: value (reference) vs value
    (original)``: the model's name and every argument, every recipe field, the training seed. A field one sidecar
    does not record is not compared."""
    def flat(meta: dict[str, Any]) -> dict[str, Any]:
        model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
        out: dict[str, Any] = {}
        if "name" in model:
            out["model"] = model["name"]
        out.update({key: value for key, value in (model.get("kwargs") or {}).items()})
        recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
        out.update({f"recipe.{key}": value for key, value in recipe.items()})
        return out

    mine, theirs = flat(reference.meta), flat(original.meta)
    mine["seed"], theirs["seed"] = training_seed(reference), training_seed(original)
    return [f"{key}: {mine[key]!r} (reference) vs {theirs[key]!r} (original)"
            for key in dict.fromkeys([*mine, *theirs])
            if key in mine and key in theirs and mine[key] is not None and theirs[key] is not None
            and mine[key] != theirs[key]]


def evaluate_checkpoint(model_path: str | Path, request: ForgetRequest | None = None,
                        seed: int = 0) -> dict[str, float]:
    """Every metric of the checkpoint at ``model_path`` for ``request`` (default: its history), in percent."""
    return evaluation_record(model_path, request, seed, uncertainty=Uncertainty(replicates=0))["metrics"]


def evaluation_record(model_path: str | Path, request: ForgetRequest | None = None, seed: int = 0, *,
                      reference_path: str | Path | None = None, uncertainty: Uncertainty | None = None,
                      allow_reference_mismatch: bool = False) -> dict[str, Any]:
    """The metrics with what produced them: the model's path and sha256, the request(s), the seed, the data's
    fingerprint and the versions — so a number read back later can be traced and reproduced — and each metric's
    bootstrap interval (``uncertainty``, default :class:`~excise.metrics.uncertainty.Uncertainty`).

    Without ``request`` the model is judged against every request it has served (its sidecar's history, as
    `excise unlearn` judged it); a model that served none needs one. With ``reference_path`` (a retrained
    reference, checked as `excise unlearn --reference` checks it) also the average gap to it, its paired interval
    and the distances of the predictions."""
    uncertainty = Uncertainty() if uncertainty is None else uncertainty
    checkpoint = load_checkpoint(model_path)
    bundle = bundle_for(checkpoint)  # checks the data against the fingerprint the sidecar records
    complete = True
    if request is not None:
        requests = [request]
    else:
        requests, complete = served_requests(checkpoint)
        if not requests:
            raise ValueError(f"{str(model_path)!r} has served no forget request (kind "
                             f"{checkpoint.meta.get('kind')!r}): give --request to judge it against one")
        if not complete:
            warnings.warn(history_warning(checkpoint, requests), stacklevel=2)
    views, _ = history_views(bundle, checkpoint, requests, len(requests) - 1)
    reference, mismatch = None, []
    if reference_path is not None:
        reference = load_checkpoint(reference_path)
        mismatch = check_reference(reference, checkpoint, requests, bundle.train,
                                   allow_mismatch=allow_reference_mismatch)
    metrics, found = judge(checkpoint.model, views, seed=seed, uncertainty=uncertainty,
                           reference_model=None if reference is None else reference.model)
    out: dict[str, Any] = {
        "metrics": metrics,
        "intervals": {} if found is None else found.intervals,
        "uncertainty": uncertainty.to_dict(),
        "model": {"path": str(checkpoint.path.resolve()), "sha256": checkpoint.sha256,
                  "kind": checkpoint.meta.get("kind")},
        "request": requests[-1].to_dict(),
        "history": [r.to_dict() for r in requests],  # what the metrics judge: every request, together
        "history_complete": complete,
        "seed": seed,
        "data": checkpoint.meta["dataset"],  # name, options, seed, root, fingerprint
        "versions": versions(),
    }
    if reference is not None:
        reference_metrics = evaluate(reference.model, views, seed=seed)
        out["reference"] = {"path": str(reference.path.resolve()), "sha256": reference.sha256,
                            "metrics": reference_metrics, "mismatch": mismatch}
        out["avg_gap"] = avg_gap(metrics, reference_metrics)
        out["avg_gap_interval"] = None if found is None else found.avg_gap_interval
    return out


def ulira_audit(
    dataset: str,
    model: str,
    methods: list[str],
    *,
    hyperparameters: dict[str, dict[str, Any]] | None = None,
    recipe: TrainConfig | None = None,
    config: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    root: str | None = None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Any:
    """U-LiRA over ``methods`` (:mod:`excise.bench.ulira`): train the shadows on ``dataset``, unlearn with each
    method, attack. Writes the report as JSON to ``out`` (with the data set's record and the versions)."""
    from excise.bench.ulira import ULiraConfig, resolve_methods, run_ulira

    config = config or ULiraConfig()
    if out is not None:
        out = _check_output(out, overwrite, suffix=".json")
    dataset_options = dict(dataset_options or {})
    dataset_builder(dataset)
    bundle = load_dataset(dataset, root=root, seed=config.seed, **dataset_options)
    hyperparameters = hyperparameters or {}
    unknown = sorted(set(hyperparameters) - set(methods))
    if unknown:
        raise ValueError(f"hyper-parameters given for {unknown}, which are not among the methods {methods}")
    # Unknown or inapplicable methods and bad hyper-parameters fail before any training; so do model arguments.
    resolve_methods(methods, bundle)
    resolved = [get_method(m, **hyperparameters.get(m, {})) for m in methods]
    build_model(bundle, model, seed=config.seed, **(model_kwargs or {}))
    report = run_ulira(bundle, model, recipe or TrainConfig(), resolved, config, model_kwargs=model_kwargs,
                       cache_dir=cache_dir)
    report.config["data"] = _dataset_record(bundle, dataset_options, config.seed, root)
    if out is not None and distributed.is_main():
        atomic_write_text(out, json.dumps(report.to_dict(), indent=2), overwrite=overwrite)
    return report
