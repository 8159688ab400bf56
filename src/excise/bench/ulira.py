"""U-LiRA: the per-example membership attack on unlearning, with shadow models (an evaluation option).

Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful Evaluations to
Avoid a False Sense of Privacy", arXiv 2403.01218; statistics from Carlini et al.'s LiRA (IEEE S&P 2022),
see :mod:`excise.metrics.lira`.

The question U-LiRA asks of an unlearning method: given a model the method produced, can an attacker tell an
example that was trained on *and then unlearned* from an example that was *never trained on*? Exact
unlearning (retraining) makes the two indistinguishable (AUC 0.5); a method that leaves a trace does not.
Population attacks (:mod:`excise.metrics.mia`) fit one classifier for all samples and, the paper shows,
overestimate the protection; U-LiRA fits one attacker per example from shadow models.

The protocol (one run, ``num_shadows`` shadow models):

1. A random ``pool`` share of the training set is the attacked population; the rest (``retain``) is in
   every shadow's training set. Every pool example is assigned to the forget set of exactly half of the
   shadows (:func:`excise.metrics.lira.balanced_assignment`).
2. Shadow ``k`` trains on ``retain`` plus its forget set, then the method unlearns that forget set, as a
   ``samples`` request on the shadow's own training set. The pool examples outside its forget set were never
   seen by shadow ``k``.
3. ``phi = log(p_y / (1 - p_y))`` of every pool example on every unlearned shadow; leave-one-out over the
   shadows: each is the target once, the others fit each example's two Gaussians (unlearned / never seen);
   AUC, balanced accuracy (log LR > 0) and TPR at 1% / 0.1% FPR over every (target, example) pair.

The same trained shadows serve every method, and the ``original`` row (no unlearning: classic LiRA,
"trained on" vs "never trained on") shows how much membership signal there is to remove. ``retrain`` must sit
at chance: the shadows where an example was forgotten and where it was never seen were then trained on the
same data. A low AUC says nothing on its own about a method that also ruined the model, so every row also
carries the shadows' mean forget-set and test accuracy.

Choices where the paper leaves room (say so when you cite numbers from here): the fixed retain part shared by
all shadows (the paper samples each shadow's training set; a shared retain part costs nothing in the
comparison and makes the pool the only thing that varies), the balanced exactly-half design and the
leave-one-out evaluation (Carlini et al.'s), and the decision threshold log LR = 0 for accuracy. Only
``samples`` forgetting of single-label (multiclass) tasks is served: U-LiRA's game is about individual
examples, and ``phi`` needs one true class.

How to read a row: retrain's shadows are trained on the same retained data whatever the membership, so its
scores carry no signal and its true AUC is exactly 0.5; its *measured* AUC shows the noise of this number of
shadows and examples. When retrain is run, the report adds the central 95% of the AUC under random
re-assignments of membership to its scores (:func:`excise.metrics.lira.null_auc_band`): differences inside that
band are noise. In a suite the reference of the ``MIA:ulira_*`` metrics is therefore chance (50, and TPR = FPR),
not retrain's measured value; the retrain cell shows the measured one, and every cell of the (scenario, seed)
carries retrain's band as ``ulira_null_band`` (percent; the report lists it under the MIA table).

Cost: ``num_shadows`` trainings plus ``num_shadows`` unlearning runs per method; the trained shadows can be
cached (``cache_dir``) and are reused by later runs with the same data, model, recipe, pool, seed and number of
shadows (a change of any of them, or of this module, trains new ones).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn

from excise import distributed
from excise.bench.cache import ModelCache, training_key
from excise.checkpoint import atomic_write_text, versions
from excise.data.base import DatasetBundle
from excise.experiment import build_model
from excise.hashing import content_hash
from excise.methods import COMPARE_GUARD, UnlearningMethod, get_method
from excise.metrics.lira import (
    MIN_MODELS,
    VARIANCES,
    AttackResult,
    attack_result,
    balanced_assignment,
    leave_one_out_scores,
    logit_scaled_confidence,
    null_auc_band,
)
from excise.progress import progress_bar
from excise.requests import ForgetRequest, split
from excise.training import TrainConfig, predict_logits, seed_everything, train

ORIGINAL = "original"


@dataclass
class ULiraConfig:
    num_shadows: int = 16
    pool: float = 0.2  # share of the training set whose membership is attacked (half of it forgotten per shadow)
    variance: str = "auto"  # see excise.metrics.lira: "global" below 64 shadows, per example from 64
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_shadows, bool) or not isinstance(self.num_shadows, int) \
                or self.num_shadows < MIN_MODELS or self.num_shadows % 2:
            raise ValueError(f"num_shadows={self.num_shadows!r} must be an even integer >= {MIN_MODELS} (every pool "
                             "example is forgotten in exactly half of the shadows, and leave-one-out needs two "
                             "shadows per hypothesis and example)")
        if isinstance(self.pool, bool) or not isinstance(self.pool, (int, float)) or not 0 < self.pool < 1:
            raise ValueError(f"pool={self.pool!r} must be a share of the training set in (0, 1)")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance={self.variance!r} is not one of {list(VARIANCES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")


@dataclass
class ULiraRow:
    """One method's result: the attack's quality and what the unlearned shadows still do."""

    method: str
    attack: AttackResult
    forget_accuracy: float  # mean over shadows, percent, on each shadow's own forget set
    test_accuracy: float  # mean over shadows, percent
    seconds: float  # mean unlearning time per shadow (training time for the original row)
    # Each pool example's AUC over the shadows as targets (half in, half out): which examples stay exposed.
    per_example_auc: list[float] = field(default_factory=list)
    phi: np.ndarray | None = field(default=None, repr=False)  # (shadows x pool examples), not serialised
    # Central 95% of this row's AUC under random membership (retrain's row: the noise of this run's size), when
    # asked for (:meth:`ULiraShadows.attack` with ``band=True``); serialised, so a cached row keeps it.
    null_band: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "phi"}
        return {**out, "attack": self.attack.to_dict()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ULiraRow:
        return cls(**{**record, "attack": AttackResult(**record["attack"])})


@dataclass
class ULiraReport:
    rows: list[ULiraRow]
    config: dict[str, Any]
    pool_indices: list[int]  # training-set rows of the attacked examples, in the order of per_example_auc
    train_size: int
    shadow_cache_hits: int
    seconds: float
    # Central 95% of retrain's AUC under random membership (noise of this run's size); None without retrain.
    null_auc_band: tuple[float, float] | None = None
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def pool_size(self) -> int:
        return len(self.pool_indices)

    def row(self, method: str) -> ULiraRow:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(f"no row for method {method!r}; rows: {[r.method for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        return {**out, "pool_size": self.pool_size, "rows": [r.to_dict() for r in self.rows]}


def check_task(bundle: DatasetBundle) -> None:
    """Refuse a data set U-LiRA cannot attack: ``phi`` needs one true class per example."""
    if bundle.task != "multiclass":
        raise ValueError(f"U-LiRA needs a single-label (multiclass) task for phi = log(p_y / (1 - p_y)); "
                         f"data set {bundle.name!r} is {bundle.task!r}")


def resolve_methods(methods: Sequence[str | UnlearningMethod], bundle: DatasetBundle) -> list[UnlearningMethod]:
    """The method objects, after refusing a data set or a method U-LiRA cannot serve."""
    check_task(bundle)
    task = bundle.task
    if any(m == ORIGINAL for m in methods if isinstance(m, str)):
        raise ValueError(f"{ORIGINAL!r} is always reported (the shadows before unlearning); do not list it")
    resolved = [get_method(m) if isinstance(m, str) else m for m in methods]
    names = [m.name for m in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"methods listed twice: {duplicates}")
    for method in resolved:
        if "samples" not in method.kinds or task not in method.tasks:
            raise ValueError(f"method {method.name!r} does not serve 'samples' requests on {task!r} models "
                             f"(kinds {list(method.kinds)}, tasks {list(method.tasks)}); U-LiRA needs both")
    return resolved


def _per_example_auc(scores: np.ndarray, member: np.ndarray) -> list[float]:
    return [float(roc_auc_score(member[:, j], scores[:, j])) for j in range(member.shape[1])]


class ULiraShadows:
    """The shadow models of one U-LiRA run, trained once (or read from ``cache``) and attacked per method.

    ``attack(None)`` is the original row (no unlearning); ``attack(method)`` unlearns each shadow's forget set
    with ``method`` and attacks the results. The bench runner keeps one of these per (scenario, seed) and
    attacks one method per cell.
    """

    def __init__(self, bundle: DatasetBundle, model_name: str, recipe: TrainConfig, config: ULiraConfig, *,
                 model_kwargs: dict[str, Any] | None = None, cache: ModelCache | None = None) -> None:
        check_task(bundle)
        self.bundle, self.model_name, self.recipe, self.config = bundle, model_name, recipe, config
        self.model_kwargs = dict(model_kwargs or {})
        self.cache = cache
        n_train = len(bundle.train)
        pool_size = max(2, round(config.pool * n_train))
        if pool_size >= n_train:
            raise ValueError(f"pool={config.pool} leaves no retained training data")
        self.pool = np.sort(np.random.default_rng(config.seed).choice(n_train, pool_size, replace=False))
        self.retain = np.setdiff1d(np.arange(n_train), self.pool)
        self.member = balanced_assignment(config.num_shadows, pool_size, config.seed)
        self.pool_data = bundle.train.subset(self.pool)
        self.pool_labels = self.pool_data.targets.long()
        self.cache_hits = 0
        self._base = {"dataset": bundle.name, "data_fingerprint": bundle.fingerprint(), "model": model_name,
                      "model_kwargs": self.model_kwargs, "training": recipe.to_dict(), **training_key()}
        self._originals: dict[int, tuple[nn.Module, float]] = {}  # shadows kept in memory (see shadow())

    def seed_of(self, k: int) -> int:
        # Independent streams per (run seed, shadow): runs with seeds 0 and 1 share no shadow.
        return int(np.random.SeedSequence([self.config.seed, k]).generate_state(1)[0] % (2**31 - 1))

    def shadow(self, k: int) -> tuple[nn.Module, float, ForgetRequest, Any, Any]:
        """Shadow ``k`` before unlearning, its training time, and its request with forget and retain sets."""
        rows = np.sort(np.concatenate([self.retain, self.pool[self.member[k]]]))
        shadow_train = self.bundle.train.subset(rows)
        seed = self.seed_of(k)
        forgotten = np.flatnonzero(np.isin(rows, self.pool[self.member[k]]))  # positions in the shadow's data
        request = ForgetRequest(kind="samples", indices=forgotten.tolist(), seed=seed)
        forget_set, retain_set = split(shadow_train, request)

        def build() -> tuple[nn.Module, dict[str, Any]]:
            model = build_model(self.bundle, self.model_name, seed=seed, **self.model_kwargs)
            stats = train(model, shadow_train, self.recipe, seed=seed, description=f"train shadow {k}")
            return model, {"kind": "ulira_shadow", "train_seconds": stats.seconds, "seed": seed}

        if k not in self._originals:
            if self.cache is not None:
                payload = {**self._base, "rows": content_hash(rows.tolist()), "seed": seed}
                model, meta, hit = self.cache.get_or_build("ulira_shadow", payload, build)
                self.cache_hits += hit
                if self.cache.writable:  # read back from disk when needed again: memory stays flat
                    return model, float(meta["train_seconds"]), request, forget_set, retain_set
            else:
                model, meta = build()
            # No cache, or another rank of a torchrun job (only rank 0 writes): keep it rather than retrain it.
            self._originals[k] = (model, float(meta["train_seconds"]))
        model, seconds = self._originals[k]
        return model, seconds, request, forget_set, retain_set

    def attack(self, method: UnlearningMethod | None, *, reuse: bool = False, band: bool = False) -> ULiraRow:
        """U-LiRA on ``method``'s unlearned shadows (``None``: on the shadows as trained). ``reuse``: read the
        row from (or write it to) the cache when one is set, keyed by everything that produced it — the bench
        runner uses it for retrain's row, which costs ``num_shadows`` retrainings and never changes. ``band``:
        the row also carries its :func:`~excise.metrics.lira.null_auc_band` (``null_band``, percent)."""
        if not reuse or self.cache is None:
            return self._attack(method, band)
        payload = {**self._base, "ulira": asdict(self.config),
                   "method": None if method is None else {"name": method.name, "config": method.config_dict()}}
        path = self.cache.directory / f"ulira_row-{content_hash(payload)[:24]}.json"
        if path.exists():
            try:
                cached = ULiraRow.from_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError):
                pass  # unreadable (a hand edit, an older format): computed again and replaced below
            else:
                if cached.null_band is not None or not band:
                    return cached
        row = self._attack(method, band)
        if self.cache.writable:
            atomic_write_text(path, json.dumps(row.to_dict()), overwrite=True)
        return row

    def _attack(self, method: UnlearningMethod | None, band: bool = False) -> ULiraRow:
        name = ORIGINAL if method is None else method.name
        phi = np.zeros(self.member.shape)
        forget_acc, test_acc, seconds = [], [], []
        with progress_bar(f"U-LiRA {name}", self.config.num_shadows) as bar:
            for k in range(self.config.num_shadows):
                model, train_seconds, request, forget_set, retain_set = self.shadow(k)
                if method is None:
                    seconds.append(train_seconds)
                else:
                    seed_everything(self.seed_of(k))
                    result = method.unlearn(model, request, forget_set, retain_set if method.needs_retain else None,
                                            recipe=self.recipe, seed=self.seed_of(k), guard=COMPARE_GUARD)
                    model = result.model
                    seconds.append(result.seconds)
                logits = predict_logits(model, self.pool_data)
                phi[k] = logit_scaled_confidence(logits, self.pool_labels).numpy()
                correct = (logits.argmax(dim=1) == self.pool_labels).numpy()
                forget_acc.append(100.0 * float(correct[self.member[k]].mean()))
                test_logits = predict_logits(model, self.bundle.test)
                test_acc.append(100.0 * float((test_logits.argmax(dim=1) == self.bundle.test.targets.long())
                                              .float().mean()))
                bar.advance()
        scores = leave_one_out_scores(phi, self.member, self.config.variance)
        return ULiraRow(method=name, attack=attack_result(scores, self.member),
                        forget_accuracy=float(np.mean(forget_acc)), test_accuracy=float(np.mean(test_acc)),
                        seconds=float(np.mean(seconds)), per_example_auc=_per_example_auc(scores, self.member),
                        phi=phi, null_band=None if not band else [100.0 * b for b in self.null_band(phi)])

    def null_band(self, phi: np.ndarray) -> tuple[float, float]:
        """:func:`~excise.metrics.lira.null_auc_band` of a row's scores under this run's attack settings (fractions)."""
        return null_auc_band(phi, variance=self.config.variance, seed=self.config.seed)


def run_ulira(
    bundle: DatasetBundle,
    model_name: str,
    recipe: TrainConfig,
    methods: Sequence[str | UnlearningMethod],
    config: ULiraConfig | None = None,
    *,
    model_kwargs: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> ULiraReport:
    """Attack every method's unlearned shadows with U-LiRA; the first row is the original (no unlearning)."""
    config = config or ULiraConfig()
    resolved = resolve_methods(methods, bundle)
    started = time.perf_counter()
    # Under torchrun only rank 0 writes the cache (the others read it, or keep their shadows in memory).
    cache = ModelCache(cache_dir, writable=distributed.is_main()) if cache_dir is not None else None
    shadows = ULiraShadows(bundle, model_name, recipe, config, model_kwargs=model_kwargs, cache=cache)
    rows = [shadows.attack(None)]
    hits = shadows.cache_hits
    rows += [shadows.attack(method) for method in resolved]
    retrain = next((row for row in rows if row.method == "retrain"), None)
    band = None if retrain is None else shadows.null_band(retrain.phi)
    resolved_config = {
        "ulira": asdict(config), "dataset": bundle.name, "data_fingerprint": bundle.fingerprint(),
        "model": {"name": model_name, **shadows.model_kwargs}, "training": recipe.to_dict(),
        "methods": {m.name: m.config_dict() for m in resolved},
        "pool_sha256": content_hash(shadows.pool.tolist()),
    }
    return ULiraReport(rows, resolved_config, shadows.pool.tolist(), len(bundle.train), hits,
                       time.perf_counter() - started, band)
