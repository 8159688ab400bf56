"""`excise bench`: suites validated on load, cells cached and resumable, every cell recorded, bad files refused."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from excise.bench import ResultStore, StoreError, SuiteError, load_suite, parse_suite, read_records, run_suite
from excise.bench.cache import ModelCache
from excise.bench.runner import plan
from excise.cli import app
from excise.methods import UnlearningMethod
from excise.methods import base as methods_base

SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"

# Tiny on purpose: width 8, 3 epochs — each model trains in well under a second.
TINY = {
    "suite": "tiny",
    "seeds": [0],
    "dataset": "digits",
    "model": {"name": "small_cnn", "width": 8},
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "methods": ["gradient_ascent", {"name": "finetune", "label": "finetune-1ep", "params": {"epochs": 1}}],
    "scenarios": [
        {"name": "class-3", "request": {"kind": "class", "labels": [3]}},
        {"name": "seq", "sequence": [{"kind": "class", "labels": [1]}, {"kind": "class", "labels": [4]}]},
    ],
    # These tests check what is recorded, not how stable an interval is across evaluation seeds: 10 attack fits
    # per interval instead of the default 40 save about a second per cell.
    "uncertainty": {"attack_refits": 10},
}
CELLS_PER_GROUP = 4  # original, retrain, two methods


def tiny(**changes) -> dict:
    spec = copy.deepcopy(TINY)
    spec.update(changes)
    return spec


def write_suite(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@dataclass
class Events:
    log: list[tuple[str, dict]]

    def __call__(self, event: str, info: dict) -> None:
        self.log.append((event, info))

    def of(self, event: str) -> list[dict]:
        return [info for e, info in self.log if e == event]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run of the tiny suite (shared by the read-only tests)."""
    out = tmp_path_factory.mktemp("bench")
    summary = run_suite(parse_suite(TINY), out / "run")
    return summary, read_records(summary.results_path)


@pytest.fixture(scope="module")
def cache(finished) -> Path:
    """The model cache of the finished run: later runs of the same configuration train nothing."""
    return finished[0].results_path.parent / "cache"


# --- the runner --------------------------------------------------------------------------------
def test_every_cell_is_recorded_with_metrics_directions_times_and_hashes(finished):
    summary, records = finished
    assert summary.total == summary.ran == 2 * CELLS_PER_GROUP and not summary.failed
    assert {(r["scenario"], r["method"]) for r in records} == {
        (s, m) for s in ("class-3", "seq") for m in ("original", "retrain", "gradient_ascent", "finetune-1ep")}
    for r in records:
        assert r["status"] == "ok", r.get("error")
        assert set(r["hashes"]) >= {"data", "original", "reference", "unlearned"}
        assert r["versions"]["torch"] and r["config"]["scenario"]["training"]["epochs"] == 3
        for name, block in r["metrics"].items():
            assert block["direction"], name
            assert block["gap"] == pytest.approx(abs(block["value"] - block["reference"]))
        assert any(name.startswith("MIA:") for name in r["metrics"])
    by = {(r["scenario"], r["method"]): r for r in records}
    retrain = by[("class-3", "retrain")]
    assert retrain["avg_gap"] == 0 and retrain["speedup_vs_retrain"] == 1.0
    assert retrain["metrics"]["FA"]["value"] < 5  # the reference never saw class 3
    original = by[("class-3", "original")]
    assert original["metrics"]["FA"]["value"] > 80 and original["hashes"]["unlearned"] == original["hashes"]["original"]
    ga = by[("class-3", "gradient_ascent")]
    # The method really ran on the cached original: its model differs and it forgot part of class 3.
    assert ga["hashes"]["unlearned"] != ga["hashes"]["original"]
    assert ga["hashes"]["original"] == original["hashes"]["original"]
    assert ga["metrics"]["FA"]["value"] < original["metrics"]["FA"]["value"] - 10
    assert ga["time_s"] > 0 and ga["retrain_time_s"] > 0
    assert ga["speedup_vs_retrain"] == pytest.approx(ga["retrain_time_s"] / ga["time_s"])
    assert ga["floor_ratio"] == pytest.approx(ga["time_s"] / ga["forward_backward_s"])
    assert ga["peak_rss_mb"] > 10 and ga["peak_rss_delta_mb"] >= 0
    assert ga["config"]["method"]["resolved"]  # the method's full hyper-parameters, defaults included
    assert by[("class-3", "finetune-1ep")]["config"]["method"]["resolved"]["epochs"] == 1
    # Distances of the predictions to retrain's, with retrain itself at zero (so gap == value).
    for key in ("KL_ref:forget", "KL_ref:test", "W1_ref:test"):
        assert retrain["metrics"][key]["value"] == 0 and "lower is better" in ga["metrics"][key]["direction"]
    assert original["metrics"]["KL_ref:forget"]["value"] > ga["metrics"]["KL_ref:forget"]["value"] > 0
    # Bootstrap intervals (the suite's default: every metric, the headline MIA): each holds its value, and the
    # avg gap's is paired with the reference (retrain's is exactly 0) and keeps its replicates for the report.
    for r in records:
        for name in ("FA", "RA", "TA", "MIA"):
            low, high = r["metrics"][name]["interval"]
            assert low - 1e-9 <= r["metrics"][name]["value"] <= high + 1e-9, (r["method"], name)
        assert "interval" not in r["metrics"]["MIA:svc_prob"]  # only the headline variant by default
        assert len(r["avg_gap_replicates"]) == r["uncertainty"]["replicates"] == 200
    assert retrain["avg_gap_interval"] == [0.0, 0.0]
    low, high = original["avg_gap_interval"]
    assert 0 < low <= original["avg_gap"] <= high


def test_sequential_records_every_step_against_cumulative_references(finished):
    _, records = finished
    seq = {r["method"]: r for r in records if r["scenario"] == "seq"}
    for r in seq.values():
        assert [s["step"] for s in r["steps"]] == [0, 1]
        assert r["steps"][1]["forget_size"] > r["steps"][0]["forget_size"]  # cumulative views
        assert r["metrics"] == r["steps"][-1]["metrics"]
        assert len(set(r["hashes"]["references"])) == 2  # one retrained model per step
    ga = seq["gradient_ascent"]
    assert ga["steps"][1]["unlearned_size"] < ga["steps"][1]["forget_size"]  # step 2 unlearns only the new class
    # Every step runs under the comparison guard: what the method did is kept, whatever the guard found.
    assert [s["stats"]["guard"]["action"] for s in ga["steps"]] == ["warn", "warn"]
    assert ga["time_s"] == pytest.approx(sum(s["time_s"] for s in ga["steps"]))
    assert ga["retrain_time_s"] == pytest.approx(sum(s["retrain_time_s"] for s in ga["steps"]))
    assert seq["retrain"]["steps"][1]["metrics"]["FA"]["value"] < 5
    # The last step's unlearned model against the last reference (the earlier steps' models are not kept).
    assert ga["metrics"]["KL_ref:forget"]["value"] > 0 and "KL_ref:forget" not in ga["steps"][0]["metrics"]
    assert seq["original"]["steps"][0]["metrics"]["KL_ref:forget"]["value"] > 0


def test_results_load_with_pandas(finished):
    pd = pytest.importorskip("pandas")
    summary, records = finished
    frame = pd.read_json(summary.results_path, lines=True)
    assert len(frame) == len(records) and {"suite", "scenario", "method", "seed", "metrics"} <= set(frame.columns)


class _Interrupt(KeyboardInterrupt):
    pass


CLASS_ONLY = tiny(scenarios=TINY["scenarios"][:1])


def test_interrupted_run_resumes_without_redoing_finished_cells(tmp_path, cache):
    # A new results directory over the finished run's model cache: the cache is shared by content hash.
    suite = parse_suite(CLASS_ONLY)
    events = Events([])
    stop_after = 2

    def kill_after_two(event: str, info: dict) -> None:
        events(event, info)
        if event == "cell_done" and len(events.of("cell_done")) == stop_after:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        run_suite(suite, tmp_path / "out", cache_dir=cache, on_event=kill_after_two)
    assert events.of("train_original") == [] and events.of("train_reference") == []
    assert len(events.of("cache_hit")) == 2  # original and reference, read back and sha256-checked
    first = read_records(tmp_path / "out")
    assert len(first) == stop_after
    finished_cells = {(r["scenario"], r["method"]) for r in first}

    # A kill in the middle of writing the next record leaves a truncated line: tolerated, redone.
    results = tmp_path / "out" / "results.jsonl"
    with open(results, "a") as handle:
        handle.write('{"suite": "tiny", "scenario": "class-3", "meth')

    resumed = Events([])
    with pytest.warns(UserWarning, match="truncated last line"):
        summary = run_suite(suite, tmp_path / "out", cache_dir=cache, on_event=resumed)
    started = {(i["scenario"], i["method"]) for i in resumed.of("cell_start")}
    assert not started & finished_cells  # nothing finished is recomputed
    assert summary.reused == stop_after and summary.ran == CELLS_PER_GROUP - stop_after
    records = read_records(results)
    assert len(records) == CELLS_PER_GROUP
    assert len({(r["scenario"], r["method"], r["seed"]) for r in records}) == len(records)
    assert results.read_text().endswith("\n")

    # A third run finds everything done and does nothing at all.
    again = Events([])
    summary = run_suite(suite, tmp_path / "out", cache_dir=cache, on_event=again)
    assert summary.ran == 0 and again.of("cell_start") == [] and again.of("cache_hit") == []


def test_changed_suite_is_refused_or_exactly_its_changed_cells_rerun(finished, cache, tmp_path):
    summary, _ = finished
    changed = tiny(training={"epochs": 4, "batch_size": 64, "lr": 0.05})
    with pytest.raises(SuiteError, match="different configuration.*scenario='class-3'"):
        run_suite(parse_suite(changed), summary.results_path.parent)

    out = tmp_path / "out"
    run_suite(parse_suite(CLASS_ONLY), out, cache_dir=cache)
    methods = [TINY["methods"][0], {"name": "finetune", "label": "finetune-1ep", "params": {"epochs": 2}}]
    edited = tiny(scenarios=TINY["scenarios"][:1], methods=methods)
    with pytest.raises(SuiteError, match="1 cell.*method='finetune-1ep'.*--rerun-changed"):
        run_suite(parse_suite(edited), out, cache_dir=cache)
    events = Events([])
    run_suite(parse_suite(edited), out, cache_dir=cache, rerun_changed=True, on_event=events)
    assert [i["method"] for i in events.of("cell_start")] == ["finetune-1ep"]
    latest_ft = [r for r in read_records(out) if r["method"] == "finetune-1ep"][-1]
    assert latest_ft["config"]["method"]["resolved"]["epochs"] == 2


def test_records_of_other_code_are_refused_on_resume_or_recomputed(finished, cache, tmp_path, monkeypatch):
    """Same suite, but the code that computes the numbers changed since: resuming would mix two code versions
    in one table, so it is refused unless asked to recompute those cells."""
    import shutil

    import excise.bench.runner as runner_module

    summary, records = finished
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(summary.results_path, out / summary.results_path.name)
    monkeypatch.setattr(runner_module, "results_code_version", lambda: "e" * 64)
    with pytest.raises(SuiteError, match=r"computed by other code or on other data.*excise code \w+ vs eeee"):
        run_suite(parse_suite(TINY), out, cache_dir=cache)
    events = Events([])
    run_suite(parse_suite(TINY), out, cache_dir=cache, rerun_changed=True, on_event=events)
    recomputed = [r for r in records if r["status"] == "ok"]
    assert len(events.of("cell_start")) == len(recomputed) and not events.of("cell_reused")
    run_suite(parse_suite(TINY), out, cache_dir=cache, on_event=(again := Events([])))  # now current: all reused
    assert not again.of("cell_start")


def test_the_run_table_covers_only_the_suites_current_cells(finished, cache, tmp_path):
    """A method removed from the suite file keeps its old records in the results file (nothing is deleted)
    but no longer counts in the run's table."""
    import shutil

    summary, _ = finished
    out = tmp_path / "fewer"
    out.mkdir()
    shutil.copy(summary.results_path, out / summary.results_path.name)
    fewer = run_suite(parse_suite(tiny(methods=TINY["methods"][:1])), out, cache_dir=cache)
    assert fewer.ran == 0
    records = read_records(fewer.results_path)
    assert "finetune-1ep" in {r["method"] for r in records}
    assert {r["method"] for r in fewer.of_this_suite(records)} == {"original", "retrain", "gradient_ascent"}

    # The standalone report: every stored cell by default, only the suite's current ones with --suite.
    from excise.bench.report import build_report

    everything = build_report(fewer.results_path, tmp_path / "all").markdown.read_text()
    assert "finetune-1ep" in everything and "every cell stored in results.jsonl" in everything
    suite_file = write_suite(tmp_path / "fewer.yaml", tiny(methods=TINY["methods"][:1]))
    result = CliRunner().invoke(app, ["--quiet", "report", str(fewer.results_path), "--out", str(tmp_path / "cur"),
                                      "--suite", str(suite_file)])
    assert result.exit_code == 0, result.output
    current = (tmp_path / "cur" / "report.md").read_text()
    assert "finetune-1ep" not in current and "gradient_ascent" in current
    assert "6 of the 6 cells suite 'tiny'" in current and "2 other stored cell(s) left out" in current
    # A suite that defines cells the file lacks says so.
    more = write_suite(tmp_path / "more.yaml", tiny(methods=TINY["methods"][:1], seeds=[0, 1]))
    result = CliRunner().invoke(app, ["--quiet", "report", str(fewer.results_path), "--out", str(tmp_path / "m"),
                                      "--suite", str(more)])
    assert result.exit_code == 0, result.output
    assert "6 of the 12 cells suite 'tiny'" in " ".join((tmp_path / "m" / "report.md").read_text().split())
    other = write_suite(tmp_path / "other.yaml", tiny(suite="other"))
    result = CliRunner().invoke(app, ["--quiet", "report", str(fewer.results_path), "--out", str(tmp_path / "x"),
                                      "--suite", str(other)])
    assert result.exit_code == 2 and "holds no record of suite 'other'" in " ".join(result.output.split())


@pytest.fixture
def boom_method(monkeypatch):
    @dataclass
    class BoomConfig:
        pass

    class Boom(UnlearningMethod):
        name = "boom_test_only"
        paper = "none: a method that always fails, for testing"
        needs_retain = False
        Config = BoomConfig

        def _unlearn(self, model, data, seed):
            raise RuntimeError("kaboom at step 1")

    monkeypatch.setitem(methods_base._METHODS, Boom.name, Boom)
    return Boom.name


def test_failing_method_is_recorded_unsupported_is_skipped_and_the_suite_goes_on(tmp_path, cache, boom_method):
    spec = tiny(methods=[boom_method, "target_finetune", "gradient_ascent"], scenarios=TINY["scenarios"][:1])
    suite = parse_suite(spec)
    assert "cannot serve kind='class'" in suite.skips[("class-3", "target_finetune")]
    summary = run_suite(suite, tmp_path / "out", cache_dir=cache)
    records = {r["method"]: r for r in read_records(summary.results_path)}
    assert records[boom_method]["status"] == "failed: RuntimeError: kaboom at step 1"
    assert "kaboom" in records[boom_method]["error"]
    assert records["target_finetune"]["status"].startswith("skipped: method 'target_finetune' cannot serve")
    assert records["gradient_ascent"]["status"] == "ok"  # the cell after the failure still ran
    assert summary.failed == [("class-3", boom_method, 0, "failed: RuntimeError: kaboom at step 1")]
    assert summary.skipped == 1

    events = Events([])
    run_suite(parse_suite(spec), tmp_path / "out", cache_dir=cache, on_event=events)
    assert events.of("cell_start") == []  # failed and skipped cells are finished too ...
    run_suite(parse_suite(spec), tmp_path / "out", cache_dir=cache, retry_failed=True, on_event=events)
    assert [i["method"] for i in events.of("cell_start")] == [boom_method]  # ... unless asked to retry


def test_retrying_failed_cells_is_not_blocked_by_their_records_from_older_code(tmp_path, cache, boom_method,
                                                                              monkeypatch):
    """A failed record is about to be recomputed by --retry-failed, so the code that wrote it does not matter;
    an ok record from other code still does."""
    import excise.bench.runner as runner_module

    spec = tiny(methods=[boom_method], scenarios=TINY["scenarios"][:1])
    out = tmp_path / "out"
    run_suite(parse_suite(spec), out, cache_dir=cache)
    records = read_records(out / "results.jsonl")
    failed_only = [r for r in records if r["method"] == boom_method]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in failed_only))
    monkeypatch.setattr(runner_module, "results_code_version", lambda: "e" * 64)
    events = Events([])
    run_suite(parse_suite(spec), out, cache_dir=cache, retry_failed=True, on_event=events)
    assert boom_method in [i["method"] for i in events.of("cell_start")]

    monkeypatch.setattr(runner_module, "results_code_version", lambda: "f" * 64)
    with pytest.raises(SuiteError, match=r"excise code e+ vs f+ now.*--rerun-changed"):  # original, retrain: ok
        run_suite(parse_suite(spec), out, cache_dir=cache, retry_failed=True)


def test_unsupported_methods_named_by_a_scenario_or_under_on_unsupported_error_are_refused():
    explicit = tiny(methods=["target_finetune"], scenarios=[{**TINY["scenarios"][0], "methods": ["target_finetune"]}])
    with pytest.raises(SuiteError, match=r"scenarios\[0\] \(class-3\)\.methods: method 'target_finetune' cannot"):
        parse_suite(explicit)
    with pytest.raises(SuiteError, match="on_unsupported"):
        parse_suite(tiny(on_unsupported="ignore"))
    with pytest.raises(SuiteError, match="cannot serve kind='class'"):
        parse_suite(tiny(methods=["target_finetune"], on_unsupported="error"))


# --- suite validation --------------------------------------------------------------------------
def _scenario0(**changes):
    return [{**TINY["scenarios"][0], **changes}]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seedz": [0]}, "seedz: unknown key(s) ['seedz']"),
        ({"seeds": "0"}, "seeds: expected a non-empty list of integers, got '0'"),
        ({"seeds": [0, "one"]}, "seeds[1]: expected an integer, got str 'one'"),
        ({"seeds": [0, 2**70]}, "seeds[1]: 1180591620717411303424 is outside [0, 2**32)"),
        ({"seeds": [1, 1]}, "seeds: [1, 1] repeats a seed"),
        ({"dataset": "cifar11"}, "dataset.name: dataset='cifar11' is not registered"),
        ({"dataset": {"name": "digits", "options": {"size": 3}}}, "dataset.options.size: data set 'digits' has no"),
        ({"model": {"name": "small_cnn", "depth": 3}}, "model.depth: model 'small_cnn' has no argument(s) ['depth']"),
        ({"training": {"epochs": -1}}, "training: epochs=-1 must be a positive integer"),
        ({"training": {"epoch": 3}}, "training: unknown training option(s) ['epoch']"),
        ({"methods": ["nope"]}, "methods[0].name: method='nope' is not registered"),
        ({"methods": [{"name": "finetune", "params": {"epochs": 0}}]}, "methods[0].params: "),
        ({"methods": [{"name": "finetune", "parms": {}}]}, "methods[0].parms: unknown key(s) ['parms']"),
        ({"methods": [{"name": "retrain"}]}, "methods[0].label: 'retrain' is reserved"),
        ({"methods": ["finetune", "finetune"]}, "label(s) ['finetune'] appear more than once"),
        ({"scenarios": _scenario0(request={"kind": "classes", "labels": [3]})},
         "scenarios[0] (class-3).request: kind='classes' is not a request kind"),
        ({"scenarios": _scenario0(request={"kind": "samples", "fraction": 1.5})},
         "scenarios[0] (class-3).request: fraction=1.5 is outside (0, 1)"),
        ({"scenarios": _scenario0(requests={"kind": "class", "labels": [3]})},
         "scenarios[0].requests: unknown key(s) ['requests']"),
        ({"scenarios": _scenario0(sequence=[{"kind": "class", "labels": [1]}])},
         "give exactly one of 'request'"),
        ({"scenarios": [{"name": "s", "sequence": [{"kind": "target", "labels": [0]},
                                                   {"kind": "class", "labels": [1]}]}]},
         "every step must have the same kind"),
        ({"scenarios": [TINY["scenarios"][0], TINY["scenarios"][0]]}, "scenario name(s) ['class-3'] appear more"),
        ({"scenarios": _scenario0(name="has space")}, "scenarios[0].name: 'has space' must be letters"),
        ({"scenarios": _scenario0(methods=["sgd"])}, "scenarios[0] (class-3).methods[0]: 'sgd' is not a method label"),
        ({"scenarios": _scenario0(method_params={"finetune-1ep": {"lr_scale": -1}})},
         "scenarios[0] (class-3).method_params.finetune-1ep: "),
        ({"scenarios": []}, "scenarios: expected a non-empty list"),
    ],
)
def test_bad_suites_are_refused_naming_the_key(changes, message):
    with pytest.raises(SuiteError) as info:
        parse_suite(tiny(**changes), "my.yaml")
    assert str(info.value).startswith("suite my.yaml: ")
    assert message in str(info.value)


def test_request_that_does_not_fit_the_data_is_refused_before_training(tmp_path):
    suite = parse_suite(tiny(scenarios=_scenario0(request={"kind": "class", "labels": ["eleven"]})), "s.yaml")
    with pytest.raises(SuiteError, match=r"scenarios\[0\] \(class-3\)\.request: labels='eleven' is not a known class"):
        plan(suite)
    sub = parse_suite(tiny(scenarios=_scenario0(request={"kind": "subclass", "labels": ["8"]})), "s.yaml")
    with pytest.raises(SuiteError, match="kind='subclass' needs a data set with super-classes"):
        run_suite(sub, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_suite_files_load_and_bad_files_are_refused(tmp_path):
    quick = load_suite(SUITES / "quick.yaml")
    assert len(quick.seeds) == 3
    kinds = {s.kind for s in quick.scenarios}
    assert {"class", "subclass", "samples", "sequential", "target"} <= kinds
    assert any(s.dataset.name == "digits-super" for s in quick.scenarios if s.kind == "subclass")
    paper = load_suite(SUITES / "paper.yaml")
    assert {s.dataset.name for s in paper.scenarios} >= {"cifar10", "cifar100", "cifar20", "celeba"}
    midscale = load_suite(SUITES / "midscale.yaml")  # its retrained twin: the gap's noise floor in every scenario
    twin = next(m for m in midscale.methods if m.label == "retrain-twin")
    assert (twin.name, twin.params) == ("retrain", {"seed_offset": 1000})
    assert all("retrain-twin" in [m.label for m in midscale.methods_for(s)] for s in midscale.scenarios)
    assert {s.name for s in midscale.scenarios if s.ulira is not None} == {"mnist-random-10", "animal-random-10"}

    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: x\nseeds: [0\n")
    with pytest.raises(SuiteError, match="is not valid YAML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="must end in .yaml"):
        load_suite(write_suite(tmp_path / "s.txt", TINY))
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text("suite: x\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(SuiteError, match=r"key 'seeds' appears twice in one mapping \(line 3\)"):
        load_suite(doubled)


# --- the results store -------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_corrupt_or_hand_edited_results_are_refused_naming_the_line(finished, tmp_path):
    summary, _ = finished
    lines = _lines(summary.results_path)

    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    with pytest.raises(StoreError, match=r"corrupt.jsonl:2: not valid JSON"):
        read_records(corrupt)

    edited = json.loads(lines[2])
    edited["metrics"]["FA"]["value"] = 0.0  # a better-looking number typed in by hand
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([lines[0], lines[1], json.dumps(edited), *lines[3:]]) + "\n")
    with pytest.raises(StoreError, match=r"tampered.jsonl:3: the record's checksum does not match"):
        read_records(tampered)
    with pytest.raises(StoreError, match="tampered.jsonl:3"):
        ResultStore(tampered)  # the writer refuses to append to it as well

    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(lines[0] + "\n" + json.dumps({"hello": 1}) + "\n")
    with pytest.raises(StoreError, match=r"foreign.jsonl:2: the record lacks the field 'schema'"):
        read_records(foreign)
    with pytest.raises(StoreError, match="does not exist"):
        read_records(tmp_path / "nothing.jsonl")


def test_truncated_last_line_is_tolerated_by_the_reader(finished, tmp_path):
    summary, records = finished
    path = tmp_path / "killed.jsonl"
    path.write_text(summary.results_path.read_text() + _lines(summary.results_path)[0][:55])
    with pytest.warns(UserWarning, match="truncated last line"):
        assert len(read_records(path)) == len(records)
    with pytest.warns(UserWarning):
        store = ResultStore(path)
    assert path.read_text() == summary.results_path.read_text()  # the partial line was cut off
    assert len(store.records) == len(records)


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_refuses_bad_suite_and_results_with_a_message_not_a_traceback(finished, tmp_path):
    runner = CliRunner()
    bad = write_suite(tmp_path / "bad.yaml", tiny(methods=["nope"]))
    result = runner.invoke(app, ["--quiet", "bench", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "methods[0].name: method='nope' is not registered" in " ".join(result.output.split())
    assert "Traceback" not in result.output

    summary, _ = finished
    lines = _lines(summary.results_path)
    corrupt = tmp_path / "results.jsonl"
    corrupt.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    result = runner.invoke(app, ["--quiet", "report", str(corrupt), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "results.jsonl:2: not valid JSON" in " ".join(result.output.split())

    result = runner.invoke(app, ["--quiet", "bench", str(SUITES / "quick.yaml"), "--out", str(tmp_path), "--check"])
    assert result.exit_code == 0 and "is valid" in result.output


def test_cli_bench_reuses_a_finished_run_and_prints_the_summary(finished):
    summary, _ = finished
    suite = write_suite(summary.results_path.parent / "tiny.yaml", TINY)
    result = CliRunner().invoke(app, ["--quiet", "bench", str(suite), "--out", str(summary.results_path.parent)])
    assert result.exit_code == 0, result.output
    assert "0 cells run, 8 reused" in result.output and "gradient_ascent" in result.output


def test_model_cache_survives_a_kill_between_weights_and_sidecar_and_refuses_corrupt_weights(tmp_path):
    from excise.bench import ModelCache
    from excise.checkpoint import CheckpointError
    from excise.models import create_model

    cache = ModelCache(tmp_path)
    builds = []

    def build():
        builds.append(1)
        return create_model("small_cnn", width=2), {"train_seconds": 1.0}

    payload = {"what": "test"}
    model, meta, hit = cache.get_or_build("original", payload, build)
    assert not hit and meta["train_seconds"] == 1.0 and meta["cache_key"] == payload
    _, _, hit = cache.get_or_build("original", payload, build)
    assert hit and len(builds) == 1

    path = cache.path("original", payload)
    path.with_suffix(".json").unlink()  # killed after the weights were written, before the sidecar
    _, _, hit = cache.get_or_build("original", payload, build)
    assert not hit and len(builds) == 2

    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # bit rot
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        cache.get_or_build("original", payload, build)


def test_scaling_script_builds_a_valid_suite():
    import importlib.util

    path = SUITES.parent / "scaling.py"
    spec = importlib.util.spec_from_file_location("excise_scaling_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    suite = parse_suite(module.build_spec("digits", ["gradient_ascent"], [0.01, 0.05, 0.1, 0.25], [8, 16, 32],
                                          16, [0], 15), "scaling.py")
    names = [s.name for s in suite.scenarios]
    assert names == ["fraction-0.01", "fraction-0.05", "fraction-0.1", "fraction-0.25", "width-8", "width-32"]
    assert [s.requests[0].fraction for s in suite.scenarios[:4]] == [0.01, 0.05, 0.1, 0.25]
    assert suite.scenario("width-32").model.kwargs == {"width": 32}


def test_peak_rss_catches_memory_freed_before_the_method_returns():
    import time

    import numpy as np

    from excise.bench import PeakRSS

    with PeakRSS() as probe:
        block = np.ones(12_500_000)  # 100 MB, touched, then released before the probe ends
        time.sleep(0.05)
        del block
    assert probe.delta_mb > 60 and probe.peak_mb > probe.baseline_mb + 60
    with pytest.raises(ValueError, match="interval=0"):
        PeakRSS(interval=0)


def test_a_sequence_of_target_requests_runs_as_a_scenario(tmp_path):
    spec = tiny(
        dataset={"name": "multidigits", "options": {"num_train": 200, "num_test": 100}},
        model={"name": "small_cnn", "width": 32},  # 10% of 32 channels: 3 per target per layer
        training={"epochs": 2, "batch_size": 32, "lr": 0.003, "optimizer": "adam"},
        methods=["target_finetune", "essential_graph"],
        scenarios=[{"name": "targets", "sequence": [{"kind": "target", "labels": ["2"]},
                                                    {"kind": "target", "labels": ["4"]}]}],
    )
    summary = run_suite(parse_suite(spec), tmp_path)
    records = {r["method"]: r for r in read_records(summary.results_path)}
    assert set(records) == {"original", "retrain", "target_finetune", "essential_graph"}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        assert [s["request"]["labels"] for s in record["steps"]] == [["2"], ["4"]]
    # Step 2 is judged on both targets (its forget set: every instance carrying 2 or 4) and unlearns target 4's.
    from excise.data import load_dataset

    train = load_dataset("multidigits", seed=0, num_train=200, num_test=100).train
    carries = train.targets > 0.5
    step = records["target_finetune"]["steps"][1]
    assert step["forget_size"] == int((carries[:, 2] | carries[:, 4]).sum())
    assert step["unlearned_size"] == int(carries[:, 4].sum())
    assert records["target_finetune"]["steps"][0]["forget_size"] == int(carries[:, 2].sum())
    assert len(set(records["retrain"]["hashes"]["references"])) == 2


def test_report_suite_does_not_revive_a_superseded_record(finished, cache, tmp_path):
    """Run, change a method's parameters and re-run with --rerun-changed, then go back to the first suite file:
    the first records match its configuration again but were superseded; they are not current."""
    import shutil

    from excise.bench.report import build_report

    summary, _ = finished
    out = tmp_path / "edited"
    out.mkdir()
    shutil.copy(summary.results_path, out / summary.results_path.name)
    methods = copy.deepcopy(TINY["methods"])
    methods[1]["params"] = {"epochs": 2}
    run_suite(parse_suite(tiny(methods=methods)), out, cache_dir=cache, rerun_changed=True)
    text = build_report(out / "results.jsonl", tmp_path / "r", suite=parse_suite(TINY)).markdown.read_text()
    assert "6 of the 8 cells suite 'tiny'" in " ".join(text.split())
    assert "finetune-1ep" not in text


def test_the_bench_reports_what_a_method_did_even_when_the_guard_would_roll_it_back(tmp_path, cache):
    """A comparison table never shows the original's numbers under a method's name: the bench runs the guard at
    'warn' (the library default is 'rollback'), and the record says the guard fired."""
    collapse = {"name": "gradient_ascent", "label": "ga-collapse", "params": {"epochs": 30, "lr": 0.1}}
    spec = tiny(methods=[collapse], scenarios=TINY["scenarios"][:1])
    summary = run_suite(parse_suite(spec), tmp_path / "out", cache_dir=cache)
    records = {r["method"]: r for r in read_records(summary.results_path)}
    guard = records["ga-collapse"]["stats"]["guard"]
    assert guard["fired"] and guard["action"] == "warn" and not guard["rolled_back"]
    assert guard["accuracy_before"] - guard["accuracy_after"] > 5
    collapsed, original = records["ga-collapse"]["metrics"], records["original"]["metrics"]
    assert collapsed["TA"]["value"] < original["TA"]["value"] - 5


def test_a_run_at_another_thread_count_trains_its_own_models(cache):
    """Weights differ in their last bits between thread counts: a cache filled at one count must not hand its
    models to a run at another, which could not reproduce them. Every cached model's key holds the count."""
    import json

    import torch

    from excise.bench.cache import training_key

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = training_key()
        torch.set_num_threads(2)
        two = training_key()
    finally:
        torch.set_num_threads(before)
    assert one["code"] == two["code"] and (one["torch_threads"], two["torch_threads"]) == (1, 2)
    assert ModelCache(cache).path("original", {"seed": 0, **one}) != ModelCache(cache).path("original",
                                                                                            {"seed": 0, **two})
    keys = [json.loads(p.read_text())["cache_key"] for p in cache.glob("*.json") if not p.name.startswith("ulira")]
    assert keys and all(key["torch_threads"] >= 1 and key["code"] == one["code"] for key in keys), keys
