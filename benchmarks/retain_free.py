"""Retain-free unlearning benchmark (issue "MU-Mis and IMU"): one run, every ratio measured in it.

For each request (full class, random 10%, random 1%) and each method it prints FA/RA/TA/MIA, the average gap to the
retrained model, the unlearning time, and two ratios: unlearning time / retrain time and unlearning time /
one forward+backward pass over the forget set (the practical floor of a gradient method). Times on shared
machines are noisy; read the ratios.

    python benchmarks/retain_free.py [--dataset digits|mnist] [--seed 0] [--methods mu_mis,imu,gradient_ascent]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("EXCISE_PROGRESS", "0")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from excise.data import load_dataset  # noqa: E402
from excise.experiment import evaluate_original, run_method, train_original  # noqa: E402
from excise.methods import COMPARE_GUARD  # noqa: E402
from excise.metrics import EvalViews, avg_gap  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.timing import forward_backward_seconds  # noqa: E402
from excise.training import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--methods", default="mu_mis,imu,gradient_ascent")
    args = parser.parse_args()
    console = Console(width=160)
    recipe = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
    bundle = load_dataset(args.dataset, seed=args.seed)
    model, _ = train_original(bundle, "small_cnn", recipe, seed=args.seed, width=args.width)
    requests = (ForgetRequest(kind="class", labels=("3",)), ForgetRequest(kind="samples", fraction=0.1),
                ForgetRequest(kind="samples", fraction=0.01))
    for request in requests:
        views = EvalViews.from_bundle(bundle, request)
        _, reference = run_method("retrain", model, views, recipe, seed=args.seed)
        floor = forward_backward_seconds(model, views.forget_set)
        table = Table(title=f"{args.dataset}: forget {request.describe()} ({len(views.forget_set)} samples), "
                            f"retrain {reference.seconds:.2f}s, floor {floor * 1000:.1f}ms", title_justify="left")
        for column in ("method", "FA", "RA", "TA", "MIA", "avg gap", "time s", "time/retrain", "time/floor",
                       "stop"):
            table.add_column(column, justify="left" if column in ("method", "stop") else "right")
        original = evaluate_original(model, views, seed=args.seed)
        rows = [("original", original.metrics, avg_gap(original.metrics, reference.metrics), None, "")]
        rows.append(("retrain", reference.metrics, 0.0, reference.seconds, ""))
        for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
            _, record = run_method(name, model, views, recipe, seed=args.seed, reference=reference,
                                   guard=COMPARE_GUARD)
            stop = str(record.stats.get("stop_reason", ""))
            rows.append((name, record.metrics, record.avg_gap, record.seconds, stop))
        for name, m, gap, seconds, stop in rows:
            timing = ("—", "—", "—") if seconds is None else (
                f"{seconds:.2f}", f"{seconds / reference.seconds:.3f}", f"{seconds / floor:.1f}")
            table.add_row(name, f"{m['FA']:.1f}", f"{m['RA']:.1f}", f"{m['TA']:.1f}", f"{m['MIA']:.1f}",
                          f"{gap:.2f}", *timing, stop)
        console.print(table)


if __name__ == "__main__":
    main()
