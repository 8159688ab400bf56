"""U-LiRA benchmark: per-example membership attack on every method's unlearned shadows, at two data sizes.

For each training-set size it trains ``--shadows`` shadow models once, unlearns a random half of the pool
from each with every method, and prints per method the attack's AUC, balanced accuracy, TPR at 1% / 0.1% FPR
(ideal 0.5 / 50 / = FPR, where retrain sits), the unlearned shadows' forget-set and test accuracy, and the
unlearning time / retrain time ratio measured in the same run. The two sizes show how the membership signal
there is to remove shrinks as the training set grows. Times on shared machines are noisy; read the ratios.

    python benchmarks/ulira.py [--shadows 16] [--pool 0.2] [--test-fractions 0.5,0.25] [--methods a,b]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("EXCISE_PROGRESS", "0")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from excise.bench.ulira import ULiraConfig, run_ulira  # noqa: E402
from excise.data import load_dataset  # noqa: E402
from excise.demo import demo_methods  # noqa: E402
from excise.training import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--pool", type=float, default=0.2)
    parser.add_argument("--test-fractions", default="0.5,0.25", help="digits test shares: one run per size")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=None, help="comma-separated (default: every 'samples' method)")
    parser.add_argument("--cache", default=None, help="cache the trained shadows here")
    args = parser.parse_args()
    methods = (["retrain", *demo_methods("samples")] if args.methods is None
               else [m.strip() for m in args.methods.split(",") if m.strip()])
    recipe = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
    config = ULiraConfig(num_shadows=args.shadows, pool=args.pool, seed=args.seed)
    console = Console(width=160)
    for fraction in (float(f) for f in args.test_fractions.split(",")):
        bundle = load_dataset("digits", seed=args.seed, test_fraction=fraction)
        started = time.perf_counter()
        report = run_ulira(bundle, "small_cnn", recipe, methods, config, model_kwargs={"width": args.width},
                           cache_dir=args.cache)
        retrain_seconds = report.row("retrain").seconds if "retrain" in methods else None
        table = Table(title=f"digits, {report.train_size} training images (test share {fraction}): "
                            f"{report.pool_size} attacked, {args.shadows} shadows, small_cnn width {args.width}, "
                            f"{args.epochs} epochs; {time.perf_counter() - started:.0f}s", title_justify="left")
        for column in ("method", "AUC", "acc %", "TPR@1%FPR", "TPR@0.1%FPR", "FA", "TA", "time s",
                       "time/retrain"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for row in report.rows:
            attack = row.attack
            tprs = ["—" if v is None else f"{v:.1f}" for v in (attack.tpr_at_1pct_fpr, attack.tpr_at_01pct_fpr)]
            ratio = "—" if retrain_seconds is None or row.method == "original" else \
                f"{row.seconds / retrain_seconds:.3f}"
            table.add_row(row.method, f"{attack.auc:.3f}", f"{attack.accuracy:.1f}", *tprs,
                          f"{row.forget_accuracy:.1f}", f"{row.test_accuracy:.1f}", f"{row.seconds:.2f}", ratio)
        console.print(table)
        if report.null_auc_band is not None:
            low, high = report.null_auc_band
            console.print(f"noise band: retrain's AUC under random membership spans {low:.3f}-{high:.3f} (95%)")
    console.print("AUC 0.5 / acc 50: unlearned and never-seen examples look alike (retrain's row). FA/TA: the "
                  "unlearned shadows' accuracy on their forget sets and on the test set; a ruined model is at "
                  "chance too. original: no unlearning (time = training time).")


if __name__ == "__main__":
    main()
