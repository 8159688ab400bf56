"""Benchmark suites as files: what to train, what to forget, which methods, which seeds.

A suite is a YAML (or JSON) mapping, validated entirely on load so that a typo fails in a second, not
after an hour of training. Every refusal names the key path (``scenarios[2].request.fraction``), the
bad value and what is allowed.

Schema (``?`` = optional)::

    suite: quick                       # name, recorded with every result
    description?: text
    seeds: [0, 1, 2]                   # one cell per (scenario, method, seed)
    dataset: digits | {name, options?, seed?}   # default for every scenario; seed = the data split's seed
    model: {name: small_cnn, <kwargs>}          # e.g. width: 16
    training?: {epochs, batch_size, lr, optimizer, momentum, weight_decay, schedule}
    on_unsupported?: skip | error      # a listed method that cannot serve a scenario (default: skip)
    uncertainty?: {replicates?: 200, attack_refits?: 40, level?: 0.95, variants?: [svc_confidence]}
                                       # bootstrap intervals of every cell (excise.metrics.uncertainty);
                                       # replicates: 0 = none; variants: MIA variants given intervals
    methods:                           # the string "all" = every registered method except retrain
      - all
      - gradient_ascent                # a name with its default hyper-parameters
      - {name: finetune, label?: finetune-5ep, params?: {epochs: 5}}
    scenarios:
      - name: class-3
        request: {kind: class, labels: [3]}      # see excise.requests.ForgetRequest.from_dict
      - name: seq-classes
        sequence: [{kind: class, labels: [1]}, {kind: class, labels: [4]}]   # sequential unlearning
        dataset?/model?: replace the suite's; training?: keys override the suite's
        methods?: [labels]             # run only these (each must serve the scenario, else refused)
        method_params?: {label: {param: value}}   # per-scenario hyper-parameter overrides
        ulira?: {shadows?: 16, variance?: auto}   # also attack every method with U-LiRA (samples requests;
                                                  # see excise.bench.ulira): shadows forget as many as the request;
                                                  # `true` = these defaults, `false` = off

Policy for methods that cannot serve a scenario: a method reached through ``all`` or the suite-wide list
is *skipped* for that scenario with the reason recorded in the results (so the report shows the hole);
a method a scenario names in its own ``methods`` list is *refused* at load, since the user asked for
something impossible. ``on_unsupported: error`` refuses both. Request kinds are checked here; the task
(multi-class vs multi-label) of a data set is only known once it is loaded, so the runner's plan step
(:func:`excise.bench.runner.plan`) asks each method's own ``check_request`` for every scenario before any
training starts, with the same skip-or-refuse policy.

The bench seed drives model initialisation, data order and the methods' randomness; the data split
(``dataset.seed``, default 0) and the forget set (the request's own ``seed``) stay fixed across bench
seeds, so the spread over seeds is the training and method variance on one fixed deletion request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise._files import read_json_or_yaml
from excise.data.registry import dataset_builder
from excise.hashing import content_hash
from excise.metrics.mia import HEADLINE_MIA
from excise.metrics.uncertainty import Uncertainty
from excise.requests import KINDS, ForgetRequest, RequestError
from excise.training import TrainConfig

RESERVED_LABELS = ("original", "retrain")
"""Cell names the runner uses for the untouched model and the retrained reference."""

ON_UNSUPPORTED = ("skip", "error")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_SUITE_KEYS = {"suite", "description", "seeds", "dataset", "model", "training", "methods", "scenarios",
               "on_unsupported", "uncertainty"}
_UNCERTAINTY_KEYS = {"replicates", "attack_refits", "level", "variants"}
BENCH_UNCERTAINTY = Uncertainty(variants=(HEADLINE_MIA,))
"""A cell's intervals by default: every metric, and of the MIA variants the headline (all the average gap needs;
each further variant costs ``attack_refits`` SVC fits per cell)."""
_SCENARIO_KEYS = {"name", "description", "request", "sequence", "dataset", "model", "training", "methods",
                  "method_params", "ulira"}
_ULIRA_KEYS = {"shadows", "variance"}
_METHOD_KEYS = {"name", "label", "params"}
_DATASET_KEYS = {"name", "options", "seed"}


class SuiteError(ValueError):
    """A suite that cannot run; the message names the file, the key path and what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "seed": self.seed}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclass(frozen=True)
class MethodSpec:
    """One method entry: ``label`` names the result rows (two entries may share ``name``)."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class ULiraSpec:
    """A scenario's U-LiRA option (:mod:`excise.bench.ulira`): shadow models whose forget sets are as large as
    the scenario's request, so every cell also reports the per-example attack on its method."""

    shadows: int = 16
    variance: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {"shadows": self.shadows, "variance": self.variance}


@dataclass
class Scenario:
    name: str
    dataset: DatasetSpec
    model: ModelSpec
    training: TrainConfig
    requests: tuple[ForgetRequest, ...]
    sequential: bool = False
    description: str = ""
    methods: tuple[str, ...] | None = None
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    ulira: ULiraSpec | None = None

    @property
    def request_kind(self) -> str:
        """The request kind every step of the scenario has (``class``, ``samples``, …)."""
        return self.requests[0].kind

    @property
    def kind(self) -> str:
        """``sequential`` for a request sequence, else the request kind."""
        return "sequential" if self.sequential else self.request_kind

    def request_record(self) -> dict[str, Any] | list[dict[str, Any]]:
        if self.sequential:
            return [r.to_dict() for r in self.requests]
        return self.requests[0].to_dict()

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "dataset": self.dataset.to_dict(),
            "model": self.model.to_dict(),
            "training": self.training.to_dict(),
            "request": self.request_record(),
        }
        if self.ulira is not None:  # absent otherwise, so the cell hashes of existing results do not move
            out["ulira"] = self.ulira.to_dict()
        return out


@dataclass
class Suite:
    name: str
    seeds: tuple[int, ...]
    scenarios: list[Scenario]
    methods: list[MethodSpec]
    description: str = ""
    on_unsupported: str = "skip"
    source: str = "<suite>"
    uncertainty: Uncertainty = BENCH_UNCERTAINTY
    skips: dict[tuple[str, str], str] = field(default_factory=dict)
    """(scenario, method label) -> why the method cannot serve the scenario's request kind."""

    def scenario(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise KeyError(name)

    def methods_for(self, scenario: Scenario) -> list[MethodSpec]:
        """The method entries a scenario runs, its per-scenario hyper-parameters merged in."""
        chosen = [m for m in self.methods if scenario.methods is None or m.label in scenario.methods]
        return [
            MethodSpec(m.label, m.name, {**m.params, **scenario.method_params.get(m.label, {})}) for m in chosen
        ]

    def cell_hash(self, scenario: Scenario, method: MethodSpec | str, seed: int) -> str:
        """Identity of one cell's configuration; a results file computed under another one is not reused."""
        payload = {"scenario": scenario.to_dict(), "seed": seed,
                   "method": method.to_dict() if isinstance(method, MethodSpec) else method,
                   "uncertainty": self.uncertainty.to_dict()}
        return content_hash(payload)


# --- helpers -----------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(where: str, message: str) -> SuiteError:
    return SuiteError(f"{where}: {message}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {_type_name(value)} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise _fail(where, f"keys must be strings, got {bad!r}")
    return dict(value)


def _check_keys(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}" if where else unknown[0],
                    f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _string(value: Any, where: str, *, pattern: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {_type_name(value)} {value!r}")
    if pattern and not _NAME.match(value):
        raise _fail(where, f"{value!r} must be letters, digits and _ . + - (no spaces or slashes)")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {_type_name(value)} {value!r}")
    return value


# --- parsing -----------------------------------------------------------------------------------
def _dataset(value: Any, where: str, check_registry: bool) -> DatasetSpec:
    if isinstance(value, str):
        value = {"name": value}
    spec = _mapping(value, where)
    _check_keys(spec, _DATASET_KEYS, where)
    if "name" not in spec:
        raise _fail(f"{where}.name", "missing; name a registered data set (see `excise datasets`)")
    name = _string(spec["name"], f"{where}.name")
    options = _mapping(spec.get("options", {}) or {}, f"{where}.options")
    seed = _integer(spec.get("seed", 0), f"{where}.seed")
    if check_registry:
        try:
            builder = dataset_builder(name)
        except ValueError as err:
            raise _fail(f"{where}.name", str(err)) from err
        import inspect

        accepted = [p for p in inspect.signature(builder).parameters if p not in ("root", "seed")]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise _fail(f"{where}.options.{unknown[0]}",
                        f"data set {name!r} has no option(s) {unknown}; it accepts {accepted}")
    return DatasetSpec(name, options, seed)


def _model(value: Any, where: str, check_registry: bool) -> ModelSpec:
    if isinstance(value, str):
        value = {"name": value}
    spec = _mapping(value, where)
    if "name" not in spec:
        raise _fail(f"{where}.name", "missing; name a registered model (small_cnn, resnet18, …)")
    name = _string(spec.pop("name"), f"{where}.name")
    if check_registry:
        import inspect

        from excise.models.registry import list_models

        if name not in list_models():
            raise _fail(f"{where}.name", f"model={name!r} is not registered; known models: {list_models()}")
        from excise.models import registry

        accepted = list(inspect.signature(registry._MODELS[name]).parameters)
        unknown = sorted(set(spec) - set(accepted))
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", f"model {name!r} has no argument(s) {unknown}; it accepts {accepted}")
    return ModelSpec(name, spec)


def _training(value: Any, where: str, base: TrainConfig | None = None) -> TrainConfig:
    spec = _mapping(value if value is not None else {}, where)
    merged = {**(base.to_dict() if base else {}), **spec}
    try:
        return TrainConfig.from_dict(merged)
    except (ValueError, TypeError) as err:
        raise _fail(where, str(err)) from err


def _request(value: Any, where: str) -> ForgetRequest:
    try:
        return ForgetRequest.from_dict(_mapping(value, where))
    except (RequestError, TypeError) as err:
        raise _fail(where, str(err)) from err


def _methods(value: Any, check_registry: bool) -> list[MethodSpec]:
    from excise.methods import get_method, list_methods

    if value == "all":
        value = ["all"]
    if not isinstance(value, list) or not value:
        raise _fail("methods", f"expected a non-empty list of method names or mappings (or 'all'), got {value!r}")
    explicit: list[MethodSpec] = []
    wants_all = False
    for i, entry in enumerate(value):
        where = f"methods[{i}]"
        if entry == "all":
            wants_all = True
            continue
        if isinstance(entry, str):
            entry = {"name": entry}
        spec = _mapping(entry, where)
        _check_keys(spec, _METHOD_KEYS, where)
        if "name" not in spec:
            raise _fail(f"{where}.name", "missing; name a registered method (see `excise methods`)")
        name = _string(spec["name"], f"{where}.name")
        label = _string(spec.get("label", name), f"{where}.label", pattern=True)
        params = _mapping(spec.get("params", {}) or {}, f"{where}.params")
        if label in RESERVED_LABELS:
            raise _fail(f"{where}.label", f"{label!r} is reserved: the runner always adds the untouched 'original' "
                        "model and the 'retrain' reference; give this entry another label")
        if check_registry:
            if name not in list_methods():
                raise _fail(f"{where}.name", f"method={name!r} is not registered; known methods: {list_methods()}")
            try:
                get_method(name, **params)
            except (ValueError, TypeError) as err:
                raise _fail(f"{where}.params", str(err)) from err
        explicit.append(MethodSpec(label, name, params))
    labels = [m.label for m in explicit]
    duplicated = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
    if duplicated:
        raise _fail("methods", f"label(s) {duplicated} appear more than once; give each entry a distinct 'label'")
    if wants_all:
        if not check_registry:
            raise _fail("methods", "'all' needs the method registry (check_registry=True)")
        named = {m.name for m in explicit}
        extra = [MethodSpec(n, n) for n in list_methods() if n != "retrain" and n not in named]
        clashing = sorted({m.label for m in extra} & set(labels))
        if clashing:
            raise _fail("methods", f"label(s) {clashing} clash with registered method names added by 'all'")
        explicit = extra + explicit
    return explicit


def _scenario(
    value: Any, i: int, suite_defaults: dict[str, Any], methods: list[MethodSpec], check_registry: bool
) -> Scenario:
    where = f"scenarios[{i}]"
    spec = _mapping(value, where)
    _check_keys(spec, _SCENARIO_KEYS, where)
    if "name" not in spec:
        raise _fail(f"{where}.name", "missing; every scenario needs a unique name")
    name = _string(spec["name"], f"{where}.name", pattern=True)
    where = f"{where} ({name})"
    dataset = (_dataset(spec["dataset"], f"{where}.dataset", check_registry) if "dataset" in spec
               else suite_defaults["dataset"])
    model = _model(spec["model"], f"{where}.model", check_registry) if "model" in spec else suite_defaults["model"]
    if dataset is None:
        raise _fail(f"{where}.dataset", "missing, and the suite has no default 'dataset'")
    if model is None:
        raise _fail(f"{where}.model", "missing, and the suite has no default 'model'")
    training = _training(spec.get("training"), f"{where}.training", suite_defaults["training"])
    if ("request" in spec) == ("sequence" in spec):
        raise _fail(where, "give exactly one of 'request' (one deletion request) or 'sequence' "
                    "(a list of requests forgotten one after another)")
    if "request" in spec:
        requests = (_request(spec["request"], f"{where}.request"),)
        sequential = False
    else:
        steps = spec["sequence"]
        if not isinstance(steps, list) or len(steps) < 2:
            raise _fail(f"{where}.sequence", f"expected a list of at least 2 requests, got {steps!r}")
        requests = tuple(_request(s, f"{where}.sequence[{k}]") for k, s in enumerate(steps))
        kinds = sorted({r.kind for r in requests})
        if len(kinds) > 1:
            raise _fail(f"{where}.sequence", f"every step must have the same kind, got {kinds}")
        sequential = True
    kind = requests[0].kind
    if kind not in KINDS:  # pragma: no cover - ForgetRequest already refuses
        raise _fail(f"{where}.request.kind", f"{kind!r} is not one of {list(KINDS)}")
    labels = [m.label for m in methods]
    restrict = None
    if "methods" in spec:
        restrict_list = spec["methods"]
        if not isinstance(restrict_list, list) or not restrict_list:
            raise _fail(f"{where}.methods", f"expected a non-empty list of method labels, got {restrict_list!r}")
        for k, label in enumerate(restrict_list):
            if label not in labels:
                raise _fail(f"{where}.methods[{k}]", f"{label!r} is not a method label of this suite; known: {labels}")
        restrict = tuple(restrict_list)
    method_params = _mapping(spec.get("method_params", {}) or {}, f"{where}.method_params")
    for label, params in method_params.items():
        if label not in labels:
            raise _fail(f"{where}.method_params.{label}", f"{label!r} is not a method label of this suite; "
                        f"known: {labels}")
        method_params[label] = _mapping(params, f"{where}.method_params.{label}")
    ulira = _ulira(spec["ulira"], f"{where}.ulira", requests, sequential) if "ulira" in spec else None
    return Scenario(
        name=name, dataset=dataset, model=model, training=training, requests=requests, sequential=sequential,
        description=str(spec.get("description", "")), methods=restrict, method_params=method_params, ulira=ulira,
    )


def _ulira(value: Any, where: str, requests: tuple[ForgetRequest, ...], sequential: bool) -> ULiraSpec | None:
    from excise.bench.ulira import ULiraConfig

    if value is False or value is None:  # written out as off
        return None
    if sequential or requests[0].kind != "samples":
        raise _fail(where, "U-LiRA attacks individual examples: it needs a single request of kind 'samples' "
                    f"(this scenario has {'a sequence' if sequential else repr(requests[0].kind)})")
    spec = _mapping({} if value is True else value, where)
    _check_keys(spec, _ULIRA_KEYS, where)
    ulira = ULiraSpec(**spec)
    try:
        ULiraConfig(num_shadows=ulira.shadows, variance=ulira.variance)
    except ValueError as err:
        raise _fail(where, str(err).replace("num_shadows=", "shadows=")) from None
    return ulira


def _uncertainty(value: Any) -> Uncertainty:
    spec = _mapping(value, "uncertainty")
    _check_keys(spec, _UNCERTAINTY_KEYS, "uncertainty")
    options = {**BENCH_UNCERTAINTY.to_dict(), **spec}
    if isinstance(options["variants"], str):
        options["variants"] = [options["variants"]]
    if options["variants"] is not None:
        if not isinstance(options["variants"], list):
            raise _fail("uncertainty.variants", f"expected a list of MIA variant names, got {options['variants']!r}")
        options["variants"] = tuple(options["variants"])
    if isinstance(options["level"], int) and not isinstance(options["level"], bool):
        options["level"] = float(options["level"])
    try:
        return Uncertainty(**options)
    except ValueError as err:
        raise _fail("uncertainty", str(err)) from None


def parse_suite(data: Any, source: str = "<suite>", *, check_registry: bool = True) -> Suite:
    """Validate a suite mapping. ``check_registry=False`` checks the structure only (data sets, models and
    methods need not be installed), e.g. to lint a GPU suite on a laptop."""
    try:
        return _parse_suite(data, check_registry)
    except SuiteError as err:
        raise SuiteError(f"suite {source}: {err}") from None


def _parse_suite(data: Any, check_registry: bool) -> Suite:
    spec = _mapping(data, "suite file")
    _check_keys(spec, _SUITE_KEYS, "")
    for key in ("suite", "seeds", "methods", "scenarios"):
        if key not in spec:
            raise _fail(key, "missing (required keys: suite, seeds, methods, scenarios)")
    name = _string(spec["suite"], "suite", pattern=True)
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise _fail("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    seeds = tuple(_integer(s, f"seeds[{k}]") for k, s in enumerate(seeds))
    for k, seed in enumerate(seeds):
        if not 0 <= seed < 2**32:  # torch.manual_seed and numpy's generators take 32-bit seeds
            raise _fail(f"seeds[{k}]", f"{seed} is outside [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise _fail("seeds", f"{list(seeds)} repeats a seed")
    on_unsupported = spec.get("on_unsupported", "skip")
    if on_unsupported not in ON_UNSUPPORTED:
        raise _fail("on_unsupported", f"{on_unsupported!r} is not one of {list(ON_UNSUPPORTED)}")
    defaults = {
        "dataset": _dataset(spec["dataset"], "dataset", check_registry) if "dataset" in spec else None,
        "model": _model(spec["model"], "model", check_registry) if "model" in spec else None,
        "training": _training(spec.get("training"), "training"),
    }
    methods = _methods(spec["methods"], check_registry)
    raw_scenarios = spec["scenarios"]
    if not isinstance(raw_scenarios, list) or not raw_scenarios:
        raise _fail("scenarios", f"expected a non-empty list of scenarios, got {raw_scenarios!r}")
    scenarios = [_scenario(s, i, defaults, methods, check_registry) for i, s in enumerate(raw_scenarios)]
    names = [s.name for s in scenarios]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise _fail("scenarios", f"scenario name(s) {duplicated} appear more than once")
    suite = Suite(name, seeds, scenarios, methods, str(spec.get("description", "")), on_unsupported,
                  uncertainty=_uncertainty(spec["uncertainty"]) if "uncertainty" in spec else BENCH_UNCERTAINTY)
    if check_registry:
        _check_method_params(suite)
        _decide_kind_support(suite)
    return suite


def _check_method_params(suite: Suite) -> None:
    from excise.methods import get_method

    for i, scenario in enumerate(suite.scenarios):
        for method in suite.methods_for(scenario):
            if method.label not in scenario.method_params:
                continue
            try:
                get_method(method.name, **method.params)
            except (ValueError, TypeError) as err:
                raise _fail(f"scenarios[{i}] ({scenario.name}).method_params.{method.label}", str(err)) from err


def _decide_kind_support(suite: Suite) -> None:
    from excise.methods import method_class

    for i, scenario in enumerate(suite.scenarios):
        for method in suite.methods_for(scenario):
            kinds = method_class(method.name).kinds
            if scenario.request_kind in kinds:
                continue
            reason = f"method {method.name!r} cannot serve kind={scenario.request_kind!r} requests; " \
                     f"it supports {list(kinds)}"
            if scenario.methods is not None or suite.on_unsupported == "error":
                raise _fail(f"scenarios[{i}] ({scenario.name}).methods", reason)
            suite.skips[(scenario.name, method.label)] = reason


def load_suite(path: str | Path, *, check_registry: bool = True) -> Suite:
    """Read and validate a suite file (``.yaml``, ``.yml`` or ``.json``)."""
    path = Path(path)
    if path.is_file() and path.suffix not in (".yaml", ".yml", ".json"):
        raise SuiteError(f"suite file {str(path)!r} must end in .yaml, .yml or .json")
    data = read_json_or_yaml(path, "suite file", SuiteError)
    suite = parse_suite(data, str(path), check_registry=check_registry)
    suite.source = str(path)
    return suite
