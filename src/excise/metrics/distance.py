"""How far a model's predictions are from the retrained model's: the output-level gap to retrain.

The accuracy and MIA gaps compare summary numbers; two models can share them and still predict differently.
These compare the predictions themselves, sample by sample, as the retain-free papers report them:

- ``KL_ref:forget`` / ``KL_ref:test``: mean over samples of ``KL(p_retrain || p_model)`` of the softmax outputs
  (nats), on the forget set and on the whole test set. MU-Mis (Cheng et al., ICLR 2026) reports "the KL to the
  retrained model" without saying which direction or population; both are chosen here: reference first (it
  scores the model by how well it covers what retraining predicts, as the sequence task's ``KL_ref`` does), on
  the forget set (where forgetting shows) and the test set (where keeping shows).
- ``W1_ref:test``: IMU's number (Fan et al., arXiv 2508.01620, ``compute_wasserstein_distance``): the
  Wasserstein-1 distance between the retrained and the evaluated model's predicted labels on the test set,
  ``scipy.stats.wasserstein_distance`` of the two label sequences. It treats class indices as numbers, so it is
  a distance between the two histograms of predicted classes, not a per-sample agreement; the KL is that.

For sequence models the distance is :func:`excise.tasks.sequence.source_metrics`'s ``KL_ref:<source>`` (IMU's
language metric: the KL to the retrained model's next-token predictions, per chain of the test set). Other tasks
(multi-label, dense) get none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.stats import wasserstein_distance
from torch import nn

from excise.data.base import load_task
from excise.metrics.evaluate import EvalViews
from excise.training import predict_logits

DISTANCE_DIRECTIONS: dict[str, str] = {
    "KL_ref:forget": "KL(retrain || model) on the forget set, nats; 0 = retrain's predictions, lower is better",
    "KL_ref:test": "KL(retrain || model) on the test set, nats; 0 = retrain's predictions, lower is better",
    "W1_ref:test": "W1 between retrain's and the model's predicted labels on the test set (IMU); lower is better",
}


def _kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    log_p = torch.log_softmax(reference_logits.double(), dim=1)
    log_q = torch.log_softmax(logits.double(), dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean())


Distances = Callable[[nn.Module, nn.Module, EvalViews], dict[str, float]]
ReferenceDistances = Callable[[EvalViews], dict[str, float]]
TASK_DISTANCES: dict[str, tuple[Distances, ReferenceDistances]] = {}
"""Tasks whose predictions are compared with the reference their own way (the sequence task: KL per chain),
registered by their plug-in module (:func:`register_distances`)."""


def register_distances(task: str, distances: Distances, reference_zeros: ReferenceDistances) -> None:
    """``distances(model, reference, views)`` replaces the classification distances for ``task``;
    ``reference_zeros(views)`` gives the reference's own row (zeros under the same names)."""
    TASK_DISTANCES[task] = (distances, reference_zeros)


def prediction_distances(model: nn.Module, reference: nn.Module, views: EvalViews) -> dict[str, float]:
    """The three distances of ``model`` to the retrained ``reference`` on ``views``' forget set and whole test
    set (its retained and forgotten test populations together). Empty for tasks other than multiclass."""
    forget_set = views.forget_set
    load_task(forget_set.task)
    if forget_set.task in TASK_DISTANCES:
        return TASK_DISTANCES[forget_set.task][0](model, reference, views)
    if forget_set.task != "multiclass":
        return {}
    test = [t for t in (views.test_retain, views.test_forget) if t is not None and len(t)]
    test_logits = torch.cat([predict_logits(model, t) for t in test])
    test_reference = torch.cat([predict_logits(reference, t) for t in test])
    return {
        "KL_ref:forget": _kl(predict_logits(reference, forget_set), predict_logits(model, forget_set)),
        "KL_ref:test": _kl(test_reference, test_logits),
        "W1_ref:test": float(wasserstein_distance(test_reference.argmax(dim=1).numpy(),
                                                  test_logits.argmax(dim=1).numpy())),
    }


def reference_distances(views: EvalViews) -> dict[str, float]:
    """The retrained model's distances to itself: zeros (for the tasks :func:`prediction_distances` serves), so
    a table can show the reference row and every gap equals the value, without predicting twice."""
    task = views.forget_set.task
    load_task(task)
    if task in TASK_DISTANCES:
        return TASK_DISTANCES[task][1](views)
    return {} if task != "multiclass" else dict.fromkeys(DISTANCE_DIRECTIONS, 0.0)
