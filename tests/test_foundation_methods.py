"""The reference and the first baselines on the shared digits fixtures: real forgetting, measured."""

import pytest
import torch

from excise.experiment import evaluate_original, run_method, train_original
from excise.methods import COMPARE_GUARD, RetainAccessError, UnlearnData, get_method, list_methods
from excise.metrics import EvalViews, avg_gap
from excise.requests import ForgetRequest, RequestError
from excise.training import TrainConfig

from .conftest import RECIPE


def test_retrained_model_forgets_the_class_and_keeps_the_rest(class_reference, digits_model, class_views):
    original = evaluate_original(digits_model, class_views)
    assert original.metrics["FA"] > 95  # the original model knows class 3
    assert class_reference.metrics["FA"] < 2  # the retrained model never saw it
    assert class_reference.metrics["RA"] > 97
    assert class_reference.metrics["TA"] > 95


def test_a_retrained_twin_is_another_draw_of_the_reference_and_sets_the_noise_floor(
        digits_model, samples_views, samples_reference):
    """``seed_offset`` retrains the same retain set with another seed: other weights, and a gap to the reference
    that is the gap's noise floor — on this fixture smaller than doing nothing's (measured here: 0.19 against the
    original's 1.35; offsets 1 and 7 gave 0.06 and 0.37). Offset 0 is the reference."""
    twin_model, twin = run_method(get_method("retrain", seed_offset=1000), digits_model, samples_views, RECIPE, seed=0,
                                  reference=samples_reference)
    same_model, same = run_method("retrain", digits_model, samples_views, RECIPE, seed=0, reference=samples_reference)
    assert same.avg_gap == 0.0 and twin.avg_gap > 0.0
    assert not all(torch.equal(a, b) for a, b in zip(twin_model.state_dict().values(),
                                                     same_model.state_dict().values(), strict=True))
    assert twin.avg_gap < avg_gap(evaluate_original(digits_model, samples_views).metrics, samples_reference.metrics)
    for bad in (-1, 1.5, True, 2**64):
        with pytest.raises(ValueError, match=r"seed_offset=.* must be an integer in \[0, 2\*\*31\)"):
            get_method("retrain", seed_offset=bad)


def test_gradient_ascent_lowers_forget_accuracy(digits_model, class_views, class_reference):
    original = evaluate_original(digits_model, class_views).metrics
    # Kept whatever the guard finds: at its defaults it costs this fixture more than 5 held-out points (rolled back
    # by default, tests/test_guard.py); this test judges the method.
    _, record = run_method("gradient_ascent", digits_model, class_views, RECIPE, seed=0, reference=class_reference,
                           guard=COMPARE_GUARD)
    assert record.metrics["FA"] < original["FA"] - 50
    # Closer to the retrained model than the untouched original is.
    assert record.avg_gap < avg_gap(original, class_reference.metrics)


def test_random_labels_and_finetune_run_against_the_reference(digits_model, class_views, class_reference):
    _, rl = run_method("random_labels", digits_model, class_views, RECIPE, seed=0, reference=class_reference)
    assert rl.metrics["FA"] < 50 and rl.metrics["RA"] > 90
    _, ft = run_method("finetune", digits_model, class_views, RECIPE, seed=0, reference=class_reference)
    assert ft.metrics["RA"] > 97
    assert ft.speedup > 0


def test_caller_model_is_never_modified(digits_model, class_views):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    run_method("gradient_ascent", digits_model, class_views, RECIPE, seed=0)
    for key, value in digits_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_forget_only_methods_receive_no_retain_data(digits_model, class_views):
    method = get_method("gradient_ascent")
    seen = {}

    original = method._unlearn

    def spy(model, data: UnlearnData, seed):
        seen["data"] = data
        return original(model, data, seed)

    method._unlearn = spy
    method.unlearn(digits_model, class_views.request, class_views.forget_set, class_views.retain_set)
    with pytest.raises(RetainAccessError, match="forget-only"):
        _ = seen["data"].retain_set


def test_method_refuses_requests_it_cannot_serve(digits_model, class_views):
    with pytest.raises(RequestError, match="method 'finetune' cannot serve kind='target'"):
        get_method("finetune").unlearn(
            digits_model, ForgetRequest(kind="target", labels=("1",)), class_views.forget_set, class_views.retain_set
        )


def test_bad_hyperparameters_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown 'gradient_ascent' method option\(s\) \['learning_rate'\]"):
        get_method("gradient_ascent", learning_rate=0.1)
    with pytest.raises(ValueError, match="epochs=0 must be a positive integer"):
        get_method("gradient_ascent", epochs=0)
    with pytest.raises(ValueError, match="method='nope' is not registered"):
        get_method("nope")


def test_registry_has_the_first_methods():
    assert {"retrain", "finetune", "gradient_ascent", "random_labels"} <= set(list_methods())


def test_same_seed_gives_same_metrics(digits):
    def run():
        model, _ = train_original(digits, "small_cnn", TrainConfig(epochs=3, batch_size=64, lr=0.05), seed=5, width=8)
        views = EvalViews.from_bundle(digits, ForgetRequest(kind="class", labels=(3,)))
        _, record = run_method("gradient_ascent", model, views, RECIPE, seed=5)
        return record.metrics

    assert run() == run()
