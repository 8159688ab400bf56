"""The one flow: data -> request -> (original, retrained reference) -> method -> evaluation -> record.

The demo, the CLI and the benchmark runner all go through these functions, so a number in a table
always comes from the same code path.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from excise.data.base import DatasetBundle, LabeledData
from excise.methods import Guard, UnlearningMethod, get_method
from excise.metrics import EvalViews, avg_gap
from excise.metrics.distance import prediction_distances
from excise.metrics.evaluate import collect_outputs, evaluate_outputs
from excise.metrics.uncertainty import Evidence, Uncertainty, evidence, replicate_metrics
from excise.models import accepted_arguments, create_model, list_models
from excise.training import TrainConfig, output_width, seed_everything, train


def build_model(bundle: DatasetBundle, model_name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """A fresh model sized for ``bundle`` (input channels and number of classes filled in, or the
    bundle's own ``meta["model_kwargs"]`` when it has them: a sequence set names its vocabulary size)."""
    seed_everything(seed)
    sizing = bundle.meta.get("model_kwargs")
    if sizing is None:
        sizing = {"in_channels": bundle.input_shape[0], "num_classes": len(bundle.classes)}
    for key, value in accepted_arguments(model_name, sizing).items():
        kwargs.setdefault(key, value)
    model = create_model(model_name, **kwargs)
    if model_name not in list_models() and bundle.task in ("multiclass", "multilabel"):
        check_output_width(model, bundle, model_name)
    return model


def check_output_width(model: nn.Module, bundle: DatasetBundle, model_name: str) -> None:
    """A user's factory sizes its own output: refuse, naming the class count, one that does not fit the data (it
    would fail later as an index error deep in training, or silently score the wrong columns)."""
    width = output_width(model, bundle.train.inputs,
                         f"model={model_name!r} cannot run on one input of data set {bundle.name!r}")
    if width != len(bundle.classes):
        raise ValueError(f"model={model_name!r} outputs {width} values per input but data set {bundle.name!r} has "
                         f"num_classes={len(bundle.classes)}; build it for {len(bundle.classes)} classes")


def train_original(
    bundle: DatasetBundle, model_name: str, recipe: TrainConfig, *, seed: int = 0, **model_kwargs: Any
) -> tuple[nn.Module, float]:
    """Train the original model on the full training set; returns the model and its wall time."""
    model = build_model(bundle, model_name, seed=seed, **model_kwargs)
    stats = train(model, bundle.train, recipe, seed=seed, description="train original")
    return model, stats.seconds


def judge(model: nn.Module, views: EvalViews, *, seed: int = 0, reference_model: nn.Module | None = None,
          uncertainty: Uncertainty | None = None,
          reference_replicates: list[dict[str, float]] | None = None) -> tuple[dict[str, float], Evidence | None]:
    """Every metric of ``model`` on ``views`` and, given the retrained ``reference_model``, the distances of its
    predictions to that model's (:mod:`excise.metrics.distance`). With ``uncertainty``, their bootstrap intervals
    (:mod:`excise.metrics.uncertainty`), and the average gap's, paired with the reference's replicates
    (``reference_replicates``, or computed from ``reference_model``)."""
    outputs = collect_outputs(model, views)
    metrics = evaluate_outputs(model, views, outputs, seed=seed)
    if reference_model is not None:
        metrics.update(prediction_distances(model, reference_model, views))
    if uncertainty is None or not uncertainty.enabled:
        return metrics, None
    if reference_replicates is None and reference_model is not None:
        reference_replicates = reference_replicate_metrics(reference_model, views, uncertainty, seed=seed)
    return metrics, evidence(outputs, uncertainty, seed=seed, evaluated=metrics, reference=reference_replicates)


def reference_replicate_metrics(reference_model: nn.Module, views: EvalViews, uncertainty: Uncertainty, *,
                                seed: int = 0) -> list[dict[str, float]] | None:
    """The retrained reference's bootstrap replicates, for the paired gap interval of every model judged on the
    same ``views`` with the same ``seed`` (``None`` for a task without intervals)."""
    outputs = collect_outputs(reference_model, views)
    return None if outputs is None else replicate_metrics(outputs, uncertainty, seed=seed)


@dataclass
class RunRecord:
    """One (request, method) run: its metrics, its time and how it compares with the retrained model."""

    method: str
    request: dict[str, Any]
    metrics: dict[str, float]
    seconds: float
    config: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    avg_gap: float | None = None
    speedup: float | None = None
    evidence: Evidence | None = None
    # Which rows the numbers judged as forgotten (forget_rows_digest): a reference record is checked against it, so
    # the gap is never taken to another request's retrained model.
    forget_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evidence"] = None if self.evidence is None else self.evidence.to_dict()
        return out


def held_out_guard_rows(views: EvalViews) -> LabeledData | None:
    """What a method's guard checks when the caller gives nothing: the held-out test rows of the classes still
    kept — not training data, never the retain set, and never read by the method. Every method gets them: a
    forget-only method has nothing else to be checked on, and a samples request's goal check (forget rows that
    look like unseen rows) needs unseen rows whoever reads the retain set. ``None`` when there are none."""
    return views.test_retain if len(views.test_retain) else None


def run_method(
    method: UnlearningMethod | str,
    model: nn.Module,
    views: EvalViews,
    recipe: TrainConfig,
    *,
    seed: int = 0,
    reference: RunRecord | None = None,
    reference_model: nn.Module | None = None,
    eval_views: EvalViews | None = None,
    uncertainty: Uncertainty | None = None,
    reference_replicates: list[dict[str, float]] | None = None,
    guard: Guard | None = None,
    guard_set: LabeledData | None = None,
) -> tuple[nn.Module, RunRecord]:
    """Unlearn ``views.request`` from ``model`` with ``method`` and evaluate against ``reference``; with the
    retrained ``reference_model`` the metrics also hold the distances of the predictions to it
    (:mod:`excise.metrics.distance`). ``eval_views``: judge on other views than the ones unlearned (a step of
    a sequence unlearns its own forget set and is judged on everything forgotten so far). ``uncertainty``: also
    the bootstrap intervals of the metrics and, with a reference model (or its ``reference_replicates``), of the
    average gap (``record.evidence``). ``guard``: the check the method runs under (default
    :class:`~excise.methods.base.Guard`: roll back a collapse, or a samples run that ends further from the goal;
    ``COMPARE_GUARD`` keeps and flags it), its finding in ``record.stats["guard"]``; ``guard_set``: held-out rows
    (not training data) it checks the method on — by default the test rows of the classes still kept
    (``views.test_retain``), which no method reads and which only decide whether the guard fires."""
    if isinstance(method, str):
        method = get_method(method)
    judged = views if eval_views is None else eval_views
    if reference is not None:  # before the run: a wrong reference costs nothing yet
        check_reference_record(reference, judged)
    if guard_set is None:
        guard_set = held_out_guard_rows(views)
    seed_everything(seed)
    result = method.unlearn(
        model, views.request, views.forget_set,
        views.retain_set if method.needs_retain else None, recipe=recipe, seed=seed, guard=guard,
        guard_set=guard_set,
    )
    metrics, found = judge(result.model, judged, seed=seed, reference_model=reference_model,
                           uncertainty=uncertainty, reference_replicates=reference_replicates)
    stats = {k: v for k, v in result.stats.items() if _is_plain(v)}
    record = RunRecord(method.name, views.request.to_dict(), metrics, result.seconds, result.config, stats,
                       evidence=found, forget_digest=forget_rows_digest(judged))
    if reference is not None:
        record.avg_gap = avg_gap(metrics, reference.metrics)
        record.speedup = reference.seconds / max(result.seconds, 1e-9)
    return result.model, record


def evaluate_original(model: nn.Module, views: EvalViews, seed: int = 0,
                      reference_model: nn.Module | None = None, uncertainty: Uncertainty | None = None,
                      reference_replicates: list[dict[str, float]] | None = None) -> RunRecord:
    start = time.perf_counter()
    metrics, found = judge(model, views, seed=seed, reference_model=reference_model, uncertainty=uncertainty,
                           reference_replicates=reference_replicates)
    stats = {"eval_seconds": time.perf_counter() - start}
    return RunRecord("original", views.request.to_dict(), metrics, 0.0, {}, stats, evidence=found,
                     forget_digest=forget_rows_digest(views))


def forget_rows_digest(views: EvalViews) -> str | None:
    """A digest of what ``views`` judge as forgotten: the forget rows (their indices in the training data) and, on a
    multi-label task, the target columns they are about. Two requests that forget the same rows agree, whatever
    their wording (``class:3`` or ``class:three``); ``None`` when the rows carry no indices."""
    forget = views.forget_set
    if forget.source_indices is None:
        return None
    digest = hashlib.sha256(views.request.kind.encode())
    digest.update(np.sort(forget.source_indices.numpy().astype(np.int64)).tobytes())
    if forget.label_mask is not None:
        digest.update(forget.label_mask.bool().any(0).numpy().tobytes())
    return digest.hexdigest()[:24]


def check_reference_record(reference: RunRecord, views: EvalViews) -> None:
    """Refuse a reference record of another request than the one ``views`` judge: its gap would measure the
    difference between two requests (an outside audit passed a sub-class reference to a class run and got a gap
    of 8.93 without a word; a sequence given its references in the wrong order reported 10.95 and 6.80 against
    2.32 and 2.95). A record without a digest (built by hand, or from an older cache) is not checked."""
    if reference.forget_digest is None:
        return
    ours = forget_rows_digest(views)
    if ours is not None and ours != reference.forget_digest:
        raise ValueError(
            f"the reference record ({reference.method}, request {_described(reference.request)}) was computed for "
            f"other forgotten rows than this run's request {views.request.describe()} "
            f"({len(views.forget_set)} rows): its metrics are not this request's reference")


def _described(request: dict[str, Any]) -> str:
    from excise.requests import ForgetRequest

    try:
        return ForgetRequest.from_dict(request).describe()
    except (TypeError, ValueError, KeyError):
        return repr(request)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


__all__ = ["RunRecord", "build_model", "evaluate_original", "judge", "reference_replicate_metrics", "run_method",
           "train_original", "LabeledData"]
