"""The demo: train on bundled digits, retrain without one class, unlearn it with every method, print the table.

Every number is measured in this run; nothing is scripted. The retrained model is the reference: a
method is good when its row looks like retrain's (FA near 0, RA/TA high, MIA near retrain's) at a
fraction of retrain's time.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from excise.checkpoint import atomic_write_text, versions
from excise.data import load_dataset
from excise.experiment import RunRecord, evaluate_original, reference_replicate_metrics, run_method, train_original
from excise.methods import GuardWarning, list_methods, method_class
from excise.metrics import EvalViews
from excise.metrics.distance import reference_distances
from excise.metrics.mia import HEADLINE_MIA
from excise.metrics.uncertainty import Evidence, Uncertainty, intervals
from excise.requests import ForgetRequest
from excise.training import TrainConfig

DEMO_RECIPE = TrainConfig(epochs=20, batch_size=64, lr=0.05)
DEMO_UNCERTAINTY = Uncertainty(variants=(HEADLINE_MIA,))
"""The demo's intervals: every metric and the headline MIA, enough for the avg gap's (as the bench)."""


def demo_methods(kind: str = "class", task: str = "multiclass") -> list[str]:
    """Every registered method that serves ``kind`` requests on ``task`` models, retrain excluded."""
    return [
        name for name in list_methods()
        if name != "retrain" and kind in method_class(name).kinds and task in method_class(name).tasks
    ]


def run_demo(
    *,
    dataset: str = "digits",
    request: ForgetRequest | None = None,
    methods: Sequence[str] | None = None,
    model: str = "small_cnn",
    width: int = 32,
    recipe: TrainConfig = DEMO_RECIPE,
    seed: int = 0,
    out_dir: str | Path | None = None,
    console: Console | None = None,
) -> list[RunRecord]:
    """Run the demo and return its records: original, retrain, then one per method."""
    console = console or Console()
    request = request or ForgetRequest(kind="class", labels=("3",))
    bundle = load_dataset(dataset, seed=seed)
    methods = list(methods) if methods is not None else demo_methods(request.kind, bundle.task)
    for name in methods:
        method_class(name)  # unknown names fail before any training
    views = EvalViews.from_bundle(bundle, request)
    console.print(
        f"[bold]excise demo[/bold] — {dataset}: {len(bundle.train)} train / {len(bundle.test)} test; "
        f"forget {request.describe()} ({len(views.forget_set)} samples); seed {seed}"
    )
    original, train_seconds = train_original(bundle, model, recipe, seed=seed, width=width)
    retrained, reference = run_method("retrain", original, views, recipe, seed=seed)
    reference.metrics.update(reference_distances(views))  # zeros, for the table
    reference.avg_gap, reference.speedup = 0.0, 1.0
    # The reference's bootstrap replicates, computed once: every row's gap interval is paired with them.
    replicates = reference_replicate_metrics(retrained, views, DEMO_UNCERTAINTY, seed=seed)
    if replicates is not None:
        reference.evidence = Evidence(DEMO_UNCERTAINTY, intervals(replicates), [0.0, 0.0], [0.0] * len(replicates))
    records = [evaluate_original(original, views, seed=seed, reference_model=retrained,
                                 uncertainty=DEMO_UNCERTAINTY, reference_replicates=replicates)]
    records[0].seconds = train_seconds
    records.append(reference)
    records[0].avg_gap = _gap(records[0], reference)
    for name in methods:
        try:
            # The guard's findings are marked in the table (↺, ○, ◐, ◌), not printed as warnings between the rows.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GuardWarning)
                _, record = run_method(name, original, views, recipe, seed=seed, reference=reference,
                                       reference_model=retrained, uncertainty=DEMO_UNCERTAINTY,
                                       reference_replicates=replicates)
        except Exception as err:  # one failing method must not hide the others' results
            console.print(f"[red]{name} failed:[/red] {err}")
            continue
        records.append(record)
    console.print(results_table(records, title=f"Forgetting {request.describe()} on {dataset}"))
    if out_dir is not None:
        write_results(Path(out_dir) / "demo_results.json", records, {
            "dataset": dataset, "request": request.to_dict(), "model": model, "width": width,
            "recipe": recipe.to_dict(), "seed": seed, "data_fingerprint": bundle.fingerprint(),
        })
    return records


def _gap(record: RunRecord, reference: RunRecord) -> float:
    from excise.metrics import avg_gap

    return avg_gap(record.metrics, reference.metrics)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def _gap_interval_cell(record: RunRecord, original: RunRecord | None) -> str:
    """The avg gap's 95% interval; ``≈`` when it overlaps the original's (not distinguishable from doing nothing)."""
    found = record.evidence
    if found is None or found.avg_gap_interval is None:
        return "—"
    low, high = found.avg_gap_interval
    text = f"{low:.1f}-{high:.1f}"
    theirs = None if original is None or original.evidence is None else original.evidence.avg_gap_interval
    if theirs is not None and record.method not in ("original", "retrain") and low <= theirs[1] and theirs[0] <= high:
        text += " ≈"
    return text


def results_table(records: Sequence[RunRecord], title: str = "") -> Table:
    # One space between columns and no edges: the ten columns fit 80 without cutting a method name, a number or a
    # header ("speed-up" was cut to "speed-…" beside the 18-letter imu_forgotten_rows).
    table = Table(title=title, title_justify="left", box=None, padding=(0, 0, 0, 1), pad_edge=False,
                  show_edge=False)
    table.add_column("method", no_wrap=True, min_width=max([len(r.method) + 2 for r in records] + [6]))
    for column in ("FA", "RA", "TA", "MIA", "gap", "gap 95%", "KL", "time s", "speedup"):
        table.add_column(column, justify="right", no_wrap=True)
    original = next((r for r in records if r.method == "original"), None)
    for record in records:
        m = record.metrics
        speedup = "—" if record.method == "original" or record.speedup is None else f"{record.speedup:.1f}x"
        found = record.stats.get("guard") or {}
        mark = (" ↺" if found.get("rolled_back") else " ○" if found.get("forgot_nothing") else
                " ◐" if found.get("incomplete") else " ◌" if found.get("hidden_in_statistics") else "")
        table.add_row(
            record.method + mark, _fmt(m.get("FA")), _fmt(m.get("RA")), _fmt(m.get("TA")),
            _fmt(m.get("MIA")),
            _fmt(record.avg_gap), _gap_interval_cell(record, original), _fmt(m.get("KL_ref:forget"), ".2f"),
            _fmt(record.seconds, ".2f"), speedup,
        )
    table.caption = (
        "FA/RA/TA: forget/retain/test accuracy % (TA on remaining classes); MIA: SVC confidence MIA-efficacy % "
        "(share of forget set called non-member). gap: mean |Δ| to retrain over FA, RA, TA, MIA (lower is "
        "better); gap 95%: its bootstrap interval, paired with retrain's; ≈: it overlaps the original's, not "
        "distinguishable from doing nothing. KL: KL(retrain || model) of the predictions on the forget set, nats "
        "(0 = predicts like retrain). ↺: the guard rolled the run back, the row is the model as it was; ○: the run "
        "forgot nothing (the class's accuracy fell by less than 1 point); ◐: the class forgotten only in part (more "
        "than 10% of its forget rows still predicted as it); ◌: the class comes back when the BatchNorm statistics "
        "are recomputed (no labels, no gradient), so it was not forgotten in the weights. Time of the "
        "original row = its training time; speedup: retrain's time / this run's."
    )
    return table


def write_results(path: Path, records: Sequence[RunRecord], config: dict[str, Any]) -> Path:
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": versions(),
        "records": [r.to_dict() for r in records],
    }
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str), overwrite=True)
