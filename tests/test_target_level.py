"""Target-level unlearning that forgets at the threshold, keeps every other target and removes the information
(issue 16): distractor canvases, the calibrated Essential Graph, LEACE erasure folded into the head.

The bounds are asserted as run counts over two training seeds x five targets, never one lucky seed, on the
distractor canvases (digits 0-4 labelled, 5-9 unlabelled distractors), for the default target-level method
``target_erasure``. Numbers quoted come from ``benchmarks/target_level.py`` on the same recipe.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from excise.data import load_dataset
from excise.data.base import LabeledData
from excise.erasure import (
    MASKED_LOGIT,
    erase_in_body,
    erase_target,
    fit_bias_shifts,
    fold_error,
    mask_output,
    mean_separation,
    refit_biases,
)
from excise.experiment import run_method, train_original
from excise.methods import get_method
from excise.metrics import EvalViews
from excise.metrics.accuracy import per_target_accuracy, per_target_ap
from excise.metrics.inversion import InversionConfig, inversion_scores, target_negatives
from excise.metrics.probe import heldout_probe_ap, label_leakage
from excise.models import create_model
from excise.models.heads import HeadError, affine_head, body_tail, classifier_output, head_features, last_body_module
from excise.requests import ForgetRequest, split
from excise.training import TrainConfig, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")

DISTRACTOR = dict(num_classes=5, distractor_classes=5, min_digits=2, max_digits=4, canvas_size=20, num_train=2000,
                  num_test=500)
RECIPE = TrainConfig(epochs=12, batch_size=128, lr=0.003, optimizer="adam")
SEEDS = (0, 1)
ARCHITECTURES = {"bottleneck_resnet": {}, "resnet18": {"width": 8}}


# --- mechanics on untrained models: exact, fast ---------------------------------------------------------
@pytest.mark.parametrize(("arch", "kwargs", "where"), [("bottleneck_resnet", {}, "features"),
                                                        ("resnet18", {"width": 4}, "logits")])
def test_the_folded_eraser_equals_applying_it_and_erases_the_class_means(arch, kwargs, where):
    """Folding keeps the architecture and computes exactly what the eraser applied explicitly computes; on the
    fitting rows the erased features' class-conditional means coincide (LEACE's guarantee: no linear function
    of them separates the concept's means)."""
    torch.manual_seed(0)
    model = create_model(arch, in_channels=1, num_classes=5, **kwargs).eval()
    inputs = torch.rand(300, 1, 20, 20)
    concept = (inputs[:, 0, :10].mean((1, 2)) > inputs[:, 0].mean((1, 2))).float()  # readable from the image
    before = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    erasure, folded_into = erase_target(model, inputs, concept)
    assert folded_into == where and [n for n, _ in model.named_parameters()] == names
    assert fold_error(before, model, erasure, inputs[:64]) < 1e-4
    if where == "features":
        erased = head_features(model, inputs).double()
        gap = erased[concept > 0.5].mean(0) - erased[concept < 0.5].mean(0)
        original = head_features(before, inputs).double()
        assert gap.abs().max() < 1e-5 * max(1.0, float(original.abs().max()))


def test_a_masked_output_is_constant_and_refit_moves_only_the_named_biases():
    torch.manual_seed(0)
    model = create_model("bottleneck_resnet", in_channels=1, num_classes=5).eval()
    inputs, targets = torch.rand(64, 1, 20, 20), (torch.rand(64, 5) > 0.5).float()
    mask_output(model, [2])
    logits = predict_logits(model, LabeledData(inputs, targets, tuple("abcde"), task="multilabel"))
    assert torch.allclose(logits[:, 2], torch.full((64,), MASKED_LOGIT))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    shifts = refit_biases(model, inputs, targets, [0, 3])
    head = classifier_output(model)
    for name, value in model.state_dict().items():
        if name != f"{head}.bias":
            assert torch.equal(value, before[name]), name
    moved = (model.state_dict()[f"{head}.bias"] - before[f"{head}.bias"]).nonzero().flatten().tolist()
    assert set(moved) <= {0, 3} and set(shifts) == {0, 3}


def test_the_bias_refit_is_the_maximum_likelihood_shift():
    """At the fitted shift the BCE gradient vanishes: predicted and observed positive counts agree."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 2, generator=generator) * 3 - 2
    targets = (torch.rand(400, 2, generator=generator) < 0.4).float()
    shifts = fit_bias_shifts(logits, targets, [0, 1])
    for k, delta in shifts.items():
        assert abs(float(torch.sigmoid(logits[:, k].double() + delta).sum() - targets[:, k].sum())) < 1e-6


def test_mean_separation_is_the_mahalanobis_distance_of_the_class_means():
    features = torch.tensor([[1.0], [3.0], [0.0], [2.0]], dtype=torch.float64)
    concept = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # means 2 and 1, pooled within-class variance 1, ridge 1e-3 of it
    assert float(mean_separation(features, concept)) == pytest.approx(1 / 1.001)
    assert float(mean_separation(features, torch.ones(4))) == 0.0  # one class empty: nothing to separate


@pytest.mark.parametrize(("arch", "kwargs", "stage"), [("resnet18", {"width": 4}, "layer4"),
                                                        ("bottleneck_resnet", {}, "block6_2")])
def test_the_body_tail_computes_the_logits_from_the_stage_input_and_shares_its_layers(arch, kwargs, stage):
    torch.manual_seed(0)
    model = create_model(arch, in_channels=1, num_classes=5, **kwargs).eval()
    assert last_body_module(model) == stage
    seen = []
    handle = dict(model.named_modules())[stage].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    inputs = torch.rand(8, 1, 20, 20)
    logits = model(inputs)
    handle.remove()
    tail = body_tail(model, stage)
    body, classifier, tail_logits = tail(seen[0])
    assert torch.allclose(tail_logits, logits, atol=1e-6)
    head = affine_head(model)
    assert torch.allclose(body, head_features(model, inputs, head[0]), atol=1e-6)
    assert torch.allclose(classifier, head_features(model, inputs), atol=1e-6)
    assert dict(tail.named_modules())[stage] is dict(model.named_modules())[stage]  # training the tail trains the model


class _Nested(nn.Module):
    """A body and a head that is a Sequential, registered head first; a parameter read after the body."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.scale = nn.Parameter(torch.full((1, 4, 1, 1), 2.0))

    def forward(self, x):
        return self.classifier(self.features(x) * self.scale)


def test_the_body_tail_refuses_a_stage_its_output_alone_does_not_feed():
    model = create_model("resnet18", in_channels=1, num_classes=5, width=4)
    with pytest.raises(HeadError, match="skip connection around it"):
        body_tail(model, "layer4.1.conv2")  # the block adds its input back after this conv
    with pytest.raises(HeadError, match="'fc' is or holds a layer of the head"):
        body_tail(model, "fc")
    with pytest.raises(HeadError, match="body_module='layer9' is not a submodule"):
        body_tail(model, "layer9")
    with pytest.raises(HeadError, match="body_module='pool' has no trainable parameters"):
        erase_in_body(model, torch.rand(8, 1, 20, 20), torch.arange(8) % 2, [1], "pool", 1, 0.3, 1e-3, seed=0)
    # The last body stage in the order of the forward pass, never the child holding the head; a parameter read
    # after the stage is not a skip connection.
    nested = _Nested().eval()
    assert last_body_module(nested) == "features"
    inputs = torch.rand(4, 1, 6, 6)
    _, _, logits = body_tail(nested, "features")(inputs)
    assert torch.allclose(logits, nested(inputs))


def test_body_erasure_trains_only_its_stage_and_brings_the_class_means_together():
    """On an untrained ResNet-18 and a concept painted into the image: every parameter and buffer outside the
    stage is bit-identical afterwards and the separation falls. What the kept logits' term buys is asserted on
    trained models (:func:`test_body_erasure_on_resnet18_removes_the_target_and_keeps_the_others`)."""
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=5, width=4).eval()
    concept = (torch.rand(400) < 0.3).float()
    inputs = torch.rand(400, 1, 20, 20)
    inputs[:, :, :10, :10] += concept[:, None, None, None]  # a bright corner: readable from pooled features
    before = copy.deepcopy(model)
    model.train()  # erase_in_body runs in eval mode and gives the model back in the mode it came in
    result = erase_in_body(model, inputs, concept, keep=[1, 2, 3, 4], module="layer4", epochs=10, penalty=0.3,
                           lr=3e-3, seed=0)
    assert model.training
    model.eval()
    for name, value in model.state_dict().items():
        if not name.startswith("layer4."):
            assert torch.equal(value, before.state_dict()[name]), name
    stage = zip(model.layer4.parameters(), before.layer4.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in stage)
    assert result.module == "layer4" and result.steps == 10 * 2
    assert result.separation_after < 0.2 * result.separation_before, result
    assert torch.allclose(result.classifier_features, head_features(model, inputs), atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


class _ConvHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def test_body_erasure_before_a_fold_into_a_single_layer_head_is_recorded_as_both():
    data = LabeledData(torch.rand(60, 1, 8, 8), (torch.rand(60, 5) > 0.5).float(), tuple("abcde"), task="multilabel")
    request = ForgetRequest(kind="target", labels=("a",))
    forget, retain = split(data, request)
    model = create_model("resnet18", in_channels=1, num_classes=5, width=4)
    result = get_method("target_erasure", body_epochs=1, erase_logits=True).unlearn(model, request, forget, retain)
    assert result.stats["erased"] == "body+logits" and result.stats["body_module"] == "layer4"
    assert result.stats["body_steps"] == 1


def test_a_run_that_would_forget_nothing_is_refused():
    data = LabeledData(torch.rand(40, 1, 8, 8), (torch.rand(40, 5) > 0.5).float(), tuple("abcde"), task="multilabel")
    request = ForgetRequest(kind="target", labels=("a",))
    forget, retain = split(data, request)
    model = create_model("resnet18", in_channels=1, num_classes=5, width=4)
    with pytest.raises(ValueError, match="mask=False with erase_logits=False on ResNet18.*would forget nothing"):
        get_method("target_erasure", mask=False).unlearn(model, request, forget, retain)


def test_erasure_on_a_model_without_a_linear_head_is_refused_by_name():
    with pytest.raises(HeadError, match="_ConvHead does not end in an nn.Linear head"):
        affine_head(_ConvHead())
    data = LabeledData(torch.rand(40, 1, 8, 8), (torch.rand(40, 5) > 0.5).float(), tuple("abcde"), task="multilabel")
    request = ForgetRequest(kind="target", labels=("a",))
    forget, retain = split(data, request)
    with pytest.raises(HeadError, match="does not end in an nn.Linear head"):
        get_method("target_erasure").unlearn(_ConvHead(), request, forget, retain)


@pytest.mark.parametrize(("name", "params", "message"), [
    ("target_erasure", {"fit_size": 0}, "fit_size=0"),
    ("target_erasure", {"mask": "yes"}, "mask='yes' must be true or false"),
    ("essential_graph", {"proportion": "half"}, "proportion='half' must be \"auto\""),
    ("essential_graph", {"proportions": [0.1, 2]}, "proportions=[0.1, 2] must be a non-empty list"),
    ("essential_graph", {"max_recall": -1}, "max_recall=-1 must be a number of percentage points"),
    ("essential_graph_erasure", {"refit": 1}, "refit=1 must be true or false"),
    ("target_erasure", {"body_epochs": -1}, "body_epochs=-1 must be an integer >= 0"),
    ("target_erasure_body", {"body_lr": 0}, "body_lr=0 must be a finite number > 0"),
    ("target_erasure_body", {"body_module": ""}, "body_module='' must be \"auto\""),
    ("target_erasure_body", {"body_penalty": float("inf")}, "body_penalty=inf must be a finite number >= 0"),
    # training the stage would regrow the channels the graph pruned: not offered there
    ("essential_graph_erasure", {"body_epochs": 5}, "method option(s) ['body_epochs']"),
])
def test_bad_configs_are_refused_naming_the_field(name, params, message):
    with pytest.raises(ValueError) as err:
        get_method(name, **params)
    assert message in str(err.value)


# --- the distractor canvases ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def distractor_bundles():
    return {seed: load_dataset("multidigits", seed=seed, **DISTRACTOR) for seed in SEEDS}


def test_distractor_canvases_keep_every_target_from_being_implied_by_the_others(distractor_bundles):
    """On the dense canvases (3-4 of 5 digits) the other labels alone rank a target far above its prevalence;
    with distractors they add little (measured: AP 36-44 at prevalence 28-32, against 86-88 at 71 dense).
    Distractor digits leave no label, mask or box."""
    bundle = distractor_bundles[0]
    dense = load_dataset("multidigits", seed=0, num_classes=5, min_digits=3, max_digits=4, canvas_size=20,
                         num_train=2000, num_test=500)
    for target in range(5):
        prevalence = 100 * float(bundle.test.targets[:, target].mean())
        assert 20 < prevalence < 40
        assert label_leakage(bundle.train.targets, bundle.test.targets, target) < prevalence + 15
        dense_prevalence = 100 * float(dense.test.targets[:, target].mean())
        assert label_leakage(dense.train.targets, dense.test.targets, target) > dense_prevalence + 10
    extras = bundle.train.extras
    assert int(extras["masks"].max()) <= 5 and all(bool((b < 5).all()) for b in extras["box_labels"])
    assert sum(len(d) for d in extras["distractor_digits"]) > 0
    assert (bundle.train.targets.sum(1) == 0).any()  # a canvas may carry distractors only
    assert bundle.meta["distractor_classes"] == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="distractor_classes=6 is not allowed"):
        load_dataset("multidigits", num_classes=5, distractor_classes=6)


# --- the bounds, over seeds x targets -------------------------------------------------------------------
@pytest.fixture(scope="session")
def distractor_models(distractor_bundles):
    """(architecture, seed) -> a model trained on that seed's distractor canvases."""
    return {(arch, seed): train_original(distractor_bundles[seed], arch, RECIPE, seed=seed, **kwargs)[0]
            for arch, kwargs in ARCHITECTURES.items() for seed in SEEDS}


@pytest.fixture(scope="session")
def erasure_runs(distractor_bundles, distractor_models):
    """For each architecture, (seed, target) -> the numbers of the default target-level method."""
    return {arch: _runs("target_erasure", arch, distractor_bundles, distractor_models) for arch in ARCHITECTURES}


def _runs(method: str, arch: str, bundles: dict, models: dict) -> dict:
    """(seed, target) -> the numbers of ``method`` forgetting each target of each seed's model."""
    runs = {}
    for seed in SEEDS:
        bundle, model = bundles[seed], models[arch, seed]
        base = predict_logits(model, bundle.test)
        for target in range(5):
            views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(str(target),)))
            result = get_method(method).unlearn(model, views.request, views.forget_set, views.retain_set,
                                                recipe=RECIPE, seed=seed)
            runs[seed, target] = _numbers(model, base, result, bundle, target)
    return runs


def _numbers(model, base_logits, result, bundle, target) -> dict:
    test = bundle.test
    logits = predict_logits(result.model, test)
    y = test.targets
    remaining = [k for k in range(y.shape[1]) if k != target]
    positives = y[:, target] > 0.5
    return {
        "recall": 100 * float((logits[positives, target] > 0).float().mean()),
        "constant": bool(torch.allclose(logits[:, target], torch.full_like(logits[:, target], MASKED_LOGIT))),
        "acc_drop": float(np.max(per_target_accuracy(base_logits, y)[remaining]
                                 - per_target_accuracy(logits, y)[remaining])),
        "ap_drop": float(np.max(per_target_ap(base_logits, y)[remaining] - per_target_ap(logits, y)[remaining])),
        "probe": heldout_probe_ap(result.model, test.inputs, y[:, target]),
        "prevalence": 100 * float(y[:, target].mean()),
        "stats": result.stats,
    }


def _share(runs: dict, check) -> float:
    return 100 * float(np.mean([check(r) for r in runs.values()]))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_forgotten_output_reads_absent_on_every_input(erasure_runs, arch):
    """The issue's recall bound (<= 5% at 0.5) holds by construction, not by measurement: the shipped model's
    forgotten output is the constant logit(0.001) on every test canvas, and the record says so. What is
    measured is the rest: what the change costs the other targets and what the features still carry."""
    runs = erasure_runs[arch]
    assert all(r["constant"] and r["recall"] == 0 for r in runs.values())
    assert all(r["stats"]["forgotten_output"] == "masked" for r in runs.values())
    expected = "features" if arch == "bottleneck_resnet" else "none"
    assert all(r["stats"]["erased"] == expected for r in runs.values())
    if expected == "features":  # one binary concept: LEACE removes one direction
        assert all(r["stats"]["erasure_rank"] == 1 and r["stats"]["fold_max_error"] < 1e-4 for r in runs.values())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_remaining_target_keeps_its_accuracy_and_ap(erasure_runs, arch):
    """Within 2 accuracy points and 0.5 AP of the original for every remaining target, on >= 90% of runs
    (benchmark, seed 0 of each: worst drops <= 1.0 points and <= 0.47 AP). On ResNet-18 (mask and bias re-fit
    only) the AP half cannot move — a bias shift keeps every ranking — and the accuracy half is what is tested."""
    runs = erasure_runs[arch]
    kept = _share(runs, lambda r: r["acc_drop"] <= 2 and r["ap_drop"] <= 0.5)
    assert kept >= 90, {k: (round(r["acc_drop"], 2), round(r["ap_drop"], 2)) for k, r in runs.items()}


def test_the_features_the_classifier_reads_no_longer_carry_the_target(erasure_runs):
    """The issue's bound is the probe AP <= retrain's + 5. Asserted here with the stronger, held-out probe
    (cross-validated on test canvases the eraser never saw) against the prevalence + 10, which is stricter than
    the issue's bound on these canvases (a retrained model's probe reads the target at 52-61 for a prevalence
    of 28-32) and needs no retraining in the suite. The original's held-out probe reads >= 98.7."""
    runs = erasure_runs["bottleneck_resnet"]
    assert all(r["stats"]["erased"] == "features" for r in runs.values())
    erased = _share(runs, lambda r: r["probe"] <= r["prevalence"] + 10)
    assert erased >= 90, {k: (round(r["probe"], 1), round(r["prevalence"], 1)) for k, r in runs.items()}


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured: LEACE equalises the class means, which is all a linear probe reads; a one-hidden-layer reader "
    "(64 units) still finds the target in the erased features: held-out AP 83-94 on seed 0's five targets "
    "(prevalence 28-32), train-fitted 85-97 against 43-55 for retrain's features (benchmarks/probe_readers.py, "
    "seeds 0-1). target_erasure hides the target from a linear reader; it does not remove it"))
def test_the_erased_features_no_longer_carry_the_target_for_a_nonlinear_reader(distractor_bundles,
                                                                               distractor_models):
    bundle, model = distractor_bundles[0], distractor_models["bottleneck_resnet", 0]
    for target in (0, 1):
        views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(str(target),)))
        erased = get_method("target_erasure").unlearn(model, views.request, views.forget_set, views.retain_set,
                                                      recipe=RECIPE, seed=0).model
        y = bundle.test.targets[:, target]
        # prevalence + 25 is about a retrained model's reading by the same reader (43-55, prevalence 28-32)
        assert heldout_probe_ap(erased, bundle.test.inputs, y, reader="mlp") <= 100 * float(y.mean()) + 25


@pytest.mark.xfail(strict=True, reason=(
    "measured: on a CIFAR-style ResNet-18 the head is one fc after pooling, so no linear layer produces the "
    "features it reads; the default's output is masked (erased: 'none'), but the pooled features the body "
    "computes still read the target: probe AP 93-100 against 35-43 for retrain (benchmark, seed 0), far above "
    "the bound of retrain's + 5. Folding the eraser into fc itself cannot change them either. target_erasure_body "
    "changes the body and brings the probe to retrain's level on most runs, 8x slower (the next test)"))
def test_resnet18_features_no_longer_carry_the_target(erasure_runs):
    runs = erasure_runs["resnet18"]
    assert _share(runs, lambda r: r["probe"] <= r["prevalence"] + 10) >= 90


@pytest.fixture(scope="session")
def body_runs(distractor_bundles, distractor_models):
    """(seed, target) -> the numbers of ``target_erasure_body`` on ResNet-18."""
    return _runs("target_erasure_body", "resnet18", distractor_bundles, distractor_models)


def test_body_erasure_on_resnet18_removes_the_target_and_keeps_the_others(body_runs, erasure_runs):
    """Training ResNet-18's last stage to bring the target's class means together in the pooled features (keeping
    the remaining logits) is what reaches them. On every run the held-out probe falls at least 30 points below what
    the default (mask and re-fit only) leaves, and on >= 90% of these runs to within 10 of the prevalence, with
    every remaining target within 2 accuracy points and 0.5 AP (measured on these 10 runs: probe 28.9-44.2, 9 of 10
    within; worst drops 1.8 points / 0.43 AP; the default's probe reads 83-100). These two seeds are not the
    whole picture: over the benchmark's four (20 runs) the issue's probe bound held on 80% and the keep bound on
    75%; 5 of 20 runs lost more, seed 3 up to 3.4 points and 2.9 AP (README, docs/target_level.md)."""
    default = erasure_runs["resnet18"]
    assert all(r["constant"] and r["stats"]["erased"] == "body" for r in body_runs.values())
    assert all(r["stats"]["body_module"] == "layer4" and r["stats"]["body_steps"] > 0 for r in body_runs.values())
    assert all(r["stats"]["body_separation_after"] < 0.01 * r["stats"]["body_separation_before"]
               for r in body_runs.values())
    detail = {k: (round(r["probe"], 1), round(default[k]["probe"], 1), round(r["prevalence"], 1),
                  round(r["acc_drop"], 2), round(r["ap_drop"], 2)) for k, r in body_runs.items()}
    assert all(r["probe"] <= default[k]["probe"] - 30 for k, r in body_runs.items()), detail
    assert _share(body_runs, lambda r: r["probe"] <= r["prevalence"] + 10) >= 90, detail
    assert _share(body_runs, lambda r: r["acc_drop"] <= 2 and r["ap_drop"] <= 0.5) >= 90, detail


def test_model_inversion_paints_no_more_than_into_the_retrained_model(distractor_bundles, distractor_models):
    """The masked output has no gradient, so inversion leaves its starts as they were; the retrained model's
    output paints a little (benchmark: 0-14 against starts at 0.2-6.1). Within 15 points of retrain's, where
    the pruned model's inversion scores 100."""
    bundle, model = distractor_bundles[0], distractor_models["bottleneck_resnet", 0]
    target = 3
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(str(target),)))
    retrained, _ = run_method("retrain", model, views, RECIPE, seed=0)
    erased, _ = run_method("target_erasure", model, views, RECIPE, seed=0)
    pruned, _ = run_method("essential_graph_paper", model, views, RECIPE, seed=0)
    negatives = target_negatives(bundle.test.inputs, bundle.test.targets, target, 16, seed=0)
    scores = inversion_scores({"retrain": retrained, "target_erasure": erased, "pruned": pruned}, model, target,
                              (1, 20, 20), config=InversionConfig(steps=100, seed=0), negatives=negatives)
    assert abs(scores["target_erasure"]["recognition"] - scores["retrain"]["recognition"]) <= 15, scores
    assert scores["pruned"]["recognition"] > scores["retrain"]["recognition"] + 15, scores


def test_a_sequence_erases_every_target_named_so_far(distractor_bundles, distractor_models):
    """Step 2 fits one eraser on targets 1 and 0 jointly, so erasing 1 cannot make 0 readable again."""
    from excise.sequential import run_sequence

    bundle, model = distractor_bundles[1], distractor_models["bottleneck_resnet", 1]
    sequence = [ForgetRequest(kind="target", labels=("0",)), ForgetRequest(kind="target", labels=("1",))]
    final, records = run_sequence("target_erasure", model, bundle, sequence, RECIPE, reference=None)
    assert records[1].stats["erased_targets"] == ["0", "1"]
    logits = predict_logits(final, bundle.test)
    for target in (0, 1):
        assert torch.allclose(logits[:, target], torch.full_like(logits[:, target], MASKED_LOGIT))
        prevalence = 100 * float(bundle.test.targets[:, target].mean())
        probe = heldout_probe_ap(final, bundle.test.inputs, bundle.test.targets[:, target])
        assert probe <= prevalence + 10, (target, probe, prevalence)
    remaining = per_target_accuracy(logits, bundle.test.targets)[2:]
    assert remaining.min() > 90


def test_calibrated_graph_picks_the_smallest_passing_proportion_and_flags_an_impossible_check(
        distractor_bundles, distractor_models):
    bundle, model = distractor_bundles[0], distractor_models["resnet18", 0]
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=("2",)))
    method = get_method("essential_graph")
    result = method.unlearn(model, views.request, views.forget_set, views.retain_set, recipe=RECIPE)
    tried = result.stats["proportions_tried"]
    passing = [t for t in tried if t["train_recall"] <= 5 and t["train_worst_ap_drop"] <= 0.5]
    assert result.stats["proportion_met"] and passing == tried[-1:]  # stopped at the first that passed
    assert result.stats["proportion"] == tried[-1]["proportion"]
    head = classifier_output(result.model)
    changed = [k for k, delta in result.stats["bias_shifts"].items() if delta != 0]
    assert "2" not in result.stats["bias_shifts"] and changed  # only remaining outputs re-fitted
    assert torch.equal(result.model.state_dict()[f"{head}.weight"], model.state_dict()[f"{head}.weight"])
    impossible = get_method("essential_graph", max_recall=0.0, max_ap_drop=0.0, proportions=[0.05, 0.1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flagged = impossible.unlearn(model, views.request, views.forget_set, views.retain_set, recipe=RECIPE)
    assert not flagged.stats["proportion_met"]
    assert any("no proportion in [0.05, 0.1] met the training check" in str(w.message) for w in caught)
