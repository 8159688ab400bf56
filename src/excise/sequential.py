"""Sequential unlearning: requests served one after another on the successively unlearned model.

A user rarely asks once. ``run_sequence`` applies a sequence of requests (forget class ``a``, then ``b``,
then ``c``) with any registered method, each step starting from the previous step's unlearned model, and
after every step measures the model against the *cumulative* truth: the forget set is everything asked so far
(:func:`excise.requests.apply_sequence`), the reference is the model retrained on what remains after all of
those requests, and for class / sub-class requests the test views exclude every class forgotten so far
(``TA`` on the remaining classes, ``TA_forget`` on the forgotten ones together).

The cumulative views and each step's own forget set are :mod:`excise.provenance.history`'s (the home of request
histories, which `excise unlearn` chains through checkpoints); this module runs the methods over them.

What a method sees at step ``k``: the step's request and the rows it newly forgets (rows an earlier step
already forgot are not handed over again), the original training recipe, and — only if the method declared
``needs_retain`` — the cumulative retain set. Forget-only methods receive no retain data at any step.

Target requests (forget one label of a multi-label task everywhere) form sequences too: a target is a label
column, so step ``k`` is judged, and its reference retrained, as one request forgetting every target named so
far; the method receives the step's own target's forget view (every instance carrying it) and a retain view
whose label mask hides every target forgotten so far, so earlier targets are neither re-learned nor protected.

The method at step ``k`` is seeded with ``seed + k`` (independent random draws per step); references are
trained with ``seed``, the seed policy of the original model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from excise.data.base import DatasetBundle
from excise.experiment import RunRecord, _is_plain, check_reference_record, held_out_guard_rows, run_method
from excise.methods import Guard, GuardWarning, UnlearningMethod, get_method, guard_objection
from excise.metrics import EvalViews, avg_gap, evaluate
from excise.progress import progress_bar
from excise.provenance.history import cumulative_views, step_forget_sets
from excise.requests import ForgetRequest
from excise.training import TrainConfig, seed_everything


@dataclass
class SequentialRecord:
    """The state after step ``step`` (1-based) of a sequence, judged against the cumulative reference."""

    step: int
    request: dict[str, Any]
    forgotten: list[str]
    forget_size: int
    new_samples: int
    metrics: dict[str, float]
    seconds: float
    reference_metrics: dict[str, float] | None = None
    reference_seconds: float | None = None
    avg_gap: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # The requests so far whose step the guard found not served (rolled back, forgot nothing, only in part...): not
    # in ``forgotten``, and not asked again by later steps — their rows stay in the model (the metrics show them).
    unserved: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_sequence(
    method: UnlearningMethod | str,
    model: nn.Module,
    bundle: DatasetBundle,
    requests: Sequence[ForgetRequest],
    recipe: TrainConfig,
    *,
    seed: int = 0,
    reference: str | Sequence[RunRecord] | None = "retrain",
    guard: Guard | None = None,
) -> tuple[nn.Module, list[SequentialRecord]]:
    """Serve ``requests`` one after another with ``method``, starting from ``model`` (never modified).

    ``reference`` is the name of the method producing each step's reference (``"retrain"``: trained from
    scratch on the cumulative retain set, starting from ``model``'s architecture), a list of precomputed
    reference records (one per request, e.g. cached), or ``None`` for no comparison. Returns the final model
    and one :class:`SequentialRecord` per step. ``guard``: the check every step runs under (default
    :class:`~excise.methods.base.Guard`: a step it rolls back leaves the model as that step found it).
    """
    if isinstance(method, str):
        method = get_method(method)
    requests = list(requests)
    for request in requests:
        if not isinstance(request, ForgetRequest):
            raise TypeError(f"requests must be ForgetRequest objects, got {type(request).__name__}")
        method.check_request(request, bundle.train.task)
    views = cumulative_views(bundle, requests)
    step_sets = step_forget_sets(bundle.train, requests)
    if reference is not None and not isinstance(reference, str):
        reference = list(reference)
        if len(reference) != len(requests):
            raise ValueError(
                f"reference has {len(reference)} records but the sequence has {len(requests)} requests; "
                "give one reference record per step, a method name such as 'retrain', or None"
            )
        for record, view in zip(reference, views, strict=True):  # before any step runs
            check_reference_record(record, view)
    records: list[SequentialRecord] = []
    unserved: list[str] = []
    current = model
    with progress_bar(f"sequential {method.name}", len(requests)) as bar:
        for k, (request, view, step_set) in enumerate(zip(requests, views, step_sets, strict=True)):
            seed_everything(seed + k)
            result = method.unlearn(
                current, request, step_set,
                view.retain_set if method.needs_retain else None,
                recipe=recipe, seed=seed + k, guard=guard, guard_set=held_out_guard_rows(view),
            )
            current = result.model
            objection = guard_objection(result.stats.get("guard")) if method.rolls_back else None
            if objection:
                unserved.append(request.describe())
                warnings.warn(f"{method.name}: step {k + 1} of the sequence ({request.describe()}) was not served — "
                              f"{objection}; later steps do not forget it again, so its rows stay in the model "
                              "(record.unserved)", GuardWarning, stacklevel=2)
            metrics = evaluate(current, view, seed=seed)
            record = SequentialRecord(
                step=k + 1,
                request=request.to_dict(),
                forgotten=[r.describe() for r in requests[: k + 1] if r.describe() not in unserved],
                unserved=list(unserved),
                forget_size=len(view.forget_set),
                new_samples=len(step_set),
                metrics=metrics,
                seconds=result.seconds,
                stats={key: v for key, v in result.stats.items() if _is_plain(v)},
            )
            ref = _reference(reference, k, model, view, recipe, seed)
            if ref is not None:
                record.reference_metrics = ref.metrics
                record.reference_seconds = ref.seconds
                record.avg_gap = avg_gap(metrics, ref.metrics)
            records.append(record)
            bar.advance(step=k + 1, FA=metrics["FA"])
    return current, records


def _reference(
    reference: str | list[RunRecord] | None, k: int, model: nn.Module, view: EvalViews, recipe: TrainConfig,
    seed: int,
) -> RunRecord | None:
    if reference is None:
        return None
    if isinstance(reference, str):
        _, record = run_method(reference, model, view, recipe, seed=seed)
        return record
    return reference[k]


__all__ = ["SequentialRecord", "cumulative_views", "run_sequence", "step_forget_sets"]
