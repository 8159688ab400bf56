"""Per-example likelihood-ratio membership inference (LiRA), the statistics behind U-LiRA.

Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First Principles", IEEE S&P
2022 (LiRA); Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy", arXiv 2403.01218 (U-LiRA, its adaptation to unlearning).

The population attacks of :mod:`excise.metrics.mia` fit one classifier for every sample. LiRA fits one
attacker *per example*: from shadow models in which the example was "in" and models in which it was "out",
it fits a Gaussian to the example's logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` under each
hypothesis, and scores a target model by the log likelihood ratio of its ``phi``. What "in" means is the
caller's: for classic LiRA it is "trained on"; for U-LiRA (:mod:`excise.bench.ulira`) it is "trained on,
then unlearned", against "never trained on".

This module is pure statistics over a ``(models x examples)`` matrix of ``phi`` and a membership matrix of
the same shape; it never trains. :func:`leave_one_out_scores` treats every model in turn as the target and
fits the Gaussians on the others, so all models serve as both shadows and targets (Carlini et al.'s
evaluation of LiRA).

Choices where the papers leave room:

- Variance: with few shadow models a per-example variance is a noisy estimate; Carlini et al. use one
  global variance per hypothesis below 64 shadows ("fixed variance"). ``variance="auto"`` does that here
  below 64 models (the ``K`` of the run, not the ``K - 1`` fitting each score) and is per-example from 64 on.
- The decision used for ``accuracy`` is the likelihood ratio's own: "in" iff ``log LR > 0`` (equal priors, as
  in the balanced design where every example is "in" in exactly half of the models; with fitted rather than
  known Gaussians it is close to, not exactly, the Bayes rule). It is not tuned on the evaluated scores, so it
  cannot flatter a method; AUC and TPR at low FPR are threshold-free.
- At least 6 models: leave-one-out with equal groups leaves ``K/2 - 1`` per hypothesis, and a variance needs
  two. The global variance is pooled with ``n - 1`` degrees of freedom per example and hypothesis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

VARIANCES = ("auto", "global", "per_example")
FIXED_VARIANCE_BELOW = 64  # Carlini et al.: a global variance is better with fewer shadow models than this
MIN_MODELS = 6  # leave-one-out with equal groups keeps K/2 - 1 >= 2 models per hypothesis (a variance each)
_MIN_VARIANCE = 1e-6


def logit_scaled_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """``log(p_y / (1 - p_y))`` of the softmax, computed from the logits as ``z_y - logsumexp_{j != y} z_j``
    so it stays finite where ``p_y`` rounds to 1 (LiRA's statistic: close to Gaussian across models)."""
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, C) and labels (N,); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("logit-scaled confidence needs at least two classes")
    logits = logits.double()
    rows = torch.arange(len(labels))
    true = logits[rows, labels]
    others = logits.clone()
    others[rows, labels] = float("-inf")
    return (true - torch.logsumexp(others, dim=1)).float()


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def resolve_variance(variance: str, num_models: int) -> str:
    """``"auto"`` as Carlini et al. choose it: one global variance below 64 models, per example from 64 on."""
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is not one of {list(VARIANCES)}")
    if variance == "auto":
        return "global" if num_models < FIXED_VARIANCE_BELOW else "per_example"
    return variance


def _check(phi: np.ndarray, member: np.ndarray) -> None:
    if phi.ndim != 2 or phi.shape != member.shape:
        raise ValueError(f"phi and member must be (models, examples) matrices of one shape; got {phi.shape} "
                         f"and {member.shape}")
    if not np.isfinite(phi).all():
        raise ValueError("phi holds non-finite values")


def likelihood_ratio(phi_target: np.ndarray, phi_shadow: np.ndarray, member_shadow: np.ndarray,
                     variance: str = "auto") -> np.ndarray:
    """Per-example ``log p(phi | in) - log p(phi | out)`` of a target model's ``phi_target`` (examples,),
    with the Gaussians fitted on shadow models ``phi_shadow`` (models x examples), ``member_shadow`` saying
    in which shadow each example was "in" (NaN in ``phi_shadow``: that shadow is left out for that example).
    Every example needs at least one "in" and one "out" shadow (two of each for a per-example variance)."""
    phi_shadow = np.asarray(phi_shadow, dtype=np.float64)
    member_shadow = np.asarray(member_shadow, dtype=bool)
    if phi_shadow.ndim != 2 or phi_shadow.shape != member_shadow.shape:
        raise ValueError(f"phi_shadow and member_shadow must be (models, examples) matrices of one shape; got "
                         f"{phi_shadow.shape} and {member_shadow.shape}")
    if np.isinf(phi_shadow).any() or not np.isfinite(phi_target).all():
        raise ValueError("phi holds infinite values (NaN in phi_shadow marks a shadow left out)")
    variance = resolve_variance(variance, len(phi_shadow))
    available = ~np.isnan(phi_shadow)
    is_in, is_out = member_shadow & available, ~member_shadow & available
    n_in, n_out = is_in.sum(axis=0), is_out.sum(axis=0)
    need = 2 if variance == "per_example" else 1
    if n_in.min() < need or n_out.min() < need:
        raise ValueError(f"every example needs >= {need} shadow model(s) where it is in and >= {need} where it "
                         f"is out; the fewest are {int(n_in.min())} in and {int(n_out.min())} out")
    masked_in = np.where(is_in, phi_shadow, np.nan)
    masked_out = np.where(is_out, phi_shadow, np.nan)
    mean_in, mean_out = np.nanmean(masked_in, axis=0), np.nanmean(masked_out, axis=0)
    if variance == "per_example":
        var_in, var_out = np.nanvar(masked_in, axis=0, ddof=1), np.nanvar(masked_out, axis=0, ddof=1)
    else:
        # One variance per hypothesis, pooled over examples: the squared deviations from each example's own
        # mean over the degrees of freedom left (sum of n_j - 1), so it is not underestimated by (n - 1) / n.
        var_in = np.full_like(mean_in, np.nansum((masked_in - mean_in) ** 2) / max(int((n_in - 1).sum()), 1))
        var_out = np.full_like(mean_out, np.nansum((masked_out - mean_out) ** 2) / max(int((n_out - 1).sum()), 1))
    var_in, var_out = np.maximum(var_in, _MIN_VARIANCE), np.maximum(var_out, _MIN_VARIANCE)
    target = np.asarray(phi_target, dtype=np.float64)
    return _gaussian_logpdf(target, mean_in, var_in) - _gaussian_logpdf(target, mean_out, var_out)


def leave_one_out_scores(phi: np.ndarray, member: np.ndarray, variance: str = "auto") -> np.ndarray:
    """``log LR`` of every (model, example): each model is the target once, the others its shadows.

    With the balanced design the target's own group is one model short among the others (``K/2 - 1`` vs
    ``K/2``), and a mean fitted on fewer models lies farther from a fresh draw: under no signal at all the
    score would lean towards the *other* group, an AUC below 0.5 (0.44 measured with 8 shadows). So for every
    (target, example) the larger of the two groups is cut to the size of the smaller one, dropping the models
    that come first after the target in model order, and both Gaussians are fitted on as many models (with
    unbalanced membership, e.g. Bernoulli draws, in either direction). ``variance="auto"`` is resolved from
    the number of models ``K``."""
    phi = np.asarray(phi, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    _check(phi, member)
    num_models = len(phi)
    if num_models < MIN_MODELS:
        raise ValueError(f"leave-one-out needs >= {MIN_MODELS} models, got {num_models}")
    variance = resolve_variance(variance, num_models)
    scores = np.empty_like(phi)
    order = np.arange(num_models)
    for k in range(num_models):
        after = np.roll(order, -k)[1:]  # the other models, starting with the one after the target
        opposite = member[after] != member[k]
        same = ~opposite
        excess = opposite.sum(axis=0) - same.sum(axis=0)  # > 0: the other group is larger; < 0: the target's
        drop = (opposite & (np.cumsum(opposite, axis=0) <= excess)) | (same & (np.cumsum(same, axis=0) <= -excess))
        shadow_phi = np.where(drop, np.nan, phi[after])
        scores[k] = likelihood_ratio(phi[k], shadow_phi, member[after], variance)
    return scores


def null_auc_band(phi: np.ndarray, draws: int = 200, variance: str = "auto", seed: int = 0) -> tuple[float, float]:
    """The central 95% of the AUC the attack reaches when membership cannot matter: ``phi`` of models whose
    training did not depend on it (retraining on the retained data only), re-scored under ``draws`` random
    balanced assignments. AUC differences inside this band are noise of this number of models and examples."""
    phi = np.asarray(phi, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(draws):
        member = balanced_assignment(len(phi), phi.shape[1], int(rng.integers(2**31 - 1)))
        aucs.append(attack_result(leave_one_out_scores(phi, member, variance), member).auc)
    low, high = np.quantile(aucs, [0.025, 0.975])
    return float(low), float(high)


@dataclass(frozen=True)
class AttackResult:
    """How well an attack tells "in" from "out". Ideal for unlearning: AUC 0.5, accuracy 50, TPR = FPR."""

    auc: float
    accuracy: float  # percent, decision log LR > 0
    tpr_at_1pct_fpr: float | None  # percent; None with fewer than 100 "out" pairs (FPR 1% not resolvable)
    tpr_at_01pct_fpr: float | None  # percent; None with fewer than 1000 "out" pairs
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, level: float, negatives: int) -> float | None:
    # The largest TPR reached without exceeding the FPR level (Carlini et al.'s low-FPR operating point).
    # With fewer than 1/level negatives the only FPR at or below the level is 0, which is a different number.
    if negatives * level < 1:
        return None
    return 100.0 * float(tpr[fpr <= level].max())


def attack_result(scores: np.ndarray, member: np.ndarray) -> AttackResult:
    """Threshold-free and threshold-0 quality of ``scores`` (higher = "in") against the truth ``member``."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    member = np.asarray(member, dtype=bool).ravel()
    if len(scores) != len(member):
        raise ValueError(f"{len(scores)} scores but {len(member)} membership labels")
    positives, negatives = int(member.sum()), int((~member).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"an attack needs both 'in' and 'out' examples; got {positives} in, {negatives} out")
    fpr, tpr, _ = roc_curve(member, scores)
    predicted = scores > 0
    # Balanced accuracy: the mean of the two recalls, so unequal counts cannot move it.
    accuracy = 0.5 * (predicted[member].mean() + (~predicted[~member]).mean())
    return AttackResult(
        auc=float(roc_auc_score(member, scores)),
        accuracy=100.0 * float(accuracy),
        tpr_at_1pct_fpr=_tpr_at(fpr, tpr, 0.01, negatives),
        tpr_at_01pct_fpr=_tpr_at(fpr, tpr, 0.001, negatives),
        positives=positives,
        negatives=negatives,
    )


def balanced_assignment(num_models: int, num_examples: int, seed: int) -> np.ndarray:
    """A ``(models x examples)`` membership matrix in which every example is "in" in exactly half of the
    models (Carlini et al.'s design), each column an independent random half."""
    if num_models < MIN_MODELS or num_models % 2:
        raise ValueError(f"num_models={num_models} must be an even number >= {MIN_MODELS} (each example is in half)")
    rng = np.random.default_rng(seed)
    member = np.zeros((num_models, num_examples), dtype=bool)
    for j in range(num_examples):
        member[rng.permutation(num_models)[: num_models // 2], j] = True
    return member


ULIRA_PREFIX = "MIA:ulira_"
ULIRA_DIRECTIONS: dict[str, str] = {
    f"{ULIRA_PREFIX}auc": "U-LiRA AUC x 100, unlearned vs never-seen examples; reference = chance (50), which "
                          "retraining reaches by construction; closer is better",
    f"{ULIRA_PREFIX}acc": "U-LiRA balanced accuracy (log LR > 0); reference = chance (50); closer is better",
    f"{ULIRA_PREFIX}tpr@1%fpr": "U-LiRA true-positive rate at 1% false positives; reference = chance (1); closer "
                                "is better",
    f"{ULIRA_PREFIX}tpr@0.1%fpr": "U-LiRA true-positive rate at 0.1% false positives; reference = chance (0.1); "
                                  "closer is better",
}
# What exact unlearning scores: the shadows where an example was unlearned and where it was never seen were
# trained on the same data, so the attack is at chance. The bench's reference for these metrics.
ULIRA_CHANCE: dict[str, float] = {f"{ULIRA_PREFIX}auc": 50.0, f"{ULIRA_PREFIX}acc": 50.0,
                                  f"{ULIRA_PREFIX}tpr@1%fpr": 1.0, f"{ULIRA_PREFIX}tpr@0.1%fpr": 0.1}


def ulira_metrics(attack: AttackResult) -> dict[str, float]:
    """An attack's numbers as bench metrics (percent, like every other metric); unresolvable TPRs omitted."""
    values = {"auc": 100.0 * attack.auc, "acc": attack.accuracy, "tpr@1%fpr": attack.tpr_at_1pct_fpr,
              "tpr@0.1%fpr": attack.tpr_at_01pct_fpr}
    return {f"{ULIRA_PREFIX}{name}": value for name, value in values.items() if value is not None}
