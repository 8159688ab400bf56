"""MU-Mis on the digits fixtures: the loss, its double-backprop gradient, the stopping rule, forgetting."""

import copy
import math

import pytest
import torch
from torch import nn

from excise.experiment import evaluate_original, run_method, train_original
from excise.methods import COMPARE_GUARD, RetainAccessError, UnlearnData, get_method, list_methods, method_class
from excise.methods.mu_mis import (
    DoubleBackpropError,
    SensitivityStop,
    draw_irrelevant,
    irrelevant_sensitivity,
    logit_input_gradients,
    mu_mis_loss,
)
from excise.metrics import avg_gap
from excise.requests import ForgetRequest, RequestError

from .conftest import FORGET_CLASS, RECIPE

# Class requests stop on the forget accuracy and cap at class_max_passes; one pass for plumbing tests.
ONE_PASS = {"class_max_passes": 1}


# --- the loss and its gradient --------------------------------------------------------------------
class TinyNet(nn.Module):
    """Conv + eval-mode BatchNorm + smooth activation + linear head: small enough for finite differences."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = act if act is not None else nn.Tanh()
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def _tiny(seed: int = 0, act: nn.Module | None = None) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(act).double()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_input_gradients_are_per_sample_and_match_autograd_of_one_sample():
    net = _tiny()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1, 2, 0])
    batched = logit_input_gradients(net, x, classes, create_graph=False)
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (alone,) = torch.autograd.grad(net(xi)[0, classes[i]], xi)
        torch.testing.assert_close(batched[i:i + 1], alone)


def test_loss_is_the_squared_norm_gap_of_eq3():
    net = _tiny()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    other = torch.tensor([1, 2, 3, 0, 2, 3])
    loss, t_sq, o_sq = mu_mis_loss(net, x, y, other, irrelevant_weight=0.5)
    g_t = logit_input_gradients(net, x, y, create_graph=False)
    g_o = logit_input_gradients(net, x, other, create_graph=False)
    torch.testing.assert_close(t_sq, g_t.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(o_sq, g_o.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(loss.detach(), (t_sq - 0.5 * o_sq).mean())


def test_loss_gradient_matches_finite_differences():
    """Double backprop (create_graph=True) gives the true d loss / d weights, checked in float64."""
    net = _tiny(seed=1)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    other = torch.tensor([2, 3, 0, 1])
    params = [p for p in net.parameters()]
    loss, _, _ = mu_mis_loss(net, x, y, other)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    eps = 1e-6
    checked = 0
    for p, g in zip(params, grads, strict=True):
        flat, gflat = p.data.view(-1), g.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            original = flat[i].item()
            flat[i] = original + eps
            plus = mu_mis_loss(net, x, y, other)[0].item()
            flat[i] = original - eps
            minus = mu_mis_loss(net, x, y, other)[0].item()
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            assert gflat[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7), (p.shape, i)
            checked += 1
    assert checked > 20
    # The weights-gradient is non-trivial (double backprop is really happening).
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_irrelevant_class_is_never_the_true_class_and_is_seeded():
    y = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    c = draw_irrelevant(y, 10, torch.Generator().manual_seed(1))
    assert not (c == y).any()
    assert set(c.tolist()) == set(range(10))
    # Uniform over the other nine classes: every (y, c') pair appears at about 1/9 of y's count.
    for label in range(10):
        counts = torch.bincount(c[y == label], minlength=10).float()
        share = counts / counts.sum()
        assert share[label] == 0
        assert ((share[torch.arange(10) != label] - 1 / 9).abs() < 0.05).all()
    torch.testing.assert_close(c, draw_irrelevant(y, 10, torch.Generator().manual_seed(1)))


def test_inplace_op_that_breaks_double_backprop_is_refused_naming_the_module(digits, class_views):
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inplace = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(2.0) if self.inplace else x * 2.0

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid(), Scale(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )
    with pytest.raises(DoubleBackpropError, match=r"module\(s\) '2' \(Scale\(inplace=True\)\)"):
        get_method("mu_mis").unlearn(model, class_views.request, class_views.forget_set)


def test_functional_inplace_op_is_refused_with_a_pointer_to_forward(class_views):
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.sigmoid(self.conv(x))
            h += 1.0  # overwrites sigmoid's saved output
            return self.fc(h.flatten(1))

    with pytest.raises(DoubleBackpropError, match="functional in-place ops"):
        get_method("mu_mis").unlearn(Bad(), class_views.request, class_views.forget_set)


def test_a_model_with_fused_attention_is_served(class_views):
    """nn.MultiheadAttention(need_weights=False) runs scaled_dot_product_attention, whose fused CPU kernel has no
    double backward: a new user's ViT crashed MU-Mis with a raw autograd error. MU-Mis runs the math kernel."""

    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(16, 16)
            self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            patches = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(len(x), 4, 16)  # four 4x4 patches of 8x8 digits
            tokens = self.embed(patches)
            attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
            return self.head(self.norm(tokens + attended).mean(1))

    torch.manual_seed(0)
    model = TinyViT()
    before = copy.deepcopy(model.state_dict())
    # An untrained model predicts no class to forget: a samples request with a one-pass budget always steps.
    request = ForgetRequest(kind="samples", indices=tuple(range(64)))
    rows = class_views.retain_set.subset(torch.arange(64))
    result = get_method("mu_mis", max_passes=1, max_accuracy_drop=None).unlearn(model, request, rows, seed=0)
    assert result.stats["steps"] == 1
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_relu_inplace_is_harmless_and_accepted(digits_model, class_views):
    """``nn.ReLU(inplace=True)`` does not break double backprop; refusing it would be wrong."""
    model = copy.deepcopy(digits_model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    method = get_method("mu_mis", **ONE_PASS)
    a = method.unlearn(model, class_views.request, class_views.forget_set, seed=0)
    b = method.unlearn(digits_model, class_views.request, class_views.forget_set, seed=0)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_model_detaching_its_input_is_refused(class_views):
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.detach().flatten(1))

    with pytest.raises(DoubleBackpropError, match="do not depend differentiably on its input"):
        get_method("mu_mis").unlearn(Detached(), class_views.request, class_views.forget_set)


# --- the stopping rule ------------------------------------------------------------------------------
def test_stop_rule_does_not_fire_at_step_zero_although_ratio_is_above_delta():
    rule = SensitivityStop(delta=0.9, max_steps=100)
    assert rule.update(0, 5.0) is None  # ratio 1.0 > 0.9, but nothing has dipped yet
    assert rule.update(1, 5.5) is None  # rising without a dip is not a recovery
    assert rule.update(2, 4.6) is None  # 0.92: not below delta, so still no dip
    assert not rule.dipped


def test_stop_rule_fires_after_dip_and_recovery():
    rule = SensitivityStop(delta=0.9, max_steps=100)
    values = [10.0, 9.5, 8.0, 6.0, 7.5, 8.9, 9.1]  # ratios 1, .95, .8, .6, .75, .89, .91
    reasons = [rule.update(step, v) for step, v in enumerate(values)]
    assert reasons == [None] * 6 + ["recovered"]
    assert rule.dipped and rule.min_ratio == pytest.approx(0.6)
    assert rule.ratios == pytest.approx([v / 10.0 for v in values])


def test_stop_rule_cap_fires_when_the_sensitivity_never_recovers():
    rule = SensitivityStop(delta=0.9, max_steps=5)
    reasons = [rule.update(step, v) for step, v in enumerate([10.0, 8.0, 6.0, 5.0, 4.0, 3.0])]
    assert reasons == [None] * 5 + ["max_steps"]


def test_stop_rule_refuses_bad_delta_and_divergence():
    with pytest.raises(ValueError, match=r"delta=1.5 must lie in \(0, 1\)"):
        SensitivityStop(delta=1.5)
    with pytest.raises(ValueError, match="max_steps=0 must be a positive integer"):
        SensitivityStop(max_steps=0)
    rule = SensitivityStop()
    rule.update(0, 1.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        rule.update(1, float("nan"))


# --- the method on the digits fixtures --------------------------------------------------------------
def test_registered_forget_only_multiclass():
    assert "mu_mis" in list_methods()
    cls = method_class("mu_mis")
    assert cls.needs_retain is False
    assert set(cls.kinds) == {"samples", "class", "subclass"}
    assert cls.tasks == ("multiclass",)
    assert "2402.15109" in cls.paper


def test_bad_hyperparameters_are_refused_by_name():
    with pytest.raises(ValueError, match=r"delta=1.0 must lie in \(0, 1\)"):
        get_method("mu_mis", delta=1.0)
    with pytest.raises(ValueError, match="optimizer='rmsprop' is not one of"):
        get_method("mu_mis", optimizer="rmsprop")
    with pytest.raises(ValueError, match="max_passes=0 must be a positive integer"):
        get_method("mu_mis", max_passes=0)
    with pytest.raises(ValueError, match="irrelevant_weight=-1 must be a finite number >= 0"):
        get_method("mu_mis", irrelevant_weight=-1)
    with pytest.raises(ValueError, match=r"class_stop_accuracy=2 must be a number in \[0, 1\] or None"):
        get_method("mu_mis", class_stop_accuracy=2)
    with pytest.raises(ValueError, match=r"max_accuracy_drop='0.1' must be a number in \[0, 1\] or None"):
        get_method("mu_mis", max_accuracy_drop="0.1")
    with pytest.raises(ValueError, match="max_accuracy_drop=0 would stop before the first step"):
        get_method("mu_mis", max_accuracy_drop=0)
    with pytest.raises(RequestError, match="cannot serve kind='target'"):
        get_method("mu_mis").check_request(ForgetRequest(kind="target", labels=("1",)), "multilabel")
    for bad in (0, 1.5, True, "3e-4", None):
        with pytest.raises(ValueError, match=r"relative_step=.* must lie in \(0, 1\)"):
            get_method("mu_mis", relative_step=bad)
    for bad in (0, -1e-5, "1e-5", float("inf")):
        with pytest.raises(ValueError, match=r"lr=.* must be a finite number > 0, or None"):
            get_method("mu_mis", lr=bad)
    with pytest.raises(ValueError, match=r"give lr=1e-05 or relative_step=0.001, not both"):
        get_method("mu_mis", lr=1e-5, relative_step=1e-3)


def test_a_first_step_that_cannot_be_sized_leaves_the_weights_as_they_were():
    """A zero first gradient moves nothing and leaves the lr to the next step; a non-finite one puts the weights
    back and raises, and the optimizer never steps at a placeholder lr."""
    from excise.methods.mu_mis import relative_first_step

    weight = nn.Parameter(torch.ones(3))
    frozen = nn.Parameter(torch.full((2,), 5.0), requires_grad=False)
    method = get_method("mu_mis")
    holder = nn.Module()
    holder.weight, holder.frozen = weight, frozen
    optimizer = method.make_optimizer(holder)
    assert all(math.isnan(group["lr"]) for group in optimizer.param_groups)
    weight.grad = torch.zeros(3)
    assert relative_first_step(optimizer, 0.1) is None
    assert torch.equal(weight.detach(), torch.ones(3)) and math.isnan(optimizer.param_groups[0]["lr"])
    weight.grad = torch.tensor([1.0, float("inf"), 0.0])
    with pytest.raises(FloatingPointError, match="not finite"):
        relative_first_step(optimizer, 0.1)
    assert torch.equal(weight.detach(), torch.ones(3))
    optimizer = method.make_optimizer(holder)  # the failed step's momentum holds the infinity
    weight.grad = torch.tensor([3.0, 0.0, 4.0])
    lr = relative_first_step(optimizer, 0.1)
    # Relative to the trainable weights' norm (sqrt 3), not the frozen ones'.
    assert float((weight.detach() - 1).norm()) == pytest.approx(0.1 * math.sqrt(3), rel=1e-5)
    assert lr == pytest.approx(0.1 * math.sqrt(3) / 5.0, rel=1e-5) and optimizer.param_groups[0]["lr"] == lr


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_first_step_moves_the_weights_by_the_relative_step(digits_model, class_views, optimizer):
    """The step size is set relative to the model, not in absolute units: the first update moves the weights by
    ``relative_step`` of their norm whatever the gradient's scale (measured: the first gradient's norm is 315-660
    on the digits CNNs and 31-81 on the zoo's MLP, ResNet-18 and Animal-MNIST CNN, against weight norms of 14-31),
    and the lr it implies is the run's from then on. A ten times larger loss must give the same first step."""
    method = get_method("mu_mis", optimizer=optimizer, relative_step=1e-3)
    batch = {"inputs": class_views.forget_set.inputs[:32], "targets": class_views.forget_set.targets[:32]}
    moves, rates = [], []
    for scale in (1.0, 10.0):
        net = copy.deepcopy(digits_model).eval()
        with torch.no_grad():  # scaling the last layer scales every logit, hence the loss's gradient
            last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.mul_(scale)
            last.bias.mul_(scale)
        before = [p.detach().clone() for p in net.parameters()]
        norm = torch.sqrt(sum(b.double().pow(2).sum() for b in before))
        optimizer_ = method.make_optimizer(net)
        method._step(net, optimizer_, batch, 10, torch.Generator().manual_seed(0))
        moved = torch.sqrt(sum((p.detach().double() - b.double()).pow(2).sum()
                               for p, b in zip(net.parameters(), before, strict=True)))
        moves.append(float(moved / norm))
        rates.append(optimizer_.param_groups[0]["lr"])
        # The second step keeps the resolved lr: an ordinary optimizer step.
        method._step(net, optimizer_, batch, 10, torch.Generator().manual_seed(1))
        assert optimizer_.param_groups[0]["lr"] == rates[-1]
    assert moves == pytest.approx([1e-3, 1e-3], rel=1e-3)
    if optimizer == "sgd":  # a ten times steeper loss gets a smaller lr; Adam's step was scale-free already
        assert rates[1] < rates[0] / 5
    # After the rescaled first step the run is the one a fresh optimizer at the resolved lr would have taken.
    start = copy.deepcopy(digits_model).eval()
    resolved = copy.deepcopy(start)
    opt_resolved = method.make_optimizer(resolved)
    method._step(resolved, opt_resolved, batch, 10, torch.Generator().manual_seed(0))
    method._step(resolved, opt_resolved, batch, 10, torch.Generator().manual_seed(1))
    plain = copy.deepcopy(start)
    opt_plain = get_method("mu_mis", optimizer=optimizer, lr=opt_resolved.param_groups[0]["lr"]).make_optimizer(plain)
    for seed in (0, 1):
        method._step(plain, opt_plain, batch, 10, torch.Generator().manual_seed(seed))
    for a, b in zip(resolved.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # An lr the caller gives is used as it is (what every run did before the relative step).
    fixed = get_method("mu_mis", lr=2e-5)
    net = copy.deepcopy(digits_model).eval()
    optimizer_ = fixed.make_optimizer(net)
    fixed._step(net, optimizer_, batch, 10, torch.Generator().manual_seed(0))
    assert optimizer_.param_groups[0]["lr"] == 2e-5


class _Untouchable:
    """A retain set whose every attribute access fails: proof that nobody reads it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"retain set attribute {name!r} was read")

    def __len__(self) -> int:
        raise AssertionError("retain set length was read")


def test_retain_set_is_never_read(digits_model, class_views):
    method = get_method("mu_mis", **ONE_PASS)
    seen = {}
    original = method._unlearn

    def spy(model, data: UnlearnData, seed):
        seen["data"] = data
        return original(model, data, seed)

    method._unlearn = spy
    method.unlearn(digits_model, class_views.request, class_views.forget_set, _Untouchable())
    assert seen["data"]._retain_set is None
    with pytest.raises(RetainAccessError, match="forget-only"):
        _ = seen["data"].retain_set


@pytest.fixture(scope="module")
def class_run(digits_model, class_views, class_reference):
    # Kept whatever the guard finds: these tests judge the method (its RA/TA cost here is the xfail below).
    return run_method("mu_mis", digits_model, class_views, RECIPE, seed=0, reference=class_reference,
                      guard=COMPARE_GUARD)[1]


def test_full_class_forgetting_reaches_retrain_forget_accuracy(
    digits_model, class_views, class_reference, class_run
):
    original = evaluate_original(digits_model, class_views).metrics
    assert original["FA"] > 95
    assert abs(class_run.metrics["FA"] - class_reference.metrics["FA"]) <= 5
    # The forgotten class's unseen test digits are forgotten too, not only the training rows.
    assert class_run.metrics["TA_forget"] <= 10
    assert class_run.stats["stop_reason"] in ("recovered", "forget_accuracy", "max_steps")
    assert class_run.stats["steps"] == len(class_run.stats["loss_curve"])
    assert len(class_run.stats["sensitivity_ratio_curve"]) == class_run.stats["steps"] + 1
    assert class_run.stats["sensitivity_ratio_curve"][0] == 1.0
    assert 0 < class_run.stats["lr"] < 1e-3  # what the relative step resolved to (about 1e-5 on this CNN)
    # Closer to the retrained model than the untouched original is, by a wide margin.
    assert class_run.avg_gap < 0.2 * avg_gap(original, class_reference.metrics)


@pytest.mark.xfail(
    strict=True,
    reason="measured: with the paper's irrelevant_weight=1 the width-16 digits CNN loses ~10 points of RA/TA "
    "(RA 90.1, TA 89.6 at FA 0.0); see the mu_mis module docstring",
)
def test_full_class_forgetting_keeps_retain_and_test_accuracy_within_3_points(
    digits_model, class_views, class_run
):
    original = evaluate_original(digits_model, class_views).metrics
    assert class_run.metrics["RA"] >= original["RA"] - 3
    assert class_run.metrics["TA"] >= original["TA"] - 3


def test_full_class_bounds_hold_with_the_papers_weight_on_a_wider_model(digits, class_views, class_reference):
    """The same defaults on a wider CNN (width 48) meet the FA and RA/TA bounds: the loss needs capacity."""
    model, _ = train_original(digits, "small_cnn", RECIPE, seed=0, width=48)
    original = evaluate_original(model, class_views).metrics
    _, record = run_method("mu_mis", model, class_views, RECIPE, seed=0)
    # A class never seen in training is not predicted: the retrained FA is ~0 whatever the width.
    assert class_reference.metrics["FA"] < 1
    assert original["FA"] > 95
    assert record.metrics["FA"] <= class_reference.metrics["FA"] + 5
    assert record.metrics["RA"] >= original["RA"] - 3
    assert record.metrics["TA"] >= original["TA"] - 3
    assert record.stats["stop_reason"] == "forget_accuracy"


def test_random_samples_mia_moves_toward_retrain(digits_model, samples_views, samples_reference):
    """Headline MIA = SVC confidence MIA-efficacy (share of forget samples called non-member)."""
    original = evaluate_original(digits_model, samples_views).metrics
    _, record = run_method("mu_mis", digits_model, samples_views, RECIPE, seed=0, reference=samples_reference)
    target = samples_reference.metrics["MIA"]
    assert abs(record.metrics["MIA"] - target) < abs(original["MIA"] - target)
    assert record.metrics["RA"] >= original["RA"] - 3
    assert record.metrics["TA"] >= original["TA"] - 3


def test_same_seed_same_model_and_stats(digits_model, class_views):
    def run(seed):
        result = get_method("mu_mis", max_passes=1, class_stop_accuracy=None).unlearn(
            digits_model, class_views.request, class_views.forget_set, seed=seed
        )
        return result

    a, b, c = run(3), run(3), run(4)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.stats["sensitivity_ratio_curve"] == b.stats["sensitivity_ratio_curve"]
    assert a.stats["stop_reason"] == "max_steps" and a.stats["steps"] == 3  # 137 rows, batch 64
    assert a.stats["loss_curve"] != c.stats["loss_curve"]


def test_bn_running_statistics_are_left_untouched(digits_model, class_views):
    method = get_method("mu_mis", **ONE_PASS)
    result = method.unlearn(digits_model, class_views.request, class_views.forget_set)
    for (name, before), after in zip(digits_model.named_buffers(), result.model.buffers(), strict=True):
        assert torch.equal(before, after), name


def test_sensitivity_monitor_matches_its_definition(digits_model, class_views):
    x, y = class_views.forget_set.inputs[:20], class_views.forget_set.targets[:20]
    other = draw_irrelevant(y, 10, torch.Generator().manual_seed(0))
    model = copy.deepcopy(digits_model).eval()
    expected = logit_input_gradients(model, x, other, create_graph=False).flatten(1).norm(dim=1).mean()
    assert irrelevant_sensitivity(model, x, other, batch_size=7) == pytest.approx(float(expected), rel=1e-5)


def test_one_pass_checks_decide_as_the_separate_passes_did(digits_model, class_views):
    """The stopping check reads the sensitivity and the forget accuracy from one forward and backward, and the
    loss both input gradients from one forward: the same numbers as separate passes (so the same stop step)."""
    from excise.methods.mu_mis import _Monitor

    model = copy.deepcopy(digits_model).eval()
    forget = class_views.forget_set
    monitor = _Monitor.build(forget, 64, torch.Generator().manual_seed(0))
    sensitivity, accuracy = monitor.check(model, with_accuracy=True)
    with torch.no_grad():
        separate_accuracy = float((model(monitor.inputs).argmax(1) == monitor.targets).float().mean())
    assert accuracy == separate_accuracy
    assert sensitivity == pytest.approx(irrelevant_sensitivity(model, monitor.inputs, monitor.irrelevant), rel=1e-6)
    assert monitor.check(model, with_accuracy=False) == (monitor.sensitivity(model), None)
    x, y = forget.inputs[:16], forget.targets[:16]
    other = draw_irrelevant(y, 10, torch.Generator().manual_seed(1))
    loss, target_sq, other_sq = mu_mis_loss(model, x, y, other)
    separate_target = logit_input_gradients(model, x, y, create_graph=False).flatten(1).pow(2).sum(1)
    separate_other = logit_input_gradients(model, x, other, create_graph=False).flatten(1).pow(2).sum(1)
    assert torch.allclose(target_sq, separate_target) and torch.allclose(other_sq, separate_other)
    assert float(loss.detach()) == pytest.approx(float((separate_target - separate_other).mean()), rel=1e-6)


def test_subclass_request_is_served(digits_super_model, subclass_views):
    original = evaluate_original(digits_super_model, subclass_views).metrics
    # At "warn": the default guard rolls this run back, its sibling "3" down 100 -> 85 (class_drop).
    _, record = run_method("mu_mis", digits_super_model, subclass_views, RECIPE, seed=0, guard=COMPARE_GUARD)
    assert record.stats["stop_reason"] in ("recovered", "max_steps")  # the class-accuracy stop is class-only
    assert record.metrics["FA"] < original["FA"]


@pytest.mark.usefixtures("one_thread")
def test_random_samples_stop_when_the_forget_accuracy_falls_past_the_drop(digits_model, samples_views):
    """A random draw of the training set keeps the retain accuracy's level after a retrain, so a larger fall of
    its accuracy is damage. Measured on this fixture: 30 passes without the rule end at RA 77 (MNIST width 16,
    4 passes: RA 98 -> 20-95 over three seeds); with it the run stops after 33 steps at RA 98."""
    original = evaluate_original(digits_model, samples_views).metrics
    runs = {drop: run_method(get_method("mu_mis", max_passes=30, max_accuracy_drop=drop), digits_model,
                             samples_views, RECIPE, seed=0, guard=COMPARE_GUARD)[1] for drop in (0.02, None)}
    guarded, unguarded = runs[0.02], runs[None]
    assert guarded.stats["stop_reason"] == "forget_accuracy"
    assert guarded.stats["stop_accuracy"] == pytest.approx(guarded.stats["start_forget_accuracy"] - 0.02)
    curve, target = guarded.stats["forget_accuracy_curve"], guarded.stats["stop_accuracy"]
    assert curve[-1] <= target
    # The run keeps whichever of its last two checks is nearer the target, and says which.
    before = curve[-2] if len(curve) > 1 else guarded.stats["start_forget_accuracy"]
    kept_previous = target - curve[-1] > before - target
    assert guarded.stats["stop_kept"] == ("stop_accuracy" if not kept_previous else
                                          "stop_accuracy: kept the previous check, nearer the target" if len(curve) > 1
                                          else "stop_accuracy: kept the model as handed over (the first check "
                                               "overshot)")
    assert guarded.metrics["RA"] >= original["RA"] - 3
    # The same budget without the rule runs to its cap and does the damage the rule prevents.
    assert unguarded.stats["stop_reason"] == "max_steps" and unguarded.stats["stop_accuracy"] is None
    assert unguarded.metrics["RA"] < original["RA"] - 10
    assert guarded.stats["steps"] < unguarded.stats["steps"]


def test_a_class_already_forgotten_takes_no_step(digits_model, class_views):
    from excise.models import final_linear

    forgotten = copy.deepcopy(digits_model)  # a model that no longer predicts class 3 at all
    with torch.no_grad():
        final_linear(forgotten).bias[FORGET_CLASS] = -1e4
    result = get_method("mu_mis").unlearn(forgotten, class_views.request, class_views.forget_set, seed=0)
    assert result.stats["start_forget_accuracy"] == 0.0
    assert result.stats["steps"] == 0 and result.stats["stop_reason"] == "forget_accuracy"
    for before, after in zip(forgotten.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(before, after)


def _fine_class_accuracy(model: nn.Module, test, fine: int) -> float:
    """Test accuracy (super-class label) of the rows of one fine class."""
    model.eval()
    with torch.no_grad():
        predicted = model(test.inputs).argmax(1)
    rows = test.subclass_targets == fine
    return 100 * float((predicted[rows] == test.targets[rows]).float().mean())


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured: neither retain-free method serves a sub-class at this scale; on this fixture mu_mis ends at "
    "gap 32.1 with sibling '3' 15.2 points down, imu at gap 8.2 with '3' 39.1 points down; the mu_mis docstring "
    "follows the "
    "whole trajectory on two digit groupings and on ResNet-18 / MNIST: no point has FA near retrain's and "
    "the sibling within 5 points"))
def test_a_retain_free_method_serves_the_subclass_request_and_keeps_its_sibling(
    digits_super, digits_super_model, subclass_views, subclass_reference
):
    """Issue 20's bound: the best of mu_mis / imu reaches avg gap <= 2 and no sibling loses > 5 points."""
    parent = digits_super.test.subclass_parent
    siblings = [f for f in range(len(parent)) if parent[f] == parent[8] and f != 8]
    before = {f: _fine_class_accuracy(digits_super_model, digits_super.test, f) for f in siblings}
    outcomes = {}
    for name in ("mu_mis", "imu"):
        model, record = run_method(name, digits_super_model, subclass_views, RECIPE, seed=0,
                                   reference=subclass_reference)
        worst = max(before[f] - _fine_class_accuracy(model, digits_super.test, f) for f in siblings)
        outcomes[name] = (round(record.avg_gap, 1), round(worst, 1))
    assert any(gap <= 2 and worst <= 5 for gap, worst in outcomes.values()), outcomes


@pytest.mark.usefixtures("one_thread")
def test_mechanism_plots_come_from_one_command_and_replay_the_registered_run(tmp_path):
    """benchmarks/mu_mis_mechanism.py draws Fig. 1-4 and replays MU-Mis step by step; the replay must be the
    registered method's run (same losses up to its stop), or Fig. 4 would show another run."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mu_mis_mechanism.py"
    spec = importlib.util.spec_from_file_location("mu_mis_mechanism", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "mechanism.png"
    module.main(["--dataset", "digits", "--epochs", "8", "--past-stop", "3", "--out", str(out)])
    record = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 10_000 and record["replay_matches_registered_run"] is True
    run = record["registered_run"]
    assert len(record["curve"]) == run["steps"] + 3 + 1 or run["diverged_at"] is not None
    assert set(record["gap_changes"]) == {"class", "random 10%"}
    # Removing a whole class lowers its samples' sensitivity gap on the retrained model for nearly all of them.
    assert record["gap_changes"]["class"]["fall"] > 0.9
