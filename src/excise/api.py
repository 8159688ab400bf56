"""The Python API behind the CLI: train, unlearn and evaluate models stored as checkpoints.

Each function validates its inputs up front (data set, model, request, method hyper-parameters,
output path) before any training starts, so a bad flag fails in a second, not after an hour, and a
failed run leaves existing files untouched.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from excise import distributed
from excise._registry import typed_factories
from excise.calibrate import CalibrationResult, apply_calibration, calibrate, check_calibration
from excise.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    checkpoint_files,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    versions,
)
from excise.data import DatasetBundle, LabeledData, load_dataset
from excise.data.registry import dataset_builder
from excise.experiment import (
    RunRecord,
    build_model,
    judge,
    reference_replicate_metrics,
    run_method,
)
from excise.methods import Guard, GuardRefused, GuardWarning, get_method, guard_objection
from excise.methods.base import refuses_unforgotten
from excise.metrics import EvalViews, avg_gap, evaluate
from excise.metrics.uncertainty import Uncertainty
from excise.provenance.certificate import certificate_path, sign
from excise.provenance.history import (
    absolute_root,
    bundle_for,
    check_reference,
    history_views,
    history_warning,
    moved_record,
    same_forgotten,
    served_requests,
    training_seed,
)
from excise.provenance.issue import write_certified
from excise.provenance.ledger import check_lineage, read_ledger
from excise.requests import ForgetRequest, resolve
from excise.training import TrainConfig, TrainStats, seed_everything, train

if TYPE_CHECKING:  # the essential graph is imported by the commands that use it
    from excise.graph import EssentialGraph


def _dataset_record(bundle: DatasetBundle, options: dict[str, Any], seed: int, root: str | None) -> dict[str, Any]:
    # The root as an absolute path: `evaluate` and a chained `unlearn` rebuild the data from the sidecar, from any
    # directory (a relative --root was recorded as typed, and found nothing from elsewhere: an outside audit).
    return {"name": bundle.name, "options": options, "seed": seed, "root": absolute_root(root),
            "fingerprint": bundle.fingerprint()}


def _check_output(out: str | Path, overwrite: bool, suffix: str = ".safetensors", *,
                  certified_ok: bool = True) -> Path:
    """Refuse, before any work, an output that could not be written at the end of the run. ``certified_ok=False``
    (a command that writes no certificate): also one whose deletion certificate would be left beside new weights."""
    out = Path(out)
    if out.suffix != suffix:
        raise ValueError(f"out={str(out)!r} must end in {suffix}")
    if not certified_ok and certificate_path(out).exists():
        raise FileExistsError(f"{str(certificate_path(out))!r}, the deletion certificate of out={str(out)!r}, exists: "
                              "this command writes no certificate, so it would be left certifying weights that are "
                              "gone; move it (and its model) away, or write elsewhere")
    written = (out, out.with_suffix(".json")) if suffix == ".safetensors" else (out,)
    for path in written:
        if path.is_dir():
            raise ValueError(f"out={str(out)!r}: {str(path)!r} is a directory")
        if path.exists() and not overwrite:
            role = "" if path == out else f" (the sidecar of out={str(out)!r})"
            raise FileExistsError(f"{str(path)!r}{role} exists; refusing to overwrite it (pass --overwrite)")
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


def _refuse_overwriting_inputs(out: Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse, before any work, an output whose files (``out``; for a checkpoint also its sidecar and certificate)
    would replace one of the run's inputs (``{option: path}``; a checkpoint input with its sidecar and certificate).
    ``--overwrite`` is consent to replace an earlier output, not the reference the run reads (a retrain can take
    hours) or the request file it was given: both were replaced without a word until 2026-12-07."""

    def files(path: Path) -> list[Path]:
        return checkpoint_files(path) if path.suffix == ".safetensors" else [path]

    written = {path.resolve(): path for path in files(Path(out))}
    for option, given in inputs.items():
        if given is None:
            continue
        for path in files(Path(given)):
            if path.resolve() in written:
                raise ValueError(f"out={str(out)!r} would overwrite {str(path)!r}, which {option} names: the run's "
                                 "inputs are never overwritten; write elsewhere")


def _data_options(options: dict[str, Any] | None, seed_option: str) -> dict[str, Any]:
    """A data set's options, without the split's seed: that has its own option (``--data-option seed=0`` failed
    with "got multiple values for keyword argument 'seed'")."""
    options = dict(options or {})
    if "seed" in options:
        raise ValueError(f"dataset option seed={options['seed']!r}: the data split's seed is not a data-set option; "
                         f"give it as {seed_option} (--{seed_option.replace('_', '-')} on the command line)")
    if "root" in options:  # it reached the loader twice: "got multiple values for keyword argument 'root'"
        raise ValueError(f"dataset option root={options['root']!r}: the data directory is not a data-set option; "
                         "give it as root (--root on the command line)")
    return options


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
    data_seed: int | None = None,
) -> Checkpoint:
    """Train a model on ``dataset`` (on the retain set of ``request`` if given: a retrained reference). A list
    of requests is a sequence: the reference of its last step, trained on what remains after all of them.
    ``seed`` seeds the training and, unless ``data_seed`` is given, the data split: a benchmark cell keeps the
    split of its suite's ``dataset.seed`` and trains with the cell's seed, which ``data_seed`` reproduces."""
    out = _check_output(out, overwrite, certified_ok=False)
    recipe = recipe or TrainConfig()
    dataset_options = _data_options(dataset_options, "data_seed")
    dataset_builder(dataset)
    split_seed = seed if data_seed is None else data_seed
    bundle = load_dataset(dataset, root=root, seed=split_seed, **dataset_options)
    requests = [] if request is None else request if isinstance(request, list) else [request]
    request = requests[-1] if requests else None
    training_set = bundle.train
    views = None
    if requests:
        views, _ = history_views(bundle, None, requests, len(requests) - 1)
        training_set = views.retain_set
    network, stats = _build_and_train(bundle, model, model_kwargs or {}, training_set, recipe, seed, "train")
    meta = {
        "kind": "original" if request is None else "retrained",
        "dataset": _dataset_record(bundle, dataset_options, split_seed, root),
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
    return _write_and_reload(out, network, meta, overwrite, model)


def _build_and_train(bundle: DatasetBundle, model: str, model_kwargs: dict[str, Any], training_set: LabeledData,
                     recipe: TrainConfig, seed: int, description: str) -> tuple[nn.Module, TrainStats]:
    """Build ``model`` for ``bundle`` and train it on ``training_set``: the one path behind ``excise train`` and the
    proxy retrain ``excise calibrate`` trains itself, so the two give the same weights. Returned in eval mode."""
    network = build_model(bundle, model, seed=seed, **model_kwargs)
    seed_everything(seed)
    stats = train(network, training_set, recipe, seed=seed, description=description)
    return network.eval(), stats


def adopt_model(
    weights: str | Path,
    model: str,
    dataset: str,
    out: str | Path,
    *,
    recipe: TrainConfig | None = None,
    model_kwargs: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    root: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Checkpoint:
    """Make a model excise did not train into an excise checkpoint, so ``unlearn``, ``evaluate`` and chained
    ``unlearn`` work on it: ``model`` builds the architecture (a registered name or ``"package.module:factory"``,
    called with ``model_kwargs``), ``weights`` holds its trained state dict (``.safetensors``, or a
    ``torch.save`` file read with ``weights_only=True``), ``dataset`` is the data it was trained on (a registered
    name or a factory, :mod:`excise.data.external`; ``seed`` and ``dataset_options`` rebuild the same split).
    ``recipe`` is how it was trained: the retrained reference and the methods that fine-tune follow it. The
    user's weights file is only read; the sidecar records its path and sha256."""
    from excise.hashing import sha256_file

    out = _check_output(out, overwrite, certified_ok=False)
    weights = Path(weights)
    if not weights.is_file():
        raise ValueError(f"weights={str(weights)!r} does not exist")
    _refuse_overwriting_inputs(out, {"weights": weights})
    recipe = recipe or TrainConfig()
    dataset_options = _data_options(dataset_options, "seed")
    bundle = load_dataset(dataset, root=root, seed=seed, **dataset_options)
    network = build_model(bundle, model, seed=seed, **(model_kwargs or {}))
    state = _read_state_dict(weights)
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights={str(weights)!r} do not match model {model!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"weights={str(weights)!r} do not fit model {model!r}: {err}") from err
    network.eval()
    meta = {
        "kind": "original",
        "dataset": _dataset_record(bundle, dataset_options, seed, root),
        "recipe": recipe.to_dict(),
        "seed": seed,
        "request": None,
        "adopted": {"weights": str(weights), "weights_sha256": sha256_file(weights)},
    }
    meta.update(fit_accuracy(network, bundle.train, bundle.test))
    chance = 100.0 / max(len(bundle.classes), 1)
    if bundle.task == "multiclass" and meta.get("test_accuracy", 100.0) < chance + 5:
        # Adopted anyway (a user may mean it), but every gap to retrain would be measured against noise.
        warnings.warn(f"the adopted model scores {meta['test_accuracy']:.1f}% on the test rows, about chance for "
                      f"{len(bundle.classes)} classes ({chance:.1f}%): were the weights saved before training, or "
                      "do they belong to another data set or label order?", stacklevel=2)
    return _write_and_reload(out, network, meta, overwrite, model)


def _load_reference(path: str | Path) -> Checkpoint:
    """The retrained reference a gap is measured against; a missing file is named as the reference it was meant
    to be, not as just any checkpoint."""
    if not Path(path).exists():
        raise ValueError(f"reference={str(path)!r} does not exist (the retrained model to compare with: `excise train "
                         "--request ...` writes one)")
    return load_checkpoint(path)


def _write_and_reload(out: Path, network: nn.Module, meta: dict[str, Any], overwrite: bool,
                      model: str) -> Checkpoint:
    """Only rank 0 writes; the others wait until the file is complete, then every rank reads the same
    checkpoint back (its sidecar, sha256 and all). ``model`` is the factory the caller named, trusted for that
    read: a typed factory is the user's own."""
    if distributed.is_main():
        save_checkpoint(out, network, meta, overwrite=overwrite)
    distributed.barrier()
    with typed_factories(model):
        return load_checkpoint(out)


def _read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from a safetensors file (recognised by its header, whatever the suffix) or a ``torch.save``
    file read with ``weights_only=True``: a pickle that needs more than tensors is refused, never executed."""
    import torch
    from safetensors.torch import load_file

    with path.open("rb") as handle:
        head = handle.read(9)
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then the JSON header
    try:
        state = load_file(str(path)) if looks_safetensors else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises many kinds; all mean "not readable"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"weights={str(path)!r} cannot be read as a safetensors file or a torch.save state dict "
                         f"with weights_only=True ({type(err).__name__}: {first_line[:200]}); save "
                         "model.state_dict() with torch.save or safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in state.items()):
        raise ValueError(f"weights={str(path)!r} holds a {type(state).__name__}, not a state dict (names -> "
                         "tensors); save model.state_dict()")
    return state


def fit_accuracy(model: nn.Module, train_set: LabeledData, test_set: LabeledData) -> dict[str, float]:
    """``train_accuracy`` / ``test_accuracy`` in percent (a multi-label model's mean per-target accuracy), so
    `excise train` says what it built; empty for dense and sequence tasks, whose own metrics are not accuracies."""
    from excise.metrics.accuracy import accuracy, check_logits, per_target_accuracy
    from excise.training import predict_logits

    def score(data: LabeledData) -> float:
        logits = check_logits(predict_logits(model, data), "the training rows" if data is train_set else
                              "the test rows", data.task)
        if data.task == "multiclass":
            return accuracy(logits, data.targets)
        return float(per_target_accuracy(logits, data.targets).mean())

    if train_set.task not in ("multiclass", "multilabel"):
        return {}
    return {"train_accuracy": score(train_set), "test_accuracy": score(test_set),
            "accuracy_of": "top-1" if train_set.task == "multiclass" else "mean per-target (threshold 0.5)"}


@dataclass
class UnlearnOutcome:
    model: nn.Module
    record: RunRecord
    path: Path | None
    # The retrained reference's metrics on the same views (None without --reference).
    reference_metrics: dict[str, float] | None = None


def add_information_left(metrics: dict[str, float], model: nn.Module, views: EvalViews, seed: int) -> str | None:
    """On a multi-label model judged for target requests: add how well the forgotten targets can still be read
    from it (:func:`excise.metrics.probe.information_left`: ``probe_AP:t``, ``prevalence:t``) to ``metrics``, and
    return why not when they could not be measured. The outputs alone say a target is no longer predicted, not that
    it is gone. Other requests: nothing added, ``None``."""
    mask = views.forget_set.label_mask
    if views.forget_set.task != "multilabel" or mask is None:
        return None
    from excise.metrics.probe import information_left

    found, note = information_left(model, views.test_retain, mask.any(dim=0).nonzero().flatten().tolist(), seed)
    metrics.update(found)
    return note


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
    ledger: str | Path | None = None,
    sign_key: str | Path | None = None,
    guard: Guard | None = None,
    config: str | Path | None = None,
    inputs: dict[str, str | Path] | None = None,
    root: str | Path | None = None,
) -> UnlearnOutcome:
    """Unlearn ``request`` from the model at ``model_path``; the input checkpoint is never modified.

    ``graph``: an essential-graph file (``excise graph``) for the methods that prune with one. ``uncertainty``:
    bootstrap intervals of the metrics and (with a reference) of the average gap; default
    :class:`~excise.metrics.uncertainty.Uncertainty` (``Uncertainty(replicates=0)``: none).

    With ``out``, a deletion certificate is written beside the checkpoint (:mod:`excise.provenance.certificate`;
    signed with the Ed25519 key at ``sign_key`` if given); with ``ledger``, it is appended to that model lineage's
    ledger (:mod:`excise.provenance.ledger`), which must be new or end at this input model. ``guard``: the
    collapse and goal check (:class:`~excise.methods.base.Guard`; default rollback), recorded in the sidecar's stats;
    a run it rolled back, one that forgot nothing of a class, or one that returned the model unchanged, is not
    written (:class:`~excise.methods.base.GuardRefused`), since its certificate would certify a deletion that did not
    happen.
    ``config``: a calibration file (``excise calibrate``, :func:`calibrate_checkpoint`) whose values for ``method``
    are used; a value in ``hyperparameters`` overrides the calibrated one. The sidecar records which were applied.
    ``inputs``: other files the caller read for this run (``{option: path}``, e.g. the request file), which ``out``
    must not overwrite either."""
    calibration = None
    if config is not None:
        hyperparameters, calibration = apply_calibration(method, hyperparameters, config)
    if graph is not None:
        hyperparameters = graph_hyperparameters(method, hyperparameters, graph)
    unlearner = get_method(method, **(hyperparameters or {}))
    # Every check before any model is loaded or any work starts, in the order a user fixes them: the request
    # against the data (rebuilt from the sidecar alone), the method's support for it, the output path, the
    # reference. (An unwritable --out used to surface only when the result was written.)
    head = Checkpoint(None, read_meta(model_path), Path(model_path))
    if calibration is not None:
        calibration["same_model"] = _calibrated_for(config, head)
    bundle = bundle_for(head, root)
    # A checkpoint that already served requests continues its sequence: this step unlearns only what is new
    # and is judged against everything forgotten so far, as excise.sequential.run_sequence does.
    earlier, complete = served_requests(head)
    own_views = EvalViews.from_bundle(bundle, request)  # the request's own errors first, as on a fresh model
    unlearner.check_request(request, bundle.task)
    if out is not None:
        out = _check_output(out, overwrite)
        if Path(out).resolve() == Path(model_path).resolve():
            raise ValueError("out must differ from the input model: the original model is never overwritten")
        _refuse_overwriting_inputs(out, {"the model": model_path, "reference": reference_path, "graph": graph,
                                         "config": config, "ledger": ledger, "sign_key": sign_key, **(inputs or {})})
        _check_output(certificate_path(out), overwrite, suffix=".json")
        if overwrite and certificate_path(out).is_file():
            warnings.warn(f"--overwrite replaces {str(out)!r} and its deletion certificate: a ledger that recorded "
                          "that certificate will no longer verify, and the evidence it held is gone", stacklevel=2)
    _check_provenance(head, out, ledger, sign_key)
    if not complete:
        warnings.warn(history_warning(head, earlier), stacklevel=2)
    parent_finding = (head.meta.get("method_stats") or {}).get("guard") if head.meta.get("kind") == "unlearned" \
        else None
    objection = guard_objection(parent_finding) if isinstance(parent_finding, dict) else None
    if objection:
        # Written under --guard warn: its history lists the request as served, but its own guard said otherwise
        # and no deletion of it was certified (an outside audit chained from such a model without a word).
        served = (ForgetRequest.from_dict(head.meta["request"]).describe() if head.meta.get("request")
                  else "its request")
        warnings.warn(f"{str(model_path)!r} was written (--guard warn) although its own run's guard found that "
                      f"{objection}: its history lists {served} as served, but that deletion was not certified, and "
                      "this run does not forget its rows again", GuardWarning, stacklevel=2)
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
        reference = _load_reference(reference_path)
        # the known history (warned above if partial)
        mismatch = check_reference(reference, head, requests, bundle.train, allow_mismatch=allow_reference_mismatch)
        if mismatch:
            warnings.warn(f"comparing with a reference trained differently ({'; '.join(mismatch)}): recorded beside "
                          "the gap", stacklevel=2)
        ref_metrics = evaluate(reference.model, views, seed=seed)
        if uncertainty.enabled:
            ref_replicates = reference_replicate_metrics(reference.model, views, uncertainty, seed=seed)
    original = load_checkpoint(model_path)
    # A forget-only method's guard checks the held-out test rows of every class still kept: run_method's default
    # (step_views shares views' test rows), never the retain set.
    model, record = run_method(unlearner, original.model, step_views, recipe, seed=seed,
                               reference_model=None if reference is None else reference.model, eval_views=views,
                               uncertainty=uncertainty, reference_replicates=ref_replicates, guard=guard)
    finding = record.stats.get("guard") or {}
    refusing = (guard or Guard()).action == "rollback"
    if out is not None and refusing and (finding.get("rolled_back") or finding.get("unchanged")
                                         or refuses_unforgotten(finding)):
        raise GuardRefused(
            f"{method}: {guard_objection(finding)}, so nothing was written: {model_path} is unchanged and still "
            f"holds the data {request.describe()} names. "
            + (f"{finding['hint']}. Or try " if finding.get("hint") else "Try ")
            + "another method, calibrate this one (`excise calibrate`), or write the run anyway with --guard warn "
            "(Guard(action='warn')), its finding recorded in the sidecar", record)
    _warn_if_few(views)
    note = add_information_left(record.metrics, model, views, seed)
    if note is not None:
        record.stats["information_left"] = note
    if reference is not None:
        add_information_left(ref_metrics, reference.model, views, seed)
        record.avg_gap = avg_gap(record.metrics, ref_metrics)
        # Across runs: the retrain time is the one the reference checkpoint recorded (possibly another machine
        # or thread count). Same-run ratios are what `excise bench` and the demo measure.
        if reference.meta.get("train_seconds"):
            record.speedup = reference.meta["train_seconds"] / max(record.seconds, 1e-9)
    path = None
    if out is not None:
        meta = {
            "kind": "unlearned",
            "dataset": moved_record(original.meta["dataset"], root),  # where the data is now
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
            "method_stats": record.stats,  # what the method reports: e.g. the proportion chosen, a masked output
            "parent_sha256": original.sha256,
            "metrics": record.metrics,
            "evidence": None if record.evidence is None else record.evidence.to_dict(),
            "unlearn_seconds": record.seconds,
        }
        if reference is not None:
            meta["reference"] = {"path": str(reference.path), "sha256": reference.sha256, "metrics": ref_metrics,
                                 "avg_gap": record.avg_gap, "speedup_across_runs": record.speedup,
                                 "mismatch": mismatch}
        if calibration is not None:
            meta["calibration"] = calibration
        if graph is not None:
            from excise.checkpoint import sha256_file

            meta["graph"] = {"path": str(graph), "sha256": sha256_file(graph)}
        path = Path(out)
        if distributed.is_main():
            write_certified(path, model, meta, overwrite=overwrite,
                            original={"path": original.path, "sha256": original.sha256,
                                      "kind": original.meta.get("kind")},
                            bundle=bundle, covers=[request], evidence=record.evidence, ledger=ledger,
                            sign_key=sign_key)
        distributed.barrier()
    return UnlearnOutcome(model, record, path, ref_metrics)


def _check_provenance(head: Checkpoint, out: Path | None, ledger: str | Path | None,
                      sign_key: str | Path | None) -> None:
    """Before any work: a ledger needs a certificate (so an output), must be new or end at this input model, and
    a signing key must load."""
    if ledger is not None:
        if out is None:
            raise ValueError("--ledger needs --out: a ledger entry certifies a written model file")
        ledger = Path(ledger)
        if ledger.exists():
            state = read_ledger(ledger)
            check_lineage(state, head.sha256, ledger)
            _check_ledger_history(state, head, ledger)
        else:
            _check_output(ledger, False, suffix=ledger.suffix or ".jsonl")
    if sign_key is not None:
        if out is None:
            raise ValueError("--sign-key needs --out: the signature goes into the certificate written beside it")
        sign(_PROBE, sign_key)  # an unreadable or non-Ed25519 key fails now, not after the work


FEW_FORGET_ROWS = 20
"""Below this many forget rows the evaluation warns that its membership numbers and gap are noise-dominated."""


def _warn_if_few(views: EvalViews) -> None:
    """A handful of forget rows: one membership verdict moves an attack by 100/n points, and doing nothing already
    scores as close to retrain as a second retrain does (a new user's 1- and 3-row requests: the original's gap 0.00,
    a second retrain's 0.05-0.09; intervals of zero width)."""
    n = len(views.forget_set)
    if n < FEW_FORGET_ROWS:
        warnings.warn(f"{n} forget row(s): one membership verdict moves an attack by {100 / n:.0f} points and the "
                      "original model itself sits within a second retrain's gap; read these numbers as a check that "
                      "nothing broke, not as evidence of forgetting (the certificate's row commitment is the record)",
                      stacklevel=3)


def _check_ledger_history(state: Any, head: Checkpoint, ledger: Path) -> None:
    """The requests the input model has served, as its sidecar says, must be those its certificate in the ledger
    certifies: the sidecar is not signed, and the next certificate's history (and the views its evidence is judged
    on) comes from it."""
    if len(state.entries) < 2:
        return
    from excise.provenance.certificate import read_certificate, resolve_stored

    entry = state.entries[-1]
    certificate = resolve_stored(entry["certificate"]["path"], ledger.parent)
    if not certificate.is_file():
        raise ValueError(f"ledger {str(ledger)!r}: the certificate of its last entry, {str(certificate)!r}, is missing "
                         "(`excise verify` the ledger)")
    certified = [ForgetRequest.from_dict(r) for r in read_certificate(certificate)["history"]]
    recorded = served_requests(head)[0]
    if recorded != certified:
        raise ValueError(f"the sidecar of {str(head.path)!r} records {len(recorded)} served request(s), its "
                         f"certificate in ledger {str(ledger)!r} certifies {len(certified)} other ones: the sidecar "
                         "was changed after the model was written (`excise verify` the ledger)")


_PROBE: dict[str, Any] = {"probe": True}


@dataclass
class CalibrationOutcome:
    result: CalibrationResult
    path: Path | None
    reference_seconds: float | None  # the retrain this run trained itself (None: a reference file was given)


def calibration_path(model_path: str | Path) -> Path:
    """Where a model's calibration goes by default: beside it, ``MODEL.calibration.json``."""
    return Path(model_path).with_suffix(".calibration.json")


def calibrate_checkpoint(
    model_path: str | Path,
    methods: str | Sequence[str],
    proxy_request: ForgetRequest,
    *,
    reference_path: str | Path | None = None,
    n_trials: int = 20,
    out: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    guard: Guard | None = None,
) -> CalibrationOutcome:
    """Calibrate ``methods`` for the model at ``model_path`` against one retrain on ``proxy_request``
    (:func:`excise.calibrate.calibrate`) and write the result to ``out`` (default :func:`calibration_path`: beside
    the model); ``excise unlearn --config`` applies it. ``reference_path``: the proxy's retrained reference (checked
    as ``--reference`` is); without it the one retrain is trained here, like ``excise train --request`` would with
    the model's recorded architecture, recipe and training seed. The input checkpoint is never modified."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    guard = check_calibration(methods, n_trials, guard)
    head = Checkpoint(None, read_meta(model_path), Path(model_path))
    served, _ = served_requests(head)
    if served:
        raise ValueError(f"{str(model_path)!r} has already served {[r.describe() for r in served]} (kind "
                         f"{head.meta.get('kind')!r}): calibrate the original model; its calibration applies to "
                         "the unlearning runs that follow it")
    bundle = bundle_for(head)
    views = EvalViews.from_bundle(bundle, proxy_request)
    for method in methods:
        get_method(method).check_request(proxy_request, bundle.task)
    out = _check_output(calibration_path(model_path) if out is None else out, overwrite, suffix=".json")
    _refuse_overwriting_inputs(out, {"the model": model_path, "reference": reference_path})
    recipe = recipe_of(head)
    original = load_checkpoint(model_path)  # checks the weights (and that a factory it names is trusted) first
    if reference_path is not None:
        reference = _load_reference(reference_path)
        check_reference(reference, head, [proxy_request], bundle.train)
        retrained, reference_seconds = reference.model, None
        reference_record = {"path": str(reference.path), "sha256": reference.sha256}
    else:
        # The one retrain, built and trained as `excise train --request` builds it (train_model): the same weights.
        train_seed = training_seed(head)
        train_seed = head.meta["dataset"]["seed"] if train_seed is None else train_seed
        spec = head.meta["model"]
        retrained, stats = _build_and_train(bundle, spec["name"], spec.get("kwargs", {}), views.retain_set, recipe,
                                            train_seed, "retrain proxy")
        reference_seconds = stats.seconds
        reference_record = {"trained_here": True, "train_seed": train_seed, "train_seconds": stats.seconds}
    result = calibrate(original.model, views, recipe, methods, reference=retrained, n_trials=n_trials, seed=seed,
                       guard=guard)
    result.record.update({
        "model": {"path": str(original.path), "sha256": original.sha256, "kind": original.meta.get("kind")},
        "data": original.meta["dataset"],
        "recipe": recipe.to_dict(),
        "reference": reference_record,
    })
    if distributed.is_main():
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2) + "\n", overwrite=overwrite)
    distributed.barrier()
    return CalibrationOutcome(result, out, reference_seconds)


def _calibrated_for(config: str | Path, head: Checkpoint) -> bool:
    """Whether calibration file ``config`` was made on the model being unlearned (its weights' sha256); if not, a
    warning: the values still apply (a chained unlearn, or the same recipe on another seed, may want them), and the
    sidecar records that they came from another model."""
    made_on = (json.loads(Path(config).read_text()).get("model") or {}).get("sha256")
    same = made_on is not None and made_on == head.meta.get("sha256")
    if not same:
        warnings.warn(f"{config} was calibrated on a model with sha256 {str(made_on)[:12]}..., not on "
                      f"{head.path} ({str(head.meta.get('sha256'))[:12]}...): its values are applied as given",
                      UserWarning, stacklevel=3)
    return same


def recipe_of(checkpoint: Checkpoint) -> TrainConfig:
    """The training recipe a checkpoint records (methods scale their budgets from it)."""
    try:
        return TrainConfig.from_dict(checkpoint.meta.get("recipe"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the sidecar of {str(checkpoint.path)!r} records an invalid recipe: {err}") from err


def evaluate_checkpoint(model_path: str | Path, request: ForgetRequest | None = None,
                        seed: int = 0) -> dict[str, float]:
    """Every metric of the checkpoint at ``model_path`` for ``request`` (default: its history), in percent."""
    return evaluation_record(model_path, request, seed, uncertainty=Uncertainty(replicates=0))["metrics"]


def evaluation_record(model_path: str | Path, request: ForgetRequest | None = None, seed: int = 0, *,
                      reference_path: str | Path | None = None, uncertainty: Uncertainty | None = None,
                      allow_reference_mismatch: bool = False, root: str | Path | None = None) -> dict[str, Any]:
    """The metrics with what produced them: the model's path and sha256, the request(s), the seed, the data's
    fingerprint and the versions — so a number read back later can be traced and reproduced — and each metric's
    bootstrap interval (``uncertainty``, default :class:`~excise.metrics.uncertainty.Uncertainty`).

    Without ``request`` the model is judged against every request it has served (its sidecar's history, as
    `excise unlearn` judged it); a model that served none needs one. With ``reference_path`` (a retrained
    reference, checked as `excise unlearn --reference` checks it) also the average gap to it, its paired interval
    and the distances of the predictions."""
    uncertainty = Uncertainty() if uncertainty is None else uncertainty
    checkpoint = load_checkpoint(model_path)
    bundle = bundle_for(checkpoint, root)  # checks the data against the fingerprint the sidecar records
    complete = True
    if request is not None:
        requests = [request]
        served, _ = served_requests(checkpoint)
        # Equality ignores a request's name; class:3,5 after class:3 then class:5 is the model's history too.
        if served and served != [request] and not same_forgotten(bundle.train, served, [request]):
            warnings.warn(f"{str(model_path)!r} has served {' then '.join(r.describe() for r in served)}; "
                          f"--request {request.describe()} judges it as if nothing else had been forgotten (rows "
                          "forgotten earlier count as retained). Omit the request to judge it on its history.",
                          stacklevel=2)
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
        reference = _load_reference(reference_path)
        mismatch = check_reference(reference, checkpoint, requests, bundle.train,
                                   allow_mismatch=allow_reference_mismatch)
    metrics, found = judge(checkpoint.model, views, seed=seed, uncertainty=uncertainty,
                           reference_model=None if reference is None else reference.model)
    _warn_if_few(views)
    note = add_information_left(metrics, checkpoint.model, views, seed)
    from excise.metrics.directions import metric_direction

    out: dict[str, Any] = {
        "metrics": metrics,
        "directions": {name: metric_direction(name) for name in metrics},
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
    if note is not None:
        out["information_left"] = note
    if reference is not None:
        reference_metrics = evaluate(reference.model, views, seed=seed)
        add_information_left(reference_metrics, reference.model, views, seed)
        out["reference"] = {"path": str(reference.path.resolve()), "sha256": reference.sha256,
                            "metrics": reference_metrics, "mismatch": mismatch}
        out["avg_gap"] = avg_gap(metrics, reference_metrics)
        out["avg_gap_interval"] = None if found is None else found.avg_gap_interval
    return out


# --- essential graphs (the `excise graph` command and `unlearn --graph`) -----------------------------
def graph_hyperparameters(
    method: str, hyperparameters: dict[str, Any] | None, graph: str | Path
) -> dict[str, Any]:
    """The method's hyper-parameters with ``graph`` added, refusing methods that take no graph."""
    from dataclasses import fields

    from excise.graph import GraphError
    from excise.methods import list_methods, method_class

    takes = [name for name in list_methods() if "graph" in {f.name for f in fields(method_class(name).Config)}]
    if "graph" not in {f.name for f in fields(method_class(method).Config)}:
        raise GraphError(f"graph={str(graph)!r} is only used by the methods that prune with an essential graph "
                         f"({takes}); method {method!r} takes no graph")
    hyperparameters = dict(hyperparameters or {})
    if hyperparameters.get("graph") not in (None, str(graph)):
        raise GraphError(f"graph given twice with different values: {hyperparameters['graph']!r} and {str(graph)!r}")
    hyperparameters["graph"] = str(graph)
    return hyperparameters


def graph_checkpoint(
    model_path: str | Path,
    targets: Sequence[str | int],
    *,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    graph: str | Path | None = None,
    proportion: float = 0.1,
    num_images: int | None = None,
    layers: Sequence[str] | None = None,
    num_layers: int = 5,
    balanced: bool = True,
    overwrite: bool = False,
) -> EssentialGraph:
    """Build (or, with ``graph``, load and check) the essential graph of a checkpoint for forgetting
    ``targets``; write it to ``out`` (JSON) and/or a picture to ``plot`` (PNG)."""
    from excise.graph import DEFAULT_NUM_IMAGES, EssentialGraph, GraphError, build_graph

    if out is None and plot is None:
        raise GraphError("nothing to do: give out (the graph file to write) and/or plot (a PNG picture)")
    for path, suffix, what in ((out, ".json", "out"), (plot, ".png", "plot")):
        if path is not None:
            if Path(path).suffix != suffix:
                raise GraphError(f"{what}={str(path)!r} must end in {suffix}")
            if Path(path).exists() and not overwrite:
                raise FileExistsError(f"{str(path)!r} exists; refusing to overwrite it (pass --overwrite)")
    if graph is not None and out is not None:
        raise GraphError("give either graph (an existing graph to plot) or out (a new graph to build), not both")
    checkpoint = load_checkpoint(model_path)
    bundle = bundle_for(checkpoint)
    request = ForgetRequest(kind="target", labels=tuple(targets))
    forgotten = resolve(bundle.train, request).label_indices
    # A model that already forgot targets (an unlearned checkpoint's history) builds the graph of the next step
    # of its sequence: the earlier targets are neither scored nor spared, as the one-shot method does.
    if graph is not None:  # plot a stored graph: it must fit this model and request, whatever came before
        built = EssentialGraph.load(graph)
        built.check_model(checkpoint.model, f"graph file {str(graph)!r}")
        built.check_request(bundle.classes, forgotten, f"graph file {str(graph)!r}", gone=None)
    else:
        earlier, _ = served_requests(checkpoint)
        already = {t for r in earlier if r.kind == "target" for t in resolve(bundle.train, r).label_indices}
        if already & set(forgotten):
            raise GraphError(f"{str(model_path)!r} has already forgotten target(s) "
                             f"{[bundle.classes[t] for t in sorted(already & set(forgotten))]}: there is no graph of "
                             "them left to build")
        gone = sorted(already)
        built = build_graph(
            checkpoint.model, bundle.train.targets, bundle.train.inputs, forgotten, classes=bundle.classes,
            proportion=proportion, num_images=DEFAULT_NUM_IMAGES if num_images is None else num_images,
            layers=layers, num_layers=num_layers, balanced=balanced, gone=gone,
        )
        if built.model_sha256 != checkpoint.sha256:  # cannot happen unless the loader changed the weights
            raise GraphError("the loaded model's weights do not hash to its checkpoint's sha256")
    if out is not None:
        built.save(out, overwrite=overwrite)
    if plot is not None:
        built.plot(plot, overwrite=overwrite)
    return built


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
    dataset_options = _data_options(dataset_options, "seed")
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
