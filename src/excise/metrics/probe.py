"""Linear-probe evidence for target-level forgetting: how well a fresh linear classifier still reads a
forgotten target from a model's classifier-input features.

An output that no longer predicts a target says little about whether the model still knows it: after Essential-
Graph pruning a probe read the pruned target at AP 98 from the features the logit layer reads, where the retrained
model's gave 54 (distractor canvases, ``bottleneck_resnet``, median of 10 runs). The probe is a logistic regression
(scikit-learn, standardised features, ``C=1``) fitted on the training instances' features and scored by AP on the
test instances'. Read it next to the retrained model's probe AP (what a model that never learned the target still
encodes, e.g. through correlated targets or shared strokes) and the target's test prevalence (a probe that reads
nothing)."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from excise.models.heads import head_features

__all__ = ["heldout_probe_ap", "label_leakage", "probe_ap"]


def probe_ap(model: nn.Module, train_inputs: Tensor, train_labels: Tensor, test_inputs: Tensor,
             test_labels: Tensor, layer: str | None = None, seed: int = 0) -> float:
    """AP (percent) on the test rows of a logistic-regression probe fitted on the train rows' classifier-input
    features (``layer``: the input of that ``nn.Linear``, default the layer that produces the logits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = train_labels.numpy().astype(int).ravel()
    y_test = test_labels.numpy().astype(int).ravel()
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        raise ValueError("the probe needs both labels among the train rows and among the test rows")
    train = head_features(model, train_inputs, layer).double().numpy()
    test = head_features(model, test_inputs, layer).double().numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
    probe.fit(train, y_train)
    return 100.0 * float(average_precision_score(y_test, probe.decision_function(test)))


def heldout_probe_ap(model: nn.Module, inputs: Tensor, labels: Tensor, folds: int = 5, layer: str | None = None,
                     seed: int = 0) -> float:
    """AP (percent) of the same probe cross-validated on ``inputs`` alone (stratified ``folds``, each row scored
    by a probe that did not see it). Pass rows the unlearning method never saw (a test split): an eraser fitted
    on the training rows equalises the class means there by construction, so a probe fitted on those rows is
    the weaker adversary. Measured on the distractor canvases (bottleneck model, seed 0, targets 0-4): after
    ``target_erasure`` the held-out probe read 28-38 where the train-fitted one read 25-32 (prevalence 28-32;
    retrain 52 and 58)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = labels.numpy().astype(int).ravel()
    if np.bincount(y, minlength=2).min() < folds:
        raise ValueError(f"the held-out probe needs at least folds={folds} rows of each label")
    features = head_features(model, inputs, layer).double().numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
    scores = cross_val_predict(probe, features, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="decision_function")
    return 100.0 * float(average_precision_score(y, scores))


def label_leakage(train_targets: Tensor, test_targets: Tensor, target: int) -> float:
    """AP (percent) of a logistic regression predicting ``target`` from the other labels alone (fitted on the
    train rows, scored on the test rows): how much of the target the remaining labels give away, the floor a
    probe reaches on any model that still predicts them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    others = [k for k in range(train_targets.shape[1]) if k != target]
    fit = LogisticRegression(max_iter=1000).fit(train_targets[:, others].numpy(), train_targets[:, target].numpy())
    scores = fit.decision_function(test_targets[:, others].numpy())
    return 100.0 * float(average_precision_score(test_targets[:, target].numpy(), scores))
