"""Do the CLI, the API and the bench time the same work? One checkpoint, three entry points, one run.

For each method: the seconds ``excise unlearn`` records in its sidecar when run as a fresh process (what a user
gets from a one-shot command), the seconds ``excise.api.unlearn_checkpoint`` records in a process that has already
unlearned once, and the seconds ``excise.experiment.run_method`` records as ``excise bench`` runs it (after
training, in the same process). Each is the median of ``--repeats`` runs; the table prints the ratios CLI / API
and bench / API, which should be ~1 now that the process's one-time setup (``excise.runtime``) is outside every
timed region. Before it, a one-shot ``excise unlearn --method imu`` paid ~1-7 s of lazy imports inside its timed
region and recorded ~4x the API's seconds. Machines are noisy: read the ratios.

    python benchmarks/timing.py [--methods imu,mu_mis,gradient_ascent] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("EXCISE_PROGRESS", "0")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from excise import api  # noqa: E402
from excise.experiment import run_method  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.metrics.uncertainty import Uncertainty  # noqa: E402
from excise.provenance.history import bundle_for  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig  # noqa: E402

NO_INTERVALS = Uncertainty(replicates=0)


def cli_seconds(checkpoint: Path, method: str, request: str, out: Path, threads: int) -> float:
    """Seconds the method's sidecar records when `excise unlearn` runs as a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EXCISE_PROGRESS": "0"}
    command = [sys.executable, "-m", "excise.cli", "--quiet", "unlearn", str(checkpoint), "--method", method,
               "--request", request, "--out", str(out), "--overwrite", "--replicates", "0", "--guard", "warn"]
    subprocess.run(command, check=True, capture_output=True, env=env)
    return float(json.loads(out.with_suffix(".json").read_text())["unlearn_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="imu,mu_mis,gradient_ascent,scrub")
    parser.add_argument("--request", default="class:3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=120)
    request = ForgetRequest.parse(args.request)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = Path(directory) / "original.safetensors"
        recipe = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
        api.train_model("digits", "small_cnn", checkpoint, recipe=recipe, model_kwargs={"width": 16})
        original = api.load_checkpoint(checkpoint)
        views = EvalViews.from_bundle(bundle_for(original), request)
        table = Table(title=f"digits, small_cnn width 16, {request.describe()}: method seconds as each entry point "
                            f"records them (median of {args.repeats}; {args.threads} thread(s))", title_justify="left")
        for column in ("method", "CLI s", "API s", "bench s", "CLI / API", "bench / API"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            cli = [cli_seconds(checkpoint, method, args.request, Path(directory) / f"{method}.safetensors",
                               args.threads) for _ in range(args.repeats)]
            api_runs = [api.unlearn_checkpoint(checkpoint, method, request, seed=0,
                                               uncertainty=NO_INTERVALS).record.seconds
                        for _ in range(args.repeats)]
            bench = [run_method(method, original.model, views, recipe, seed=0)[1].seconds
                     for _ in range(args.repeats)]
            c, a, b = statistics.median(cli), statistics.median(api_runs), statistics.median(bench)
            table.add_row(method, f"{c:.3f}", f"{a:.3f}", f"{b:.3f}", f"{c / a:.2f}", f"{b / a:.2f}")
        console.print(table)


if __name__ == "__main__":
    main()
