"""NegGrad+, SalUn, ℓ1-sparse and SCRUB on the shared digits fixtures: they forget, and by their own mechanism."""

import copy

import pytest
import torch

from excise.experiment import build_model, evaluate_original, run_method
from excise.methods import COMPARE_GUARD, Guard, GuardWarning, get_method, list_methods, method_class
from excise.methods._common import keep_bn_running_stats
from excise.methods.base import UnlearnData
from excise.methods.l1_sparse import l1_norm
from excise.methods.salun import forget_gradient, saliency_mask
from excise.metrics import avg_gap
from excise.requests import ForgetRequest, RequestError
from excise.training import predict_logits, train

from .conftest import RECIPE

METHODS = ("neggrad_plus", "salun", "l1_sparse", "scrub")


def _unlearn(name, model, views, seed=0, **config):
    return get_method(name, **config).unlearn(
        model, views.request, views.forget_set, views.retain_set, recipe=RECIPE, seed=seed
    )


def _forget_loss(model, data) -> float:
    logits = predict_logits(model, data)
    return float(torch.nn.functional.cross_entropy(logits, data.targets))


def test_registered_with_paper_and_retain_declared():
    assert set(METHODS) <= set(list_methods())
    for name in METHODS:
        described = method_class(name).describe()
        assert "NeurIPS 2023" in described["paper"] or "ICLR 2024" in described["paper"]
        assert described["data"] == "forget + retain"
        assert described["kinds"] == ["samples", "class", "subclass"]


@pytest.mark.parametrize("name", METHODS)
def test_forgets_a_full_class_like_the_retrained_model(name, digits_model, class_views, class_reference):
    original = evaluate_original(digits_model, class_views).metrics
    _, record = run_method(name, digits_model, class_views, RECIPE, seed=0, reference=class_reference)
    m = record.metrics
    # The retrained model has FA 0 and MIA 100 on class 3; the original has FA 100.
    assert m["FA"] <= class_reference.metrics["FA"] + 10, m
    assert m["RA"] >= 97 and m["TA"] >= 94, m
    assert record.avg_gap < 5 < avg_gap(original, class_reference.metrics)


@pytest.mark.parametrize("name", ["salun", "scrub"])
def test_subclass_forgetting_moves_toward_the_retrained_model(
    name, digits_super_model, subclass_views, subclass_reference
):
    # Retrain keeps ~36% of the 8s in super-class "3|8" (they resemble 3s); the original keeps ~98%. On 131 forget
    # samples one seed's FA spreads widely (SCRUB measured 14-55 across seeds and torch thread counts), so the
    # claim is about the mean of three seeds: it closes most of the original-to-retrain distance.
    original = evaluate_original(digits_super_model, subclass_views).metrics
    # The method's own runs (COMPARE_GUARD): the default guard rolls back SCRUB's seed 1, whose sibling "3" fell
    # 100 -> 89 on its held-out rows (class_drop).
    records = [
        run_method(name, digits_super_model, subclass_views, RECIPE, seed=seed, reference=subclass_reference,
                   guard=COMPARE_GUARD)[1]
        for seed in range(3)
    ]
    reference_fa = subclass_reference.metrics["FA"]
    mean_fa = sum(r.metrics["FA"] for r in records) / len(records)
    assert abs(mean_fa - reference_fa) < 0.3 * (original["FA"] - reference_fa), [r.metrics for r in records]
    assert min(r.metrics["RA"] for r in records) > 97, [r.metrics for r in records]
    mean_gap = sum(r.avg_gap for r in records) / len(records)
    assert mean_gap < avg_gap(original, subclass_reference.metrics) / 3, [r.avg_gap for r in records]


@pytest.mark.parametrize("name", METHODS)
def test_refuses_target_requests_by_name(name, digits_model, class_views):
    with pytest.raises(RequestError, match=f"method '{name}' cannot serve kind='target'"):
        get_method(name).unlearn(
            digits_model, ForgetRequest(kind="target", labels=("1",)), class_views.forget_set, class_views.retain_set
        )


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("neggrad_plus", {"beta": 0.0}, r"beta=0.0 must lie in \(0, 1\]"),
        ("neggrad_plus", {"lr_scale": 0}, "lr_scale=0 must be > 0"),
        ("salun", {"mask_fraction": 1.5}, r"mask_fraction=1.5 must lie in \(0, 1\]"),
        ("salun", {"order": "retain_first"}, "order='retain_first' is not one of"),
        ("l1_sparse", {"no_l1_epochs": 10}, "no_l1_epochs=10 must be an integer smaller than epochs=10"),
        ("l1_sparse", {"gamma": -1.0}, "gamma=-1.0 must be a finite number >= 0"),
        # Infinite or boolean values ran (a config file can hold Infinity) and ended at non-finite outputs or a
        # rollback that named no field.
        ("l1_sparse", {"l1_prior": float("inf")}, "l1_prior=inf must be a finite number >= 0"),
        ("gradient_ascent", {"lr": float("inf")}, "lr=inf must be a finite number >= 0"),
        ("imu", {"damping": float("inf")}, "damping=inf must be a finite number > 0"),
        ("jit", {"lr_scale": float("inf")}, "lr_scale=inf must be a finite number > 0"),
        ("bad_teacher", {"temperature": float("inf")}, "temperature=inf must be a finite number > 0"),
        ("scrub", {"temperature": True}, "temperature=True must be a finite number > 0"),
        ("scrub", {"max_epochs": 4}, r"max_epochs=4 must be an integer in \[0, epochs=3\]"),
        ("scrub", {"temperature": 0}, "temperature=0 must be a finite number > 0"),
        ("scrub", {"class_stop_accuracy": 2.0}, r"class_stop_accuracy=2.0 must be a number in \[0, 1\] or None"),
        ("scrub", {"class_max_epochs": 0}, "class_max_epochs=0 must be a positive integer"),
        ("scrub", {"class_max_epochs": 1}, "class_max_epochs=1 must be >= max_epochs=2"),
        ("finetune", {"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ("gradient_ascent", {"stop_accuracy": "abc"}, r"stop_accuracy='abc' must be a number in \[0, 1\] or None"),
        ("mu_mis", {"class_stop_accuracy": "x"}, r"class_stop_accuracy='x' must be a number in \[0, 1\]"),
        ("essential_graph", {"layers": -1}, "layers=-1 must be a non-empty list of conv module names"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(name, bad, message):
    with pytest.raises(ValueError, match=message):
        get_method(name, **bad)


def test_the_python_api_refuses_a_model_data_or_request_that_do_not_fit(digits, digits_model, class_views):
    """Each ran into an index error deep in the run, a dtype error from torch, or (12 outputs, a forget set of
    another class) ran silently and scored the wrong thing."""
    method, forget, retain = get_method("gradient_ascent"), class_views.forget_set, class_views.retain_set
    for outputs in (5, 12):
        with pytest.raises(ValueError, match=f"outputs {outputs} values per input but forget_set has 10 classes"):
            method.unlearn(build_model(digits, "small_cnn", seed=0, width=4, num_classes=outputs),
                           class_views.request, forget, retain)
    with pytest.raises(ValueError, match="cannot run on one forget_set row of shape"):
        method.unlearn(copy.deepcopy(digits_model).double(), class_views.request, forget, retain)
    other = "5" if class_views.request.labels[0] != "5" else "4"
    with pytest.raises(RequestError, match=f"forget_set holds no row of the class the request class:{other} names"):
        method.unlearn(digits_model, ForgetRequest(kind="class", labels=(other,)), forget, retain)
    with pytest.raises(TypeError, match="forget_set must be excise.data.LabeledData"):
        method.unlearn(digits_model, class_views.request, torch.utils.data.TensorDataset(forget.inputs), retain)
    with pytest.raises(TypeError, match="request must be a ForgetRequest"):
        method.unlearn(digits_model, 3, forget, retain)


def test_salun_changes_only_the_salient_weights(digits_model, class_views):
    before = {n: p.detach().clone() for n, p in digits_model.named_parameters()}
    data = UnlearnData(class_views.forget_set, class_views.request, RECIPE)
    masks = saliency_mask(forget_gradient(digits_model, data), 0.5)
    result = _unlearn("salun", digits_model, class_views)

    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.5, abs=1e-3) and result.stats["salient_fraction"] == pytest.approx(kept)
    changed_salient = 0
    for name, p in result.model.named_parameters():
        mask = masks[name]
        assert torch.equal(p.detach()[~mask], before[name][~mask]), f"{name}: an unsalient weight moved"
        changed_salient += int((p.detach()[mask] != before[name][mask]).sum())
    assert changed_salient > 0.9 * sum(int(m.sum()) for m in masks.values())
    # The caller's model is untouched, and the returned model trains freely (the masking hooks are gone).
    for name, p in digits_model.named_parameters():
        assert torch.equal(p.detach(), before[name])
    out = result.model(class_views.forget_set.inputs[:8]).sum()
    out.backward()
    first = next(result.model.parameters())
    assert (first.grad[~masks["features.0.weight"]] != 0).any()


def test_neggrad_plus_steps_on_both_sets_and_ascends_on_forget(digits_model, class_views):
    forget_rows = {tuple(x.flatten().tolist()) for x in class_views.forget_set.inputs}
    seen = {"forget": 0, "retain": 0}

    def spy(module, args):
        if module.training:
            for x in args[0]:
                seen["forget" if tuple(x.flatten().tolist()) in forget_rows else "retain"] += 1

    handle = digits_model.register_forward_pre_hook(spy)  # copied into the method's working model
    try:
        # The official ascent (every step): the class gate's eval-mode check would add forget forwards of its own.
        ascent = _unlearn("neggrad_plus", digits_model, class_views, class_gate=False)
    finally:
        handle.remove()
    epochs = ascent.config["epochs"]
    # Every retain sample once per epoch, and one forget batch beside each retain batch.
    assert seen["retain"] == epochs * len(class_views.retain_set)
    assert seen["forget"] >= ascent.stats["steps"] * min(RECIPE.batch_size, len(class_views.forget_set)) // 2
    # beta = 1 drops the forget term: plain descent on retain. The ascent raises the forget loss far above it.
    descent = _unlearn("neggrad_plus", digits_model, class_views, beta=1.0)
    assert _forget_loss(ascent.model, class_views.forget_set) > 2 * _forget_loss(descent.model, class_views.forget_set)


def test_forget_forward_leaves_batchnorm_running_statistics_alone(digits_model, class_views):
    # NegGrad+'s forget forward must not fold the forget class into the running estimates, and must not break
    # the backward of the retain forward taken before it.
    model = copy.deepcopy(digits_model).train()
    bn = model.features[1]
    retain_out = model(class_views.retain_set.inputs[:32])
    after_retain = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    with keep_bn_running_stats(model):
        forget_out = model(class_views.forget_set.inputs[:32])
    assert torch.equal(bn.running_mean, after_retain[0]) and torch.equal(bn.running_var, after_retain[1])
    assert int(bn.num_batches_tracked) == after_retain[2]
    (retain_out.sum() - forget_out.sum()).backward()
    assert model.fc.weight.grad is not None


def test_l1_penalty_decays_and_shrinks_weights_more_than_plain_finetuning(digits_model, class_views):
    sparse = _unlearn("l1_sparse", digits_model, class_views)
    plain = _unlearn("l1_sparse", digits_model, class_views, gamma=0.0)
    gamma, epochs = sparse.stats["gamma"], sparse.config["epochs"]
    assert gamma == pytest.approx(sparse.config["l1_prior"] / len(class_views.retain_set))
    assert sparse.stats["l1_schedule"] == pytest.approx([gamma * (1 - e / epochs) for e in range(epochs)])
    assert plain.stats["l1_schedule"] == [0.0]
    with torch.no_grad():
        assert float(l1_norm(sparse.model)) < 0.9 * float(l1_norm(plain.model))
        assert float(l1_norm(sparse.model)) < sparse.stats["l1_before"]


def test_scrub_student_leaves_the_teacher_on_forget_and_stays_on_retain(digits_model, class_views):
    result = _unlearn("scrub", digits_model, class_views)

    def kl_to_original(data) -> float:
        teacher = torch.log_softmax(predict_logits(digits_model, data), dim=1)
        student = torch.log_softmax(predict_logits(result.model, data), dim=1)
        return float((teacher.exp() * (teacher - student)).sum(1).mean())

    assert kl_to_original(class_views.forget_set) > 1.0
    assert kl_to_original(class_views.retain_set) < 0.05
    kls = result.stats["forget_kl_per_max_epoch"]
    assert len(kls) == result.stats["max_epochs_run"] >= result.config["max_epochs"] and kls[-1] > kls[0]


def test_scrub_takes_more_max_epochs_until_the_class_is_forgotten(digits_model, class_views, samples_views):
    """A class request keeps adding max epochs (each with its min pass) while more than 1% of the class is still
    predicted, up to class_max_epochs; the official budget is kept when it suffices and on other requests."""
    slow = {"lr_scale": 0.05}  # the official 1/20 lr: two max epochs leave part of the class (module doc)
    official = _unlearn("scrub", digits_model, class_views, class_stop_accuracy=None, **slow)
    extended = _unlearn("scrub", digits_model, class_views, **slow)
    assert official.stats["max_epochs_run"] == 2 and official.stats["forget_accuracy_after_max_epochs"] == []
    checks = extended.stats["forget_accuracy_after_max_epochs"]
    assert checks[0] > 0.01  # the official budget left the class: the run went on
    assert all(c > 0.01 for c in checks[:-1]) and len(checks) == extended.stats["max_epochs_run"] - 1
    assert (checks[-1] <= 0.01) == (extended.stats["stop_reason"] == "forget_accuracy")
    assert extended.stats["max_epochs_run"] > 2 and extended.stats["min_steps"] > official.stats["min_steps"]
    forget = class_views.forget_set
    fa = {name: float((predict_logits(r.model, forget).argmax(1) == forget.targets).double().mean())
          for name, r in (("official", official), ("extended", extended))}
    assert fa["official"] > 0.1 and fa["extended"] <= 0.02, fa  # measured: 21% of the class left, and none
    # Where the official budget already forgets the class (the default lr), the run is the official one, bit for bit.
    default, plain = _unlearn("scrub", digits_model, class_views), _unlearn("scrub", digits_model, class_views,
                                                                           class_stop_accuracy=None)
    assert default.stats["max_epochs_run"] == 2 and default.stats["stop_reason"] == "forget_accuracy"
    assert all(torch.equal(a, b) for a, b in zip(default.model.state_dict().values(), plain.model.state_dict().values(),
                                                 strict=True))
    random_request = _unlearn("scrub", digits_model, samples_views)
    assert random_request.stats["max_epochs_run"] == 2 and random_request.stats["stop_reason"] == "epochs"


def test_scrub_stops_extending_once_an_extra_max_epoch_does_not_lower_the_class(digits_model, class_views,
                                                                                monkeypatch):
    """An extra max epoch that leaves the class where it was (the max step can raise its divergence by sharpening
    the student) is the last one: more would only cost the other classes."""
    from excise.methods import scrub

    monkeypatch.setattr(scrub, "_forget_accuracy", lambda student, data: 1.0)  # the class never moves
    stuck = _unlearn("scrub", digits_model, class_views)
    assert stuck.stats["forget_accuracy_after_max_epochs"] == [1.0, 1.0]
    assert stuck.stats["max_epochs_run"] == 3 and stuck.stats["stop_reason"] == "no_progress"


@pytest.mark.parametrize("name", ["random_labels", "bad_teacher", "salun", "neggrad_plus", "scrub"])
def test_a_random_request_stops_near_the_allowed_forget_accuracy_drop(name, digits_model, samples_views,
                                                                       class_views):
    strong = {"random_labels": {"lr_scale": 1.0, "epochs": 4}, "bad_teacher": {"lr": 3e-3, "epochs": 25},
              "salun": {"lr_scale": 1.0, "epochs": 4}, "neggrad_plus": {"beta": 0.5, "epochs": 4},
              "scrub": {"lr_scale": 0.5, "epochs": 3, "max_epochs": 3}}[name]
    result = get_method(name, **strong).unlearn(digits_model, samples_views.request, samples_views.forget_set,
                                                samples_views.retain_set, recipe=RECIPE, seed=0)
    stats = result.stats
    start, target, curve = stats["start_forget_accuracy"], stats["stop_accuracy"], stats["forget_accuracy_curve"]
    assert target == pytest.approx(start - 0.02) and curve and min(curve) <= target  # this budget crosses it
    kept = predict_logits(result.model, samples_views.forget_set).argmax(1) == samples_views.forget_set.targets
    reached = float(kept.float().mean())
    previous = [start, *curve][-2]
    # The run ends on whichever of the last two checked states is nearer the target, never past both.
    assert abs(reached - target) == pytest.approx(min(abs(curve[-1] - target), abs(previous - target)))
    if stats["stop_reason"].startswith("stop_accuracy: kept the model as handed over"):
        for a, b in zip(result.model.state_dict().values(), digits_model.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    # A class request is not stopped by it: the class must be forgotten whole.
    whole = get_method(name).unlearn(digits_model, class_views.request, class_views.forget_set,
                                     class_views.retain_set, recipe=RECIPE, seed=0)
    assert "forget_accuracy_curve" not in whole.stats


def test_evaluating_a_model_leaves_the_global_generator_where_it_was():
    """A progress check (SCRUB's class budget, SamplesStop, the guard) reads the model with predict_logits; it must
    not shift the global draws — dropout masks — of the training that follows it."""
    from excise.data.base import LabeledData

    data = LabeledData(torch.rand(10, 1, 8, 8), torch.tensor([0, 1] * 5), ("a", "b"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 2))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    predict_logits(model, data, batch_size=4)
    assert torch.equal(torch.rand(3), expected)


def test_a_run_is_the_same_first_in_its_process_and_later_and_leaves_the_global_generator_alone(monkeypatch):
    """The first run of a process also warms up (random draws of its own); a dropout model must still come out the
    same as from any later run with the seed, and the caller's global generator must not move."""
    from excise import runtime
    from excise.data.base import LabeledData
    from excise.methods import Guard, base

    generator = torch.Generator().manual_seed(3)
    data = LabeledData(torch.rand(40, 1, 8, 8, generator=generator), torch.arange(40) % 2, ("a", "b"))
    request = ForgetRequest(kind="class", labels=("a",))
    forget = data.subset(torch.arange(0, 40, 2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(32, 2))
    monkeypatch.setattr(base, "_WARMED", set())
    monkeypatch.setattr(runtime, "_done", False)
    method = get_method("gradient_ascent", epochs=2, lr=0.01)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        result = method.unlearn(model, request, forget, recipe=RECIPE, seed=5, guard=Guard(action="off"))
        # The caller's generator is where it was before the run: its next draw is the seed's first.
        assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(123)))
        runs.append(result.model)
    for p, q in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.fixture(scope="module")
def digits_mlp(digits):
    # No BatchNorm: nothing bounds NegGrad+'s ascent but the class gate.
    model = build_model(digits, "mlp", seed=0)
    train(model, digits.train, RECIPE, seed=0)
    return model.eval()


def test_neggrad_plus_class_gate_stops_ascending_a_forgotten_class_where_the_official_ascent_collapses(
        digits_mlp, class_views, samples_views):
    original = evaluate_original(digits_mlp, class_views).metrics
    guard = Guard(action="warn")
    gated = get_method("neggrad_plus").unlearn(digits_mlp, class_views.request, class_views.forget_set,
                                               class_views.retain_set, recipe=RECIPE, seed=0, guard=guard)
    metrics = evaluate_original(gated.model, class_views).metrics
    assert metrics["FA"] <= 1.0 and metrics["TA"] >= original["TA"] - 2, metrics
    assert 0 < gated.stats["ascent_steps"] < gated.stats["steps"]
    assert gated.stats["gated_steps"] + gated.stats["ascent_steps"] == gated.stats["steps"]
    with pytest.warns(GuardWarning, match="damaged the model"):
        official = get_method("neggrad_plus", class_gate=False).unlearn(
            digits_mlp, class_views.request, class_views.forget_set, class_views.retain_set, recipe=RECIPE, seed=0,
            guard=guard)
    assert evaluate_original(official.model, class_views).metrics["TA"] < 50
    assert "gated_steps" not in official.stats
    # A random-samples request is never gated: the same run, bit for bit, either way.
    on, off = (get_method("neggrad_plus", class_gate=gate).unlearn(
        digits_mlp, samples_views.request, samples_views.forget_set, samples_views.retain_set, recipe=RECIPE,
        seed=0, guard=guard) for gate in (True, False))
    gated, official = on.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(gated[name], official[name]) for name in official)
