"""U-LiRA: the per-example likelihood-ratio statistics, then the shadow-model protocol on digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from typer.testing import CliRunner

from excise.bench.ulira import ORIGINAL, ULiraConfig, run_ulira
from excise.cli import app
from excise.data import load_dataset
from excise.metrics.lira import (
    attack_result,
    balanced_assignment,
    leave_one_out_scores,
    likelihood_ratio,
    logit_scaled_confidence,
    null_auc_band,
)
from excise.training import TrainConfig

# Small convolutions gain nothing from a second thread, and spinning OpenMP threads on a shared machine
# multiply the wall time.
pytestmark = pytest.mark.usefixtures("one_thread")


# --- statistics ------------------------------------------------------------------------------------
def test_logit_scaled_confidence_is_the_log_odds_of_the_true_class_and_stays_finite():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [60.0, -60.0, 0.0]])
    labels = torch.tensor([0, 2, 0])
    phi = logit_scaled_confidence(logits, labels)
    probs = torch.softmax(logits.double(), dim=1)
    for row in range(2):
        p = probs[row, labels[row]]
        assert phi[row].item() == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    # p_y rounds to 1 in float64 here, so log(p / (1 - p)) would be inf; the logit form gives ~60.
    assert phi[2].item() == pytest.approx(60.0, abs=1e-6)
    with pytest.raises(ValueError, match="logits must be"):
        logit_scaled_confidence(logits, labels[:2])


def test_balanced_assignment_puts_every_example_in_exactly_half_of_the_models():
    member = balanced_assignment(8, 50, seed=3)
    assert member.shape == (8, 50)
    assert (member.sum(axis=0) == 4).all()
    assert len({tuple(column) for column in member.T}) > 10  # columns drawn independently, not one pattern
    assert (balanced_assignment(8, 50, seed=3) == member).all()
    for bad in (3, 4, 7):
        with pytest.raises(ValueError, match="even number >= 6"):
            balanced_assignment(bad, 5, seed=0)


def _null_and_shift(num_models: int, examples: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """phi with a per-example level (sd 3) plus model noise (sd 1), moved by ``shift`` where "in"."""
    rng = np.random.default_rng(seed)
    member = balanced_assignment(num_models, examples, seed)
    phi = 3 * rng.normal(size=(1, examples)) + rng.normal(size=(num_models, examples)) + shift * member
    return phi, member


def test_leave_one_out_is_unbiased_when_there_is_nothing_to_detect():
    """Left alone, the target's own group is one shadow short and the score leans away from it: AUC 0.475 on
    average over these draws (0.44 measured on retrained digits models). Equalising the groups removes it."""
    aucs = []
    for seed in range(10):
        phi, member = _null_and_shift(8, 200, 0.0, seed)
        aucs.append(attack_result(leave_one_out_scores(phi, member), member).auc)
    assert abs(np.mean(aucs) - 0.5) < 0.01


@pytest.mark.parametrize("variance", ["global", "per_example"])
def test_the_likelihood_ratio_finds_a_known_shift(variance):
    # Two Gaussians one sd apart: the best possible AUC is Phi(1 / sqrt 2) = 0.760; fitted from 31 shadows
    # the attack gets close to it, and well above chance.
    phi, member = _null_and_shift(32, 300, 1.0, seed=0)
    auc = attack_result(leave_one_out_scores(phi, member, variance), member).auc
    assert 0.70 < auc <= norm.cdf(1 / math.sqrt(2)) + 0.01


def test_auto_variance_follows_the_number_of_models_of_the_run():
    # Carlini et al.'s switch at 64 models: the run's K decides, not the K - 1 models fitting each score.
    for models, expected in ((62, "global"), (64, "per_example")):
        phi, member = _null_and_shift(models, 40, 0.5, seed=1)
        assert np.array_equal(leave_one_out_scores(phi, member, "auto"), leave_one_out_scores(phi, member, expected))
    assert not np.array_equal(leave_one_out_scores(phi, member, "global"),
                              leave_one_out_scores(phi, member, "per_example"))


def test_leave_one_out_is_unbiased_for_unbalanced_membership_too():
    """Random (Bernoulli) membership: the target's group can be the larger one among the others; both are cut
    to the smaller. Without that, 0.512 on average (measured)."""
    rng = np.random.default_rng(7)
    aucs = []
    while len(aucs) < 40:
        member = rng.random((16, 100)) < 0.5
        phi = 3 * rng.normal(size=(1, 100)) + rng.normal(size=(16, 100))
        try:
            aucs.append(attack_result(leave_one_out_scores(phi, member), member).auc)
        except ValueError:  # an example left with no model on one side: draw again
            continue
    assert abs(np.mean(aucs) - 0.5) < 0.006


def test_the_null_band_covers_chance_and_a_real_signal_lies_outside_it():
    phi, member = _null_and_shift(16, 150, 0.0, seed=2)
    low, high = null_auc_band(phi, draws=60)
    assert low < 0.5 < high and high - low < 0.1
    shifted, member = _null_and_shift(16, 150, 0.8, seed=2)
    assert attack_result(leave_one_out_scores(shifted, member), member).auc > high


def test_likelihood_ratio_needs_both_hypotheses_for_every_example():
    phi = np.zeros((4, 2))
    member = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=bool)  # example 0 is never out
    with pytest.raises(ValueError, match="fewest are 2 in and 0 out"):
        likelihood_ratio(np.zeros(2), phi, member, "global")
    with pytest.raises(ValueError, match="variance='median'"):
        likelihood_ratio(np.zeros(2), phi, ~member, "median")
    with pytest.raises(ValueError, match=">= 6 models"):
        leave_one_out_scores(phi[:3], member[:3])


def test_attack_result_reads_tpr_at_low_fpr_only_where_it_can_be_resolved():
    negatives = -np.arange(1000.0)  # scores 0, -1, ..., -999
    positives = np.concatenate([np.full(300, 5.0), np.full(700, -500.5)])  # 30% above every negative
    member = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    result = attack_result(np.r_[positives, negatives], member)
    assert result.tpr_at_01pct_fpr == pytest.approx(30.0)
    assert result.tpr_at_1pct_fpr == pytest.approx(30.0)
    assert result.accuracy == pytest.approx(100 * 0.5 * (0.3 + 1.0))  # "in" iff log LR > 0: the 0 is "out"
    small = attack_result(np.r_[positives[:50], negatives[:50]], member[950:1050])
    assert small.tpr_at_1pct_fpr is None and small.tpr_at_01pct_fpr is None  # 50 negatives: FPR 1% unresolvable
    with pytest.raises(ValueError, match="both 'in' and 'out'"):
        attack_result(np.zeros(3), np.ones(3, bool))


# --- the protocol ----------------------------------------------------------------------------------
# Half of digits for training (898 images) and 30 epochs: a model that memorises enough for the original
# row to show a membership signal (AUC 0.70 measured) that unlearning has to remove.
SHADOW_RECIPE = TrainConfig(epochs=30, batch_size=64, lr=0.05)
SHADOW_CONFIG = ULiraConfig(num_shadows=8, pool=0.5, seed=0)


@pytest.fixture(scope="module")
def half_digits():
    return load_dataset("digits", seed=0, test_fraction=0.5)


@pytest.fixture(scope="module")
def shadow_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ulira_cache")


@pytest.fixture(scope="module")
def report(half_digits, shadow_cache):
    return run_ulira(half_digits, "small_cnn", SHADOW_RECIPE, ["retrain", "finetune"], SHADOW_CONFIG,
                     model_kwargs={"width": 16}, cache_dir=shadow_cache)


def test_retrain_is_at_chance_and_the_original_is_not(report):
    original, retrain = report.row(ORIGINAL).attack, report.row("retrain").attack
    assert original.auc >= 0.62, "the shadows memorise too little for the attack to mean anything"
    assert abs(retrain.auc - 0.5) <= 0.05
    assert abs(retrain.accuracy - 50) <= 5
    assert original.auc - retrain.auc >= 0.1
    assert report.row(ORIGINAL).forget_accuracy > report.row("retrain").forget_accuracy
    assert report.row("retrain").test_accuracy >= 90  # chance here is earned, not the model destroyed


def test_the_report_records_what_produced_it(report, half_digits):
    assert [row.method for row in report.rows] == [ORIGINAL, "retrain", "finetune"]
    assert report.pool_size == round(0.5 * len(half_digits.train)) and report.train_size == len(half_digits.train)
    assert len(set(report.pool_indices)) == report.pool_size
    assert all(len(row.per_example_auc) == report.pool_size for row in report.rows)
    attack = report.row("finetune").attack
    assert attack.positives == attack.negatives == 8 * report.pool_size // 2
    record = json.loads(json.dumps(report.to_dict()))
    assert record["config"]["ulira"] == {"num_shadows": 8, "pool": 0.5, "variance": "auto", "seed": 0}
    assert record["config"]["methods"]["finetune"]  # the resolved hyper-parameters
    assert record["versions"]["torch"] == torch.__version__


def test_cached_shadows_give_the_same_original_row(report, half_digits, shadow_cache):
    again = run_ulira(half_digits, "small_cnn", SHADOW_RECIPE, [], SHADOW_CONFIG, model_kwargs={"width": 16},
                      cache_dir=shadow_cache)
    assert again.shadow_cache_hits == 8 and report.shadow_cache_hits == 0
    assert again.row(ORIGINAL).attack == report.row(ORIGINAL).attack


def test_bad_requests_are_refused_before_any_training(half_digits):
    with pytest.raises(ValueError, match="'essential_graph' does not serve 'samples' requests"):
        run_ulira(half_digits, "small_cnn", SHADOW_RECIPE, ["essential_graph"], SHADOW_CONFIG)
    with pytest.raises(ValueError, match="'original' is always reported"):
        run_ulira(half_digits, "small_cnn", SHADOW_RECIPE, ["original"], SHADOW_CONFIG)
    with pytest.raises(ValueError, match=r"methods listed twice: \['finetune'\]"):
        run_ulira(half_digits, "small_cnn", SHADOW_RECIPE, ["finetune", "finetune"], SHADOW_CONFIG)
    with pytest.raises(ValueError, match="needs a single-label"):
        run_ulira(load_dataset("multidigits", seed=0), "small_cnn", SHADOW_RECIPE, [], SHADOW_CONFIG)
    for bad in (4, 5):
        with pytest.raises(ValueError, match=f"num_shadows={bad} must be an even integer >= 6"):
            ULiraConfig(num_shadows=bad)
    with pytest.raises(ValueError, match=r"pool=1.0 must be a share of the training set in \(0, 1\)"):
        ULiraConfig(pool=1.0)
    with pytest.raises(ValueError, match="variance='median'"):
        ULiraConfig(variance="median")


# --- command line ----------------------------------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(app, ["--quiet", "ulira", *map(str, args)])


def test_cli_writes_the_report_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "ulira.json"
    args = ("--methods", "retrain,finetune", "--param", "finetune.epochs=1", "--shadows", 6, "--pool", 0.1,
            "--epochs", 2, "--width", 4, "--out", out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "U-LiRA on digits" in result.output and "retrain" in result.output
    record = json.loads(out.read_text())
    assert [row["method"] for row in record["rows"]] == ["original", "retrain", "finetune"]
    assert record["config"]["methods"]["finetune"]["epochs"] == 1
    low, high = record["null_auc_band"]
    assert low < 0.5 < high and "noise: retrain's AUC under random membership" in " ".join(result.output.split())
    assert record["config"]["data"]["name"] == "digits" and record["config"]["data"]["fingerprint"]
    before = out.read_bytes()
    result = invoke(*args)
    assert result.exit_code == 2 and "exists; refusing to overwrite it" in result.output
    assert out.read_bytes() == before


@pytest.mark.parametrize(("args", "message"), [
    (("--methods", "essential_graph"), "does not serve 'samples' requests"),
    (("--methods", "nope"), "nope"),
    (("--shadows", 3), "num_shadows=3"),
    (("--dataset", "multidigits"), "needs a single-label"),
    (("--out", "report.txt"), "must end in .json"),
    (("--width", 4, "--model-option", "width=8"), "both set the width"),
    (("--methods", "retrain", "--param", "imu.lr_scale=2"), "expected METHOD.key=value with METHOD one of"),
    (("--methods", "finetune", "--param", "finetune.nope=2"), "nope"),
])
def test_cli_refuses_bad_input_with_the_field_named(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


# --- as a bench-suite option -----------------------------------------------------------------------
ULIRA_SUITE = {
    "suite": "ulira-tiny",
    "seeds": [0],
    "dataset": "digits",
    "model": {"name": "small_cnn", "width": 8},
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "methods": ["finetune"],
    "scenarios": [
        {"name": "random-10", "request": {"kind": "samples", "fraction": 0.1}, "ulira": {"shadows": 6}},
        {"name": "class-3", "request": {"kind": "class", "labels": [3]}},
    ],
}


def test_a_suite_scenario_reports_ulira_for_every_cell_against_chance(tmp_path):
    import json

    from excise.bench import parse_suite, read_records, run_suite
    from excise.bench.report import build_report

    suite = parse_suite(ULIRA_SUITE, "ulira.yaml")
    assert "ulira" not in suite.scenario("class-3").to_dict()  # existing scenarios keep their cell hashes
    summary = run_suite(suite, tmp_path / "run")
    records = {(r["scenario"], r["method"]): r for r in read_records(summary.results_path)}
    assert all(r["status"] == "ok" and "ulira_error" not in r for r in records.values())
    for method in ("original", "retrain", "finetune"):
        block = records[("random-10", method)]["metrics"]["MIA:ulira_auc"]
        assert 0 <= block["value"] <= 100 and block["reference"] == 50.0  # exact unlearning's value: chance
        assert block["gap"] == pytest.approx(abs(block["value"] - 50)) and "U-LiRA" in block["direction"]
    assert records[("random-10", "retrain")]["metrics"]["MIA:ulira_tpr@1%fpr"]["reference"] == 1.0
    # Every cell of the group reads its AUC beside retrain's null band: the noise of this many shadows and rows.
    band = records[("random-10", "retrain")]["ulira_null_band"]
    assert len(band) == 2 and 0 <= band[0] < 50 < band[1] <= 100
    assert all(records[("random-10", m)]["ulira_null_band"] == band for m in ("original", "finetune"))
    assert "ulira_null_band" not in records[("class-3", "finetune")]
    assert "MIA:ulira_auc" not in records[("class-3", "finetune")]["metrics"]
    report = build_report(summary.results_path, tmp_path / "report")
    assert "ulira_auc" in report.markdown.read_text()
    assert "ulira_auc noise band (central 95%" in report.markdown.read_text()
    assert f"seed 0: {band[0]:.1f}-{band[1]:.1f}" in report.markdown.read_text()
    # Retrain's attack (a retraining per shadow) is kept as a row in the cache: a new run of the suite into
    # another directory with the same cache reads it back, with the shadows.
    rows = list((tmp_path / "run" / "cache").glob("ulira_row-*.json"))
    assert len(rows) == 1 and json.loads(rows[0].read_text())["null_band"] == band
    again = run_suite(suite, tmp_path / "again", cache_dir=tmp_path / "run" / "cache")
    second = {(r["scenario"], r["method"]): r for r in read_records(again.results_path)}
    for method in ("original", "retrain", "finetune"):
        assert (second[("random-10", method)]["metrics"]["MIA:ulira_auc"]["value"]
                == records[("random-10", method)]["metrics"]["MIA:ulira_auc"]["value"])
        assert second[("random-10", method)]["ulira_null_band"] == band  # the cached row keeps its band
    # A row cached by older code, without a band, is read for its numbers only where no band is asked for; the
    # runner asks, so it is computed again and the file rewritten with the band.
    older = json.loads(rows[0].read_text())
    del older["null_band"]
    rows[0].write_text(json.dumps(older))
    third = run_suite(suite, tmp_path / "third", cache_dir=tmp_path / "run" / "cache")
    assert all(r["ulira_null_band"] == band for r in read_records(third.results_path) if r["scenario"] == "random-10")
    assert json.loads(rows[0].read_text())["null_band"] == band


def test_a_failing_attack_costs_the_cell_its_ulira_numbers_only(tmp_path, monkeypatch):
    from excise.bench import parse_suite, read_records, run_suite
    from excise.bench.ulira import ULiraShadows

    original_attack = ULiraShadows.attack

    def attack(self, method, *, reuse=False, band=False):
        if method is not None and method.name == "finetune":
            raise ValueError("phi holds non-finite values")
        return original_attack(self, method, reuse=reuse, band=band)

    monkeypatch.setattr(ULiraShadows, "attack", attack)
    spec = {**ULIRA_SUITE, "scenarios": ULIRA_SUITE["scenarios"][:1]}
    summary = run_suite(parse_suite(spec, "u.yaml"), tmp_path)
    records = {r["method"]: r for r in read_records(summary.results_path)}
    finetune = records["finetune"]
    assert finetune["status"] == "ok" and finetune["ulira_error"] == "ValueError: phi holds non-finite values"
    assert "MIA:ulira_auc" not in finetune["metrics"] and "FA" in finetune["metrics"]
    assert "MIA:ulira_auc" in records["original"]["metrics"]


@pytest.mark.parametrize(("scenario", "message"), [
    ({"request": {"kind": "class", "labels": [3]}, "ulira": {}}, "needs a single request of kind 'samples'"),
    ({"request": {"kind": "samples", "fraction": 0.1}, "ulira": {"shadows": 4}}, "shadows=4 must be an even"),
    ({"request": {"kind": "samples", "fraction": 0.1}, "ulira": {"pool": 0.5}}, "unknown key(s) ['pool']"),
    ({"request": {"kind": "samples", "fraction": 0.1}, "ulira": {"variance": "x"}}, "variance='x'"),
])
def test_bad_ulira_options_are_refused_naming_the_key(scenario, message):
    from excise.bench import SuiteError, parse_suite

    spec = {**ULIRA_SUITE, "scenarios": [{"name": "s", **scenario}]}
    with pytest.raises(SuiteError) as info:
        parse_suite(spec, "u.yaml")
    assert "scenarios[0] (s).ulira" in str(info.value) and message in str(info.value)


def test_a_forget_set_of_half_the_data_is_refused_at_plan_time():
    from excise.bench import SuiteError, parse_suite
    from excise.bench.runner import plan

    spec = {**ULIRA_SUITE, "scenarios": [{"name": "s", "request": {"kind": "samples", "fraction": 0.5},
                                          "ulira": True}]}
    with pytest.raises(SuiteError, match=r"ulira: the request forgets 50% .* less than half"):
        plan(parse_suite(spec, "u.yaml"))


def test_the_shipped_ulira_suite_is_valid_and_plans():
    from pathlib import Path

    from excise.bench import load_suite
    from excise.bench.runner import plan

    suite = load_suite(Path(__file__).resolve().parents[1] / "benchmarks" / "suites" / "ulira.yaml")
    assert suite.scenarios[0].ulira is not None and suite.scenarios[0].ulira.shadows == 16
    plan(suite)  # loads the data and checks the request against it, trains nothing
