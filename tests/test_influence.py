"""Model-agnostic influence code: vmap per-sample gradients, the influence formula, the IMU weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from excise.influence import (
    compute_influence,
    diagonal_fisher,
    influence_from_grads,
    influence_weights,
    l1_norm,
    per_sample_grads,
    resolve_head,
    weighted_ascent_loss,
)
from excise.models import create_model


def ce_loss(forward, sample):
    return F.cross_entropy(forward(sample["inputs"]), sample["targets"])


def small_double_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("small_cnn", in_channels=1, num_classes=4, width=4).double()
    # Non-trivial running statistics so eval-mode BatchNorm is not the identity.
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 6, 6, dtype=torch.float64))
    return model


def loop_grads(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official code's way: one sample at a time, eval mode, torch.autograd.grad."""
    model.eval()
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_vmap_grads_match_per_sample_loop_float64():
    model = small_double_model()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(7, 1, 6, 6, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 4, (7,), generator=generator)
    head = list(model.fc.parameters())
    model.train()  # per_sample_grads must switch to eval itself and restore the mode
    got = per_sample_grads(model, head, ce_loss, {"inputs": x, "targets": y})
    assert model.training
    assert got.dtype == torch.float64 and got.shape == (7, sum(p.numel() for p in head))
    want = loop_grads(model, head, x, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Rows really differ per sample (not a broadcast batch gradient).
    assert not torch.allclose(got[0], got[1])


def test_vmap_grads_any_parameter_list_in_given_order():
    model = small_double_model()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 4, (5,), generator=generator)
    head = [model.fc.bias, model.features[3].weight]  # a bias and a conv kernel, deliberately out of order
    got = per_sample_grads(model, head, ce_loss, {"inputs": x, "targets": y})
    torch.testing.assert_close(got, loop_grads(model, head, x, y), rtol=1e-10, atol=1e-12)


def test_vmap_grads_leave_model_untouched():
    model = small_double_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    per_sample_grads(model, None, ce_loss, {"inputs": x, "targets": torch.zeros(4, dtype=torch.long)})
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_influence_formula_hand_checked():
    # g1=(2,0), g2=(-1,0), g3=(0,3): mean g = (1/3, 1); mean g^2 = (5/3, 3); damping 1/3 -> F = (2, 10/3).
    # I_i = -g_i . (gbar / F) with gbar / F = (1/6, 3/10): I = (-1/3, +1/6, -9/10).
    grads = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    result = influence_from_grads(grads, damping=1 / 3)
    torch.testing.assert_close(result.fisher, torch.tensor([2.0, 10 / 3], dtype=torch.float64))
    torch.testing.assert_close(result.mean_grad, torch.tensor([1 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(result.influences, torch.tensor([-1 / 3, 1 / 6, -9 / 10], dtype=torch.float64))
    # The default damping is added after averaging: F = mean g^2 + 0.01.
    torch.testing.assert_close(diagonal_fisher(grads), torch.tensor([5 / 3 + 0.01, 3.01], dtype=torch.float64))
    # Influences sum to -N gbar^T F^-1 gbar <= 0.
    assert float(result.influences.sum()) == pytest.approx(-3 * (1 / 3 * 1 / 6 + 1 * 3 / 10))


def test_compute_influence_streams_and_matches_direct():
    model = small_double_model()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(10, 1, 6, 6, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 4, (10,), generator=generator)
    batches = [{"inputs": x[i : i + 4], "targets": y[i : i + 4]} for i in range(0, 10, 4)]
    want = influence_from_grads(per_sample_grads(model, None, ce_loss, {"inputs": x, "targets": y}), 0.01)
    cached = compute_influence(model, None, ce_loss, batches)
    recomputed = compute_influence(model, None, ce_loss, batches, cache_elements=0)
    for got in (cached, recomputed):
        torch.testing.assert_close(got.influences, want.influences, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.fisher, want.fisher)
        torch.testing.assert_close(got.mean_grad, want.mean_grad)
    with pytest.raises(TypeError, match="one-shot"):
        compute_influence(model, None, ce_loss, iter(batches), cache_elements=0)
    with pytest.raises(ValueError, match="no samples"):
        compute_influence(model, None, ce_loss, [])


def test_weights_keep_only_negative_top_fraction_by_magnitude():
    influences = torch.tensor([-0.04, 0.5, -1.0, -0.25, 2.0, -0.09, 0.0, -0.16])
    out = influence_weights(influences, top_fraction=0.6, clip_quantile=None)
    # Five negatives; int(5 * 0.6) = 3 kept: |I| = 1.0, 0.25, 0.16, largest first.
    assert out.num_negative == 5
    assert out.indices.tolist() == [2, 3, 7]
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 0.5, 0.4]))
    assert all(influences[out.indices] < 0)
    # At least one is kept (the official max(..., 1)); min_count raises the floor, capped at n_neg.
    assert influence_weights(influences, top_fraction=0.01).indices.tolist() == [2]
    assert len(influence_weights(influences, top_fraction=0.01, min_count=4).indices) == 4
    assert len(influence_weights(influences, top_fraction=0.01, min_count=64).indices) == 5
    # No negative influence: nothing to unlearn.
    assert influence_weights(torch.tensor([0.0, 1.0])).indices.numel() == 0


def test_weights_clipped_at_quantile_from_above_only():
    influences = -torch.arange(1, 101, dtype=torch.float64).pow(2)  # sqrt|I| = 1..100
    out = influence_weights(influences, top_fraction=0.5, clip_quantile=0.93)
    assert len(out.indices) == 50 and out.indices[:3].tolist() == [99, 98, 97]
    raw = torch.arange(100, 50, -1, dtype=torch.float64)  # the kept sqrt|I|, largest first
    cap = torch.quantile(raw, 0.93)
    assert float(cap) == pytest.approx(51 + 0.93 * 49)
    torch.testing.assert_close(out.weights, raw.clamp(max=cap))
    assert float(out.weights.max()) == pytest.approx(float(cap)) and float(out.weights.min()) == 51.0


def test_weights_positive_zero_mode_for_sequences():
    influences = torch.tensor([-4.0, 1.0, -1.0, -9.0])
    out = influence_weights(influences, positive="zero", clip_quantile=None)
    assert out.indices.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(out.weights, torch.tensor([2.0, 0.0, 1.0, 3.0]))
    clipped = influence_weights(influences, positive="zero", clip_quantile=0.5)
    cap = torch.quantile(torch.tensor([2.0, 0.0, 1.0, 3.0]), 0.5)  # zeros count in the quantile
    torch.testing.assert_close(clipped.weights, torch.tensor([2.0, 0.0, 1.0, 3.0]).clamp(max=cap))


def test_weighted_ascent_loss_and_l1():
    losses = torch.tensor([1.0, 3.0])
    assert float(weighted_ascent_loss(losses, torch.tensor([1.0, 3.0]))) == pytest.approx(-(1 + 9) / 4)
    assert float(weighted_ascent_loss(losses, torch.zeros(2))) == 0.0
    assert float(l1_norm([torch.tensor([1.0, -2.0]), torch.tensor([[-0.5]])])) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="align"):
        weighted_ascent_loss(losses, torch.ones(3))


def test_resolve_head_by_identity():
    model = small_double_model()
    default = resolve_head(model)
    assert [n for n, _ in default] == ["fc.weight", "fc.bias"]
    assert [n for n, _ in resolve_head(model, model.features[0])] == ["features.0.weight"]
    with pytest.raises(ValueError, match="not a parameter of the model"):
        resolve_head(model, [nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="listed twice"):
        resolve_head(model, [model.fc.bias, model.fc.bias])
    with pytest.raises(ValueError, match="no parameters"):
        resolve_head(model, [])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"top_fraction": 1.5}, "top_fraction"),
        ({"clip_quantile": 0.0}, "clip_quantile"),
        ({"positive": "keep"}, "positive"),
        ({"min_count": 0}, "min_count"),
    ],
)
def test_weights_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        influence_weights(torch.tensor([-1.0]), **kwargs)


def test_bad_damping_and_shapes_refused():
    with pytest.raises(ValueError, match="damping"):
        influence_from_grads(torch.ones(2, 2), damping=0.0)
    with pytest.raises(ValueError, match="N x P"):
        influence_from_grads(torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        influence_weights(torch.ones(2, 2))
