"""Essential-Graph target unlearning: the mechanism step by step, then the method on multi-target digits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from excise.data import LabeledData, load_dataset
from excise.experiment import run_method, train_original
from excise.graph import (
    EssentialGraph,
    GraphError,
    build_graph,
    conv_batchnorm_map,
    default_layers,
    gradcam_channel_weights,
    model_sha256,
    projection_convs,
    prune,
    resolve_layers,
    select_channels,
    top_channels,
)
from excise.methods import UnlearnData, get_method
from excise.methods.essential_graph import DEFAULT_NUM_IMAGES
from excise.metrics import EvalViews
from excise.metrics.accuracy import per_target_accuracy, per_target_ap
from excise.metrics.inversion import InversionConfig, inversion_scores, invert, target_negatives, target_template
from excise.models import create_model
from excise.requests import ForgetRequest, RequestError, split
from excise.training import TrainConfig, predict_logits

# Small convolutions gain nothing from a second thread, and spinning OpenMP threads on a shared machine
# multiply the wall time.
pytestmark = pytest.mark.usefixtures("one_thread")


# --- module graph ----------------------------------------------------------------------------------
class OddNames(nn.Module):
    """BatchNorms registered before their convs, under unrelated names: name substitution cannot work."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_b = nn.BatchNorm2d(6)
        self.norm_a = nn.BatchNorm2d(4)
        self.first = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.second = nn.Conv2d(4, 6, 3, padding=1)
        self.bare = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.norm_a(self.first(x)))
        x = torch.relu(self.norm_b(self.second(x)))
        x = torch.relu(self.bare(x))
        return self.head(x.mean(dim=(2, 3)))


def test_conv_to_batchnorm_comes_from_the_module_graph():
    mapping = conv_batchnorm_map(OddNames())
    assert mapping == {"first": "norm_a", "second": "norm_b", "bare": None}
    resnet = create_model("resnet18", in_channels=1, num_classes=4, width=4)
    mapping = conv_batchnorm_map(resnet)
    assert mapping["layer4.0.shortcut.0"] == "layer4.0.shortcut.1"
    assert mapping["layer4.1.conv2"] == "layer4.1.bn2"
    assert all(bn is not None for bn in mapping.values())


def test_a_conv_without_batchnorm_is_refused_by_name():
    with pytest.raises(GraphError, match=r"conv layer 'bare' cannot be mapped to a BatchNorm.*\['first', 'second'\]"):
        resolve_layers(OddNames(), ["second", "bare"])
    with pytest.raises(GraphError, match="'nope', which is not a Conv2d"):
        resolve_layers(OddNames(), ["nope"])


def test_default_layers_are_the_last_main_path_convs():
    resnet = create_model("resnet18", in_channels=1, num_classes=4, width=4)
    assert projection_convs(resnet) == {"layer2.0.shortcut.0", "layer3.0.shortcut.0", "layer4.0.shortcut.0"}
    assert default_layers(resnet) == [
        "layer3.1.conv2", "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2",
    ]
    assert default_layers(resnet, 2) == ["layer4.1.conv1", "layer4.1.conv2"]
    # The paper's SE-ResNet tail: its five graph layers, the final projection shortcut excluded.
    paper_like = create_model("bottleneck_resnet", in_channels=1, num_classes=4)
    assert projection_convs(paper_like) == {"block6_2.projection"}
    assert default_layers(paper_like) == [
        "block6.conv2", "block6.conv3", "block6_2.conv1", "block6_2.conv2", "block6_2.conv3",
    ]
    assert conv_batchnorm_map(paper_like)["block6_2.projection"] is None  # a bias conv straight into the add


# --- importance and selection ----------------------------------------------------------------------
def test_gradcam_weights_are_signed_spatial_means_of_the_sigmoid_gradient():
    torch.manual_seed(0)
    model = OddNames().eval()
    x = torch.randn(3, 1, 6, 6)
    weights = gradcam_channel_weights(model, ["first", "second"], x, target=2)
    # Direct computation for image 1 alone: d sigmoid(out[2]) / d (conv output), mean over space.
    feats = {}
    model.first.register_forward_hook(lambda m, i, o: feats.__setitem__("first", o))
    model.second.register_forward_hook(lambda m, i, o: feats.__setitem__("second", o))
    out = torch.sigmoid(model(x[1:2])[0, 2])
    grads = torch.autograd.grad(out, [feats["first"], feats["second"]])
    torch.testing.assert_close(weights["first"][1], grads[0][0].mean(dim=(1, 2)))
    torch.testing.assert_close(weights["second"][1], grads[1][0].mean(dim=(1, 2)))
    assert weights["second"].shape == (3, 6)
    assert not model.training


def test_top_channels_floor_ties_and_sign():
    w = torch.tensor([0.5, -3.0, 0.5, 0.1, 0.9, 0.2, 0.0, 0.0, 0.0, 0.0])
    assert top_channels(w, 0.25) == [0, 4]  # int(10 * 0.25) = 2; the tie 0/2 goes to the lower index
    assert top_channels(w, 0.1) == [4]  # -3.0 has the largest magnitude but a negative sign
    with pytest.raises(GraphError, match=r"proportion=0.05 selects no channel of layer 'x'"):
        top_channels(w, 0.05, "x")


def test_balanced_scores_follow_the_paper():
    tops = {0: [0, 1, 2], 1: [2, 3], 2: [1, 4]}
    scores, pruned = select_channels(tops, 6, forgotten=[0], num_targets=3)
    assert scores == [3, 2, 2, -1, -1, 0] and pruned == [0]  # in target 0's set and in no other
    _, pruned = select_channels(tops, 6, forgotten=[0], num_targets=3, balanced=False)
    assert pruned == [0, 1, 2]
    # Forgetting two targets: a channel chosen by both forgotten ones and one remaining scores 2K - 1 > K - 1.
    tops = {0: [0, 1], 1: [1, 2], 2: [1, 2]}
    scores, pruned = select_channels(tops, 3, forgotten=[0, 1], num_targets=3)
    assert scores == [3, 5, 2] and pruned == [0, 1]


# --- pruning, storage -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """An untrained resnet and random multi-hot data: enough to exercise storage and pruning."""
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=3, width=8).eval()
    inputs = torch.rand(12, 1, 12, 12)
    targets = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0]] * 4, dtype=torch.float)
    return model, inputs, targets


def test_pruning_zeroes_exactly_the_selected_channels(tiny):
    model, inputs, targets = tiny
    graph = build_graph(model, targets, inputs, [1], classes=("a", "b", "c"), proportion=0.3, balanced=False)
    assert graph.num_pruned > 0
    pruned = copy.deepcopy(model)
    stats = prune(pruned, graph)
    assert stats["pruned_channels"] == graph.num_pruned
    modules, before = dict(pruned.named_modules()), dict(model.named_modules())
    outputs = {}
    for layer in graph.layers:
        modules[layer.batchnorm].register_forward_hook(lambda m, i, o, name=layer.name: outputs.__setitem__(name, o))
    pruned(inputs)
    for layer in graph.layers:
        kept = [c for c in range(layer.channels) if c not in layer.pruned]
        conv, bn = modules[layer.name], modules[layer.batchnorm]
        assert conv.weight[layer.pruned].abs().sum() == 0
        assert bn.weight[layer.pruned].abs().sum() == 0 and bn.bias[layer.pruned].abs().sum() == 0
        torch.testing.assert_close(conv.weight[kept], before[layer.name].weight[kept])
        torch.testing.assert_close(bn.running_mean, before[layer.batchnorm].running_mean)  # buffers untouched
        assert outputs[layer.name][:, layer.pruned].abs().max() == 0  # the channel is 0 after its BatchNorm
    assert model_sha256(model) == graph.model_sha256  # building and pruning a copy left the model alone


def test_graph_round_trip_and_refusals(tiny, tmp_path):
    model, inputs, targets = tiny
    graph = build_graph(model, targets, inputs, [0], classes=("a", "b", "c"), proportion=0.2, num_images=2)
    path = graph.save(tmp_path / "g.json")
    loaded = EssentialGraph.load(path)
    assert loaded.pruned_channels() == graph.pruned_channels()
    assert loaded.image_rows == {0: [0, 2], 1: [1, 2], 2: [0, 1]}
    loaded.check_model(model)
    other = create_model("resnet18", in_channels=1, num_classes=3, width=8)
    with pytest.raises(GraphError, match="was built for the model with sha256"):
        loaded.check_model(other)
    with pytest.raises(GraphError, match=r"forgets target\(s\) \['a'\], but the request forgets \['b'\]"):
        loaded.check_request(("a", "b", "c"), [1])
    with pytest.raises(FileExistsError):
        graph.save(path)
    with pytest.raises(GraphError, match="must end in .json"):
        graph.save(tmp_path / "g.txt")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(GraphError, match="is not an excise essential graph"):
        EssentialGraph.load(tmp_path / "bad.json")
    png = graph.plot(tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"proportion": 0.0}, "proportion=0.0 must lie in (0, 1]"),
        ({"proportion": 1.5}, "proportion=1.5"),
        ({"num_images": 0}, "num_images=0 must be a positive integer"),
        ({"layers": "layer4.1.conv2"}, "layers='layer4.1.conv2' must be a non-empty list"),
        ({"graph": "/nonexistent/g.json"}, "graph='/nonexistent/g.json' does not exist"),
        ({"balanced": "yes"}, "balanced='yes' must be true or false"),
    ],
)
def test_bad_hyperparameters_are_refused(params, message):
    with pytest.raises(ValueError) as err:
        get_method("essential_graph_paper", **params)
    assert message in str(err.value)


def test_only_target_requests_on_multilabel_models_are_served():
    data = LabeledData(torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]), ("a", "b", "c"))
    request = ForgetRequest(kind="class", labels=("a",))
    forget, retain = split(data, request)
    model = create_model("resnet18", in_channels=1, num_classes=3, width=4)
    for name in ("essential_graph_paper", "essential_graph_unbalanced", "target_finetune"):
        with pytest.raises(RequestError, match=f"method '{name}' cannot serve kind='class'"):
            get_method(name).unlearn(model, request, forget, retain)


# --- the method on multi-target digit canvases -------------------------------------------------------
# Every canvas carries 3-4 of 5 digit classes. The model is the paper's SE-ResNet tail (excise.models.bottleneck:
# ReLU before the residual add, projection conv with bias, wide last conv, linear -> linear head), not a CIFAR
# ResNet-18: on ResNet-18 fixtures of widths 8, 16 and 32 the same pruning left 93%, 98% and 95% of the target's
# positives detected (see excise.methods.essential_graph, "What to expect").
CANVASES = dict(num_classes=5, min_digits=3, max_digits=4, canvas_size=20, num_train=2000, num_test=500)
CANVAS_RECIPE = TrainConfig(epochs=12, batch_size=128, lr=0.003, optimizer="adam")
MODEL, MODEL_KWARGS = "bottleneck_resnet", {}
FORGET = "0"
# The bounds, measured on this fixture at the method's defaults (see the module docstring of
# excise.methods.essential_graph and benchmarks/essential_graph.py). Strict: a change that meets a bound fails
# the suite until the marker is removed.
XFAIL_AP = (
    "measured: forgotten AP 100.0 after pruning vs 79.0 for the retrained reference (prevalence 70.8). Zeroing "
    "EVERY channel of the five graph layers still leaves it at 99.3 (test_the_graph_layers_cannot_reach_the_"
    "forgotten_targets_ranking): the shortcuts carry the stem's features past them, so no channel subset of the "
    "paper's layer set can bring the AP to chance. Pruning "
    "moves the target's logits down (mean on its positives +8.2 -> -1.0) but only halves their separation from "
    "the negatives (14.6 -> 7.2), so the ranking is kept; AP >= 99.0 in all 40 (seed, target, 1 or 10 images) runs "
    "of this model and in every ResNet-18 run (widths 4-32). The remaining targets' labels alone rank this "
    "target at AP 87.2 on these canvases (3-4 of 5 digits each), above the bound"
)
XFAIL_COLLAPSE = (
    "measured: 25.1% of the target's positives still predicted positive at the defaults (proportion 0.1, 5 layers, "
    "10 images; 4.2% with the unbalanced graph, which costs one remaining target 8.4 points). Over 4 seeds x 5 "
    "targets of this model the share fell to <= 10% in 12/20 runs (median 6.5%, worst 59%); on ResNet-18 "
    "fixtures of widths 8/16/32, 93%/98%/95% stayed detected"
)


@pytest.fixture(scope="session")
def canvases():
    return load_dataset("multidigits", seed=0, **CANVASES)


@pytest.fixture(scope="session")
def canvas_model(canvases):
    model, _ = train_original(canvases, MODEL, CANVAS_RECIPE, seed=0, **MODEL_KWARGS)
    return model


@pytest.fixture(scope="session")
def target_views(canvases) -> EvalViews:
    return EvalViews.from_bundle(canvases, ForgetRequest(kind="target", labels=(FORGET,)))


@pytest.fixture(scope="session")
def target_reference(canvas_model, target_views):
    model, _ = run_method("retrain", canvas_model, target_views, CANVAS_RECIPE, seed=0)
    return model


def protocol(model, test, forgotten: int) -> dict:
    """Per-target test accuracy and AP, and the forgotten target's accuracy on the instances carrying it."""
    logits = predict_logits(model, test)
    positives = test.targets[:, forgotten] > 0.5
    return {
        "acc": per_target_accuracy(logits, test.targets),
        "ap": per_target_ap(logits, test.targets),
        "recall": 100.0 * float((torch.sigmoid(logits[positives, forgotten]) > 0.5).float().mean()),
        "positive_probability": float(torch.sigmoid(logits[positives]).mean(0)[forgotten]),
        "mean_positive_probability": torch.sigmoid(logits).mul(test.targets).sum(0) / test.targets.sum(0),
    }


@pytest.fixture(scope="session")
def pruned_runs(canvas_model, target_views, canvases):
    """The original and both graphs' pruned models, with their protocol numbers."""
    forgotten = canvases.train.class_index(FORGET)
    out = {"original": (canvas_model, protocol(canvas_model, canvases.test, forgotten), None)}
    for name in ("essential_graph_paper", "essential_graph_unbalanced"):
        result = get_method(name).unlearn(canvas_model, target_views.request, target_views.forget_set,
                                          target_views.retain_set, recipe=CANVAS_RECIPE)
        out[name] = (result.model, protocol(result.model, canvases.test, forgotten), result)
    return out


def test_the_fixture_is_a_multi_target_problem_the_model_has_learned(canvases, canvas_model, pruned_runs):
    assert (canvases.train.targets.sum(1) >= 3).all() and (canvases.test.targets.sum(1) >= 3).all()
    assert any(isinstance(m, nn.BatchNorm2d) for m in canvas_model.modules())
    original = pruned_runs["original"][1]
    assert original["ap"].min() > 99 and original["acc"].min() > 95 and original["recall"] > 95


def test_retrained_forgotten_output_sits_at_chance(canvases, target_reference):
    """Retrain's forgotten output gets no training signal: its AP is the target's prevalence (chance)."""
    forgotten = canvases.train.class_index(FORGET)
    prevalence = 100.0 * float(canvases.test.targets[:, forgotten].mean())
    assert abs(protocol(target_reference, canvases.test, forgotten)["ap"][forgotten] - prevalence) < 10


def test_target_mia_does_not_flip_with_the_evaluation_seed(target_reference, target_views):
    """The target MIA on (instance, present target) pairs: retrain's forgotten output used to be judged on its own
    column against every training instance, and its verdict swung 20.6-79.1 over six member draws."""
    from excise.metrics.evaluate import collect_outputs
    from tests.test_metrics import MIA_SPAN, spans

    spread = spans(collect_outputs(target_reference, target_views), seeds=range(3))
    assert max(spread.values()) <= MIA_SPAN, spread


def test_pruning_zeroes_only_channels_of_the_forgotten_target(pruned_runs, canvas_model):
    _, _, result = pruned_runs["essential_graph_paper"]
    assert result.stats["pruned_channels"] > 0
    assert result.stats["graph_layers"] == default_layers(canvas_model)
    _, _, unbalanced = pruned_runs["essential_graph_unbalanced"]
    # The balanced graph is the unbalanced one minus the channels a remaining target also relies on.
    for layer, count in result.stats["pruned_per_layer"].items():
        assert count <= unbalanced.stats["pruned_per_layer"][layer]
    assert result.stats["pruned_channels"] < unbalanced.stats["pruned_channels"]


def test_pruning_hits_the_forgotten_target_hardest(pruned_runs, canvases):
    """The mechanism: the forgotten target's probability on its own instances falls far more than any
    remaining target's on theirs, and the remaining targets' ranking (AP) is kept."""
    forgotten = canvases.train.class_index(FORGET)
    remaining = [c for c in range(canvases.train.num_classes) if c != forgotten]
    before = pruned_runs["original"][1]
    after = pruned_runs["essential_graph_paper"][1]
    drop = before["mean_positive_probability"] - after["mean_positive_probability"]
    assert drop[forgotten] > 0.05
    assert drop[forgotten] > 2 * drop[remaining].max()
    assert (before["ap"][remaining] - after["ap"][remaining]).max() <= 3


def test_balanced_graph_beats_unbalanced_on_remaining_accuracy(canvas_model, canvases):
    """Averaged over forgetting each target in turn (one target's comparison is noisy). Measured: mean remaining
    accuracy summed over the 5 targets 495.3 (balanced) vs 491.1 (unbalanced)."""
    train, test = canvases.train, canvases.test
    accuracy = {True: [], False: []}
    for target in range(train.num_classes):
        remaining = [c for c in range(train.num_classes) if c != target]
        for balanced in (True, False):
            graph = build_graph(canvas_model, train.targets, train.inputs, [target], classes=train.classes,
                                num_images=DEFAULT_NUM_IMAGES, balanced=balanced)
            model = copy.deepcopy(canvas_model)
            prune(model, graph)
            accuracy[balanced].append(protocol(model, test, target)["acc"][remaining].mean())
    assert sum(accuracy[True]) > sum(accuracy[False])


def test_the_graph_layers_cannot_reach_the_forgotten_targets_ranking(canvas_model, canvases, target_reference):
    """Why the AP bound is out of reach for pruning the paper's layers: zero every channel of all five graph
    layers (both bottlenecks' main paths from block6.conv2 on) and the forgotten target is still ranked far
    above the retrained reference, because the identity and projection shortcuts carry the stem's features
    to the head. Measured on this fixture: AP 99.3 (retrain 79.0) while the remaining targets' worst AP falls
    to 91.2; zeroing the stem's three convs too brings every target to its prevalence."""
    forgotten = canvases.train.class_index(FORGET)
    train = canvases.train
    graph = build_graph(canvas_model, train.targets, train.inputs, [forgotten], classes=train.classes,
                        proportion=1.0, num_images=1, balanced=False)
    assert graph.num_pruned == sum(layer.channels for layer in graph.layers)
    model = copy.deepcopy(canvas_model)
    prune(model, graph)
    reference = protocol(target_reference, canvases.test, forgotten)["ap"][forgotten]
    assert protocol(model, canvases.test, forgotten)["ap"][forgotten] > reference + 10


@pytest.mark.xfail(strict=True, reason=XFAIL_AP)
def test_forgotten_ap_falls_to_the_retrained_level(pruned_runs, canvases, target_reference):
    forgotten = canvases.train.class_index(FORGET)
    reference = protocol(target_reference, canvases.test, forgotten)["ap"][forgotten]
    assert pruned_runs["essential_graph_paper"][1]["ap"][forgotten] <= reference + 10


@pytest.mark.xfail(strict=True, reason=XFAIL_COLLAPSE)
def test_forgotten_target_collapses_on_the_instances_that_carry_it(pruned_runs):
    assert pruned_runs["essential_graph_paper"][1]["recall"] <= 10


def test_remaining_targets_keep_their_ranking(pruned_runs, canvases):
    """The AP half of the issue's bound, which held in every run measured (worst remaining-target AP drop 0.21
    over 15 runs: every target of the seed-0 and seed-1 models, and seed 0 on CPU kernels without
    vectorisation). The accuracy half is the xfail below."""
    forgotten = canvases.train.class_index(FORGET)
    remaining = [c for c in range(canvases.train.num_classes) if c != forgotten]
    before, after = pruned_runs["original"][1], pruned_runs["essential_graph_paper"][1]
    assert (before["ap"][remaining] - after["ap"][remaining]).max() <= 3


def test_a_stored_graph_prunes_identically_and_only_its_model(pruned_runs, canvas_model, target_views,
                                                               target_reference, tmp_path):
    model, _, result = pruned_runs["essential_graph_paper"]
    views = target_views
    retain = views.retain_set
    graph = build_graph(canvas_model, retain.targets, retain.inputs, [0], classes=retain.classes)
    path = graph.save(tmp_path / "graph.json")
    from_file = get_method("essential_graph_paper", graph=str(path)).unlearn(
        canvas_model, views.request, views.forget_set, retain, recipe=CANVAS_RECIPE)
    assert from_file.stats["graph_from_file"] and from_file.stats["graph_seconds"] == 0.0
    for a, b in zip(model.state_dict().values(), from_file.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(GraphError, match="was built for the model with sha256"):
        get_method("essential_graph_paper", graph=str(path)).unlearn(
            target_reference, views.request, views.forget_set, retain, recipe=CANVAS_RECIPE)
    with pytest.raises(GraphError, match="is balanced, but method 'essential_graph_unbalanced'"):
        get_method("essential_graph_unbalanced", graph=str(path)).unlearn(
            canvas_model, views.request, views.forget_set, retain, recipe=CANVAS_RECIPE)
    other = ForgetRequest(kind="target", labels=("1",))
    forget_1, retain_1 = split(views.retain_set, other)
    with pytest.raises(GraphError, match=r"forgets target\(s\) \['0'\], but the request forgets \['1'\]"):
        get_method("essential_graph_paper", graph=str(path)).unlearn(
            canvas_model, other, forget_1, retain_1, recipe=CANVAS_RECIPE)
    assert model_sha256(canvas_model) == graph.model_sha256  # the caller's model was never modified


def test_instance_level_baselines_serve_target_requests(canvas_model, target_views, canvases, pruned_runs):
    """gradient_ascent (ascent on the forgotten target's masked BCE over its instances) and target_finetune
    (relabel negative) both lower the forgotten target's probability on its instances."""
    forgotten = canvases.train.class_index(FORGET)
    before = pruned_runs["original"][1]["positive_probability"]
    for name in ("gradient_ascent", "target_finetune"):
        result = get_method(name, epochs=2).unlearn(canvas_model, target_views.request, target_views.forget_set,
                                          target_views.retain_set, recipe=CANVAS_RECIPE)
        after = protocol(result.model, canvases.test, forgotten)
        assert after["positive_probability"] < before - 0.05, name
    assert get_method("target_finetune").needs_retain


@pytest.fixture(scope="session")
def inversion(canvas_model, target_reference, pruned_runs, canvases):
    forgotten = canvases.train.class_index(FORGET)
    test = canvases.test
    return inversion_scores(
        {"original": canvas_model, "retrain": target_reference,
         "essential_graph_paper": pruned_runs["essential_graph_paper"][0]},
        canvas_model, forgotten, tuple(test.inputs.shape[1:]), config=InversionConfig(steps=100, num_images=8),
        template=target_template(canvases.train.inputs, canvases.train.targets, forgotten),
        negatives=target_negatives(test.inputs, test.targets, forgotten, 8),
    )


def test_inversion_recovers_the_target_from_the_original(inversion):
    """Measured: the judge gives digit 0 probability 0.1% on the starting canvases, 100% after the original
    model's inversion."""
    assert inversion["original"]["start_recognition"] < 10
    assert inversion["original"]["recognition"] > 90


def test_inversion_floor_is_the_retrained_model(inversion):
    """The retrained model's forgotten output never saw the target (its head row only decayed, to norm 6e-4),
    so its inversion paints the target far less than the original's. Measured on this fixture: 35% against
    100%; over 2 seeds x 2 targets x 3 start sets the retrained floor spread 0-71% and the original stayed at
    100% (Adam rescales even that tiny row's gradient to full steps, so the floor is not the starts' score)."""
    assert inversion["retrain"]["recognition"] < inversion["original"]["recognition"] - 20


def test_pruned_model_still_paints_the_forgotten_target(inversion):
    """What the check exposes: the pruned model still ranks the target (AP 100), so its inversion adds digit
    0 to the starts as the original's does (measured 100%)."""
    assert inversion["essential_graph_paper"]["recognition"] > 90


class Blind(nn.Module):
    """A model whose logits ignore the input: inversion has nothing to follow."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_inversion_from_negatives_leaves_a_blind_models_starts_unchanged():
    starts = torch.rand(4, 1, 6, 6)
    out = invert(Blind(), 1, (1, 6, 6), InversionConfig(steps=20, num_images=4), starts)
    assert torch.equal(out, starts)
    with pytest.raises(ValueError, match=r"starts have shape \(1, 6, 6\) per image, expected \(1, 5, 5\)"):
        invert(Blind(), 1, (1, 5, 5), None, starts)


def test_inversion_refusals():
    with pytest.raises(ValueError, match="start='edges' must be 'negatives' or 'noise'"):
        InversionConfig(start="edges")
    with pytest.raises(ValueError, match="start='negatives' needs negatives="):
        inversion_scores({"m": Blind()}, Blind(), 0, (1, 6, 6))
    with pytest.raises(ValueError, match="negatives holds 2 images, num_images=8"):
        inversion_scores({"m": Blind()}, Blind(), 0, (1, 6, 6), negatives=torch.rand(2, 1, 6, 6))
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="needs num_images=2 instances without target 0, found 1"):
        target_negatives(torch.rand(3, 1, 4, 4), targets, 0, 2)
    picked = target_negatives(torch.arange(3.0).view(3, 1, 1, 1), targets, 1, 1)
    assert picked.item() == 0.0  # the only instance without target 1


# --- target requests in a sequence -----------------------------------------------------------------
SEQUENCE = [ForgetRequest(kind="target", labels=("0",)), ForgetRequest(kind="target", labels=("1",))]


def test_a_target_sequence_is_judged_against_every_target_forgotten_so_far(canvases):
    from excise.sequential import cumulative_views, step_forget_sets

    views = cumulative_views(canvases, SEQUENCE)
    # Each step's views are those of one request naming every target so far, which evaluators read.
    assert [v.request.labels for v in views] == [("0",), ("0", "1")]
    together = EvalViews.from_bundle(canvases, ForgetRequest(kind="target", labels=("0", "1")))
    assert torch.equal(views[1].retain_set.label_mask, together.retain_set.label_mask)
    assert torch.equal(views[1].test_forget.targets, together.test_forget.targets)
    assert views[0].forget_set.label_mask.any(dim=0).nonzero().flatten().tolist() == [0]
    assert views[1].forget_set.label_mask.any(dim=0).nonzero().flatten().tolist() == [0, 1]
    assert (~views[1].retain_set.label_mask).all(dim=0).nonzero().flatten().tolist() == [0, 1]
    steps = step_forget_sets(canvases.train, SEQUENCE)
    carries_1 = int((canvases.train.targets[:, 1] > 0.5).sum())
    assert len(steps[1]) == carries_1  # every instance carrying the step's target, earlier targets or not
    assert steps[1].label_mask.any(dim=0).nonzero().flatten().tolist() == [1]
    with pytest.raises(RequestError, match=r"request 1 \('target:0,1'\) names target\(s\) \['0'\] that an earlier"):
        step_forget_sets(canvases.train, [SEQUENCE[0], ForgetRequest(kind="target", labels=("0", "1"))])
    with pytest.raises(RequestError, match=r"request 1 \('target:nine'\): labels='nine' is not a known target"):
        cumulative_views(canvases, [SEQUENCE[0], ForgetRequest(kind="target", labels=("nine",))])
    with pytest.raises(RequestError, match="mixing kind='target' with other kinds"):
        cumulative_views(canvases, [SEQUENCE[0], ForgetRequest(kind="samples", fraction=0.1)])
    every = [ForgetRequest(kind="target", labels=(t,)) for t in canvases.train.classes]
    with pytest.raises(RequestError, match="cannot forget every target"):
        cumulative_views(canvases, every)


def test_essential_graph_in_a_sequence_neither_scores_nor_spares_an_earlier_target(canvas_model, canvases):
    from excise.methods.base import UnlearnData
    from excise.methods.essential_graph import earlier_targets
    from excise.sequential import cumulative_views, step_forget_sets

    views = cumulative_views(canvases, SEQUENCE)
    steps = step_forget_sets(canvases.train, SEQUENCE)
    second = UnlearnData(forget_set=steps[1], request=SEQUENCE[1], recipe=CANVAS_RECIPE,
                         _retain_set=views[1].retain_set)
    single = UnlearnData(forget_set=steps[1], request=SEQUENCE[1], recipe=CANVAS_RECIPE,
                         _retain_set=split(canvases.train, SEQUENCE[1])[1])
    assert earlier_targets(second) == (0,) and earlier_targets(single) == ()
    method = get_method("essential_graph_paper")
    graph = method.graph_for(canvas_model, second)
    assert all(0 not in layer.top for layer in graph.layers)  # target 0 neither scored nor sparing channels
    assert all(1 in layer.top for layer in graph.layers) and graph.forgotten == (1,)
    assert all(0 in layer.top for layer in method.graph_for(canvas_model, single).layers)


def test_target_finetune_in_a_sequence_does_not_teach_an_earlier_target_again(canvas_model, canvases):
    """Step 2 fine-tunes on the instances of target 1, many of which carry target 0 as well. Supervising
    target 0 there at its true label (the retain view still holds it) brought its recall on the test set
    back from 0% to 100% (measured); it stays at 0 now."""
    from excise.sequential import run_sequence

    final, records = run_sequence("target_finetune", canvas_model, canvases, SEQUENCE, CANVAS_RECIPE,
                                  reference=None)
    logits = predict_logits(final, canvases.test)
    positives = canvases.test.targets > 0.5
    recall = [float((logits[positives[:, t], t] > 0).float().mean()) for t in range(3)]
    assert recall[0] <= 0.05 and recall[1] <= 0.05  # both forgotten targets stay forgotten
    assert recall[2] >= 0.9  # a remaining target is still recognised
    assert [r.forgotten for r in records] == [["target:0"], ["target:0", "target:1"]]


def test_random_instances_can_be_forgotten_from_a_multi_label_model(canvas_model, canvases):
    """A samples request on a multi-label model forgets whole instances with all their labels; it used to crash
    in the evaluation (the target evaluator needs a label mask)."""
    views = EvalViews.from_bundle(canvases, ForgetRequest(kind="samples", fraction=0.05, seed=0))
    _, reference = run_method("retrain", canvas_model, views, CANVAS_RECIPE, seed=0)
    unlearned, ascent = run_method("gradient_ascent", canvas_model, views, CANVAS_RECIPE, seed=0,
                                   reference=reference)
    for metrics in (reference.metrics, ascent.metrics):
        assert {"FA", "RA", "TA", "MIA", "test_mAP", "acc:0", "AP:4"} <= set(metrics)
    # FA is the mean per-target accuracy on the forgotten instances, RA on the others.
    assert ascent.metrics["FA"] == pytest.approx(float(per_target_accuracy(
        predict_logits(unlearned, views.forget_set), views.forget_set.targets).mean()))
    assert ascent.metrics["RA"] == pytest.approx(float(per_target_accuracy(
        predict_logits(unlearned, views.retain_set), views.retain_set.targets).mean()))
    # The retrained model never saw the forgotten instances, yet generalises to them like to the test set.
    assert abs(reference.metrics["FA"] - reference.metrics["TA"]) < 5 and reference.metrics["RA"] > 90


def test_the_guard_checks_a_target_request_on_the_kept_targets_and_the_forgotten_recall(canvas_model, target_views):
    from excise.methods import Guard, GuardWarning, guard_objection

    def unlearn(name, **params):
        method = get_method(name, **params)
        return method.unlearn(canvas_model, target_views.request, target_views.forget_set,
                              target_views.retain_set if method.needs_retain else None, recipe=CANVAS_RECIPE, seed=0,
                              guard_set=target_views.test_retain)

    # Gradient ascent at its defaults forgets the target and takes the kept targets' accuracy down ~28 points: a
    # new user's attribute model got a certificate for such a run, the guard being off for multi-label models.
    with pytest.warns(GuardWarning, match="gradient_ascent: accuracy on 500 held-out guard_set rows fell from 99"):
        collapsed = unlearn("gradient_ascent")
    found = collapsed.stats["guard"]
    assert found["fired"] and found["rolled_back"] and found["accuracy_after"] < found["accuracy_before"] - 5
    with pytest.warns(GuardWarning, match="gradient_ascent: forgot nothing at these settings"):
        idle = unlearn("gradient_ascent", lr=1e-9)
    found = idle.stats["guard"]
    assert found["forgot_nothing"] and found["request_kind"] == "target" and "forgot nothing" in guard_objection(found)
    kept = unlearn("target_erasure").stats["guard"]  # forgets (recall at 0.5 to 0) and keeps the others
    assert not kept["fired"] and not kept["forgot_nothing"] and kept["forget_accuracy_after"] <= 5
    assert Guard().watch(UnlearnData(target_views.forget_set, target_views.request, CANVAS_RECIPE),
                         target_views.test_retain, 0)[1] == "held-out guard_set"


def test_the_guard_catches_one_kept_target_lost_among_several(canvas_model, target_views):
    """A run that costs one kept target many points and the mean over the kept targets fewer than the guard's 5 is
    damage: a new user's attribute model came back from target_erasure with a copy of the forgotten target at 72.7%
    (from 96.1) and was certified, the mean over its four kept targets having fallen less than 5 points."""
    from excise.methods import Guard, GuardWarning, guard_objection
    from excise.methods.base import UnlearningMethod

    rows = target_views.test_retain
    column = rows.classes.index("2")

    def lower(model: nn.Module, shift: float) -> nn.Module:
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            head.bias[column] -= shift
        return model

    def judged(shift: float) -> dict:
        return Guard().judge(canvas_model, lower(copy.deepcopy(canvas_model), shift), rows, "held-out guard_set")

    # A bias shift that costs target "2" between 8 and 16 points (bisection: the fall grows with the shift).
    low, high = 0.0, 64.0
    for _ in range(20):
        shift = (low + high) / 2
        found = judged(shift)
        fall = found["worst_class_before"] - found["worst_class_after"]
        if 8 < fall < 16:
            break
        low, high = (shift, high) if fall <= 8 else (low, shift)
    assert found["worst_class"] == "2" and found["class_drop"] and found["fired"]
    assert found["accuracy_before"] - found["accuracy_after"] <= 5  # the mean alone would not have fired
    assert not judged(1e-3)["class_drop"]  # a change within the rows' noise is none

    class LowerOneTarget(UnlearningMethod):
        name = "lower_one_target"
        needs_retain = False
        kinds = ("target",)
        tasks = ("multilabel",)

        def _unlearn(self, model, data, seed):
            lower(model, shift)

    with pytest.warns(GuardWarning, match=r"kept target '2' fell from .* while the mean over the kept targets"):
        result = LowerOneTarget().unlearn(canvas_model, target_views.request, target_views.forget_set, seed=0,
                                          recipe=CANVAS_RECIPE, guard_set=rows)
    assert result.stats["guard"]["rolled_back"] and "kept target '2' fell" in guard_objection(result.stats["guard"])


def test_a_target_requests_evidence_says_what_a_probe_still_reads(canvases, canvas_model, target_views,
                                                                  target_reference):
    """The outputs say whether a target is still predicted; the evidence of a target request also says whether it can
    still be read (``excise unlearn`` / ``excise evaluate`` on a multi-label model: ``probe_AP``)."""
    from excise.api import add_information_left

    def left(model: nn.Module) -> dict:
        found: dict = {}
        assert add_information_left(found, model, target_views, seed=0) is None
        return found

    erased_model = get_method("target_erasure").unlearn(canvas_model, target_views.request, target_views.forget_set,
                                                        target_views.retain_set, recipe=CANVAS_RECIPE, seed=0).model
    original, erased, retrained = left(canvas_model), left(erased_model), left(target_reference)
    prevalence = original["prevalence:0"]
    assert prevalence == pytest.approx(100 * float(target_views.test_retain.targets[:, 0].mean()))
    # The eraser is folded into the head's first layer: the features the logit layer reads no longer give the target
    # away (measured 73.1, prevalence 70.8, retrain 96.5: here the other digits predict it) — but the pooled body
    # features it reads from still do, and the evidence says both.
    assert original["probe_AP:0"] > 95 and erased["probe_AP:0"] < prevalence + 10 < retrained["probe_AP:0"]
    assert erased["probe_AP_head:0"] > 95
    # A samples request has no forgotten target to read: nothing is added.
    samples = EvalViews.from_bundle(canvases, ForgetRequest(kind="samples", fraction=0.05, seed=0))
    assert add_information_left(found := {}, canvas_model, samples, seed=0) is None and found == {}


def test_erasure_that_cannot_reach_the_features_says_so(tiny):
    model, inputs, targets = tiny
    data = LabeledData(inputs, targets, ("a", "b", "c"), task="multilabel")
    request = ForgetRequest(kind="target", labels=("b",))
    forget, retain = split(data, request)
    # ResNet-18's head is one fc after pooling: the eraser has no linear producer to go into, only the output is
    # masked — said at run time, since the usual evidence (FA 0, MIA 100) cannot tell.
    with pytest.warns(UserWarning, match=r"nothing was erased from the features: 'fc' reads them .* body"):
        result = get_method("target_erasure").unlearn(model, request, forget, retain, recipe=CANVAS_RECIPE, seed=0)
    assert result.stats["erased"] == "none" and result.stats["forgotten_output"] == "masked"


def test_a_model_without_batchnorm_after_its_convs_names_the_methods_that_serve_it():
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(GraphError, match="no conv of this model feeds one .* use target_erasure"):
        resolve_layers(plain, ["0"])
