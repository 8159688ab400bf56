"""torchrun with two gloo processes on the CPU gives the single-process answers; a killed rank ends the job
with a clear error and leaves the earlier checkpoint intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from excise.checkpoint import sha256_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env() -> dict[str, str]:
    # One thread per process: two ranks on two cores; progress bars off so the logs stay readable.
    return {**os.environ, "OMP_NUM_THREADS": "1", "EXCISE_PROGRESS": "0"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


METHODS = ("mu_mis", "imu", "ssd")


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory) -> tuple[dict, dict]:
    """``(single-process, two-process)`` results of every method; each unlearning run starts from the same
    weights, and one training (original and retrain) serves every method."""
    work = tmp_path_factory.mktemp("ddp")
    start = str(work / "start.safetensors")
    _run([sys.executable, str(WORKER), str(work / "one.json"), ",".join(METHODS), start])
    _run(_torchrun(str(WORKER), str(work / "two.json"), ",".join(METHODS), start))
    return json.loads((work / "one.json").read_text()), json.loads((work / "two.json").read_text())


def test_two_processes_train_and_retrain_like_one(all_runs):
    one, two = all_runs
    assert one["world_size"] == 1 and two["world_size"] == 2
    for stage in ("original", "retrain"):
        # Same effective batch size; only per-rank BatchNorm statistics and reduction order differ.
        for metric in ("FA", "RA", "TA"):
            assert two[stage][metric] == pytest.approx(one[stage][metric], abs=1.5), (stage, one[stage], two[stage])
    for method in METHODS:  # each method's gather saw the same trained models on every rank
        ranks = two["methods"][method]["per_rank"]
        for stage in ("original", "retrain", "small"):  # a set smaller than one batch trains too
            assert len({rank[stage] for rank in ranks}) == 1, f"{method} {stage}: the ranks' parameters differ"
    assert two["retrain"]["FA"] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_unlearn_like_one_and_stop_together(all_runs, method):
    one, two = (run["methods"][method] for run in all_runs)
    for metric in ("FA", "RA", "TA"):
        assert two["unlearn"][metric] == pytest.approx(one["unlearn"][metric], abs=0.5), (one["unlearn"],
                                                                                           two["unlearn"])
    ranks, single = two["per_rank"], one["per_rank"][0]
    # Every rank took the same decision: its own loop stopped at the same step for the same reason, or SSD's
    # search chose the same alpha (its accuracies are counted per rank and summed).
    assert len({(r["steps"], r["stop_reason"], r["alpha"]) for r in ranks}) == 1, ranks
    if method != "ssd":  # an iterative method: the step of the single process
        assert (ranks[0]["steps"], ranks[0]["stop_reason"]) == (single["steps"], single["stop_reason"])
        assert ranks[0]["steps"] > 0
    elif single["alpha"] is None:  # on this width-16 model every alpha that forgets damages the retain rows
        assert ranks[0]["alpha"] is None and ranks[0]["stop_reason"] == single["stop_reason"], (ranks[0], single)
        assert "alphas tried" in single["stop_reason"]  # a search was run, on the ranks' summed counts
    else:  # the importances are summed in another order: the same alpha up to one bisection step
        assert ranks[0]["alpha"] == pytest.approx(single["alpha"], rel=0.015), (ranks[0], single)
    assert len({r["unlearn"] for r in ranks}) == 1


def _worker_pids(parent: int) -> dict[int, int]:
    """``{local rank: pid}`` of the processes torchrun (pid ``parent``) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for item in environ:
            if item.startswith(b"LOCAL_RANK="):
                found[int(item.split(b"=", 1)[1])] = int(entry.name)
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_killing_a_rank_ends_the_job_with_an_error_and_keeps_the_checkpoint(tmp_path):
    excise = [sys.executable, "-m", "excise.cli"]
    out = tmp_path / "model.safetensors"
    _run([*excise, "train", "--out", str(out), "--width", "8", "--epochs", "1"])
    before = {path.name: sha256_file(path) for path in tmp_path.iterdir()}

    # Long enough that the kill lands mid-training; the run would replace the checkpoint at its end.
    job = subprocess.Popen(
        _torchrun("-m", "excise.cli", "train", "--out", str(out), "--overwrite", "--width", "8", "--epochs", "2000"),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        victim = None
        while time.monotonic() < deadline and job.poll() is None:
            pids = _worker_pids(job.pid)
            # Past imports and data loading (a few CPU seconds), i.e. inside the training loop.
            if 1 in pids and _cpu_seconds(pids[1]) > 6:
                victim = pids[1]
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.2)
        assert victim is not None, "rank 1 never started training"
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    log = stdout + stderr
    # torchrun names the failed rank and how it died.
    assert "FAILED" in log and "rank" in log and "Signal 9 (SIGKILL)" in log, log[-3000:]
    after = {path.name: sha256_file(path) for path in tmp_path.iterdir()}
    assert after == before, "the earlier checkpoint (or its sidecar) changed, or a partial file was left"


def test_bench_spreads_groups_over_ranks_and_matches_one_process(tmp_path):
    from excise.bench import read_records

    from .test_bench import TINY, tiny, write_suite

    # Two seeds x two scenarios = four (scenario, seed) groups: two rounds of two ranks.
    suite = write_suite(tmp_path / "tiny.yaml", tiny(seeds=[0, 1]))
    excise = ["-m", "excise.cli", "bench", str(suite), "--threads", "1"]
    _run([sys.executable, *excise, "--out", str(tmp_path / "one")])
    _run(_torchrun(*excise, "--out", str(tmp_path / "two")))

    def cells(directory: str) -> dict:
        records = read_records(tmp_path / directory / "results.jsonl")
        keys = [(r["scenario"], r["method"], r["seed"]) for r in records]
        assert len(keys) == len(set(keys)), f"{directory}: a cell was recorded twice"
        return {key: r for key, r in zip(keys, records, strict=True)}

    one, two = cells("one"), cells("two")
    assert set(one) == set(two) and len(one) == len(TINY["scenarios"]) * 2 * 4
    for key, record in one.items():
        assert two[key]["status"] == record["status"] == "ok", (key, two[key]["status"])
        # Each cell ran alone on its rank, exactly as on one process.
        assert two[key]["hashes"] == record["hashes"], key
        assert {m: v["value"] for m, v in two[key]["metrics"].items()} == \
            {m: v["value"] for m, v in record["metrics"].items()}, key
    # Only rank 0 wrote: one results file and one cache, nothing else.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
