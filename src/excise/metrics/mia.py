"""Membership-inference attacks (MIA) as the unlearning literature computes them — one attack per variant.

Every variant takes :class:`MiaInputs` (softmax outputs and labels of the retain, test and forget sets under
the evaluated model, and of the test samples drawn from the forget set's own distribution) and returns a
:class:`MiaResult` with its value in [0, 1] and its direction. A variant is an :class:`Attack`: ``fit`` learns
from the member / non-member populations and returns a judge of forget samples, so the bootstrap of
:mod:`excise.metrics.uncertainty` can re-fit it on resampled populations. A new variant is one more entry in
``MIA_VARIANTS``.

Variants:

- ``svc_*``: the SVC "MIA-efficacy" of Jia et al. ("Model Sparsity Can Simplify Machine Unlearning",
  NeurIPS 2023), SalUn (Fan et al., ICLR 2024) and IMU. Five feature sets, each with its own
  ``SVC(C=3, gamma="auto", kernel="rbf")`` fitted on members (retain, 1) vs non-members (test, 0), applied to
  the forget set; efficacy = share of forget samples predicted non-member. The papers' "MIA-Efficacy" column is
  ``svc_confidence``. Modified entropy is computed as Song & Mittal define it,
  ``-(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)``, per row — not as the reference code does (it uses
  ``log p`` for the wrong classes and indexes columns instead of rows).
- ``entropy_logreg``: the SSD / JiT / Bad Teacher lineage (Chundawat et al. 2023,
  ``get_membership_attack_prob``): entropy feature, balanced logistic regression on retain (1) vs test (0);
  the value is the share of forget samples predicted *member* (lower = more forgetting).
- ``loss_logreg``: the NeurIPS 2023 unlearning-challenge kit: per-sample loss, forget (1) vs never-seen samples
  of the forget set's distribution (0), logistic regression scored under 10-split stratified cross-validation;
  ideal 0.5. The kit balances the two groups by subsampling the larger and scores accuracy; here both groups are
  kept whole with balanced class weights and scored by balanced accuracy (the same quantity in expectation,
  without a subsample draw), and the splits are repeated ``cv_repeats`` times (default 10). Measured on the
  quick-suite models: the kit's single draw and split moved the value by up to 27 points between evaluation seeds
  on one set of weights, the subsample with 10 repeats by up to 11, this by at most 4.3.

Where the populations and fits depart from the reference code, each measured on one and the same set of weights
(quick-suite recipe, digits, class 3; scrub, l1_sparse, retrain and six other models, 3 training seeds, 10
evaluation seeds):

1. **Non-members include the forgotten (sub)class's test samples** (``test_forget``). For class-wise
   forgetting the reference code drops the forgotten class from the test set (``test_set.targets !=
   class_to_replace`` in the Unlearn-Sparse / SalUn data loaders), so neither population has a sample where a
   forgotten class lands (``p_y`` ~ 1e-8). There the RBF SVC extrapolates and its verdict is set by the
   intercept, i.e. by which rows were drawn: ``svc_m_entropy`` of the same scrub weights flipped between 0 and
   100 over evaluation seeds, ``svc_prob`` spanned 4-93 on retrain. The forgotten class's test samples are the
   non-members a retrained model has also never seen; with them, every variant is fitted on data that covers the
   forget set. For the same reason ``loss_logreg`` compares the forget set with those samples (for ``samples``
   requests, whose forget set is drawn from the training distribution, with the whole test set): "0.5 =
   indistinguishable from never-seen samples of the same kind" then holds for retrain at every request kind
   (forget vs remaining-class test set gave 100 for retrain on a class request: a class's loss, not membership).
2. **The SVC is fitted on every retain sample**, re-weighted to the papers' 1:1 balance
   (``class_weight="balanced"``: the expected objective of fitting on ``|test|`` members drawn at random),
   instead of on one draw of ``|test|`` of them. With the populations fixed as above, the draw alone still moved
   ``svc_prob`` by up to 38 points and ``svc_entropy`` by up to 10 on one set of weights; fitted on all of them
   the value no longer depends on a draw (the sampling noise that remains is the data's, which the bootstrap
   interval shows). Identical rows are merged into one row with the summed weight before fitting: the same SVM
   problem (its primal sums identical hinge terms), a smaller kernel. Cost: one fit on ``|retain| + |test|``
   rows; about 40 ms on digits. Beyond ``MAX_SVC_ROWS`` (20,000) rows a seeded draw of that many is fitted (at
   CIFAR-10 scale all 55,000 took a minute per feature set on one core). A feature constant
   over both populations (every sample right) gives the attack nothing: its verdict is 0.5, a balanced guess
   (the old code called every forget sample a member there).

3. **``svc_prob`` reads the probability vector relative to the label**: the true class's probability first, then
   the other classes' in decreasing order — not in class order. With the forgotten class's test samples among the
   non-members (1.) and never among the members, the class-ordered vector taught the SVC to detect the class, not
   membership: on a class request the original model, which forgot nothing, read 100 (every forget row
   "non-member") against retrain's 78-90, on excise's ``small_cnn`` and on a new user's MLP and GroupNorm CNN alike
   (2026-12-07). Relative to the label it keeps every value the papers' feature holds, only not which class is
   which; a fully sorted vector would also drop which one is the label, and call a forgotten row confidently
   predicted as another class a member.

After the first two, every variant's spread over 10 evaluation seeds on the same weights was at most 4.3 points on the
quick suite's class, sub-class, random-10% and target models (``tests/test_metrics.py`` pins it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.svm import SVC

EPS = 1e-12
CV_REPEATS = 10

Judge = Callable[[np.ndarray, np.ndarray], float]
"""``judge(forget_probs, forget_labels) -> value``: a fitted attack applied to (a resample of) the forget set."""


@dataclass
class MiaInputs:
    """Softmax probabilities (``N x C``) and integer labels of the populations an attack sees.

    ``test_forget_*``: the test samples of the forget set's own distribution (the forgotten class's, the
    forgotten target's positives), for class, sub-class and target requests; ``None`` for ``samples`` requests,
    whose forget set is drawn from the same distribution as the test set. They join the non-members."""

    retain_probs: np.ndarray
    retain_labels: np.ndarray
    test_probs: np.ndarray
    test_labels: np.ndarray
    forget_probs: np.ndarray
    forget_labels: np.ndarray
    seed: int = 0
    test_forget_probs: np.ndarray | None = None
    test_forget_labels: np.ndarray | None = None
    cv_repeats: int = CV_REPEATS

    def __post_init__(self) -> None:
        for name in ("retain", "test", "forget", "test_forget"):
            probs, labels = getattr(self, f"{name}_probs"), getattr(self, f"{name}_labels")
            if name == "test_forget" and probs is None and labels is None:
                continue
            if probs is None or labels is None:
                raise ValueError(f"{name}_probs and {name}_labels must be given together")
            if len(probs) == 0:
                raise ValueError(f"MIA needs a non-empty {name} set")
            if len(probs) != len(labels):
                raise ValueError(f"{name}_probs has {len(probs)} rows but {name}_labels has {len(labels)}")

    def nonmembers(self) -> tuple[np.ndarray, np.ndarray]:
        """Every never-seen sample: the test set and the forget set's own test samples."""
        if self.test_forget_probs is None:
            return self.test_probs, self.test_labels
        return (np.concatenate([self.test_probs, self.test_forget_probs]),
                np.concatenate([self.test_labels, self.test_forget_labels]))

    def same_distribution_nonmembers(self) -> tuple[np.ndarray, np.ndarray]:
        """Never-seen samples drawn like the forget set: its own test samples, else the whole test set."""
        if self.test_forget_probs is None:
            return self.test_probs, self.test_labels
        return self.test_forget_probs, self.test_forget_labels

    def resample(self, rng: np.random.Generator) -> MiaInputs:
        """A bootstrap replicate: every population drawn with replacement at its own size."""
        def draw(probs: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
            if probs is None:
                return None, None
            rows = rng.integers(0, len(probs), len(probs))
            return probs[rows], labels[rows]

        out = {}
        for name in ("retain", "test", "forget", "test_forget"):
            out[f"{name}_probs"], out[f"{name}_labels"] = draw(getattr(self, f"{name}_probs"),
                                                               getattr(self, f"{name}_labels"))
        return replace(self, **out)


@dataclass
class MiaResult:
    name: str
    value: float
    direction: str


@dataclass(frozen=True)
class Attack:
    """One MIA variant: ``fit(inputs) -> judge`` learns from the member and non-member populations.
    ``reusable``: its judge is cheap to apply to another forget set (a fitted classifier); ``False`` when judging
    is itself the fitting (``loss_logreg``'s cross-validation), so a bootstrap runs it on its re-fit replicates
    only."""

    name: str
    direction: str
    fit: Callable[[MiaInputs], Judge]
    reusable: bool = True



# --- features ----------------------------------------------------------------------------------
def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, EPS, 1.0))).sum(axis=1)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal (USENIX Security 2021): ``-(1-p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``."""
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    log_p = np.log(np.clip(probs, EPS, 1.0))
    log_one_minus = np.log(np.clip(1.0 - probs, EPS, 1.0))
    term_true = -(1.0 - p_true) * log_p[rows, labels]
    wrong = probs * log_one_minus
    wrong[rows, labels] = 0.0
    return term_true - wrong.sum(axis=1)


def _feature(kind: str, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    if kind == "correctness":
        return (probs.argmax(axis=1) == labels).astype(np.float64)[:, None]
    if kind == "confidence":
        return probs[rows, labels][:, None]
    if kind == "entropy":
        return entropy(probs)[:, None]
    if kind == "m_entropy":
        return modified_entropy(probs, labels)[:, None]
    if kind == "prob":
        # The true class's probability first, then the other classes' sorted: the vector without which class is which
        # (departure 3 in the module docstring).
        others = np.where(np.arange(probs.shape[1])[None, :] == labels[:, None], -np.inf, probs)
        return np.concatenate([probs[rows, labels][:, None], -np.sort(-others, axis=1)[:, :-1]], axis=1)
    raise ValueError(f"unknown SVC feature {kind!r}")


SVC_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")


MAX_SVC_ROWS = 20_000
"""Above this many member + non-member rows the SVC is fitted on a seeded draw of that many (each population
keeping at least half of the budget when it has that many): an RBF SVC's fit grows quadratically (55,000 rows of
CIFAR-10 took 57 s per feature set on one core, 20,000 took 14 s), and with thousands of rows per population a
draw no longer moves the verdict the way a few hundred did."""


def _cap_rows(members: np.ndarray, nonmembers: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(members) + len(nonmembers) <= MAX_SVC_ROWS:
        return members, nonmembers
    rng = np.random.default_rng([seed, MAX_SVC_ROWS])
    keep_nonmembers = min(len(nonmembers), max(MAX_SVC_ROWS // 2, MAX_SVC_ROWS - len(members)))
    keep_members = MAX_SVC_ROWS - keep_nonmembers

    def draw(rows: np.ndarray, count: int) -> np.ndarray:
        return rows if count >= len(rows) else rows[np.sort(rng.choice(len(rows), count, replace=False))]

    return draw(members, keep_members), draw(nonmembers, keep_nonmembers)


def balanced_svc(members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> SVC | None:
    """``SVC(C=3, gamma="auto", kernel="rbf")`` on members (1) vs non-members (0), each class weighted to half of
    the total (``class_weight="balanced"``); identical rows are merged into one with the summed weight, which is
    the same SVM problem. ``None`` when the feature is constant: nothing to separate. Beyond ``MAX_SVC_ROWS``
    rows, a draw seeded by ``seed``."""
    members, nonmembers = _cap_rows(members, nonmembers, seed)
    x = np.concatenate([members, nonmembers])
    if np.ptp(x, axis=0).max() == 0:
        return None
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    weight = np.where(y == 1, len(x) / (2 * len(members)), len(x) / (2 * len(nonmembers)))
    rows, inverse = np.unique(np.column_stack([x, y]), axis=0, return_inverse=True)
    merged = np.bincount(inverse.ravel(), weights=weight, minlength=len(rows))
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(rows[:, :-1], rows[:, -1], sample_weight=merged)
    return clf


def _svc_fit(feature: str) -> Callable[[MiaInputs], Judge]:
    def fit(inputs: MiaInputs) -> Judge:
        test_probs, test_labels = inputs.nonmembers()
        clf = balanced_svc(_feature(feature, inputs.retain_probs, inputs.retain_labels),
                           _feature(feature, test_probs, test_labels), inputs.seed)

        def verdicts(rows: np.ndarray) -> np.ndarray:
            return clf.predict(rows) == 0

        def judge(probs: np.ndarray, labels: np.ndarray) -> float:
            if clf is None:
                # A feature constant over both populations carries no membership information: a balanced attack
                # can only guess, and calls half of what it judges non-member.
                return 0.5
            return float(np.mean(remembered(_feature(feature, probs, labels))))

        remembered = _Remembered(verdicts)
        return judge

    return fit


class _Remembered:
    """A fitted attack's per-row verdicts, remembered by row: a bootstrap judges resamples of the same forget rows
    over and over, and an RBF SVC's predict (every training row a support vector) cost more than its fit."""

    def __init__(self, verdicts: Callable[[np.ndarray], np.ndarray]) -> None:
        self.verdicts = verdicts
        self.seen: dict[bytes, bool] = {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        keys = [row.tobytes() for row in rows]
        missing: dict[bytes, int] = {}  # first row of each key not judged yet
        for i, key in enumerate(keys):
            if key not in self.seen and key not in missing:
                missing[key] = i
        if missing:
            for key, verdict in zip(missing, self.verdicts(rows[list(missing.values())]), strict=True):
                self.seen[key] = verdict
        return np.array([self.seen[key] for key in keys])


def _entropy_logreg_fit(inputs: MiaInputs) -> Judge:
    test_probs, _ = inputs.nonmembers()
    x = np.concatenate([entropy(inputs.retain_probs), entropy(test_probs)])[:, None]
    y = np.concatenate([np.ones(len(inputs.retain_probs)), np.zeros(len(test_probs))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs", max_iter=1000)
    clf.fit(x, y)
    remembered = _Remembered(lambda rows: clf.predict(rows) == 1)
    return lambda probs, labels: float(np.mean(remembered(entropy(probs)[:, None])))


def _loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0))


def logistic_fits(x: np.ndarray, y: np.ndarray, train: np.ndarray, *, c: float = 1.0,
                  iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``LogisticRegression(class_weight="balanced", C=c).fit`` on a 1-D feature, for every row of the ``S x N``
    bool ``train`` mask at once: the same objective (balanced sample weights of each training fold, an L2 penalty
    ``a^2 / 2C`` on the slope, none on the intercept), minimised by Newton's method on the two parameters; returns
    each fit's slope and intercept. scikit-learn's per-fit overhead made 100 cross-validation fits of a 1-D feature
    60% of an evaluation's time; ``tests/test_metrics.py`` checks the decisions against scikit-learn's."""
    weight = np.zeros(train.shape)
    for label in (0.0, 1.0):
        in_class = train & (y == label)
        count = in_class.sum(axis=1, keepdims=True)
        weight = np.where(in_class, train.sum(axis=1, keepdims=True) / (2.0 * np.maximum(count, 1)), weight)
    slope, intercept = np.zeros(len(train)), np.zeros(len(train))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(slope[:, None] * x[None, :] + intercept[:, None])))
        residual, curvature = weight * (p - y[None, :]), weight * p * (1.0 - p)
        g_slope = (residual * x).sum(axis=1) + slope / c
        g_intercept = residual.sum(axis=1)
        h_ss = (curvature * x * x).sum(axis=1) + 1.0 / c
        h_si = (curvature * x).sum(axis=1)
        h_ii = curvature.sum(axis=1) + 1e-12
        determinant = h_ss * h_ii - h_si * h_si
        step_slope = (h_ii * g_slope - h_si * g_intercept) / determinant
        step_intercept = (h_ss * g_intercept - h_si * g_slope) / determinant
        slope, intercept = slope - step_slope, intercept - step_intercept
        if max(np.abs(step_slope).max(), np.abs(step_intercept).max()) < 1e-10:
            break
    return slope, intercept


def _loss_logreg_fit(inputs: MiaInputs) -> Judge:
    nonmember_loss = _loss(*inputs.same_distribution_nonmembers())

    def judge(probs: np.ndarray, labels: np.ndarray) -> float:
        forget_loss = _loss(probs, labels)
        splits = min(10, len(forget_loss), len(nonmember_loss))
        if splits < 2:
            return 0.5  # too few samples to cross-validate: indistinguishable by construction
        x = np.concatenate([forget_loss, nonmember_loss])
        y = np.concatenate([np.ones(len(forget_loss)), np.zeros(len(nonmember_loss))])
        cv = RepeatedStratifiedKFold(n_splits=splits, n_repeats=inputs.cv_repeats, random_state=inputs.seed)
        held_out = np.zeros((splits * inputs.cv_repeats, len(x)), dtype=bool)
        for k, (_, rows) in enumerate(cv.split(x[:, None], y)):
            held_out[k, rows] = True
        slope, intercept = logistic_fits(x, y, ~held_out)
        predicted = (slope[:, None] * x[None, :] + intercept[:, None]) > 0
        hit = predicted == (y[None, :] == 1)
        positives = held_out & (y[None, :] == 1)
        negatives = held_out & (y[None, :] == 0)
        balanced = 0.5 * ((hit & positives).sum(1) / positives.sum(1) + (hit & negatives).sum(1) / negatives.sum(1))
        return float(balanced.mean())

    return judge


_SVC_DIRECTION = "share of forget set called non-member; closer to retrain is better"
MIA_VARIANTS: dict[str, Attack] = {
    **{f"svc_{f}": Attack(f"svc_{f}", _SVC_DIRECTION, _svc_fit(f)) for f in SVC_FEATURES},
    "entropy_logreg": Attack("entropy_logreg", "share of forget set called member; closer to retrain is better",
                             _entropy_logreg_fit),
    "loss_logreg": Attack("loss_logreg", "attack accuracy (%) forget vs never-seen samples of the same kind; 50 = "
                          "indistinguishable", _loss_logreg_fit, reusable=False),
}

HEADLINE_MIA = "svc_confidence"


def check_variants(variants: tuple[str, ...] | None) -> tuple[str, ...]:
    """The variant names to run (all when ``None``); an unknown one is refused."""
    names = tuple(MIA_VARIANTS) if variants is None else tuple(variants)
    unknown = [v for v in names if v not in MIA_VARIANTS]
    if unknown:
        raise ValueError(f"unknown MIA variant(s) {unknown}; known: {list(MIA_VARIANTS)}")
    return names


def run_mia(inputs: MiaInputs, variants: tuple[str, ...] | None = None,
            judges: dict[str, Judge] | None = None) -> dict[str, MiaResult]:
    """Every variant asked (all when ``None``) on ``inputs``. ``judges``: fitted attacks to reuse by name; a
    variant missing from it is fitted on ``inputs`` and added (the bootstrap re-fits an attack on some replicates
    and reuses it on others, see :mod:`excise.metrics.uncertainty`)."""
    out = {}
    for name in check_variants(variants):
        attack = MIA_VARIANTS[name]
        if judges is None or name not in judges:
            judge = attack.fit(inputs)
            if judges is not None:
                judges[name] = judge
        else:
            judge = judges[name]
        out[name] = MiaResult(name, judge(inputs.forget_probs, inputs.forget_labels), attack.direction)
    return out


# --- population attacks by a score threshold (sequence models) -----------------------------------------
def score_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, replicates: int = 0, seed: int = 0,
              level: float = 0.95) -> tuple[float, list[float] | None]:
    """AUC (percent) of telling members from non-members by a score that is higher for members, and with
    ``replicates`` a percentile bootstrap interval (both populations redrawn, generator ``(seed, j)``). 50 means
    the two populations are indistinguishable by this score."""
    from sklearn.metrics import roc_auc_score

    member_scores, nonmember_scores = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        raise ValueError("a membership attack needs at least one member and one non-member")
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]

    def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
        return 100.0 * float(roc_auc_score(labels, np.r_[members, nonmembers]))

    value = auc(member_scores, nonmember_scores)
    if replicates <= 0:
        return value, None
    draws = []
    for j in range(replicates):
        rng = np.random.default_rng([seed, j])
        draws.append(auc(member_scores[rng.integers(0, len(member_scores), len(member_scores))],
                         nonmember_scores[rng.integers(0, len(nonmember_scores), len(nonmember_scores))]))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return value, [float(low), float(high)]
