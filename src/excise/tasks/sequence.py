"""The ``sequence`` task: next-token prediction over a finite vocabulary, served by the one training loop and
the one evaluation path (the IMU paper's synthetic Markov-chain benchmark; ``shared/methods/imu_language.md``).

Representation: a :class:`~excise.data.base.LabeledData` with ``task="sequence"`` and

- ``inputs``: ``N x T`` long token ids, the sequence without its last token (padding: token 0);
- ``targets``: ``N x T`` long, the next token at every position (the sequence without its first token),
  :data:`IGNORE_INDEX` (-100) where padded;
- ``classes``: the sources a sequence can come from (for ``markov``: the chains ``retain``, ``forget1``,
  ``forget2``) and ``extras["class_targets"]``: ``N`` long, each sequence's source. A ``class`` request
  forgets every training sequence of the named sources — ``ForgetRequest(kind="class", labels=("forget1",))``,
  CLI ``class:forget1`` (:func:`excise.requests.resolve` reads ``class_targets`` when ``targets`` are not
  class indices); a ``samples`` request names sequences by row, as for any data set;
- ``extras["true_next"]`` (optional): ``N x T x V`` float, the true next-token distribution at each
  position when the generator knows it (synthetic chains), for the KL-to-truth metric.

Loss (the official synthetic code, ``Unlearn-Simple/synthetic``): per-token cross-entropy, padding ignored,
averaged over the valid tokens of each sequence — one loss per sequence, which is what IMU's influence is
computed on and what the training loop averages over a batch. (The official pre-training averages over all
valid tokens of a batch instead; identical when the sequences of a batch have equal length, as in the
paper's setting.)

Metrics (:func:`evaluate_sequence`, registered for the task): ``FA``/``RA``/``TA``/``TA_forget`` are next-token
top-1 accuracies in percent on the forget set, retain set, retained and forgotten test populations (so the
average gap to the retrained model is defined as for classification); for each source present in the test
set, ``loss:<source>`` is the mean token cross-entropy and ``KL_true:<source>`` the mean over valid
positions of ``KL(true row || model)`` (nats); ``loss:forget_set`` is the token loss on the forget set.
The KL to a *retrained model's* predictions (``KL_ref:<source>``) needs that model, so it is computed by
:func:`source_metrics` when a reference is passed (the benchmark and the tests do), not by the registered
evaluator, which sees one model. Membership (:func:`sequence_mia`): ``MIA:seq_loss`` and ``MIA:seq_min_k`` are
population attacks — the AUC (%) of telling the forget set from held-out test sequences of the same sources by
the sequence's mean token loss, or by its min-20% token probability (Shi et al., 2023); 50 is a model that
never trained on either.

:func:`step_probe` calls back after every optimizer step a method takes on its working copy of a model,
so curves against unlearning iterations (the paper's figure) can be drawn for any method without a
per-method hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from excise.data.base import CLASS_TARGETS, LabeledData
from excise.data.markov import IGNORE_INDEX, TASK, TRUE_NEXT
from excise.metrics.distance import register_distances
from excise.metrics.evaluate import EvalViews, register_evaluator
from excise.metrics.mia import score_auc
from excise.training import make_loader, register_task_loss


def token_losses(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(nll, valid)``: ``N x T`` cross-entropy of every token (0 at padding) and the float validity mask.

    Written with ``gather`` on clamped targets rather than ``ignore_index`` so it has no data-dependent
    branch and runs under ``torch.func.vmap`` (per-sample gradients for IMU's influence).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"sequence logits must be N x T x V with targets N x T; got logits {tuple(logits.shape)} and "
            f"targets {tuple(targets.shape)}"
        )
    valid = (targets != IGNORE_INDEX).to(logits.dtype)
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return nll * valid, valid


def sequence_loss(logits: Tensor, targets: Tensor, label_mask: Tensor | None = None) -> Tensor:
    """Per-sequence loss: token cross-entropy averaged over the sequence's valid (non-padded) tokens."""
    nll, valid = token_losses(logits, targets)
    return nll.sum(-1) / valid.sum(-1).clamp_min(1.0)


register_task_loss(TASK, sequence_loss)


# --- metrics -----------------------------------------------------------------------------------
@torch.no_grad()
def log_probs(model: nn.Module, data: LabeledData, batch_size: int = 256) -> Tensor:
    """``N x T x V`` next-token log-probabilities of ``model`` on ``data`` (eval mode, mode restored)."""
    was_training = model.training
    model.eval()
    try:
        parts = [F.log_softmax(model(b["inputs"]), dim=-1) for b in make_loader(data, batch_size, shuffle=False)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def _valid(data: LabeledData) -> Tensor:
    return data.targets != IGNORE_INDEX


def _kl(target_probs: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` over the last dimension; ``0 · log 0 = 0``."""
    return (torch.xlogy(target_probs, target_probs) - target_probs * log_q).sum(-1)


def token_accuracy(logp: Tensor, data: LabeledData) -> float:
    """Top-1 next-token accuracy over valid positions, in percent."""
    valid = _valid(data)
    if not bool(valid.any()):
        return float("nan")
    correct = logp.argmax(-1) == data.targets
    return 100.0 * float(correct[valid].float().mean())


def token_loss(logp: Tensor, data: LabeledData) -> float:
    """Mean cross-entropy over every valid token of ``data`` (token-weighted, as the official evaluation)."""
    valid = _valid(data)
    nll = -logp.gather(-1, data.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return float(nll[valid].mean()) if bool(valid.any()) else float("nan")


def source_metrics(
    model: nn.Module | Tensor,
    data: LabeledData,
    *,
    reference: nn.Module | Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Per source (chain) of ``data``: ``loss:<s>``, ``KL_true:<s>`` (if ``data`` carries ``true_next``) and
    ``KL_ref:<s>`` = ``KL(reference || model)`` averaged over valid positions (if ``reference`` is given).

    ``model`` and ``reference`` may be modules or their precomputed :func:`log_probs` on ``data`` (to draw
    curves without re-running a fixed reference at every step).
    """
    logp = model if isinstance(model, Tensor) else log_probs(model, data, batch_size)
    ref = reference if reference is None or isinstance(reference, Tensor) else log_probs(reference, data, batch_size)
    if logp.shape[:2] != data.targets.shape or (ref is not None and ref.shape != logp.shape):
        raise ValueError("precomputed log-probabilities do not match the data (N x T x V)")
    valid = _valid(data)
    sources = data.extras.get(CLASS_TARGETS)
    if sources is None:
        sources = torch.zeros(len(data), dtype=torch.long)
        names: tuple[str, ...] = ("all",)
    else:
        names = data.classes
    true_next = data.extras.get(TRUE_NEXT)
    nll = -logp.gather(-1, data.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    kl_true = None if true_next is None else _kl(true_next, logp)
    kl_ref = None if ref is None else _kl(ref.exp(), logp)
    out: dict[str, float] = {}
    for s, name in enumerate(names):
        mask = valid & (sources == s).unsqueeze(1)
        if not bool(mask.any()):
            continue
        out[f"loss:{name}"] = float(nll[mask].mean())
        if kl_true is not None:
            out[f"KL_true:{name}"] = float(kl_true[mask].mean())
        if kl_ref is not None:
            out[f"KL_ref:{name}"] = float(kl_ref[mask].mean())
    return out


def concat_views(*parts: LabeledData | None) -> LabeledData:
    """Rows of several views of one sequence data set, extras kept (the test populations put back together)."""
    present = [p for p in parts if p is not None and len(p) > 0]
    if not present:
        raise ValueError("no rows to concatenate")
    first = present[0]
    keys = set(first.extras).intersection(*(p.extras for p in present[1:]))
    extras = {k: torch.cat([p.extras[k] for p in present]) for k in keys if isinstance(first.extras[k], Tensor)}
    return LabeledData(
        inputs=torch.cat([p.inputs for p in present]),
        targets=torch.cat([p.targets for p in present]),
        classes=first.classes,
        task=first.task,
        source_indices=torch.cat([p.source_indices for p in present]),
        extras=extras,
        name=first.name,
    )


MIN_K_FRACTION = 0.2
"""Min-k% prob (Shi et al., "Detecting Pretraining Data from Large Language Models", 2023): the mean of a
sequence's lowest 20% token log-probabilities (their default k)."""
SEQUENCE_MIA = ("seq_loss", "seq_min_k")


def membership_scores(logp: Tensor, data: LabeledData, k_fraction: float = MIN_K_FRACTION) -> dict[str, Tensor]:
    """Per-sequence membership scores, higher for sequences that look trained on: ``seq_loss`` the negative mean
    token loss; ``seq_min_k`` the mean of the lowest ``k_fraction`` of its token log-probabilities (at least one
    token)."""
    valid = _valid(data)
    token_logp = logp.gather(-1, data.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    counts = valid.sum(1).clamp_min(1)
    mean = (token_logp * valid).sum(1) / counts
    lowest = torch.where(valid, token_logp, torch.full_like(token_logp, float("inf"))).sort(dim=1).values
    k = (counts.float() * k_fraction).ceil().long().clamp_min(1)
    first_k = torch.arange(lowest.shape[1]).unsqueeze(0) < k.unsqueeze(1)
    min_k = torch.where(first_k, lowest, torch.zeros_like(lowest)).sum(1) / k
    return {"seq_loss": mean, "seq_min_k": min_k}


def heldout_of(views: EvalViews) -> LabeledData | None:
    """The non-members of the sequence membership attacks: held-out test sequences of the forgotten sources (a
    ``class`` request's forgotten test population; for a ``samples`` request, the test sequences of the sources
    its forget set comes from)."""
    if views.test_forget is not None and len(views.test_forget):
        return views.test_forget
    sources = views.forget_set.extras.get(CLASS_TARGETS)
    test = views.test_retain
    if sources is None or CLASS_TARGETS not in test.extras:
        return test
    rows = torch.nonzero(torch.isin(test.extras[CLASS_TARGETS], sources.unique())).flatten()
    return test.subset(rows) if len(rows) else None


def sequence_mia(forget_logp: Tensor, forget_set: LabeledData, heldout_logp: Tensor, heldout: LabeledData, *,
                 replicates: int = 0, seed: int = 0) -> dict[str, tuple[float, list[float] | None]]:
    """The population attacks on a sequence model: ``MIA:seq_loss`` and ``MIA:seq_min_k``, each the AUC (%) of
    telling the forget set from held-out sequences of the same sources, with a bootstrap interval when
    ``replicates`` > 0. 50: indistinguishable, the level of a model that never trained on either; above: the
    forget set is still recognised as training data; below: it is pushed further than unseen data (over-forgotten,
    itself a membership signal)."""
    members, nonmembers = membership_scores(forget_logp, forget_set), membership_scores(heldout_logp, heldout)
    return {f"MIA:{name}": score_auc(members[name].numpy(), nonmembers[name].numpy(), replicates=replicates,
                                     seed=seed) for name in SEQUENCE_MIA}


def evaluate_sequence(
    model: nn.Module, views: EvalViews, *, mia_variants: tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, float]:
    """The registered evaluator of the ``sequence`` task (see the module docstring for each metric)."""
    forget_logp = log_probs(model, views.forget_set)
    out = {
        "FA": token_accuracy(forget_logp, views.forget_set),
        "RA": token_accuracy(log_probs(model, views.retain_set), views.retain_set),
        "loss:forget_set": token_loss(forget_logp, views.forget_set),
    }
    test_retain_logp = log_probs(model, views.test_retain)
    out["TA"] = token_accuracy(test_retain_logp, views.test_retain)
    test = views.test_retain
    test_logp = test_retain_logp
    if views.test_forget is not None and len(views.test_forget):
        test_forget_logp = log_probs(model, views.test_forget)
        out["TA_forget"] = token_accuracy(test_forget_logp, views.test_forget)
        test = concat_views(views.test_retain, views.test_forget)
        test_logp = torch.cat([test_retain_logp, test_forget_logp])
    out.update(source_metrics(test_logp, test))
    heldout = heldout_of(views)
    if heldout is not None and len(heldout):
        heldout_logp = (test_forget_logp if heldout is views.test_forget else log_probs(model, heldout))
        out.update({name: value for name, (value, _) in
                    sequence_mia(forget_logp, views.forget_set, heldout_logp, heldout, seed=seed).items()})
    return out


register_evaluator(TASK, evaluate_sequence)


def _distances(model: nn.Module, reference: nn.Module, views: EvalViews) -> dict[str, float]:
    """KL of ``model``'s next-token predictions to ``reference``'s on each test chain (``KL_ref:<chain>``)."""
    test = concat_views(views.test_retain, views.test_forget)
    measured = source_metrics(model, test, reference=reference)
    return {k: v for k, v in measured.items() if k.startswith("KL_ref:")}


def _reference_distances(views: EvalViews) -> dict[str, float]:
    test = concat_views(views.test_retain, views.test_forget)
    sources = test.extras.get(CLASS_TARGETS)
    names = ["all"] if sources is None else [test.classes[s] for s in sorted(set(sources.tolist()))]
    return {f"KL_ref:{name}": 0.0 for name in names}


register_distances(TASK, _distances, _reference_distances)


# --- curves ------------------------------------------------------------------------------------
StepCallback = Callable[[int, nn.Module], Any]


@contextmanager
def step_probe(model: nn.Module, callback: StepCallback) -> Iterator[list[Any]]:
    """While active, call ``callback(step, working_model)`` after every optimizer step taken on a copy of
    ``model`` (what :meth:`UnlearningMethod.unlearn` works on); yields the list of the callback's results.

    Mechanism: a forward pre-hook on ``model`` travels with ``copy.deepcopy`` into the method's working copy
    and records it on its first forward; a global optimizer step post-hook then calls back with it. Both
    hooks are removed on exit, from the copy too. Steps of an optimizer running before the copy's first
    forward are not counted; a method that builds a *fresh* model (retrain) is not followed.
    """
    state: dict[str, Any] = {"module": None, "steps": 0, "active": True}
    results: list[Any] = []

    def remember(module: nn.Module, args: Any) -> None:
        if state["active"] and module is not model and state["module"] is None:
            state["module"] = module

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not state["active"] or state["module"] is None:
            return
        state["steps"] += 1
        state["active"] = False  # the callback's own forward passes must not re-enter
        try:
            results.append(callback(state["steps"], state["module"]))
        finally:
            state["active"] = True

    pre = model.register_forward_pre_hook(remember)
    post = register_optimizer_step_post_hook(after_step)
    try:
        yield results
    finally:
        state["active"] = False
        post.remove()
        pre.remove()
        if state["module"] is not None:
            state["module"]._forward_pre_hooks.pop(pre.id, None)


__all__ = [
    "CLASS_TARGETS",
    "IGNORE_INDEX",
    "TASK",
    "TRUE_NEXT",
    "concat_views",
    "evaluate_sequence",
    "log_probs",
    "sequence_loss",
    "source_metrics",
    "step_probe",
    "token_accuracy",
    "token_loss",
    "token_losses",
]
