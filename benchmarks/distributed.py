"""Retraining on 1 vs 2 processes under torchrun: the wall-time ratio, measured in one run.

Takes a scenario of a bench suite (default: the quick suite's full-class scenario — digits, small_cnn width
16, its training recipe), trains the original once per launch, then times ``run_method("retrain", ...)``
inside the workers (process start-up, imports and the original's training excluded) for

- 1 process, 1 thread — the per-core baseline;
- 1 process, ``--threads`` threads (default 2) — what one process gets out of the same cores;
- ``--nproc`` processes (default 2) of 1 thread each under ``torchrun --standalone`` (gloo on CPU, nccl on GPU).

and prints the ratios to the first. Every launch uses the same seed and effective batch size, so the three
retrained models should agree in accuracy; their FA/RA/TA are printed beside the times.

    python benchmarks/distributed.py
    python benchmarks/distributed.py --suite benchmarks/suites/quick.yaml --scenario random-10 --epochs 30
    python benchmarks/distributed.py --width 128        # more compute per step than per all-reduce

The script re-launches itself as the worker (``--worker``); nothing is written except a JSON per launch
in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    import torch

    from excise import distributed
    from excise.bench import load_suite
    from excise.data import load_dataset
    from excise.experiment import run_method, train_original
    from excise.metrics import EvalViews

    torch.set_num_threads(args.threads)
    distributed.init_from_env()
    suite = load_suite(args.suite)
    scenario = suite.scenario(args.scenario)
    recipe = scenario.training
    if args.epochs is not None:
        recipe = type(recipe)(**{**recipe.to_dict(), "epochs": args.epochs})
    spec = scenario.dataset
    bundle = load_dataset(spec.name, seed=spec.seed, **spec.options)
    views = EvalViews.from_bundle(bundle, scenario.requests[0])
    model_kwargs = dict(scenario.model.kwargs)
    if args.width is not None:
        model_kwargs["width"] = args.width
    original, _ = train_original(bundle, scenario.model.name, recipe, seed=0, **model_kwargs)
    distributed.barrier()
    start = time.perf_counter()
    _, record = run_method("retrain", original, views, recipe, seed=0)
    distributed.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        Path(args.out).write_text(json.dumps({
            "seconds": seconds, "metrics": record.metrics, "steps": record.stats.get("steps"),
            "world_size": distributed.world_size(), "threads": args.threads, "retain": len(views.retain_set),
            "epochs": recipe.epochs, "batch_size": recipe.batch_size,
            "parameters": sum(p.numel() for p in original.parameters()),
        }))


def launch(args: argparse.Namespace, nproc: int, threads: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EXCISE_PROGRESS": "0"}
    worker_args = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--suite", args.suite,
                   "--scenario", args.scenario, "--threads", str(threads)]
    if args.epochs is not None:
        worker_args += ["--epochs", str(args.epochs)]
    if args.width is not None:
        worker_args += ["--width", str(args.width)]
    if nproc == 1:
        cmd = [sys.executable, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *worker_args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default=str(HERE / "suites" / "quick.yaml"))
    parser.add_argument("--scenario", default="full-class")
    parser.add_argument("--epochs", type=int, default=None, help="override the scenario's epochs")
    parser.add_argument("--width", type=int, default=None, help="override the scenario model's width")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process comparison run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            ("1 process x 1 thread", launch(args, 1, 1, Path(tmp) / "a.json")),
            (f"1 process x {args.threads} threads", launch(args, 1, args.threads, Path(tmp) / "b.json")),
            (f"{args.nproc} processes x 1 thread (torchrun, gloo)",
             launch(args, args.nproc, 1, Path(tmp) / "c.json")),
        ]
    base = runs[0][1]["seconds"]
    first = runs[0][1]
    table = Table(title=f"retrain, {args.scenario} of {Path(args.suite).name}: {first['retain']} retain samples, "
                        f"{first['epochs']} epochs, effective batch {first['batch_size']}, "
                        f"{first['parameters']:,} parameters")
    for column in ("launch", "retrain s", "time / 1x1", "steps", "FA", "RA", "TA"):
        table.add_column(column, justify="left" if column == "launch" else "right")
    for name, run in runs:
        m = run["metrics"]
        table.add_row(name, f"{run['seconds']:.2f}", f"{run['seconds'] / base:.2f}", str(run["steps"]),
                      f"{m['FA']:.1f}", f"{m['RA']:.1f}", f"{m['TA']:.1f}")
    Console().print(table)
    print(f"ratio {args.nproc}-process / 1-process (1 thread each): {runs[2][1]['seconds'] / base:.2f}; "
          f"{args.nproc}-process / 1-process x {args.threads} threads: "
          f"{runs[2][1]['seconds'] / runs[1][1]['seconds']:.2f}")


if __name__ == "__main__":
    main()
