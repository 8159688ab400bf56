"""Calibration against one retrain (issue 19, part 4): tune a method's key hyper-parameters on a *proxy* request.

A user who can afford one retrain — not of the request they must serve, but of a proxy of it (another class, or
a random subset of the same size) — retrains once on the proxy and lets optuna (Akiba, Sano, Yanase, Ohta and
Koyama, "Optuna: A Next-generation Hyperparameter Optimization Framework", KDD 2019) search each method's key
hyper-parameters for the smallest average gap to that retrained model (:func:`excise.metrics.avg_gap` over FA, RA,
TA and MIA, in points: the number every table of excise reports). The result is a small JSON file kept beside the
model; ``excise unlearn --config FILE`` (:func:`apply_calibration`) runs the real request with it.

Choices, and why:

- **The one flow.** Every trial is :func:`excise.experiment.run_method` on the proxy's views with the same ``seed``
  (so trials differ only in their hyper-parameters: paired comparisons), judged against the retrained model
  evaluated on the same views with the same seed.
- **The defaults are trial 0** (``study.enqueue_trial``) and the best trial is the lowest gap among the trials that
  passed (ties go to the earlier trial, so to the defaults): calibration never returns a configuration that does
  worse on the proxy than the defaults did — unless the defaults themselves failed the guard.
- **Back toward the defaults** (:func:`toward_defaults`): after the search each tuned knob of the best trial is
  put back to its default, one at a time, and stays there if the proxy's gap is no larger. Only what measurably
  helps on the proxy moves away from the defaults; a knob the proxy never exercised (a cap its run never reached)
  would otherwise keep a random value into the real request. These runs (at most one per knob) are recorded as
  trials after the ``n_trials`` of the search.
- **The guard is on.** A trial whose run fired the guard (:class:`excise.methods.base.Guard`, checked on the
  proxy's held-out test rows, handed over as the ``guard_set`` — not training data, never read by the method: a
  collapse, or on a samples request forget rows that ended further from looking unseen; since 2026-12-07 also a
  proxy class the run did not forget, or a model returned unchanged: a new user's calibration had picked a
  configuration that forgot nothing of its proxy class, and ``excise unlearn`` then refused it) or raised a
  ``ValueError`` / ``FloatingPointError`` (a refused or diverged configuration) is told to optuna as *pruned*:
  TPE ranks pruned trials below every complete one, and
  the best trial is only ever a complete one. Its gap (if measured) and the reason are kept in the file.
  A method none of whose trials passed keeps no calibrated configuration (``params`` is ``None``) and
  :func:`load_calibration` refuses to apply it.
- **Search spaces** (:data:`SEARCH_SPACES`): 1-3 knobs per method, the ones its module docstring names as deciding
  the forgetting/utility trade-off, in the method's own scale-free units (``lr_scale`` relative to the training
  recipe, budgets in passes or steps as the method counts them); learning rates and other multiplicative knobs on
  a log scale; every default inside its range (checked by the tests). A knob that only acts on some request kinds
  (``kinds``) is tuned only when the proxy is of such a kind — e.g. MU-Mis's class-request cap.
- **Sampler:** optuna's TPE seeded with ``seed``, multivariate (learning rate and budget act together), with
  half of the trials (at most optuna's default 10) as its random start-up: at the modest budgets calibration is
  meant for (10-30 trials) optuna's default would leave almost nothing to the model-based phase. Each method gets
  its own study, so adding a method does not change another's result. Optuna's own log lines are silenced while it
  runs (its verbosity is restored afterwards).

Optuna is an optional dependency: ``pip install "excise[calibrate]"``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from excise._files import read_json_or_yaml
from excise.checkpoint import versions
from excise.data import LabeledData
from excise.experiment import RunRecord, held_out_guard_rows, run_method
from excise.methods import COMPARE_GUARD, Guard, GuardWarning, get_method, guard_objection, method_class
from excise.metrics import EvalViews, evaluate
from excise.progress import progress_bar
from excise.training import TrainConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

FORMAT = "excise-calibration"
FORMAT_VERSION = 1
OBJECTIVE = "avg gap (points) to the proxy request's retrained model over FA, RA, TA, MIA; lower is better"
INSTALL_HINT = 'calibration needs optuna: pip install "excise[calibrate]"'


@dataclass(frozen=True)
class Space:
    """The range one hyper-parameter is searched in: ``[low, high]``, on a log scale if ``log``, integers if
    ``integer``; ``kinds``: the request kinds it acts on (``None``: all)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"search space [{self.low}, {self.high}] must have low < high (and low > 0 on a log "
                             "scale)")

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (not self.integer or isinstance(value, int))

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kinds"] = None if self.kinds is None else list(self.kinds)
        return out


_SAMPLES_ONLY = ("samples",)
_CLASS_ONLY = ("class",)

# Per method: its key knobs (module docstrings: which knob decides forgetting vs utility, and what was measured
# around the default). Ranges span about one order of magnitude either side of the default on a log scale where
# the docstring's sweeps found the cliff on one side (e.g. GA lr 3e-3 already collapses RA on the digits).
SEARCH_SPACES: dict[str, dict[str, Space]] = {
    # Forget-only methods.
    "imu": {  # head-only weighted ascent; stops by forget accuracy, epochs is the cap
        "lr": Space(1e-3, 1e-1, log=True),
        "epochs": Space(2, 30, integer=True, log=True),
        "max_accuracy_drop": Space(0.005, 0.1, log=True, kinds=_SAMPLES_ONLY),  # the random-sample stop
    },
    "imu_forgotten_rows": {  # the same ascent on the forgotten rows only; stops by probability, epochs is the cap
        "lr": Space(1e-3, 1e-1, log=True),
        "epochs": Space(5, 100, integer=True, log=True),
    },
    "mu_mis": {  # the first step's share of the weights' norm (3e-4 = lr ~1e-5 on the digits CNNs; 10x diverged
        # there, 1/3 was 3x slower); the second term's weight trades forgetting for RA
        "relative_step": Space(6e-5, 1.5e-3, log=True),
        "irrelevant_weight": Space(0.1, 1.0),
        "class_max_passes": Space(4, 40, integer=True, log=True, kinds=_CLASS_ONLY),
        "max_passes": Space(1, 12, integer=True, log=True, kinds=("samples", "subclass")),
    },
    "gradient_ascent": {  # the budget is passes over the forget set
        "lr": Space(1e-4, 1e-2, log=True),
        "epochs": Space(1, 20, integer=True, log=True),
    },
    "boundary_shrink": {
        "lr_scale": Space(1e-3, 0.1, log=True),
        "bound": Space(0.02, 0.3, log=True),
    },
    "jit": {  # sigma's default (None: per request kind) is no number to search around; lr_scale is per unit sigma
        "lr_scale": Space(0.002, 0.05, log=True),
    },
    # Methods with retain data.
    "finetune": {
        "lr_scale": Space(0.02, 1.0, log=True),
        "epochs": Space(1, 10, integer=True),
    },
    "random_labels": {
        "lr_scale": Space(0.02, 1.0, log=True),
        "epochs": Space(1, 8, integer=True),
    },
    "salun": {
        "lr_scale": Space(0.03, 1.0, log=True),
        "epochs": Space(1, 8, integer=True),
        "mask_fraction": Space(0.1, 0.9),
    },
    "scrub": {  # the module says: tune max_epochs / lr_scale on a held-out request for larger sets
        "lr_scale": Space(0.01, 0.5, log=True),
        "max_epochs": Space(1, 3, integer=True),  # at most the default epochs=3
    },
    "neggrad_plus": {  # what decides forgetting is the ascent step (1 - beta) x lr_scale
        "lr_scale": Space(0.5, 16.0, log=True),
        "beta": Space(0.8, 0.99),
    },
    "l1_sparse": {
        "l1_prior": Space(4.0, 100.0, log=True),
        "lr_scale": Space(0.05, 1.0, log=True),
    },
    "bad_teacher": {  # Adam lr 1e-3 cost RA; the step budget decided how far the student moved
        "lr": Space(1e-5, 1e-3, log=True),
        # The step floor serves class and sub-class requests; a random request's budget is its passes.
        "min_steps": Space(25, 400, integer=True, log=True, kinds=("class", "subclass")),
        "epochs": Space(1, 8, integer=True, kinds=_SAMPLES_ONLY),
    },
    "ssd": {  # alpha is searched per request ("auto"; sub-class requests keep 10): tune where the search stops
        "dampening_constant": Space(0.1, 5.0, log=True),
        "max_retain_drop": Space(0.005, 0.1, log=True, kinds=("class", "samples")),
        "class_stop_accuracy": Space(0.0, 0.05, kinds=_CLASS_ONLY),
        "max_accuracy_drop": Space(0.005, 0.1, log=True, kinds=_SAMPLES_ONLY),
    },
    "ssd_paper": {  # ratios of two importances: scale-free already
        "selection_weighting": Space(1.0, 50.0, log=True),
        "dampening_constant": Space(0.1, 5.0, log=True),
    },
}


def method_defaults(method: str) -> dict[str, Any]:
    """The default value of every hyper-parameter of ``method``."""
    return asdict(method_class(method).Config())


def search_space(method: str, kind: str | None = None) -> dict[str, Space]:
    """The knobs calibrated for ``method`` (those acting on ``kind`` requests, if given); a method without a
    search space is refused, naming those that have one."""
    method_class(method)  # an unknown method: refused with the registry's own message
    if method not in SEARCH_SPACES:
        raise ValueError(f"method={method!r} has no calibration search space; calibrate one of "
                         f"{sorted(SEARCH_SPACES)}")
    spaces = SEARCH_SPACES[method]
    return spaces if kind is None else {name: s for name, s in spaces.items() if s.applies_to(kind)}


# --- results --------------------------------------------------------------------------------------------------
@dataclass
class TrialRecord:
    """One trial: its hyper-parameters, the proxy gap it measured (``None`` when the run failed) and its status:
    ``"ok"``, ``"guard"`` (the guard objected, :func:`~excise.methods.guard_objection` — a collapse, forget rows
    left further from looking unseen, a class or sub-class that was not forgotten, an unchanged model: not
    eligible, whatever its gap) or ``"failed"``."""

    number: int
    params: dict[str, Any]
    value: float | None
    status: str
    detail: str | None = None
    seconds: float = 0.0
    stage: str = "search"  # "defaults" (trial 0), "search" (TPE), "default NAME" (NAME put back, toward_defaults)

    @property
    def eligible(self) -> bool:
        return self.status == "ok"


@dataclass
class MethodCalibration:
    """What calibration found for one method: the tuned ``params`` (``None`` if no trial passed), their defaults,
    the proxy gap of both, and every trial (trial 0 = the defaults)."""

    method: str
    params: dict[str, Any] | None
    defaults: dict[str, Any]
    value: float | None
    default_value: float | None
    default_status: str
    best_trial: int | None
    trials: list[TrialRecord]
    space: dict[str, Space]

    @property
    def improved(self) -> bool:
        """Whether the calibrated configuration measured a smaller proxy gap than the defaults (or the defaults
        failed and some other trial passed)."""
        if self.value is None:
            return False
        return self.default_status != "ok" or self.value < self.default_value

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "defaults": self.defaults,
            "value": self.value,
            "default_value": self.default_value,
            "default_status": self.default_status,
            "best_trial": self.best_trial,
            "search_space": {name: space.to_dict() for name, space in self.space.items()},
            "trials": [asdict(t) for t in self.trials],
        }


@dataclass
class CalibrationResult:
    """A calibration run: the proxy request, the settings, the reference's metrics and one
    :class:`MethodCalibration` per method. ``record`` holds what the caller adds (model, data, reference file)."""

    request: dict[str, Any]
    seed: int
    n_trials: int
    guard: dict[str, Any]
    sampler: dict[str, Any]
    reference_metrics: dict[str, float]
    methods: dict[str, MethodCalibration]
    record: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "objective": OBJECTIVE,
            "proxy_request": self.request,
            "seed": self.seed,
            "n_trials": self.n_trials,
            "guard": self.guard,
            "sampler": self.sampler,
            "reference_metrics": self.reference_metrics,
            **self.record,
            "methods": {name: m.to_dict() for name, m in self.methods.items()},
            "versions": {**versions(), "optuna": _optuna_version()},
        }


# --- the search ---------------------------------------------------------------------------------------------
def check_calibration(methods: Sequence[str], n_trials: int, guard: Guard | None = None) -> Guard:
    """Refuse, before any work, what calibration cannot run: optuna missing, no or repeated methods, a method
    without a search space, ``n_trials`` < 1, a guard that is off. Returns the guard to use."""
    _require_optuna()
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"methods={methods!r} must be a non-empty list of method names; calibrate any of "
                         f"{sorted(SEARCH_SPACES)}")
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise ValueError(f"methods: {repeated} given more than once; give each method once")
    for method in methods:
        search_space(method)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r} must be an integer >= 1 (trial 0 runs the defaults)")
    # A trial's recorded gap is what the method did; a trial the guard finds is never chosen either way.
    guard = COMPARE_GUARD if guard is None else guard
    if not isinstance(guard, Guard):
        raise TypeError(f"guard must be a Guard, got {type(guard).__name__}")
    if guard.action == "off":
        raise ValueError("guard action='off': calibration runs with the guard on (a trial that collapses the model "
                         "must not win on its gap); use 'warn' or 'rollback'")
    return guard


def calibrate(
    model: nn.Module,
    views: EvalViews,
    recipe: TrainConfig,
    methods: Sequence[str],
    *,
    reference: RunRecord | nn.Module,
    n_trials: int = 20,
    seed: int = 0,
    guard: Guard | None = None,
) -> CalibrationResult:
    """Tune each of ``methods`` on the proxy request ``views.request`` against its retrained model.

    ``model``: the model to unlearn from (never modified); ``views``: the proxy's views; ``recipe``: how ``model``
    was trained (the methods scale their budgets from it); ``reference``: the model retrained without the proxy's
    forget set, or its :class:`~excise.experiment.RunRecord` evaluated on ``views`` with ``seed``. Each method gets
    ``n_trials`` trials of the search, the first one its defaults, then at most one run per knob put back to its
    default (:func:`toward_defaults`); every run uses ``seed`` and ``guard`` (default
    :class:`~excise.methods.base.Guard`; ``action="off"`` is refused)."""
    guard = check_calibration(methods, n_trials, guard)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an integer (it seeds every trial's run and the sampler)")
    kind = views.request.kind
    for method in methods:
        get_method(method).check_request(views.request, views.forget_set.task)
        if not search_space(method, kind):
            raise ValueError(f"method {method!r} has no calibrated knob for {kind!r} requests")
    reference_record = _reference_record(reference, views, seed)
    startup = min(10, max(1, n_trials // 2))
    found = {}
    for method in methods:
        found[method] = _calibrate_one(method, model, views, recipe, reference_record, n_trials, seed, guard,
                                       startup)
    return CalibrationResult(
        request=views.request.to_dict(), seed=seed, n_trials=n_trials,
        guard={"max_drop": guard.max_drop, "samples_max_drop": guard.samples_max_drop, "rows": guard.rows,
               "action": guard.action},
        sampler={"name": "TPESampler", "seed": seed, "multivariate": True, "n_startup_trials": startup},
        reference_metrics=reference_record.metrics, methods=found,
    )


def _reference_record(reference: RunRecord | nn.Module, views: EvalViews, seed: int) -> RunRecord:
    if isinstance(reference, RunRecord):
        if reference.request != views.request.to_dict():
            raise ValueError(f"reference: the record is of request {reference.request}, not the proxy request "
                             f"{views.request.to_dict()}")
        return reference
    if not isinstance(reference, nn.Module):
        raise TypeError(f"reference must be the retrained model (nn.Module) or its RunRecord, got "
                        f"{type(reference).__name__}")
    metrics = evaluate(reference, views, seed=seed)
    return RunRecord("retrain", views.request.to_dict(), metrics, 0.0, {})


def _calibrate_one(method: str, model: nn.Module, views: EvalViews, recipe: TrainConfig, reference: RunRecord,
                   n_trials: int, seed: int, guard: Guard, startup: int) -> MethodCalibration:
    import optuna
    from optuna.trial import TrialState

    space = search_space(method, views.request.kind)
    all_defaults = method_defaults(method)
    defaults = {name: all_defaults[name] for name in space}
    distributions = {name: s.distribution() for name, s in space.items()}
    # Every method is guarded on the proxy's held-out test rows (not training data; never the retain set).
    held_out = held_out_guard_rows(views)
    trials: list[TrialRecord] = []

    def run(params: dict[str, Any], stage: str) -> TrialRecord:
        found = _run_trial(method, params, model, views, recipe, reference, seed, guard, held_out)
        found.number, found.stage = len(trials), stage
        trials.append(found)
        return found

    with _quiet_optuna():
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.enqueue_trial(defaults)
        with progress_bar(f"calibrate {method}", n_trials) as bar:
            for _ in range(n_trials):
                trial = study.ask(distributions)
                found = run(dict(trial.params), "defaults" if trial.number == 0 else "search")
                if found.eligible:
                    study.tell(trial, found.value)
                else:
                    study.tell(trial, state=TrialState.PRUNED)
                best = min((t.value for t in trials if t.eligible), default=None)
                bar.advance(gap=found.value if found.value is not None else found.status,
                            best=best if best is not None else "-")
    eligible = [t for t in trials if t.eligible]
    # The first of the lowest: a tie goes to the earlier trial, so to the defaults.
    chosen = min(eligible, key=lambda t: (t.value, t.number)) if eligible else None
    if chosen is not None:
        chosen = toward_defaults(chosen, defaults, run)
    first = trials[0]
    return MethodCalibration(
        method=method, params=None if chosen is None else chosen.params, defaults=defaults,
        value=None if chosen is None else chosen.value, default_value=first.value, default_status=first.status,
        best_trial=None if chosen is None else chosen.number, trials=trials, space=space,
    )


def toward_defaults(best: TrialRecord, defaults: dict[str, Any],
                    run: Callable[[dict[str, Any], str], TrialRecord]) -> TrialRecord:
    """Put each knob of ``best`` back to its default, one at a time, and keep it there when the run passes and its
    gap is no larger. A knob the proxy does not exercise (a cap its run never reaches, a stop it never meets) was
    set by the sampler at random; left there it can ruin another request. Measured: MU-Mis calibrated on digits
    class 5 kept ``class_max_passes=4``, harmless on class 5 and on class 3 a gap of 26.2 against the defaults'
    4.6 (``benchmarks/calibration.py``). ``run(params, stage)`` runs and records one configuration."""
    for name, default in defaults.items():
        if best.params.get(name) == default:
            continue
        candidate = run({**best.params, name: default}, f"default {name}")
        if candidate.eligible and candidate.value <= best.value:
            best = candidate
    return best


def _run_trial(method: str, params: dict[str, Any], model: nn.Module, views: EvalViews, recipe: TrainConfig,
               reference: RunRecord, seed: int, guard: Guard, held_out: LabeledData | None) -> TrialRecord:
    start = time.perf_counter()
    try:
        unlearner = get_method(method, **params)
        with warnings.catch_warnings():
            # The guard's finding is recorded with the trial; a warning per fired trial would only be noise.
            warnings.simplefilter("ignore", GuardWarning)
            _, record = run_method(unlearner, model, views, recipe, seed=seed, reference=reference, guard=guard,
                                   guard_set=held_out)
    except (ValueError, FloatingPointError) as err:  # a refused or diverged configuration
        return TrialRecord(0, params, None, "failed", f"{type(err).__name__}: {err}",
                           time.perf_counter() - start)
    finding = record.stats.get("guard") or {}
    gap = record.avg_gap
    seconds = time.perf_counter() - start
    if gap is None or not math.isfinite(gap):
        return TrialRecord(0, params, None, "failed", f"the avg gap is {gap}", seconds)
    # Any finding that would refuse the configuration's certificate on the real request (guard_objection): a trial
    # that forgot nothing of the proxy class scored a gap, but it is not a calibration of forgetting.
    if guard_objection(finding) is not None:
        return TrialRecord(0, params, gap, "guard", f"guard: {guard_objection(finding)}", seconds)
    return TrialRecord(0, params, gap, "ok", None, seconds)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def _optuna_version() -> str:
    try:
        import optuna
    except ImportError:
        return "absent"
    return optuna.__version__


# --- the file ------------------------------------------------------------------------------------------------
def load_calibration(path: str | Path, method: str) -> dict[str, Any]:
    """The calibrated hyper-parameters of ``method`` in the calibration file at ``path``, checked: the file must
    be one ``excise calibrate`` writes, calibrate ``method``, hold a configuration that passed, and name only
    hyper-parameters of ``method`` with values its config accepts. Errors name the file and the field."""
    path = Path(path)
    where = f"calibration file {str(path)!r}"
    content = read_json_or_yaml(path, "calibration file", ValueError)
    if not isinstance(content, dict):
        raise ValueError(f"{where} must hold a JSON object, not {type(content).__name__}")
    if content.get("format") != FORMAT:
        raise ValueError(f"{where}: format={content.get('format')!r}, expected {FORMAT!r} (a file written by "
                         "`excise calibrate`)")
    if content.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: version={content.get('version')!r}, expected {FORMAT_VERSION}")
    methods = content.get("methods")
    if not isinstance(methods, dict):
        raise ValueError(f"{where}: field 'methods' must be an object (method -> calibration), not "
                         f"{type(methods).__name__}")
    method_class(method)
    if method not in methods:
        raise ValueError(f"{where} calibrates method(s) {sorted(methods)} (field 'methods'), not method {method!r}; "
                         f"calibrate it with `excise calibrate MODEL --method {method} --proxy ...`")
    entry = methods[method]
    if not isinstance(entry, dict) or "params" not in entry:
        raise ValueError(f"{where}: methods.{method} must be an object with a field 'params'")
    params = entry["params"]
    if params is None:
        raise ValueError(f"{where}: methods.{method}.params is null: no trial of {method!r} passed the guard on the "
                         "proxy, so there is no calibrated configuration to apply")
    if not isinstance(params, dict):
        raise ValueError(f"{where}: methods.{method}.params must be an object (hyper-parameter -> value)")
    known = {f.name for f in fields(method_class(method).Config)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{where}: methods.{method}.params names {unknown}, which are not hyper-parameters of "
                         f"method {method!r}; known: {sorted(known)}")
    try:
        get_method(method, **params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: methods.{method}.params: {err}") from err
    return dict(params)


def apply_calibration(method: str, hyperparameters: dict[str, Any] | None,
                      path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``hyperparameters`` over the calibrated values of ``method`` from ``path`` (an explicit value wins), and a
    record of what was taken from where, for the sidecar."""
    from excise.hashing import sha256_file

    calibrated = load_calibration(path, method)
    explicit = dict(hyperparameters or {})
    merged = {**calibrated, **explicit}
    record = {"path": str(path), "sha256": sha256_file(path),
              "applied": {k: v for k, v in calibrated.items() if k not in explicit},
              "overridden": sorted(k for k in calibrated if k in explicit)}
    return merged, record


__all__ = [
    "SEARCH_SPACES",
    "CalibrationResult",
    "MethodCalibration",
    "Space",
    "TrialRecord",
    "apply_calibration",
    "calibrate",
    "check_calibration",
    "load_calibration",
    "method_defaults",
    "search_space",
    "toward_defaults",
]
