"""IMU for sequence models: influence-weighted gradient ascent on the output projection, forget set only.

Fan, Wu, Zhou, Liang, Harandi, Phung, "Influence-guided Machine Unlearning", arXiv 2508.01620 (2025); the
synthetic Markov-chain experiments of the official code ``goodluckisallyouneed/IMU`` (``synthetic/unlearn_IMU.py``,
README commands). Spec with the pitfalls: ``shared/methods/imu_language.md``. The influence machinery is shared
with the vision method (:mod:`excise.methods.imu`) through :mod:`excise.influence`, and so is the head-only ascent
step (:func:`excise.methods.imu.weighted_ascent_step`); only the per-sample loss and the optimisation recipe differ.

Algorithm (``unlearn_IMU.py``):

1. per-sequence loss = mean token cross-entropy over the valid positions (:func:`excise.tasks.sequence.sequence_loss`);
   per-sample gradients ``g_i`` of it w.r.t. the head — the output projection, by default the model's last
   ``nn.Linear`` (the official ``output_layer``) — in eval mode, over the whole forget set;
2. diagonal empirical Fisher ``F = mean g_i² + 0.01``, mean gradient ``ḡ``, influence ``I_i = −g_iᵀF⁻¹ḡ``
   (forget-set-wide, as ``unlearn_IMU.py``; the LLM file ``synthetic/IMU.py`` recomputes them per batch);
3. keep the negative-influence sequences, the top ``top_fraction`` (1.0: all of them) by ``|I|``; weights ``√|I|``
   clipped from above at their 0.93 quantile (positive-influence sequences are dropped, as
   ``select_top_negative_influence`` does);
4. minimise ``−Σ_b w_b ℓ_b / Σ_b w_b + alpha · ‖head‖₁`` with AdamW (lr 5e-4, no weight decay: the official
   ``transformers.AdamW`` default) over the head only, batch 4, ``epochs`` passes over the kept sequences but at
   most ``max_steps`` optimizer steps (README: 1 epoch, 50 iterations, ``alpha`` 0.002).

**The reference code's bug, not copied.** ``unlearn_IMU.py`` builds a *freshly initialised* model, computes the
Fisher, the influences and the weights on it, and only then loads the trained weights — so the weights describe
a random network, not the model being unlearned. excise computes them on the model it is handed (the trained
model being unlearned); ``tests/test_language.py`` guards this.

Other choices where the official code is silent or odd (documented, overridable):

- the official ``compute_combined_loss`` back-propagates the weighted ascent term inside the loss function and
  then again on the returned total, so the ascent gradient is counted twice relative to the L1 term (with Adam
  this equals one ascent term and ``alpha / 2``). excise back-propagates the written objective once;
- the forget set is what the request names (e.g. the forget1 chain's training sequences); the official script
  forgets forget1 + forget2 training sequences although forget2 was never trained on;
- the model is put in ``train()`` mode during the ascent as in the official loop (the GPT has no BatchNorm and
  dropout 0 by default, so the mode changes nothing there);
- budget and scale: the loss is a per-batch weighted mean and Adam's step size does not depend on the gradient
  scale, so a step is the same size whatever the forget-set size; the README's budget (one pass capped at 50
  steps of 4 sequences) touches 200 of the 4,000 forget1 sequences. ``max_steps=None`` runs the full ``epochs``
  passes instead.

Measured with the defaults (``benchmarks/language.py``; forget ``class:forget1``; KL in nats on test sequences):

- tests' setting (2,000 / 1,000 / 200 sequences, GPT 1 layer x 32): forget-test KL to the retrained model
  0.2375 -> 0.1167 after 50 steps (-51%; model seeds 1 and 2: -50%, -40%), retain-test KL to the true chain
  0.0352 -> 0.0231 (the original's retain predictions carry interference from forget1, which unlearning removes);
  plain GA (SGD lr 1e-3, batch 4) reaches the same forgetting at ~52 steps with retain KL 0.0255.
- README's setting (10,000 / 5,000 / 5,000, GPT 4 x 4 x 128, data seed 42): the forget KL to the retrained model
  falls only from 0.325 to 0.303 (step 8) and then overshoots — the forget loss passes the retrained model's
  at step ~34 — ending at 0.867 after 50 steps, with retain KL 0.019 -> 0.147. Plain GA at the same forgetting
  (step ~10) keeps retain KL at 0.018 and reaches 0.19 (step 39). The paper's claim does not reproduce at this
  scale with the README's hyper-parameters; the better-separated chains of the larger model leave ascent on the
  forget set little consistent signal (its expected gradient at a calibrated fit is ~0) beyond noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from excise.influence import compute_influence, influence_weights, resolve_head
from excise.methods._common import only_trainable
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.methods.imu import head_module, weighted_ascent_step
from excise.progress import progress_bar
from excise.tasks.sequence import TASK, sequence_loss
from excise.training import check_fraction, check_nonnegative, check_positive_int, make_loader


@dataclass
class IMUSequenceConfig:
    lr: float = 5e-4
    batch_size: int = 4
    epochs: int = 1
    max_steps: int | None = 50
    alpha: float = 0.002
    top_fraction: float = 1.0
    weight_decay: float = 0.0
    damping: float = 0.01
    clip_quantile: float = 0.93
    head: str | None = None
    grad_batch_size: int = 128

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "batch_size", "grad_batch_size")
        if self.max_steps is not None:
            check_positive_int(self, "max_steps")
        check_nonnegative(self, "lr", "alpha", "weight_decay")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or not self.damping > 0:
            raise ValueError(f"damping={self.damping!r} must be a number > 0")
        check_fraction(self, "top_fraction", "clip_quantile", closed=True)
        if self.head is not None and (not isinstance(self.head, str) or not self.head):
            raise ValueError(f"head={self.head!r} must be a dotted module path (e.g. 'output_layer') or None")


def sequence_sample_loss(forward: Any, sample: dict[str, Tensor]) -> Tensor:
    """IMU's per-sample loss for :func:`excise.influence.compute_influence`: one sequence's mean token CE."""
    return sequence_loss(forward(sample["inputs"]), sample["targets"]).sum()


@register_method
class IMUSequence(UnlearningMethod):
    name = "imu_sequence"
    paper = ("Fan, Wu, Zhou, Liang, Harandi, Phung, 'Influence-guided Machine Unlearning', arXiv 2508.01620, 2025 "
             "(synthetic sequence setting)")
    needs_retain = False
    kinds = ("samples", "class")
    tasks = (TASK,)
    Config = IMUSequenceConfig

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        cfg = self.config
        named = resolve_head(model, head_module(model, cfg.head))
        head = [p for _, p in named]
        forget = data.forget_set

        # Influence on the model being unlearned, as handed over (not a fresh initialisation: see docstring).
        batches = [{"inputs": b["inputs"], "targets": b["targets"]}
                   for b in make_loader(forget, cfg.grad_batch_size, shuffle=False)]
        influence = compute_influence(model, head, sequence_sample_loss, batches, damping=cfg.damping,
                                      description="imu_sequence")
        chosen = influence_weights(influence.influences, top_fraction=cfg.top_fraction,
                                   clip_quantile=cfg.clip_quantile)
        indices, weights = chosen.indices, chosen.weights
        stats: dict[str, Any] = {
            "forget_size": len(forget),
            "num_negative": chosen.num_negative,
            "num_kept": int(indices.numel()),
            "head": [n for n, _ in named],
            "weight_sum": float(weights.sum()),
            "weight_max": float(weights.max()) if weights.numel() else 0.0,
        }
        if indices.numel() == 0:
            return {**stats, "steps": 0, "stop_reason": "no negative-influence samples", "loss_curve": []}

        kept = forget.subset(indices)
        loader = make_loader(kept, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        optimizer = torch.optim.AdamW(head, lr=cfg.lr, weight_decay=cfg.weight_decay)
        budget = cfg.epochs * len(loader) if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * len(loader))
        steps, curve = 0, []
        with only_trainable(model, head):
            model.train()
            try:
                with progress_bar("imu_sequence", budget) as bar:
                    while steps < budget:
                        for batch in loader:
                            loss, ascent = weighted_ascent_step(model, batch, weights, sequence_loss, head, cfg.alpha,
                                                                optimizer)
                            steps += 1
                            curve.append(float(loss))
                            bar.advance(loss=curve[-1], ascent=float(ascent))
                            if steps >= budget:
                                break
            finally:
                model.eval()
        stop = "max_steps" if cfg.max_steps is not None and steps == cfg.max_steps else "epochs"
        return {**stats, "steps": steps, "stop_reason": stop, "loss_curve": curve,
                "batches_per_epoch": math.ceil(len(kept) / min(cfg.batch_size, len(kept)))}
