"""The robustness zoo's verdicts (benchmarks/zoo.py, issue 19): what counts as harm, what excuses it, and the
retrained twin that sets the gap's noise floor. The zoo itself takes most of an hour; its summary is judged here
on hand-made result rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture
def zoo(monkeypatch):
    # The script sets two environment defaults and puts benchmarks/ on sys.path when imported: both undone after.
    monkeypatch.setenv("EXCISE_PROGRESS", "0")
    monkeypatch.setenv("EXCISE_TRUSTED_MODULES", "zoo_models")
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"
    spec = importlib.util.spec_from_file_location("zoo_under_test", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "zoo_under_test", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row(method, seed, gap, *, original_gap=2.0, ra=99.0, guard=None, kind="random-1"):
    metrics = {"FA": 100.0, "RA": ra, "TA": 98.0, "MIA": 10.0}
    row = {"setting": "digits-cnn16-sgd", "request": kind, "seed": seed, "method": method, "gap": gap,
           "original_gap": original_gap + 0.1 * seed, "original": {**metrics, "RA": 99.0}, "retrain": metrics,
           "metrics": metrics, "speedup": 10.0, "seconds": 0.1}
    if method != "retrain (twin)":
        row["said_so"] = guard is not None and bool(guard.get("fired") or guard.get("further_from_goal"))
        row["stats"] = {"guard": guard or {"fired": False}}
    return row


def test_harm_is_a_worse_gap_the_result_did_not_flag_and_the_twin_is_the_noise_floor(zoo, tmp_path):
    assert zoo.said_so({"guard": {"fired": False, "further_from_goal": True}})
    assert not zoo.said_so({"guard": {"fired": False, "further_from_goal": False, "forgot_nothing": False}})
    for finding in ("incomplete", "hidden_in_statistics", "unchanged"):  # said: none of these is certified
        assert zoo.said_so({"guard": {"fired": False, finding: True}})
    rows = [_row("retrain (twin)", s, 1.5) for s in range(3)]
    rows += [_row("pusher", s, 6.0) for s in range(3)]  # worse than doing nothing, silently
    rows += [_row("flagged", s, 6.0, guard={"fired": False, "further_from_goal": True}) for s in range(3)]
    # Flagged on two seeds of three: a flag on one seed does not excuse the others.
    rows += [_row("sometimes", s, 6.0, guard={"fired": False, "further_from_goal": s > 0}) for s in range(3)]
    rows += [_row("close", s, 1.2) for s in range(3)]
    rows += [_row("better", s, 1.8) for s in range(3)]  # beats doing nothing, not as close as a second retrain
    rows += [_row("idle", s, 2.0 + 0.1 * s) for s in range(3)]  # the original's own gap: changed nothing
    # Rolled back on one seed (its gap there is the original's): counted, and the other seeds still judged.
    rows += [_row("rolled", s, 2.0 + 0.1 * s if s == 0 else 1.9,
                  guard={"fired": s == 0, "rolled_back": s == 0}) for s in range(3)]
    cells = zoo.summarise(rows)
    assert cells["digits-cnn16-sgd|random-1|retrain (twin)"] == {
        "setting": "digits-cnn16-sgd", "request": "random-1", "method": "retrain (twin)", "seeds": 3, "gap": 1.5}
    verdict = {name: cells[f"digits-cnn16-sgd|random-1|{name}"]
               for name in ("pusher", "flagged", "sometimes", "close", "better")}
    assert verdict["pusher"]["harm"] and not verdict["pusher"]["said_so"] and not verdict["pusher"]["as_retrain"]
    assert not verdict["flagged"]["harm"] and verdict["flagged"]["said_so"]
    assert verdict["sometimes"]["harm"]
    assert verdict["close"]["as_retrain"] and verdict["close"]["beat_nothing"] and not verdict["close"]["harm"]
    assert verdict["better"]["beat_nothing"] and verdict["better"]["as_retrain"] is False
    from rich.console import Console

    with (tmp_path / "console.txt").open("w") as printed:
        zoo.print_summary(cells, Console(file=printed), tmp_path)
    table = (tmp_path / "zoo.md").read_text()
    assert "| retrain (twin) | 1.50 |" in table and "| `close` | 1 | 1 | 1 | 1 | 0 | 0 | 1/1 | 0/3 |" in table
    idle = cells["digits-cnn16-sgd|random-1|idle"]
    assert not idle["forgot"] and not idle["beat_nothing"] and not idle["harm"]  # doing nothing is not forgetting
    rolled = cells["digits-cnn16-sgd|random-1|rolled"]
    assert rolled["rolled_back"] == 1 and not rolled["said_so"] and not rolled["harm"]
    assert "| `rolled` | 1 | 1 | 1 | 1 | 0 | 0 | 0/1 | 1/3 |" in table


def test_other_class_forgets_a_different_class_per_seed_never_the_fixed_one_and_is_judged_as_a_class(zoo):
    setting = zoo.SETTINGS["animal-cnn16-adam"]
    classes = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
    drawn = [zoo.request_for(setting, "other-class", seed, classes) for seed in range(3)]
    assert all(request.kind == "class" for request in drawn)
    labels = [request.labels[0] for request in drawn]
    assert len(set(labels)) == 3 and setting.forget_class not in labels
    assert labels == [zoo.request_for(setting, "other-class", seed, classes).labels[0] for seed in range(3)]
    # "forgot" on a class request is FA near retrain's, not a smaller gap: a run at FA 95 against retrain's 0 with
    # a gap under the original's did not forget.
    row = _row("m", 0, 30.0, original_gap=50.0, kind="other-class")
    row["metrics"] = {**row["metrics"], "FA": 95.0}
    row["retrain"] = {**row["retrain"], "FA": 0.0}
    cell = zoo.summarise([row])["digits-cnn16-sgd|other-class|m"]
    assert cell["beat_nothing"] and not cell["forgot"]


def test_a_class_forgotten_only_in_the_batchnorm_statistics_is_not_forgotten(zoo):
    def row(method, seed, refit):
        out = _row(method, seed, 0.5, original_gap=50.0, kind="class")
        out["retrain"] = {**out["retrain"], "FA": 0.0, "FA_bn_refit": 0.0}
        out["metrics"] = {**out["metrics"], "FA": 0.0, "FA_bn_refit": refit}
        return out

    rows = [row("in_weights", s, 1.0) for s in range(3)] + [row("in_statistics", s, 100.0) for s in range(3)]
    cells = zoo.summarise(rows)
    assert cells["digits-cnn16-sgd|class|in_weights"]["forgot"]
    assert not cells["digits-cnn16-sgd|class|in_statistics"]["forgot"]
    assert cells["digits-cnn16-sgd|class|in_statistics"]["FA_bn_refit"] == 100.0
