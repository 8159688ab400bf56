"""The benchmark runner: every (scenario, method, seed) cell of a suite, cached, resumable, recorded.

Per (scenario, seed) the original model and the retrained reference are trained once (through
:func:`excise.experiment.train_original` and ``run_method("retrain", …)``) and cached as checkpoints under
a content hash of everything that determines them: data-set spec and data fingerprint, model, recipe,
seed, request(s), a hash of the code that trains and evaluates them and the torch thread count
(:func:`excise.bench.cache.training_key`). Every
method then runs against the same two models through :func:`excise.experiment.run_method`.

Cells, in order: for each scenario, for each seed, ``original`` (the untouched model judged against the
reference: the cost of doing nothing), ``retrain`` (the reference itself), then every method. A finished
cell — ``ok`` or ``failed`` — is never recomputed: on start the runner reads the results store and runs
only what is missing, so an interrupted run is resumed by running the same command again. A failing
method is recorded with its error and the suite goes on; ``retry_failed=True`` runs failed cells again.
If a finished cell's configuration differs from the suite's (the suite file was edited), the run is
refused rather than silently mixing two configurations in one results file; ``rerun_changed=True``
recomputes exactly the changed cells instead (their newer records supersede the old ones).

Under ``torchrun`` the (scenario, seed) groups are dealt round-robin to the ranks (a static split, no
scheduler): a rank runs its group's original, reference and method cells alone — single-process, inside
:func:`excise.distributed.independent` — and after each round the records are all-gathered and rank 0
appends them. Only rank 0 writes (results and cached models; another rank's models are used without being
cached). Cells are independent and the bench's models are small, so spreading cells scales better than
data-parallel cells would; times are then measured while the other ranks work on the other cores, which
affects every cell of a run alike (the speed-up compares a method with the reference of the same rank).

Timing and memory, measured in the same run and process as the method: ``time_s`` is the method's own
wall time (``UnlearnResult.seconds``: excludes the defensive copy and the evaluation); ``speedup_vs_retrain``
divides the reference's training time by it (the reference may come from the cache, i.e. an earlier run
on the same machine: ``reference_cached`` says so); ``floor_ratio`` divides it by one forward+backward
pass over the forget set (:func:`excise.timing.forward_backward_seconds`, measured right before the
method); peak RSS is measured as :mod:`excise.bench.memory` describes.

Sequential scenarios run through :func:`excise.sequential.run_sequence`: step ``k`` unlearns the samples
request ``k`` adds (not yet forgotten by earlier steps) from the model step ``k-1`` returned, and is judged
on the *cumulative* views (all forgotten so far) against a model retrained from scratch without any of
them (cached like every reference and handed to ``run_sequence``). A record holds every step; its headline
numbers are the last step's metrics and the sums of the steps' times (each step would need its own full
retrain, so the speed-up compares the sum of unlearning times with the sum of retraining times).
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from excise import distributed
from excise.bench.cache import ModelCache, code_version, results_code_version, training_key
from excise.bench.memory import PeakRSS
from excise.bench.store import RESULTS_FILE, ResultStore, status_of
from excise.bench.suite import MethodSpec, Scenario, Suite, SuiteError
from excise.checkpoint import sidecar_path, versions
from excise.data import DatasetBundle, load_dataset, reads_root
from excise.experiment import RunRecord, build_model, judge, reference_replicate_metrics, run_method, train_original
from excise.hashing import content_hash, model_sha256
from excise.methods import COMPARE_GUARD, UnlearningMethod, get_method, guard_objection
from excise.metrics import EvalViews, avg_gap
from excise.metrics.directions import metric_direction
from excise.metrics.distance import prediction_distances, reference_distances
from excise.metrics.evaluate import collect_outputs
from excise.metrics.lira import ULIRA_CHANCE, ulira_metrics
from excise.metrics.uncertainty import Evidence, evidence, intervals
from excise.progress import progress_bar
from excise.provenance.history import cumulative_views, step_forget_sets
from excise.requests import ForgetRequest, RequestError
from excise.sequential import run_sequence
from excise.timing import forward_backward_seconds

if TYPE_CHECKING:  # excise.bench.ulira imports this module
    from excise.bench.ulira import ULiraShadows

EventHook = Callable[[str, dict[str, Any]], None]
"""``hook(event, info)``; events: ``cell_start``, ``cell_done``, ``cell_reused``, ``train_original``,
``train_reference``, ``cache_hit``. Used by tests and by callers that want their own logging."""

def metric_block(metrics: dict[str, float], reference: dict[str, float] | None) -> dict[str, dict[str, Any]]:
    """``{name: {value, direction, reference, gap}}`` — every metric with how to read it and its gap."""
    out = {}
    for name, value in metrics.items():
        ref = None if reference is None else reference.get(name)
        gap = None if ref is None or value is None else abs(float(value) - float(ref))
        out[name] = {"value": value, "direction": metric_direction(name), "reference": ref, "gap": gap}
    return out


def _attach_evidence(record: dict[str, Any], found: Evidence) -> None:
    """Each metric's bootstrap interval into its block, the average gap's interval and paired replicates into the
    record (the report pools the replicates of several seeds), and the settings that produced them."""
    for name, interval in found.intervals.items():
        if name in record["metrics"]:
            record["metrics"][name]["interval"] = interval
    record["avg_gap_interval"] = found.avg_gap_interval
    record["avg_gap_replicates"] = found.avg_gap_replicates
    record["uncertainty"] = found.uncertainty.to_dict()


# --- plan --------------------------------------------------------------------------------------
@dataclass
class _Step:
    """One step of a scenario: the request, the cumulative views and the samples it newly forgets."""

    request: ForgetRequest
    views: EvalViews  # cumulative: everything forgotten up to and including this step
    delta_views: EvalViews  # what the method unlearns at this step (== views for a single request)


@dataclass
class _Prepared:
    scenario: Scenario
    bundle: DatasetBundle
    steps: list[_Step]
    fingerprint: str  # of the bundle; computed once (hashing CIFAR takes seconds)
    skips: dict[str, str] = field(default_factory=dict)  # method label -> reason


@dataclass
class _Cell:
    scenario: Scenario
    seed: int
    label: str
    method: MethodSpec | None
    cell_hash: str

    @property
    def key(self) -> tuple[str, str, int]:
        return self.scenario.name, self.label, self.seed


@dataclass
class BenchSummary:
    """What a run did: how many cells it ran, reused and how they ended."""

    results_path: Path
    total: int
    ran: int
    reused: int
    failed: list[tuple[str, str, int, str]]
    skipped: int
    seconds: float
    cells: frozenset[tuple[str, str, str, int]] = frozenset()  # (suite, scenario, method, seed) of this suite

    def of_this_suite(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of the suite's current cells: a seed, method or scenario removed from the suite file
        since an earlier run stays in the results file but not in this run's table."""
        return [r for r in records if (r["suite"], r["scenario"], r["method"], r["seed"]) in self.cells]


def _prepare(scenario: Scenario, bundle: DatasetBundle) -> list[_Step]:
    if not scenario.sequential:
        views = EvalViews.from_bundle(bundle, scenario.requests[0])
        return [_Step(scenario.requests[0], views, views)]
    # The same cumulative views and step forget sets excise.sequential.run_sequence uses.
    cumulative = cumulative_views(bundle, list(scenario.requests))
    step_sets = step_forget_sets(bundle.train, list(scenario.requests))
    return [_Step(request, views, EvalViews(step_set, views.retain_set, views.test_retain, views.test_forget,
                                            request))
            for request, views, step_set in zip(scenario.requests, cumulative, step_sets, strict=True)]


def plan(suite: Suite, *, root: str | None = None) -> dict[str, _Prepared]:
    """Load every data set, resolve every request and model against it and decide task support — all
    before anything trains, so a bad label or a model that does not fit the data fails at once."""
    bundles: dict[str, DatasetBundle] = {}
    fingerprints: dict[str, str] = {}
    prepared: dict[str, _Prepared] = {}
    for i, scenario in enumerate(suite.scenarios):
        where = f"suite {suite.source}: scenarios[{i}] ({scenario.name})"
        spec = scenario.dataset
        key = content_hash(spec.to_dict())
        try:
            if key not in bundles:
                # A suite's --root is for its local data sets; the bundled ones in the same suite never read it.
                bundles[key] = load_dataset(spec.name, root=root if reads_root(spec.name) else None, seed=spec.seed,
                                            **spec.options)
                fingerprints[key] = bundles[key].fingerprint()
            bundle = bundles[key]
        except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
            raise SuiteError(f"{where}.dataset: {err}") from err
        try:
            steps = _prepare(scenario, bundle)
        except (RequestError, ValueError) as err:
            raise SuiteError(f"{where}.{'sequence' if scenario.sequential else 'request'}: {err}") from err
        try:
            build_model(bundle, scenario.model.name, seed=0, **scenario.model.kwargs)
        except (ValueError, TypeError) as err:
            raise SuiteError(f"{where}.model: {err}") from err
        if scenario.ulira is not None:
            from excise.bench.ulira import check_task

            try:
                check_task(bundle)
            except ValueError as err:
                raise SuiteError(f"{where}.ulira: {err}") from err
            share = len(steps[0].views.forget_set) / len(bundle.train)
            if 2 * share >= 1:
                raise SuiteError(f"{where}.ulira: the request forgets {share:.0%} of the training set; U-LiRA's "
                                 "attacked pool is twice the forget set, so the request must forget less than half")
        item = _Prepared(scenario, bundle, steps, fingerprints[key])
        for method in suite.methods_for(scenario):
            reason = suite.skips.get((scenario.name, method.label))
            if reason is None:
                # The method's own check (kind, task and anything else it refuses), before any training.
                instance = get_method(method.name, **method.params)
                try:
                    for step in steps:
                        instance.check_request(step.request, bundle.task)
                except RequestError as err:
                    reason = str(err)
                    if scenario.methods is not None or suite.on_unsupported == "error":
                        raise SuiteError(f"{where}.methods: {reason}") from err
            if reason is not None:
                item.skips[method.label] = reason
        prepared[scenario.name] = item
    return prepared


# --- running -----------------------------------------------------------------------------------
def _measured(method: UnlearningMethod, probes: list[PeakRSS]) -> UnlearningMethod:
    """Wrap this instance's ``unlearn`` so the peak RSS of exactly the method's work is recorded."""
    inner = method.unlearn

    def unlearn(*args: Any, **kwargs: Any) -> Any:
        with PeakRSS() as probe:
            result = inner(*args, **kwargs)
        probes.append(probe)
        return result

    method.unlearn = unlearn  # type: ignore[method-assign]
    return method


@lru_cache(maxsize=1)
def _host() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count()}


class _GroupModels:
    """The original model and the reference(s) of one (scenario, seed), trained or read from the cache."""

    def __init__(self, runner: _Runner, item: _Prepared, seed: int) -> None:
        scenario, bundle = item.scenario, item.bundle
        base = {
            "dataset": scenario.dataset.to_dict(), "data_fingerprint": item.fingerprint,
            "model": scenario.model.to_dict(), "training": scenario.training.to_dict(), "seed": seed,
            **training_key(),
        }
        info = {"scenario": scenario.name, "seed": seed}

        def build_original() -> tuple[nn.Module, dict[str, Any]]:
            runner.emit("train_original", info)
            model, seconds = train_original(bundle, scenario.model.name, scenario.training, seed=seed,
                                            **scenario.model.kwargs)
            return model, {"kind": "original", "train_seconds": seconds, "seed": seed,
                           "dataset": scenario.dataset.to_dict(), "recipe": scenario.training.to_dict()}

        self.original, meta, hit = runner.cache.get_or_build("original", base, build_original)
        self.original_path = runner.cache.path("original", base)
        if hit:
            runner.emit("cache_hit", {**info, "model": "original"})
        self.original_sha = meta["sha256"]
        self.original_seconds = float(meta["train_seconds"])
        self.original_cached = hit
        self.references: list[RunRecord] = []
        self.reference_models: list[nn.Module] = []
        self.reference_shas: list[str] = []
        self.reference_paths: list[Path] = []
        self.reference_cached: list[bool] = []
        for k, step in enumerate(item.steps):
            payload = {**base, "requests": [r.to_dict() for r in scenario.requests[: k + 1]]}

            def build_reference(step: _Step = step, k: int = k) -> tuple[nn.Module, dict[str, Any]]:
                runner.emit("train_reference", {**info, "step": k})
                model, record = run_method("retrain", self.original, step.views, scenario.training, seed=seed)
                return model, {"kind": "retrained", "train_seconds": record.seconds, "metrics": record.metrics,
                               "seed": seed, "request": step.views.request.to_dict(), "stats": record.stats}

            reference_model, meta, hit = runner.cache.get_or_build("retrain", payload, build_reference)
            if hit:
                runner.emit("cache_hit", {**info, "model": "retrain", "step": k})
            # The distances of retrain's predictions to themselves (zeros) join its metrics, so every cell's
            # KL_ref / W1_ref gets its gap to retrain like any other metric.
            metrics = {**meta["metrics"], **reference_distances(step.views)}
            self.references.append(RunRecord("retrain", step.views.request.to_dict(), metrics,
                                             float(meta["train_seconds"]), {}, meta.get("stats", {})))
            self.reference_models.append(reference_model)
            self.reference_shas.append(meta["sha256"])
            self.reference_paths.append(runner.cache.path("retrain", payload))
            self.reference_cached.append(hit)
        # Every cell's intervals are those of its last step (its headline numbers), and its gap interval is paired
        # with the reference's replicates on that step's views: computed once for the whole group.
        self.uncertainty = runner.suite.uncertainty
        self.reference_replicates = (None if not self.uncertainty.enabled else reference_replicate_metrics(
            self.reference_models[-1], item.steps[-1].views, self.uncertainty, seed=seed))
        # U-LiRA (a scenario option): shadows trained once per (scenario, seed) and cached like the models above,
        # and retrain's attack (num_shadows retrainings) cached as a row. The reference of the MIA:ulira_*
        # metrics is chance, which exact unlearning reaches by construction; retrain's measured row (noise around
        # chance) is what the retrain cell shows. A failure here costs the U-LiRA numbers, not the cells.
        self.ulira: ULiraShadows | None = None
        self.ulira_retrain: dict[str, float] = {}
        self.ulira_band: list[float] | None = None
        self.ulira_error: str | None = None
        if scenario.ulira is not None:
            from excise.bench.ulira import ULiraConfig, ULiraShadows

            try:
                share = len(item.steps[0].views.forget_set) / len(bundle.train)
                config = ULiraConfig(num_shadows=scenario.ulira.shadows, pool=2 * share,
                                     variance=scenario.ulira.variance, seed=seed)
                self.ulira = ULiraShadows(bundle, scenario.model.name, scenario.training, config,
                                          model_kwargs=scenario.model.kwargs, cache=runner.cache)
                runner.emit("ulira", {**info, "model": "retrain"})
                retrained = self.ulira.attack(get_method("retrain"), reuse=True, band=True)
                self.ulira_retrain = ulira_metrics(retrained.attack)
                # The noise of this run's size (retrain's scores under random membership): every cell of the
                # group carries it as ``ulira_null_band``, so an AUC is read beside it.
                self.ulira_band = retrained.null_band
            except Exception as err:  # noqa: BLE001 - recorded in every cell of the group
                self.ulira, self.ulira_error = None, f"{type(err).__name__}: {err}"
            else:
                reference = self.references[0]
                self.references[0] = replace(reference, metrics={**reference.metrics, **ULIRA_CHANCE})

    def note_ulira(self, record: dict[str, Any]) -> None:
        """The group's U-LiRA error and retrain's null band, on every cell's record that reads U-LiRA."""
        if self.ulira_error is not None:
            record["ulira_error"] = self.ulira_error
        if self.ulira_band is not None:
            record["ulira_null_band"] = self.ulira_band

    def ulira_metrics(self, method: UnlearningMethod | None, record: dict[str, Any]) -> dict[str, float]:
        """U-LiRA on ``method`` (None: the original shadows) when the scenario asks for it, else nothing; an
        error is written to ``record["ulira_error"]`` and costs only these metrics."""
        self.note_ulira(record)
        if self.ulira is None:
            return {}
        try:
            return ulira_metrics(self.ulira.attack(method).attack)
        except Exception as err:  # noqa: BLE001 - the cell's other numbers stand
            record["ulira_error"] = f"{type(err).__name__}: {err}"
            return {}


class _Runner:
    def __init__(self, suite: Suite, out_dir: Path, cache_dir: Path, on_event: EventHook | None, *,
                 certify: bool = False, root: str | None = None) -> None:
        self.suite = suite
        self.certify_dir = out_dir / "certified" if certify else None
        self.root = root
        # Decided once, before any rank works alone: only rank 0 of a torchrun job writes results or models
        # (or repairs a truncated results file).
        self.writes = distributed.is_main()
        self.store = ResultStore(out_dir / RESULTS_FILE, writable=self.writes)
        self.cache = ModelCache(cache_dir, writable=self.writes)
        self.on_event = on_event
        self.versions = {**versions(), "excise_code": code_version()[:16],
                         "excise_results_code": results_code_version()[:16]}

    def emit(self, event: str, info: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event, info)

    # -- records --------------------------------------------------------------------------------
    def _base_record(self, cell: _Cell, item: _Prepared) -> dict[str, Any]:
        scenario = cell.scenario
        method = cell.method
        return {
            "suite": self.suite.name, "scenario": scenario.name, "kind": scenario.kind,
            "request": scenario.request_record(), "method": cell.label,
            "method_name": method.name if method else cell.label, "seed": cell.seed,
            "cell_hash": cell.cell_hash,
            "config": {"scenario": scenario.to_dict(),
                       "method": method.to_dict() if method else {"label": cell.label, "name": cell.label}},
            "versions": self.versions, "host": {**_host(), "torch_threads": torch.get_num_threads()},
            "hashes": {"data": item.fingerprint},
            "sizes": {"train": len(item.bundle.train), "test": len(item.bundle.test),
                      "forget": len(item.steps[-1].views.forget_set)},
        }

    def _step_record(self, k: int, step: _Step, metrics: dict[str, float], reference: RunRecord,
                     seconds: float | None, floor: float | None, probe: PeakRSS | None,
                     stats: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": k, "request": step.request.to_dict(),
            "forget_size": len(step.views.forget_set), "unlearned_size": len(step.delta_views.forget_set),
            "metrics": metric_block(metrics, reference.metrics), "avg_gap": avg_gap(metrics, reference.metrics),
            "time_s": seconds, "retrain_time_s": reference.seconds,
            "forward_backward_s": floor,
            "peak_rss_mb": None if probe is None else probe.peak_mb,
            "peak_rss_delta_mb": None if probe is None else probe.delta_mb,
            "stats": stats,
        }

    def _finish(self, record: dict[str, Any], steps: list[dict[str, Any]], models: _GroupModels) -> None:
        last = steps[-1]
        record["metrics"] = last["metrics"]
        record["avg_gap"] = last["avg_gap"]
        times = [s["time_s"] for s in steps]
        record["time_s"] = None if None in times else float(sum(times))
        record["retrain_time_s"] = float(sum(s["retrain_time_s"] for s in steps))
        record["speedup_vs_retrain"] = (
            None if record["time_s"] is None else record["retrain_time_s"] / max(record["time_s"], 1e-9))
        floors = [s["forward_backward_s"] for s in steps]
        record["forward_backward_s"] = None if None in floors else float(sum(floors))
        record["floor_ratio"] = (None if record["time_s"] is None or record["forward_backward_s"] is None
                                 else record["time_s"] / max(record["forward_backward_s"], 1e-12))
        peaks = [s["peak_rss_mb"] for s in steps if s["peak_rss_mb"] is not None]
        deltas = [s["peak_rss_delta_mb"] for s in steps if s["peak_rss_delta_mb"] is not None]
        record["peak_rss_mb"] = max(peaks) if peaks else None
        record["peak_rss_delta_mb"] = max(deltas) if deltas else None
        record["original_train_time_s"] = models.original_seconds
        record["reference_cached"] = all(models.reference_cached)
        record["hashes"].update({"original": models.original_sha, "reference": models.reference_shas[-1]})
        if len(steps) > 1:
            record["steps"] = steps
            record["hashes"]["references"] = models.reference_shas
        else:
            record["stats"] = steps[0]["stats"]

    # -- cells ----------------------------------------------------------------------------------
    def run_cell(self, cell: _Cell, item: _Prepared, models: _GroupModels) -> dict[str, Any]:
        record = self._base_record(cell, item)
        seed, recipe = cell.seed, cell.scenario.training
        steps: list[dict[str, Any]] = []
        last = len(item.steps) - 1
        found: Evidence | None = None
        certified: nn.Module | None = None  # the cell's model, kept with a certificate under --certify
        objection: str | None = None  # why that model must not be certified (what its guard found)
        if cell.label == "original":
            for k, step in enumerate(item.steps):
                metrics, judged = judge(models.original, step.views, seed=seed,
                                        reference_model=models.reference_models[k],
                                        uncertainty=models.uncertainty if k == last else None,
                                        reference_replicates=models.reference_replicates)
                found = judged or found
                metrics.update(models.ulira_metrics(None, record))
                steps.append(self._step_record(k, step, metrics, models.references[k], None, None, None, {}))
            self._finish(record, steps, models)
            record["hashes"]["unlearned"] = models.original_sha
        elif cell.label == "retrain":
            models.note_ulira(record)
            for k, step in enumerate(item.steps):
                ref = models.references[k]
                metrics = {**ref.metrics, **models.ulira_retrain}  # measured U-LiRA, against chance
                steps.append(self._step_record(k, step, metrics, ref, ref.seconds, None, None, ref.stats))
            self._finish(record, steps, models)
            record["speedup_vs_retrain"] = 1.0
            record["hashes"]["unlearned"] = models.reference_shas[-1]
            if models.reference_replicates is not None:  # its own replicates; its gap to itself is 0 in each
                found = Evidence(models.uncertainty, intervals(models.reference_replicates, models.uncertainty.level),
                                 [0.0, 0.0], [0.0] * len(models.reference_replicates))
            certified = models.reference_models[-1]
        else:
            assert cell.method is not None
            method_spec = cell.method
            probes: list[PeakRSS] = []
            method = _measured(get_method(method_spec.name, **method_spec.params), probes)
            # The floor depends on the architecture and the rows, not the weights: measure every step's on
            # the original model, right before the method runs.
            floors = [forward_backward_seconds(models.original, step.delta_views.forget_set,
                                               batch_size=recipe.batch_size) for step in item.steps]
            if cell.scenario.sequential:
                final, seq = run_sequence(method, models.original, item.bundle, list(cell.scenario.requests), recipe,
                                          seed=seed, reference=models.references, guard=COMPARE_GUARD)
                runs = [(r.metrics, r.seconds, r.stats) for r in seq]
                # Only the last step's model is returned: its predictions are compared with the last reference.
                runs[-1][0].update(prediction_distances(final, models.reference_models[-1], item.steps[-1].views))
                if models.uncertainty.enabled:
                    found = evidence(collect_outputs(final, item.steps[-1].views), models.uncertainty, seed=seed,
                                     evaluated=runs[-1][0], reference=models.reference_replicates)
            else:
                final, run = run_method(method, models.original, item.steps[0].views, recipe, seed=seed,
                                        reference_model=models.reference_models[0], uncertainty=models.uncertainty,
                                        reference_replicates=models.reference_replicates, guard=COMPARE_GUARD)
                found = run.evidence
                # A fresh instance: the measured one would add the shadows' unlearning to the cell's peak RSS.
                attacked = models.ulira_metrics(get_method(method_spec.name, **method_spec.params), record)
                runs = [({**run.metrics, **attacked}, run.seconds, run.stats)]
            for k, (step, (metrics, seconds, stats)) in enumerate(zip(item.steps, runs, strict=True)):
                steps.append(self._step_record(k, step, metrics, models.references[k], seconds, floors[k],
                                               probes[k] if k < len(probes) else None, stats))
                found_here = guard_objection(stats.get("guard"))
                if objection is None and found_here is not None:
                    objection = found_here if len(runs) == 1 else f"step {k + 1}: {found_here}"
            record["config"]["method"]["resolved"] = method.config_dict()
            self._finish(record, steps, models)
            record["hashes"]["unlearned"] = model_sha256(final)
            certified = final
        if found is not None:
            _attach_evidence(record, found)
        if self.certify_dir is not None and certified is not None and self.writes:
            # The comparison guard keeps a run it found wanting, for the table; a certificate would claim a
            # deletion it did not make (as `excise unlearn --out` refuses to under the default guard).
            record["certificate"] = (self._refuse_certificate(cell, objection) if objection is not None else
                                     self._certify(cell, item, models, certified, record, found))
        record["status"] = "ok"
        return record

    def _certified_path(self, cell: _Cell) -> Path:
        assert self.certify_dir is not None
        return self.certify_dir / cell.scenario.name / f"{cell.label}-seed{cell.seed}.safetensors"

    def _refuse_certificate(self, cell: _Cell, objection: str) -> dict[str, Any]:
        """No certificate for this run, and none left from an earlier run of the cell (``--rerun-changed``): the
        record supersedes it, and a stale model and certificate that still verify would certify what this run
        found it did not do."""
        from excise.provenance.certificate import certificate_path

        path = self._certified_path(cell)
        for stale in (certificate_path(path), sidecar_path(path), path):
            stale.unlink(missing_ok=True)
        return {"refused": objection, "path": None}

    def _certify(self, cell: _Cell, item: _Prepared, models: _GroupModels, model: nn.Module,
                 record: dict[str, Any], found: Evidence | None) -> dict[str, str]:
        """``bench --certify``: keep the cell's model (with a sidecar like `excise unlearn` writes, so `excise
        evaluate` and a chained `excise unlearn` work on it) and write its deletion certificate beside it."""
        from excise.provenance.issue import write_certified

        assert self.certify_dir is not None
        scenario, requests = cell.scenario, list(cell.scenario.requests)
        metrics = {name: block["value"] for name, block in record["metrics"].items()}
        ulira = {name: metrics.pop(name) for name in list(metrics) if name.startswith("MIA:ulira")}
        retrain = cell.label == "retrain"
        meta: dict[str, Any] = {
            "kind": "retrained" if retrain else "unlearned",
            "dataset": {**scenario.dataset.to_dict(), "root": self.root, "fingerprint": item.fingerprint},
            "recipe": scenario.training.to_dict(), "seed": cell.seed, "train_seed": cell.seed,
            "request": requests[-1].to_dict(), "history": [r.to_dict() for r in requests], "history_complete": True,
            "new_samples": len(item.steps[-1].delta_views.forget_set),
            "forget_size": len(item.steps[-1].views.forget_set),
            "method": "retrain" if retrain else cell.method.name,
            "method_config": record["config"]["method"].get("resolved", {}),
            # What the method and its guard reported (the last step's, for a sequence), as `excise unlearn`'s
            # sidecar does: a certified run's guard found nothing wanting (such a run is refused, above).
            "method_stats": record["steps"][-1]["stats"] if "steps" in record else record.get("stats", {}),
            "parent_sha256": models.original_sha, "metrics": metrics, "unlearn_seconds": record["time_s"],
            "bench": {"suite": self.suite.name, "scenario": scenario.name, "method": cell.label, "seed": cell.seed},
        }
        if not retrain:
            reference_metrics = models.references[-1].metrics
            meta["reference"] = {"path": str(models.reference_paths[-1]), "sha256": models.reference_shas[-1],
                                 "metrics": reference_metrics, "avg_gap": avg_gap(metrics, reference_metrics)}
        path = self._certified_path(cell)
        # A re-run cell supersedes its earlier certificate.
        written, digest = write_certified(path, model, meta, overwrite=True,
                                          original={"path": models.original_path, "sha256": models.original_sha,
                                                    "kind": "original"},
                                          bundle=item.bundle, covers=requests, evidence=found, ulira=ulira or None)
        return {"path": str(written), "sha256": digest}

    def run_group(self, item: _Prepared, seed: int, pending: list[_Cell],
                  done: Callable[[dict[str, Any]], None]) -> None:
        """Run the pending cells of one (scenario, seed) against its original and reference models; hand each
        record to ``done`` as it finishes (a failing cell is recorded and the group goes on)."""
        scenario_name = item.scenario.name
        models: _GroupModels | None = None
        group_error: BaseException | None = None
        try:
            models = _GroupModels(self, item, seed)
        except Exception as err:  # noqa: BLE001 - recorded per cell; the suite goes on
            group_error = err
        for cell in pending:
            info = {"scenario": scenario_name, "method": cell.label, "seed": seed}
            self.emit("cell_start", info)
            if models is None:
                record = self.failed_record(cell, item, group_error, "original/reference: ")
            else:
                try:
                    record = self.run_cell(cell, item, models)
                except Exception as err:  # noqa: BLE001 - one failing method must not stop the suite
                    record = self.failed_record(cell, item, err, "")
            done(record)
            self.emit("cell_done", {**info, "status": record["status"]})

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store ``record`` (rank 0 only: the other ranks of a torchrun job never write)."""
        return self.store.append(record) if self.writes else record

    def failed_record(self, cell: _Cell, item: _Prepared, err: BaseException, stage: str) -> dict[str, Any]:
        record = self._base_record(cell, item)
        record["status"] = f"failed: {stage}{type(err).__name__}: {err}"
        record["error"] = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-8:])
        return record

    def skipped_record(self, cell: _Cell, item: _Prepared, reason: str) -> dict[str, Any]:
        record = self._base_record(cell, item)
        record["status"] = f"skipped: {reason}"
        return record


def current_cells(suite: Suite) -> dict[tuple[str, str, str, int], str]:
    """``(suite, scenario, method label, seed) -> cell hash`` of every cell the suite file defines now."""
    return {(suite.name, *cell.key): cell.cell_hash for cell in _cells(suite)}


def _cells(suite: Suite) -> list[_Cell]:
    cells = []
    for scenario in suite.scenarios:
        for seed in suite.seeds:
            for label in ("original", "retrain"):
                cells.append(_Cell(scenario, seed, label, None, suite.cell_hash(scenario, label, seed)))
            for method in suite.methods_for(scenario):
                cells.append(_Cell(scenario, seed, method.label, method, suite.cell_hash(scenario, method, seed)))
    return cells


def run_suite(
    suite: Suite,
    out_dir: str | Path,
    *,
    root: str | None = None,
    cache_dir: str | Path | None = None,
    retry_failed: bool = False,
    rerun_changed: bool = False,
    on_event: EventHook | None = None,
    certify: bool = False,
) -> BenchSummary:
    """Run (or resume) ``suite`` into ``out_dir/results.jsonl``; models are cached in ``cache_dir``
    (default ``out_dir/cache``). ``retry_failed`` runs failed cells again; ``rerun_changed`` recomputes cells
    whose configuration differs from the stored one (otherwise such a store is refused). ``certify``: keep every
    cell's model under ``out_dir/certified/<scenario>/`` with its deletion certificate
    (:mod:`excise.provenance.certificate`), for `excise verify`; the record's ``certificate`` is ``{"path",
    "sha256"}``, or ``{"refused": <what the guard found>, "path": None}`` for a run whose guard found it collapsed
    the model, left a samples request's rows further from looking unseen, forgot nothing of a class request, or
    returned the model unchanged (:func:`excise.methods.guard_objection`): nothing is written for it."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out={str(out_dir)!r} exists and is not a directory")
    prepared = plan(suite, root=root)
    runner = _Runner(suite, out_dir, Path(cache_dir) if cache_dir else out_dir / "cache", on_event, certify=certify,
                     root=root)
    cells = _cells(suite)
    done = runner.store.latest()
    # Every rank must plan from the same store: nobody appends before all have read it.
    distributed.barrier()
    changed = [c for c in cells if (suite.name, *c.key) in done
               and done[(suite.name, *c.key)]["cell_hash"] != c.cell_hash]
    if changed and not rerun_changed:
        first = changed[0]
        raise SuiteError(
            f"{runner.store.path} already holds results for {len(changed)} cell(s) of suite {suite.name!r} computed "
            f"with a different configuration (first: scenario={first.key[0]!r}, method={first.key[1]!r}, "
            f"seed={first.key[2]}): the suite file changed since. Use a new --out directory (the model cache "
            "can be shared with --cache), or --rerun-changed to recompute exactly those cells (their new records "
            "supersede the old ones, so the latest record of every cell matches the suite)"
        )

    # Same configuration, but computed by other code or on other data: resuming would mix them in one table.
    current_code = runner.versions["excise_results_code"]

    def stale_because(cell: _Cell) -> str | None:
        record = done.get((suite.name, *cell.key))
        if record is None or record["cell_hash"] != cell.cell_hash or status_of(record) == "skipped":
            return None
        if retry_failed and status_of(record) == "failed":
            return None  # about to be recomputed anyway: its old code cannot leak into the table
        recorded_code = record.get("versions", {}).get("excise_results_code")
        if recorded_code != current_code:
            return f"excise code {recorded_code or 'unrecorded'} vs {current_code} now"
        recorded_data = record.get("hashes", {}).get("data")
        if recorded_data != prepared[cell.scenario.name].fingerprint:
            return f"data fingerprint {str(recorded_data)[:12]} vs {prepared[cell.scenario.name].fingerprint[:12]} now"
        return None

    stale = [(c, why) for c in cells if (why := stale_because(c))]
    if stale and not rerun_changed:
        first, why = stale[0]
        raise SuiteError(
            f"{runner.store.path} holds {len(stale)} record(s) of suite {suite.name!r} with this configuration but "
            f"computed by other code or on other data (first: scenario={first.key[0]!r}, method={first.key[1]!r}, "
            f"seed={first.key[2]}: {why}). Use a new --out directory, or --rerun-changed to recompute them"
        )
    stale_keys = {c.key for c, _ in stale}

    def finished(cell: _Cell) -> bool:
        record = done.get((suite.name, *cell.key))
        if record is None or record["cell_hash"] != cell.cell_hash or cell.key in stale_keys:
            return False
        status = status_of(record)
        if status == "failed":
            return not retry_failed
        if status == "skipped":
            return cell.label in prepared[cell.scenario.name].skips
        return True

    ran = reused = skipped = 0
    failed: list[tuple[str, str, int, str]] = []
    groups: dict[tuple[str, int], list[_Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.scenario.name, cell.seed), []).append(cell)
    work: list[tuple[_Prepared, int, list[_Cell]]] = []
    with progress_bar(f"bench {suite.name}", len(cells)) as bar:
        for (scenario_name, seed), group in groups.items():
            item = prepared[scenario_name]
            pending = []
            for cell in group:
                if finished(cell):
                    reused += 1
                    runner.emit("cell_reused", {"scenario": scenario_name, "method": cell.label, "seed": seed})
                    bar.advance(cell=f"{scenario_name}/{cell.label}/{seed}", status="done earlier")
                elif cell.label in item.skips:
                    runner.append(runner.skipped_record(cell, item, item.skips[cell.label]))
                    skipped += 1
                    bar.advance(cell=f"{scenario_name}/{cell.label}/{seed}", status="skipped")
                else:
                    pending.append(cell)
            if pending:
                work.append((item, seed, pending))

        def account(record: dict[str, Any]) -> None:
            nonlocal ran
            ran += 1
            if status_of(record) == "failed":
                failed.append((record["scenario"], record["method"], record["seed"], record["status"]))
            bar.advance(cell=f"{record['scenario']}/{record['method']}/{record['seed']}", status=status_of(record))

        if not distributed.is_distributed():
            for item, seed, pending in work:
                runner.run_group(item, seed, pending, lambda record: account(runner.append(record)))
        else:
            # Under torchrun the (scenario, seed) groups are dealt round-robin to the ranks; each rank runs its
            # group alone (no collectives inside a cell) and after every round rank 0 appends all the records,
            # so an interrupted run loses at most the round in flight.
            size, rank = distributed.world_size(), distributed.rank()
            for first in range(0, len(work), size):
                mine: list[dict[str, Any]] = []
                if first + rank < len(work):
                    with distributed.independent():
                        runner.run_group(*work[first + rank], mine.append)
                for records in distributed.all_gather_objects(mine):
                    for record in records:
                        account(runner.append(record))
    distributed.barrier()  # rank 0 has written everything before any rank reads the results
    return BenchSummary(runner.store.path, len(cells), ran, reused, failed, skipped, time.perf_counter() - start,
                        frozenset((suite.name, *c.key) for c in cells))


__all__ = ["BenchSummary", "metric_block", "plan", "run_suite"]
