"""SSD, Boundary Shrink, Bad Teacher and JiT on the shared digits fixtures: they forget, and by their own mechanism."""

import math

import pytest
import torch
import torch.nn.functional as F

from excise.experiment import evaluate_original, run_method
from excise.methods import COMPARE_GUARD, RetainAccessError, UnlearnData, get_method, method_class
from excise.methods._common import concat_labeled, diagonal_fisher
from excise.methods.bad_teacher import incompetent_teacher
from excise.methods.boundary_shrink import nearest_wrong_labels
from excise.methods.jit import local_lipschitz, resolve_sigma
from excise.methods.ssd import SSDTrial, class_order, search_alpha
from excise.metrics import avg_gap
from excise.models import create_model
from excise.requests import ForgetRequest, RequestError
from excise.training import predict_logits

from .conftest import RECIPE

METHODS = ("ssd", "boundary_shrink", "bad_teacher", "jit")


@pytest.fixture(scope="module")
def original_class_metrics(digits_model, class_views):
    return evaluate_original(digits_model, class_views).metrics


@pytest.fixture(scope="module")
def class_runs(digits_model, class_views, class_reference):
    """Each method's default run on the full-class request (class 3), computed once, kept whatever the guard finds
    (these tests judge the methods; the guard's default rollback is tested in test_guard.py)."""
    return {name: run_method(name, digits_model, class_views, RECIPE, seed=0, reference=class_reference,
                             guard=COMPARE_GUARD) for name in METHODS}


def test_registered_with_paper_and_declared_data():
    needs = {"ssd": True, "boundary_shrink": False, "bad_teacher": True, "jit": False}
    for name, retain in needs.items():
        info = method_class(name).describe()
        assert info["paper"] and info["data"] == ("forget + retain" if retain else "forget only")
        assert set(info["kinds"]) == {"samples", "class", "subclass"}


# What each method achieves with its defaults on the conftest digits model (full class 3), measured with
# 1 / 2 torch threads (two trainings of the same recipe): FA, RA, avg gap =
# SSD at the paper's alpha = 10 (``ssd_paper``) 26.3 / 82.5, 99.7 / 100, 6.8 / 20.7, and with the
# per-request alpha of its default (``"auto"``; 2026-12-07, one training) 0.7, 99.6, 0.60 at alpha 9.6;
# Boundary Shrink 10.2 / 12.4, 98.9 / 98.9, 3.7 / 4.1;
# Bad Teacher 51.1 / 52.6, 100 / 100, 13.2 / 14.2; JiT 29.2 / 6.6, 95.3 / 93.0, 13.4 / 6.6
# (original 100, 100, 50.2; retrained 0, 100, 0). The bounds leave a margin around both; SSD's paper
# alpha = 10 selects few parameters of a 14k-parameter CNN, so it forgets only partly here (see ssd.py); the default
# moves alpha until at most 1% of the class is still predicted.
EXPECTED = {  # name: (minimum FA drop in points, minimum RA)
    "ssd": (90, 97),
    "boundary_shrink": (60, 95),
    "bad_teacher": (30, 97),
    "jit": (60, 88),
}


@pytest.mark.parametrize("name", METHODS)
def test_forgets_a_class_toward_the_retrained_model(name, class_runs, original_class_metrics, class_reference):
    _, record = class_runs[name]
    original, retrained = original_class_metrics, class_reference.metrics
    assert original["FA"] > 95 and retrained["FA"] < 2
    fa_drop, min_ra = EXPECTED[name]
    # Forget accuracy falls from the original's toward the retrained model's ...
    assert record.metrics["FA"] < original["FA"] - fa_drop, record.metrics
    # ... while retain and test accuracy (remaining classes) hold.
    assert record.metrics["RA"] > min_ra and record.metrics["TA"] > min_ra - 5, record.metrics
    # The membership-inference efficacy moves toward the retrained model's (100: every forget sample
    # looks like a non-member), and the model is closer to the retrained one than the original is.
    assert abs(record.metrics["MIA"] - retrained["MIA"]) < 0.5 * abs(original["MIA"] - retrained["MIA"])
    assert record.avg_gap < avg_gap(original, retrained) - 20, record.avg_gap
    assert record.speedup > 0


@pytest.mark.parametrize("name", METHODS)
def test_serves_sample_and_subclass_requests_and_refuses_target(
    name, digits_model, samples_views, digits_super_model, subclass_views
):
    method = get_method(name)
    for model, views in ((digits_model, samples_views), (digits_super_model, subclass_views)):
        result = method.unlearn(model, views.request, views.forget_set, views.retain_set, recipe=RECIPE, seed=0)
        assert torch.isfinite(predict_logits(result.model, views.test_retain)).all()
    with pytest.raises(RequestError, match=f"method '{name}' cannot serve kind='target'"):
        method.unlearn(digits_model, ForgetRequest(kind="target", labels=("1",)), samples_views.forget_set,
                       samples_views.retain_set)


@pytest.mark.parametrize("name", ["boundary_shrink", "jit"])
def test_forget_only_methods_never_see_retain_data(name, digits_model, class_views):
    method = get_method(name)
    seen = {}
    original = method._unlearn

    def spy(model, data: UnlearnData, seed):
        seen["data"] = data
        return original(model, data, seed)

    method._unlearn = spy
    method.unlearn(digits_model, class_views.request, class_views.forget_set, class_views.retain_set, recipe=RECIPE)
    with pytest.raises(RetainAccessError):
        _ = seen["data"].retain_set


# --- mechanisms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ssd", "ssd_paper"])
def test_ssd_dampens_exactly_the_selected_parameters_by_the_right_factor(name, digits_model, class_views):
    method = get_method(name)
    cfg = method.config
    result = method.unlearn(digits_model, class_views.request, class_views.forget_set, class_views.retain_set,
                            recipe=RECIPE, seed=0)
    alpha = result.stats["selection_weighting"]  # the paper's 10, or the one "auto" chose for this request
    assert alpha == 10.0 if name == "ssd_paper" else 1.0 < alpha <= 100.0
    retain = class_views.retain_set
    forget_imp = diagonal_fisher(digits_model, class_views.forget_set, batch_size=cfg.batch_size)
    full_imp = diagonal_fisher(digits_model, concat_labeled(retain.subset(class_order(retain)), class_views.forget_set),
                               batch_size=cfg.batch_size)
    before = dict(digits_model.named_parameters())
    selected_total, shrunk = 0, 0
    for name, after in result.model.named_parameters():
        selected = forget_imp[name] > alpha * full_imp[name]
        factor = torch.ones_like(after)
        factor[selected] = (cfg.dampening_constant * full_imp[name][selected] / forget_imp[name][selected]).clamp(max=1)
        # Unselected parameters are bit-for-bit unchanged; selected ones are scaled by min(lambda*full/forget, 1).
        assert torch.equal(after[~selected], before[name][~selected]), name
        torch.testing.assert_close(after[selected], before[name][selected] * factor[selected])
        selected_total += int(selected.sum())
        shrunk += int((factor[selected] < 1).sum())
    assert selected_total == result.stats["dampened"] > 0
    assert shrunk == selected_total  # with lambda=1 every selected entry has full/forget < 1/alpha < 1
    assert 0 < result.stats["dampened_fraction"] < 0.5


def _forget_accuracy(model, views) -> float:
    return float((predict_logits(model, views.forget_set).argmax(1) == views.forget_set.targets).double().mean())


@pytest.mark.parametrize("request_views", ["class_views", "samples_views"])
def test_ssd_auto_keeps_the_undamaged_trial_nearest_the_forget_level(request_views, digits_model, request):
    """On a real model: "auto" reads the request's level, keeps the undamaged trial nearest it, and that model is the
    paper's dampening at the alpha it reports, bit for bit."""
    views = request.getfixturevalue(request_views)
    result = get_method("ssd").unlearn(digits_model, views.request, views.forget_set, views.retain_set, recipe=RECIPE,
                                       seed=0)
    stats = result.stats
    start, level = stats["start_forget_accuracy"], stats["stop_accuracy"]
    assert start == _forget_accuracy(digits_model, views)
    assert level == (0.01 if views.request.kind == "class" else start - 0.02)
    floor = stats["start_retain_accuracy"] - 0.02
    trials = stats["alpha_curve"]
    assert trials and trials[0][0] == 10.0  # the walk starts at the paper's alpha
    undamaged = [(alpha, forget) for alpha, forget, retain in trials if retain >= floor and forget < start]
    nearest = min([(None, start), *undamaged], key=lambda t: (abs(t[1] - level), -(t[0] or math.inf)))
    reached = [t for t in undamaged if t[1] <= level]
    if views.request.kind == "class" and reached:  # a class's level is a ceiling: the least dampened under it
        nearest = max(reached, key=lambda t: t[0])
    alpha = stats["selection_weighting"]
    assert alpha == nearest[0], (alpha, nearest, trials)
    reference = digits_model if alpha is None else get_method("ssd_paper", selection_weighting=alpha).unlearn(
        digits_model, views.request, views.forget_set, views.retain_set, recipe=RECIPE, seed=0).model
    for (name, p), q in zip(result.model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name
    if alpha is not None:
        assert nearest[1] == _forget_accuracy(result.model, views)
    if views.request.kind == "class":  # this model's class is forgotten, the retain rows kept
        assert alpha is not None and nearest[1] <= 0.02


def _scripted(forget_below: float, damage_below: float, *, bump: tuple[float, float] | None = None):
    """A trial whose forget accuracy is 1.0 above ``forget_below`` and 0.0 at or under it, and whose retain accuracy
    is 1.0 above ``damage_below`` and 0.5 at or under it; ``bump``: an alpha range damaged anyway (not monotone)."""

    def trial(alpha: float) -> SSDTrial:
        damaged = alpha <= damage_below or (bump is not None and bump[0] <= alpha <= bump[1])
        return SSDTrial(alpha, 1.0 if alpha > forget_below else 0.0, 0.5 if damaged else 1.0)

    return trial


START = SSDTrial(None, 1.0, 1.0)


def test_search_alpha_walks_down_to_the_largest_alpha_that_forgets():
    kept, reason, tried = search_alpha(_scripted(forget_below=5.5, damage_below=2.0), START, 0.01, 0.98)
    assert [t.alpha for t in tried[:5]] == pytest.approx([10.0, 8.0, 6.4, 5.12, 5.12 ** 0.5 * 6.4 ** 0.5])
    assert kept.forget == 0.0 and 5.5 / 1.015 < kept.alpha <= 5.5  # bisected to within 1.4% under the edge
    assert "at the level" in reason


def test_search_alpha_walks_up_when_the_paper_alpha_damages_the_model():
    kept, _, tried = search_alpha(_scripted(forget_below=30.0, damage_below=14.0), START, 0.01, 0.98)
    assert [t.alpha for t in tried[:4]] == pytest.approx([10.0, 12.5, 15.625, 19.53125])
    assert tried[0].retain == 0.5 and kept.retain == 1.0  # never the damaged paper alpha
    assert kept.forget == 0.0 and 14.0 < kept.alpha <= 30.0


def test_search_alpha_keeps_a_good_trial_the_final_bracket_left_behind():
    # 10 forgets undamaged; 11-15 are damaged (a retain row or two under the floor) and 15.6 is still above, so the
    # bracket ends between 15 and 15.6 on a damaged trial, yet the undamaged trial at 10 is the one kept.
    trial = _scripted(forget_below=15.0, damage_below=1.0, bump=(11.0, 15.0))
    kept, _, tried = search_alpha(trial, START, 0.01, 0.98)
    assert kept.alpha == 10.0 and kept.forget == 0.0
    assert any(t.retain < 0.98 for t in tried)


def test_search_alpha_under_a_ceiling_prefers_a_trial_at_the_level_to_a_nearer_one_above_it():
    # 4 of 300 rows (1.33%) is nearer the 1% level than 0 rows, but a class request allows at most 1%.
    def trial(alpha: float) -> SSDTrial:
        return SSDTrial(alpha, 0.0 if alpha <= 5.2 else 4 / 300 if alpha <= 6.0 else 1.0, 1.0)

    nearest, _, _ = search_alpha(trial, START, 0.01, 0.98)
    assert nearest.forget == 4 / 300
    kept, reason, tried = search_alpha(trial, START, 0.01, 0.98, ceiling=True)
    assert kept.forget == 0.0 and "the least dampened at the level" in reason
    assert kept.alpha == max(t.alpha for t in tried if t.forget <= 0.01)


def test_search_alpha_returns_the_model_as_handed_over_when_every_trial_damages_or_moves_nothing():
    damaged, reason, _ = search_alpha(_scripted(forget_below=1000.0, damage_below=1000.0), START, 0.01, 0.98)
    assert damaged is START and "kept the model as handed over" in reason
    unmoved, _, tried = search_alpha(_scripted(forget_below=0.5, damage_below=0.0), START, 0.01, 0.98)
    assert unmoved is START and tried[-1].alpha * 0.8 <= 1.0 < tried[-1].alpha  # walked down to the floor


def test_search_alpha_stops_its_walk_down_at_lambda():
    _, _, tried = search_alpha(_scripted(forget_below=0.5, damage_below=0.0), START, 0.01, 0.98, floor=4.0)
    assert min(t.alpha for t in tried) > 4.0 and min(t.alpha for t in tried) * 0.8 <= 4.0


def test_ssd_returns_a_tiny_random_forget_set_as_handed_over(digits_model, samples_views):
    """Under 25 random rows one flip overshoots the 2-point level by more than the original sits above it."""
    views = samples_views
    few = views.forget_set.subset(torch.arange(20))
    result = get_method("ssd").unlearn(digits_model, views.request, few, views.retain_set, recipe=RECIPE, seed=0)
    assert result.stats["selection_weighting"] is None and "one of 20 forget rows is 5.0 points" in \
        result.stats["stop_reason"]
    assert all(torch.equal(p, q) for p, q in zip(result.model.parameters(), digits_model.parameters(), strict=True))


def test_ssd_auto_keeps_the_paper_alpha_on_a_subclass_request(digits_super_model, subclass_views):
    views = subclass_views
    result = get_method("ssd").unlearn(digits_super_model, views.request, views.forget_set, views.retain_set,
                                       recipe=RECIPE, seed=0)
    assert result.stats["selection_weighting"] == 10.0
    assert "gives no forget accuracy to search for" in result.stats["stop_reason"]
    paper = get_method("ssd_paper").unlearn(digits_super_model, views.request, views.forget_set, views.retain_set,
                                            recipe=RECIPE, seed=0)
    for p, q in zip(result.model.parameters(), paper.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_boundary_shrink_relabels_to_the_nearest_wrong_class(digits_model, class_views):
    forget = class_views.forget_set
    bound = get_method("boundary_shrink").config.bound
    search = nearest_wrong_labels(digits_model, forget.inputs, forget.targets, bound=bound)
    # Every new label is a wrong class ...
    assert (search.labels != forget.targets).all()
    # ... the perturbation is an L-inf step of at most eps inside the data range ...
    eps = bound * float(forget.inputs.max() - forget.inputs.min())
    assert float((search.adversarial_inputs - forget.inputs).abs().max()) <= eps + 1e-6
    # ... and where the step crossed a boundary the label is the frozen model's argmax at x'.
    perturbed = forget.subset(torch.arange(len(forget)), inputs=search.adversarial_inputs)
    adv_pred = predict_logits(digits_model, perturbed).argmax(1)
    assert torch.equal(adv_pred, search.adversarial_prediction)
    crossed = search.crossed
    assert 0 < crossed.float().mean() and torch.equal(search.labels[crossed], adv_pred[crossed])
    # Elsewhere (failed step) it is the highest-scoring wrong class at x'; the official "keep" policy
    # instead leaves the argmax (= the true label) there.
    keep = nearest_wrong_labels(digits_model, forget.inputs, forget.targets, bound=bound, on_failure="keep")
    assert torch.equal(keep.labels, adv_pred) and torch.equal(keep.labels[~crossed], forget.targets[~crossed])
    # Fine-tuning really moves the forget samples onto those labels.
    result = get_method("boundary_shrink").unlearn(digits_model, class_views.request, forget, recipe=RECIPE)
    moved = predict_logits(result.model, forget).argmax(1)
    assert (moved == search.labels).float().mean() > 0.5
    assert result.stats["attack_success"] == pytest.approx(float(crossed.float().mean()))


def _kl(p_logits, q_logits):
    """Mean KL(softmax(p) || softmax(q)) per sample."""
    return float(F.kl_div(F.log_softmax(q_logits, 1), F.softmax(p_logits, 1), reduction="batchmean"))


def test_bad_teacher_student_follows_the_random_teacher_on_forget_data(digits_model, class_views, class_runs):
    student, _ = class_runs["bad_teacher"]
    bad = incompetent_teacher(digits_model, seed=0)
    forget, retain = class_views.forget_set, class_views.retain_set
    s, b, g = (predict_logits(m, forget) for m in (student, bad, digits_model))
    # On forget samples the student is closer to the incompetent teacher than to the competent one,
    # and much closer to it than the original model was.
    assert _kl(b, s) < _kl(g, s)
    assert _kl(b, s) < 0.5 * _kl(b, g)
    # On retain samples it still follows the competent teacher.
    s_r, b_r, g_r = (predict_logits(m, retain) for m in (student, bad, digits_model))
    assert _kl(g_r, s_r) < 0.1 * _kl(b_r, s_r)


def test_bad_teacher_takes_the_papers_single_pass_on_a_samples_request(digits, digits_model, class_runs):
    """The step floor (``min_steps``) serves class requests; on a random 1% (13 rows) it used to distil the same
    rows for 15 passes and push them past unseen data (tests/test_guard.py keeps that run as the goal check's
    case). The default now takes one pass, and the goal check finds nothing to say."""
    from excise.metrics import EvalViews

    views = EvalViews.from_bundle(digits, ForgetRequest(kind="samples", fraction=0.01, seed=0))
    result = get_method("bad_teacher").unlearn(digits_model, views.request, views.forget_set, views.retain_set,
                                               recipe=RECIPE, seed=0, guard=COMPARE_GUARD,
                                               guard_set=views.test_retain)
    rows = len(views.forget_set) + int(0.3 * len(views.retain_set))
    assert result.stats["passes"] == 1 and result.stats["steps"] == -(-rows // RECIPE.batch_size)
    assert result.stats["guard"]["goal"]["checked"] and result.stats["guard"]["further_from_goal"] is False
    assert class_runs["bad_teacher"][1].stats["steps"] >= 100  # the class request keeps its floor


def test_bad_teacher_keeps_its_step_floor_on_a_subclass_request(digits_super_model, subclass_views):
    """A sub-class is forgotten whole, like a class: the floor that lets the student move on small data stays."""
    result = get_method("bad_teacher").unlearn(digits_super_model, subclass_views.request, subclass_views.forget_set,
                                               subclass_views.retain_set, recipe=RECIPE, seed=0, guard=COMPARE_GUARD)
    assert result.stats["steps"] >= 100 and result.stats["passes"] > 1


def test_bad_teacher_rebuilds_the_architecture_of_any_module(digits_model, class_views):
    teacher = incompetent_teacher(digits_model, seed=3)
    assert teacher.excise_spec == digits_model.excise_spec
    assert torch.equal(next(teacher.parameters()), next(incompetent_teacher(digits_model, seed=3).parameters()))
    assert not torch.equal(next(teacher.parameters()), next(digits_model.parameters()))
    # A model excise did not build (a plain conv + BatchNorm net): copied and re-initialised, every parameter
    # re-drawn, BatchNorm statistics reset, the same teacher for the same seed, the user's model untouched.
    torch.manual_seed(0)
    foreign = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                  torch.nn.Flatten(), torch.nn.Linear(4 * 64, 10))
    foreign[1].running_mean.fill_(0.5)
    with torch.no_grad():
        foreign[1].weight.fill_(2.0)  # as if trained: BatchNorm's affine parameters away from their 1 / 0 init
        foreign[1].bias.fill_(0.3)
    before = {k: v.clone() for k, v in foreign.state_dict().items()}
    bad = incompetent_teacher(foreign, seed=3)
    assert all(not torch.equal(new, old) for new, old in zip(bad.parameters(), foreign.parameters(), strict=True))
    assert torch.equal(bad[1].running_mean, torch.zeros(4)) and not bad.training
    assert all(torch.equal(a, b) for a, b in zip(bad.parameters(), incompetent_teacher(foreign, seed=3).parameters(),
                                                  strict=True))
    assert all(torch.equal(v, before[k]) for k, v in foreign.state_dict().items())
    result = get_method("bad_teacher").unlearn(foreign, class_views.request, class_views.forget_set,
                                               class_views.retain_set)
    assert result.stats["steps"] > 0

    class Positional(torch.nn.Module):  # a bare parameter no reset_parameters() re-draws
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(64))
            self.head = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.head(x.flatten(1) + self.table)

    with pytest.raises(ValueError, match=r"\['table'\]"):
        get_method("bad_teacher").unlearn(Positional(), class_views.request, class_views.forget_set,
                                          class_views.retain_set)


def test_jit_lowers_the_local_lipschitz_ratio_on_forget_samples(digits_model, class_views, class_runs):
    model, _ = class_runs["jit"]
    _, sigma_abs = resolve_sigma(None, "class", class_views.forget_set.inputs)

    def change(inputs):
        # Fresh noise draws (seed 1), not the ones the method trained on.
        before = local_lipschitz(digits_model, inputs, sigma_abs=sigma_abs, seed=1)
        after = local_lipschitz(model, inputs, sigma_abs=sigma_abs, seed=1)
        return float(after.mean() / before.mean()), float((after < before).float().mean())

    forget_ratio, forget_down = change(class_views.forget_set.inputs)
    retain_ratio, _ = change(class_views.retain_set.inputs)
    # The estimated local Lipschitz constant falls on (almost every) forget sample ...
    assert forget_ratio < 0.97 and forget_down > 0.75
    # ... and it is a local smoothing: on retain samples it does not fall as much.
    assert retain_ratio > forget_ratio + 0.03


# --- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ssd", {"selection_weighting": 0}, "selection_weighting=0 must be a finite number > 0 or 'auto'"),
        ("ssd", {"selection_weighting": "automatic"}, "selection_weighting='automatic' must be a finite number > 0"),
        ("ssd", {"class_stop_accuracy": None}, "class_stop_accuracy=None must be a number in"),
        ("ssd_paper", {"selection_weighting": "auto"}, "ssd_paper keeps a fixed alpha"),
        ("ssd", {"max_accuracy_drop": 1.5}, "max_accuracy_drop=1.5 must be a number in"),
        ("ssd", {"importance": "exact"}, "importance='exact' is not one of"),
        ("boundary_shrink", {"on_failure": "skip"}, "on_failure='skip' is not one of"),
        ("boundary_shrink", {"bound": 0.0}, "bound=0.0 must be > 0"),
        ("bad_teacher", {"retain_fraction": 1.5}, r"retain_fraction=1.5 must lie in \(0, 1\]"),
        ("bad_teacher", {"bn_mode": "frozen"}, "bn_mode='frozen' is not one of"),
        ("jit", {"sigma": -1.0}, "sigma=-1.0 must be a number > 0"),
        ("jit", {"n_samples": 0}, "n_samples=0 must be a positive integer"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_method(name, **options)


def test_caller_model_is_not_modified_by_in_place_dampening(digits_model, class_views):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    get_method("ssd").unlearn(digits_model, class_views.request, class_views.forget_set, class_views.retain_set)
    for key, value in digits_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_create_model_is_the_teacher_factory():
    model = create_model("small_cnn", width=4)
    assert incompetent_teacher(model, seed=0).excise_spec == {"name": "small_cnn", "kwargs": {"width": 4}}
