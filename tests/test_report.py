"""`excise report`: every number comes from the results store — checked on records with known values."""

from __future__ import annotations

import base64
import re

import pytest
from typer.testing import CliRunner

from excise.bench import ResultStore, StoreError, read_records
from excise.bench.report import Stat, build_report, summarize
from excise.bench.runner import metric_block
from excise.cli import app

SUITE = "synthetic"


def record(scenario: str, method: str, seed: int, metrics: dict, reference: dict, *, time_s: float | None,
           retrain_s: float, floor_s: float = 0.5, rss: float = 400.0, steps: list | None = None,
           status: str = "ok", kind: str = "class", gap_replicates: list | None = None) -> dict:
    """A record shaped exactly like the runner's (same metric blocks), with chosen numbers."""
    out = {
        "suite": SUITE, "scenario": scenario, "kind": kind, "method": method, "method_name": method,
        "seed": seed, "cell_hash": "x" * 64, "status": status,
        "request": {"kind": "class", "labels": ["3"]},
        "config": {"scenario": {"dataset": {"name": "digits"}, "model": {"name": "small_cnn", "width": 16},
                                "training": {"epochs": 15}}},
        "versions": {"excise": "0.1.0", "torch": "2"}, "host": {"platform": "test", "cpu_count": 2},
        "sizes": {"train": 1347, "test": 450, "forget": 137},
        "hashes": {"data": "d", "original": "o", "reference": "r", "unlearned": "u"},
    }
    if status != "ok":
        return out
    gaps = [abs(metrics[k] - reference[k]) for k in ("FA", "RA", "TA", "MIA")]
    out.update({
        "metrics": metric_block(metrics, reference), "avg_gap": sum(gaps) / 4, "time_s": time_s,
        "retrain_time_s": retrain_s, "speedup_vs_retrain": None if time_s is None else retrain_s / time_s,
        "forward_backward_s": floor_s, "floor_ratio": None if time_s is None else time_s / floor_s,
        "peak_rss_mb": rss, "peak_rss_delta_mb": 2.0,
    })
    if steps is not None:
        out["steps"] = steps
    if gap_replicates is not None:
        out["avg_gap_replicates"] = gap_replicates
    return out


REF = [{"FA": 0.0, "RA": 100.0, "TA": 98.0, "MIA": 100.0, "MIA:svc_confidence": 100.0, "MIA:entropy_logreg": 1.0},
       {"FA": 0.0, "RA": 100.0, "TA": 96.0, "MIA": 100.0, "MIA:svc_confidence": 100.0, "MIA:entropy_logreg": 3.0}]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("results") / "results.jsonl")
    for seed, ref in enumerate(REF):
        store.append(record("class-3", "original", seed, {**ref, "FA": 100.0, "MIA": 20.0}, ref,
                            time_s=None, retrain_s=4.0))
        store.append(record("class-3", "retrain", seed, ref, ref, time_s=4.0, retrain_s=4.0))
        # "fast": FA 10 then 20 -> 15.00 ± 7.07; time 0.5 / 1.0 s against 4 s retrain -> speed-up 8 and 4.
        store.append(record("class-3", "fast", seed, {**ref, "FA": 10.0 * (seed + 1)}, ref,
                            time_s=0.5 * (seed + 1), retrain_s=4.0))
    store.append(record("class-3", "broken", 0, {}, {}, time_s=None, retrain_s=0,
                        status="failed: RuntimeError: boom"))
    store.append(record("class-3", "targetonly", 0, {}, {}, time_s=None, retrain_s=0,
                        status="skipped: method 'targetonly' cannot serve kind='class' requests"))
    steps = [{"step": k, "avg_gap": 5.0 * k, "metrics": metric_block({**REF[0], "FA": 10.0 * k}, REF[0])}
             for k in range(3)]
    store.append(record("seq", "fast", 0, {**REF[0], "FA": 20.0}, REF[0], time_s=1.0, retrain_s=9.0,
                        steps=steps, kind="sequential"))
    return store.path


def test_statistics_are_mean_and_sample_std_over_seeds():
    assert Stat.of([10.0, 20.0]).fmt() == "15.00 ± 7.07"
    assert Stat.of([3.0]).fmt() == "3.00" and Stat.of([None]).fmt() == "—"
    # A diverged seed (NaN, stored as null) is left out of the mean, and the cell says so.
    assert Stat.of([10.0, None, 20.0]).fmt() == "15.00 ± 7.07 (n=2/3)"
    assert Stat.of([10.0, float("nan")]).fmt() == "10.00 (n=1/2)"


@pytest.fixture(scope="module")
def built(results, tmp_path_factory):
    return build_report(results, tmp_path_factory.mktemp("report"), title="My bench")


def test_tables_show_the_stored_numbers(built):
    md = built.markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| fast | 2 |"))
    assert "15.00 ± 7.07 [15.00]" in row  # FA mean ± std [mean gap to retrain]
    assert "97.00 ± 1.41" in row  # TA per seed 98, 96
    # avg gap per seed (10/4, 20/4); no bootstrap replicates stored, so no interval and no verdict; the original's
    # gap ((100 + 80) / 4 = 45: FA 100 and MIA 20 against 0 and 100) beside every method's
    assert row.endswith("| 3.75 ± 1.77 | — | 45.00 ± 0.00 | — |")
    assert "| original | — | — | — | — | — | — |" in md  # every table shows the do-nothing row
    perf = next(line for line in md.splitlines() if line.startswith("| fast | 0.750"))
    assert "0.750 ± 0.354" in perf  # time
    assert "0.188 ± 0.088" in perf  # time ÷ retrain, per-seed ratio
    assert "6.0 ± 2.8" in perf  # speed-up 8x and 4x
    assert "1.5 ± 0.7" in perf  # time ÷ fwd+bwd floor (1x, 2x)
    assert "| original | 2 | 100.00 ± 0.00 [100.00]" in md
    assert "broken (seed 0): failed: RuntimeError: boom" in md
    assert "targetonly: skipped on seeds [0] — method 'targetonly' cannot serve kind='class' requests" in md
    assert "entropy_logreg: share of forget set called member" in md  # every MIA variant's direction
    assert "| fast | 3.75 / 6.0× | 5.00 / 9.0× |" in md  # the overview across scenarios


def test_markdown_links_figures_and_html_is_self_contained(built):
    files = built
    names = sorted(p.name for p in files.figures)
    assert names == sorted([
        "synthetic-class-3-gap_vs_time.png", "synthetic-class-3-metrics.png",
        "synthetic-seq-gap_vs_time.png", "synthetic-seq-metrics.png", "synthetic-seq-sequential.png",
    ])
    md = files.markdown.read_text()
    for name in names:
        assert f"(figures/{name})" in md
        assert (files.markdown.parent / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files.html.read_text()
    assert "<title>My bench</title>" in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == len(names)
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    assert "src='http" not in page and 'href="http' not in page  # nothing to fetch


def test_sequential_summary_reads_every_step(results):
    seq = next(s for s in summarize(read_records(results)) if s.name == "seq")
    fast = next(m for m in seq.methods if m.label == "fast")
    assert seq.steps == 3
    assert [fast.step_stat(k, "FA").mean for k in range(3)] == [0.0, 10.0, 20.0]
    assert [fast.step_stat(k, "avg_gap").mean for k in range(3)] == [0.0, 5.0, 10.0]


def test_latest_record_of_a_cell_wins(results, tmp_path):
    copy = tmp_path / "results.jsonl"
    copy.write_bytes(results.read_bytes())
    store = ResultStore(copy)
    store.append(record("class-3", "broken", 0, {**REF[0], "FA": 1.0}, REF[0], time_s=2.0, retrain_s=4.0))
    md = build_report(copy, tmp_path / "report").markdown.read_text()
    assert "| broken | 1 | 1.00 [1.00]" in md and "failed: RuntimeError: boom" not in md


def test_report_refuses_edited_results_and_empty_files(results, tmp_path):
    lines = results.read_text().splitlines()
    lines[2] = lines[2].replace('"value":10.0', '"value":1.0', 1)
    assert '"value":1.0' in lines[2]
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match=r"edited.jsonl:3: the record's checksum does not match"):
        build_report(edited, tmp_path / "r1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no records"):
        build_report(empty, tmp_path / "r2")
    result = CliRunner().invoke(app, ["--quiet", "report", str(edited), "--out", str(tmp_path / "r3")])
    assert result.exit_code == 2 and "edited.jsonl:3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r1").exists()


def test_cli_report_writes_both_files(results, tmp_path):
    result = CliRunner().invoke(app, ["--quiet", "report", str(results.parent), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "report.html").is_file()


def test_task_metrics_get_their_own_table(tmp_path):
    # A sequence task's KL to the true chain is where its story is; the headline columns would hide it.
    store = ResultStore(tmp_path / "results.jsonl")
    ref = {"FA": 9.0, "RA": 21.7, "TA": 18.5, "MIA": 50.0, "KL_true:forget1": 0.44}
    store.append(record("chain", "retrain", 0, ref, ref, time_s=7.0, retrain_s=7.0))
    store.append(record("chain", "imu_sequence", 0, {**ref, "KL_true:forget1": 0.16}, ref, time_s=1.0,
                        retrain_s=7.0))
    files = build_report(store.path, tmp_path / "report")
    text = files.markdown.read_text()
    task = text[text.index("### Task metrics"):]
    assert "| method | KL_true:forget1 |" in task
    assert "| imu_sequence | 0.16 [0.28] |" in task and "| retrain | 0.44 |" in task
    assert "KL_true:forget1" not in text[: text.index("### Task metrics")].split("### Quality")[1]


def test_methods_not_distinguishable_from_doing_nothing_are_marked(tmp_path):
    """The gap's interval, pooled over seeds from each record's paired bootstrap replicates, against the
    original's: overlapping -> not distinguishable from doing nothing; else closer or further."""
    store = ResultStore(tmp_path / "results.jsonl")
    rng = __import__("numpy").random.default_rng(0)

    def replicates(centre: float, spread: float) -> list:
        return [float(x) for x in rng.normal(centre, spread, 200)]

    ref = REF[0]
    for seed in (0, 1):
        store.append(record("c", "original", seed, {**ref, "FA": 40.0}, ref, time_s=None, retrain_s=4.0,
                            gap_replicates=replicates(10.0, 1.0)))
        store.append(record("c", "retrain", seed, ref, ref, time_s=4.0, retrain_s=4.0, gap_replicates=[0.0] * 200))
        store.append(record("c", "idle", seed, {**ref, "FA": 38.0}, ref, time_s=1.0, retrain_s=4.0,
                            gap_replicates=replicates(9.5, 1.0)))
        store.append(record("c", "good", seed, {**ref, "FA": 2.0}, ref, time_s=1.0, retrain_s=4.0,
                            gap_replicates=replicates(0.5, 0.3)))
        store.append(record("c", "harmful", seed, {**ref, "RA": 40.0, "FA": 60.0}, ref, time_s=1.0, retrain_s=4.0,
                            gap_replicates=replicates(30.0, 2.0)))
        # Forgot on seed 0, did nothing on seed 1: each seed's evaluation is precise, the mean is not.
        store.append(record("c", "flaky", seed, {**ref, "FA": 40.0 * seed}, ref, time_s=1.0, retrain_s=4.0,
                            gap_replicates=replicates(0.5 if seed == 0 else 10.0, 0.3)))
    md = build_report(store.path, tmp_path / "report").markdown.read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines()
            if line.startswith("| ") and line.split(" | ")[1:2] == ["2"]}  # the quality table: method | seeds
    assert rows["idle"].endswith("| not distinguishable from doing nothing |")
    assert rows["good"].endswith("| closer than doing nothing |")
    assert rows["harmful"].endswith("| further than doing nothing |")
    assert rows["flaky"].endswith("| not distinguishable from doing nothing |")  # the seeds are redrawn too
    low, high = (float(x) for x in re.search(r"\| \[(-?[\d.]+), (-?[\d.]+)\] \|", rows["good"]).groups())
    assert low < 0.5 < high < 2.0
    overview = next(line for line in md.splitlines() if line.startswith("| idle | "))
    assert overview.rstrip("| ").endswith("≈")
    assert not next(line for line in md.splitlines() if line.startswith("| good | ")).rstrip("| ").endswith("≈")
